"""Finding a task's (degraded, clean) pairs: by a layout rule, in two folders, in a pair list or in LMDBs.

Every finder returns `Pairs`: the pairs (lq None for clean-only sources), the degraded files whose
clean partner is missing, and images that took part in no pair.
"""
import os.path as osp
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from basicsr.data.data_util import paths_from_lmdb

from vlu_plugin.data.image_io import list_images
from vlu_plugin.data.tasks import LAYOUTS


@dataclass
class Pairs:
    """Found pairs plus what could not be paired, for errors and reports."""
    pairs: List[Tuple[Optional[str], str]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)  # degraded files without a clean partner
    unused: List[str] = field(default_factory=list)  # images that are in no pair


def _stem_index(rel_paths):
    """Map each relative path without extension to its files (several extensions may share a stem)."""
    index = {}
    for rel in rel_paths:
        index.setdefault(osp.splitext(rel)[0], []).append(rel)
    return index


def _pick(candidates, ext):
    """The candidate with extension `ext` if there is one, else the first."""
    same = [c for c in candidates if osp.splitext(c)[1].lower() == ext.lower()]
    return (same or candidates)[0]


def find_layout_pairs(root, layout):
    """Pairs under `root` by the naming rule LAYOUTS[layout]; paths are relative to `root`."""
    if layout not in LAYOUTS:
        raise ValueError(f'unknown layout {layout!r}; known layouts: {", ".join(LAYOUTS)}')
    if not osp.isdir(root):
        raise FileNotFoundError(f'folder {root} does not exist')
    files = list_images(root)
    rules = [(re.compile(pattern + r'$'), templates) for pattern, templates in LAYOUTS[layout]]
    if not rules:  # clean-only source
        return Pairs(pairs=[(None, rel) for rel in files])
    index = _stem_index(files)
    found, used = Pairs(), set()
    for rel in files:
        stem, ext = osp.splitext(rel)
        for rule, templates in rules:
            match = rule.match(stem)
            if match:
                break
        else:
            continue  # not a degraded file (a clean partner, or something else)
        if not templates:  # a known file that this layout does not pair (another CDD-11 subset)
            used.add(rel)
            continue
        names = (template.format(**match.groupdict()) for template in templates)
        partner = next((name for name in names if name in index), None)
        if partner is None:
            found.missing.append(rel)
            continue
        gt = _pick(index[partner], ext)
        found.pairs.append((rel, gt))
        used.update((rel, gt))
    unpaired = used | set(found.missing)
    found.unused = [rel for rel in files if rel not in unpaired]
    return found


def find_folder_pairs(lq_root, gt_root):
    """Pairs of files with the same relative path (extension aside) in `lq_root` and `gt_root`."""
    for folder in (lq_root, gt_root):
        if not osp.isdir(folder):
            raise FileNotFoundError(f'folder {folder} does not exist')
    gt_index = _stem_index(list_images(gt_root))
    found, used = Pairs(), set()
    for rel in list_images(lq_root):
        stem, ext = osp.splitext(rel)
        if stem not in gt_index:
            found.missing.append(osp.join(lq_root, rel))
            continue
        gt = _pick(gt_index[stem], ext)
        used.add(gt)
        found.pairs.append((osp.join(lq_root, rel), osp.join(gt_root, gt)))
    found.unused = [osp.join(gt_root, g) for files in gt_index.values() for g in files if g not in used]
    return found


def read_pair_list(list_file, root=None):
    """Pairs from a list file: `degraded, clean` per line (the release's format) or one clean path per line.

    Relative paths are taken from `root` (default: the list's folder); a leading './' is dropped, as
    the release's lists start with it. BasicSR meta_info lines (`name (h,w,c) level`) read as clean paths.
    """
    if not osp.isfile(list_file):
        raise FileNotFoundError(f'pair list {list_file} does not exist')
    base = root if root is not None else osp.dirname(osp.abspath(list_file))

    def resolve(path):
        """An entry of the list as a path: './' dropped, relative paths joined to the base."""
        path = path.strip()
        path = path[2:] if path.startswith('./') else path
        return path if osp.isabs(path) else osp.join(base, path)

    found = Pairs()
    with open(list_file, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            parts = line.split(',') if ',' in line else [line.split()[0]]
            if len(parts) > 2:
                raise ValueError(f'{list_file} line {number}: expected "degraded, clean", got {line!r}')
            paths = [resolve(p) for p in parts]
            for path in paths:
                if not osp.isfile(path):
                    role = ('image' if len(paths) == 1 else
                            'clean partner' if path is paths[1] else 'degraded partner')
                    raise FileNotFoundError(f'{list_file} line {number}: {role} {path} does not exist')
            found.pairs.append((paths[0], paths[1]) if len(paths) == 2 else (None, paths[0]))
    return found


# a line of BasicSR's LMDB meta_info.txt: `<key>.<ext> (h,w,c) <compression level>`
META_INFO_LINE = re.compile(r'[^.\s][^.]*\.\w+ \(\d+, ?\d+, ?\d+\) \d+')


def check_meta_info(folder):
    """Raise naming the LMDB's meta_info.txt and the line when a line is not BasicSR's `key.png (h,w,c) level`."""
    path = osp.join(folder, 'meta_info.txt')
    with open(path, encoding='utf-8', errors='replace') as f:
        for number, line in enumerate(f, 1):
            # paths_from_lmdb keys each line by what precedes its first dot: anything else gives a key not in the LMDB
            if not META_INFO_LINE.fullmatch(line.rstrip('\r\n')):
                raise ValueError(f'{path} line {number}: expected "<key>.png (h,w,c) <level>" as BasicSR writes it, '
                                 f'got {line.rstrip()!r}; the LMDB is damaged: rebuild it (vlu prepare lmdb)')


def find_lmdb_pairs(lq_lmdb, gt_lmdb):
    """Pairs of LMDB keys (lq None when `lq_lmdb` is None); every degraded key needs the same clean key."""
    for folder in (gt_lmdb, lq_lmdb):
        if folder is not None and not osp.isfile(osp.join(folder, 'meta_info.txt')):
            raise FileNotFoundError(f'LMDB {folder} does not exist or has no meta_info.txt')
        if folder is not None:
            check_meta_info(folder)
    gt_keys = paths_from_lmdb(gt_lmdb)
    if lq_lmdb is None:
        return Pairs(pairs=[(None, key) for key in gt_keys])
    known = set(gt_keys)
    found = Pairs()
    for key in paths_from_lmdb(lq_lmdb):
        if key in known:
            found.pairs.append((key, key))
        else:
            found.missing.append(f'{lq_lmdb}:{key}')
    return found
