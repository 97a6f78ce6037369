"""Checking a preset's data before a long training: lists and folders, per set, every fault named.

For each set a preset reads (`<source>_<split>`), the pair list `meta_info/<source>_<split>.txt` is
read when there is one (else the folder is scanned with the set's naming rule, as `vlu prepare lists`
does) and the check reports: the usable pairs, listed files that do not exist (degraded or clean),
degraded images in the folder without a clean partner, pairs whose images differ in size, and listed
names that differ from a file only by a short prefix (the public BSD400 list names `a117025.jpg` where
the files are `117025.jpg`). Image sizes come from the file headers (PIL), nothing is decoded.
"""
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from vlu_plugin.data.pairs import find_layout_pairs
from vlu_plugin.data.tasks import sources_of

MAX_PREFIX = 2  # letters a list may put before a file's name ('a' in BSD400's list)


@dataclass
class SetReport:
    """What the check found for one set; `usable` is the number of pairs a training could read."""
    label: str
    where: str
    list_file: Optional[str] = None
    usable: int = 0
    kind: str = 'pairs'
    missing_lq: List[str] = field(default_factory=list)
    missing_gt: List[str] = field(default_factory=list)
    unpaired_lq: List[str] = field(default_factory=list)
    size_mismatch: List[Tuple[str, str, tuple, tuple]] = field(default_factory=list)
    prefixed: List[Tuple[str, str]] = field(default_factory=list)  # (listed path, existing file)
    absent: bool = False

    @property
    def faults(self):
        """Number of faults of every kind."""
        return (len(self.missing_lq) + len(self.missing_gt) + len(self.unpaired_lq) + len(self.size_mismatch)
                + len(self.prefixed))


def image_size(path):
    """(width, height) from the image's header, or None when it cannot be read."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError):
        return None


def prefixed_match(path):
    """The existing file `path` names but for a short prefix of letters (a117025 ↔ 117025), or None."""
    folder, name = osp.split(path)
    for cut in range(1, MAX_PREFIX + 1):
        if len(name) > cut and name[:cut].isalpha() and osp.isfile(osp.join(folder, name[cut:])):
            return osp.join(folder, name[cut:])
    if osp.isdir(folder):  # the other way round: the files carry a prefix the list lacks
        for other in os.listdir(folder):
            extra = len(other) - len(name)
            if 0 < extra <= MAX_PREFIX and other.endswith(name) and other[:extra].isalpha():
                return osp.join(folder, other)
    return None


def read_list_entries(list_file, root):
    """[(line number, lq path or None, gt path)] of a pair list, paths joined to `root` ('./' dropped)."""
    def resolve(entry):
        entry = entry.strip()
        entry = entry[2:] if entry.startswith('./') else entry
        return entry if osp.isabs(entry) else osp.join(root, entry)

    entries = []
    with open(list_file, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            parts = [resolve(p) for p in (line.split(',') if ',' in line else [line.split()[0]])]
            if len(parts) > 2:
                raise ValueError(f'{list_file} line {number}: expected "degraded, clean", got {line!r}')
            entries.append((number, parts[0] if len(parts) == 2 else None, parts[-1]))
    return entries


def _check_pairs(report, pairs):
    """Count usable pairs, noting missing files, prefixed names and size mismatches."""
    for lq, gt in pairs:
        ok = True
        for path, missing in ((lq, report.missing_lq), (gt, report.missing_gt)):
            if path is None or osp.isfile(path):
                continue
            ok = False
            match = prefixed_match(path)
            if match:
                report.prefixed.append((path, match))
            else:
                missing.append(path)
        if ok and lq is not None:
            lq_size, gt_size = image_size(lq), image_size(gt)
            if lq_size != gt_size:
                report.size_mismatch.append((lq, gt, lq_size, gt_size))
                ok = False
        report.usable += ok


def check_set(root, source, split, meta_info_dir):
    """The SetReport of one source's split under the datasets `root`."""
    folder = source.train_dir if split == 'train' else source.test_dir
    where = osp.join(root, folder)
    report = SetReport(label=f'{source.name}_{split}', where=where,
                       kind='clean images' if source.layout == 'clean' else 'pairs')
    list_file = osp.join(meta_info_dir, f'{report.label}.txt')
    found = find_layout_pairs(where, source.layout) if osp.isdir(where) else None
    if found is not None:
        report.unpaired_lq = [osp.join(where, rel) for rel in found.missing]
    if osp.isfile(list_file):
        report.list_file = list_file
        _check_pairs(report, [(lq, gt) for _, lq, gt in read_list_entries(list_file, root)])
    elif found is not None:
        _check_pairs(report, [(None if lq is None else osp.join(where, lq), osp.join(where, gt))
                              for lq, gt in found.pairs])
    else:
        report.absent = True
    return report


def check_preset(root, preset, meta_info_dir=None):
    """SetReports for every set of `preset` ('3task', '5task' or 'cdd11') under `root` (lists from ROOT/meta_info)."""
    if not osp.isdir(root):
        raise FileNotFoundError(f'datasets root {root} does not exist')
    meta_info_dir = meta_info_dir or osp.join(root, 'meta_info')
    return [check_set(root, source, split, meta_info_dir) for source in sources_of(preset)
            for split in ('train', 'test')]
