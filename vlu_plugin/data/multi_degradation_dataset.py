"""MultiDegradationDataset: (degraded, clean) pairs of several degradation tasks, each labelled with its
task's CLIP label and prompt, read from folders, pair lists or LMDBs, or made on the fly from clean images
(Gaussian noise always; every task's degradation with `synthesize: true`).

Sample: `lq`, `gt` (3xHxW float32 RGB in [0, 1]), `lq_path`, `gt_path`, `deg_label` (int, CLIP order),
`deg_text` (the prompt), `lq_key` (a second view of the same degraded image) with `key_view: true`, and
`lq_context` (the degraded `context_size` square the training views are cut from) with `context_size`.
A CDD-11 sample adds `deg_multi_hot` (4 floats: low light, haze, rain, snow present) and `deg_subset`
(its subset's name, e.g. 'low_haze_rain'); its `deg_label` indexes the 11 composite prompts.
Training crops `gt_size` patches with BasicSR's `paired_random_crop` and augments with `augment`;
validation returns whole images. A synthesised training sample is a random crop of a clean image (rescaled
by a factor drawn from `scale_range`, optionally colour-jittered), degraded with parameters drawn afresh, so no
patch repeats. Options are listed in `tasks.DATASET_KEYS` / `tasks.TASK_KEYS`.
"""
import atexit
import os
import os.path as osp
import random
from dataclasses import dataclass
from typing import List, Optional, Tuple

import cv2
import numpy as np
import torch
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from vlu_plugin.data.image_io import decode_image, list_images
from vlu_plugin.data.pairs import Pairs, find_folder_pairs, find_layout_pairs, find_lmdb_pairs, read_pair_list
from vlu_plugin.data.synthesis import add_gaussian_noise, random_degradation
from vlu_plugin.data.tasks import SOURCES, Task, multi_hot, resolve_tasks

QUANTIZE_MODES = ('truncate', 'round', 'none')
JITTER_DEFAULTS = {'contrast': (0.7, 1.3), 'brightness': (0.7, 1.3)}  # factors of `color_jitter: true`
CLEAN_CACHE_BYTES = 256 << 20  # decoded clean images kept per process for on-the-fly synthesis
DISK = FileClient('disk')
_LMDB_READERS = {}  # (pid, folder) -> LmdbReader: py-lmdb refuses a second open of one environment per process,
# and a handle must not cross a fork, so datasets of one process share them and each worker opens its own


class LmdbReader:
    """A read-only BasicSR LMDB (keys → encoded images), refused (and closed) when its data file is cut short."""

    def __init__(self, folder):
        import lmdb
        try:
            self.env = lmdb.open(folder, readonly=True, lock=False, readahead=False)
        except lmdb.Error as err:
            raise ValueError(f'LMDB {folder}: cannot open its data.mdb ({err}); rebuild it (vlu prepare lmdb)') \
                from None
        # A data.mdb shorter than its own page count (an interrupted copy) is memory-mapped past its end, and the
        # first read there kills the process with SIGBUS instead of raising: compare the sizes before any read.
        needed = (self.env.info()['last_pgno'] + 1) * self.env.stat()['psize']
        size = osp.getsize(osp.join(folder, 'data.mdb'))
        if size < needed:
            self.env.close()
            raise ValueError(f'LMDB {folder}: data.mdb is truncated ({size} bytes, its pages need {needed}); '
                             'copy it again or rebuild it (vlu prepare lmdb)')

    def get(self, key):
        """The bytes stored under `key` (None when absent), read as BasicSR's LmdbBackend does."""
        with self.env.begin(write=False) as txn:
            return txn.get(key.encode('ascii'))

    def close(self):
        """Close the environment."""
        self.env.close()


def close_lmdb_readers():
    """Close this process's LMDB readers (at exit; a later read opens them again)."""
    for key in [k for k in _LMDB_READERS if k[0] == os.getpid()]:
        _LMDB_READERS.pop(key).close()


def check_lmdb(folder):
    """Raise naming `folder` if its data.mdb cannot be opened or is cut short; leaves nothing open."""
    if (os.getpid(), osp.abspath(folder)) not in _LMDB_READERS:  # already open here: already checked
        # closed again: a handle opened before DataLoader workers fork would stop them opening their own
        LmdbReader(folder).close()


def lmdb_reader(folder):
    """The process's reader of the LMDB `folder`, opened (and checked) on first use."""
    key = (os.getpid(), osp.abspath(folder))
    if key not in _LMDB_READERS:
        if not _LMDB_READERS:
            atexit.register(close_lmdb_readers)
        _LMDB_READERS[key] = LmdbReader(folder)
    return _LMDB_READERS[key]


@dataclass
class TaskData:
    """One task's resolved data: its pairs (lq None = synthesised) and how to read them."""
    task: Task
    pairs: List[Tuple[Optional[str], str]]
    backend: str  # 'disk' or 'lmdb'
    where: str  # for messages
    sigma: Optional[float] = None
    quantize: str = 'truncate'
    synthesis: Optional[str] = None  # the `Task.kind` that makes lq from gt, None for real pairs
    lmdb: Optional[dict] = None  # role ('lq'/'gt') -> LMDB folder


def _list_folder(folder):
    """Pairs of a clean-only folder."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'folder {folder} does not exist')
    return Pairs(pairs=[(None, osp.join(folder, rel)) for rel in list_images(folder)])


def find_task_pairs(task, spec, default_backend):
    """The Pairs of one task option dict and the backend type it is read with."""
    backend = (spec.get('io_backend') or default_backend or {'type': 'disk'}).get('type', 'disk')
    if backend == 'lmdb':
        if not spec.get('dataroot_gt'):
            raise ValueError(f'task {task.name!r}: io_backend lmdb needs dataroot_gt (and dataroot_lq) LMDB folders')
        return find_lmdb_pairs(spec.get('dataroot_lq'), spec['dataroot_gt']), backend, spec['dataroot_gt']
    if backend != 'disk':
        raise ValueError(f"task {task.name!r}: io_backend type {backend!r} is not supported; use 'disk' or 'lmdb'")
    if spec.get('meta_info_file'):
        return read_pair_list(spec['meta_info_file'], spec.get('root')), backend, spec['meta_info_file']
    if spec.get('dataroot_gt'):
        gt = spec['dataroot_gt']
        if not spec.get('dataroot_lq'):
            return _list_folder(gt), backend, gt
        found = find_folder_pairs(spec['dataroot_lq'], gt)
        if found.unused and not found.missing:  # two folders of pairs: a lone clean image is a missing degraded one
            more = f' (and {len(found.unused) - 1} more)' if len(found.unused) > 1 else ''
            raise FileNotFoundError(f'task {task.name!r}: clean image {found.unused[0]} has no degraded partner'
                                    f'{more} in {spec["dataroot_lq"]}')
        return found, backend, gt
    if spec.get('dataroot_lq'):
        raise ValueError(f'task {task.name!r}: dataroot_lq {spec["dataroot_lq"]} needs a dataroot_gt beside it')
    root = spec['root']
    found = find_layout_pairs(root, spec.get('layout', SOURCES[task.source].layout))
    found.pairs = [(None if lq is None else osp.join(root, lq), osp.join(root, gt)) for lq, gt in found.pairs]
    found.missing = [osp.join(root, lq) for lq in found.missing]
    return found, backend, root


def color_jitter_ranges(value, name):
    """`color_jitter` as {'contrast': [lo, hi], 'brightness': [lo, hi]} factors, or None when off."""
    if value is False or value is None:
        return None
    ranges = dict(JITTER_DEFAULTS)
    if isinstance(value, dict):
        unknown = set(value) - set(JITTER_DEFAULTS)
        if unknown:
            raise ValueError(f'dataset {name!r}: color_jitter takes {sorted(JITTER_DEFAULTS)}, not {sorted(unknown)}')
        ranges.update(value)
    elif value is not True:
        raise ValueError(f'dataset {name!r}: color_jitter must be true, false or {{contrast: [lo, hi], '
                         f'brightness: [lo, hi]}}, not {value!r}')
    for key, bounds in ranges.items():
        if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2 and 0 < bounds[0] <= bounds[1]):
            raise ValueError(f'dataset {name!r}: color_jitter.{key} must be [lo, hi] with 0 < lo <= hi, not {bounds!r}')
    return ranges


@DATASET_REGISTRY.register()
class MultiDegradationDataset(data.Dataset):
    """Pairs of several degradation tasks with their CLIP label and prompt, from disk or LMDB."""

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        resolved = resolve_tasks(opt)  # also rejects misspelled option keys
        self.is_train = opt.get('phase', 'train') == 'train'
        if opt.get('scale', 1) != 1:
            raise ValueError(f'scale is {opt["scale"]}: all-in-one restoration keeps the size (scale 1)')
        self.gt_size = opt.get('gt_size')
        if self.is_train and not (isinstance(self.gt_size, int) and self.gt_size > 0):
            raise ValueError(f'dataset {opt.get("name", "")!r}: training needs gt_size (a positive int)')
        self.use_hflip, self.use_rot = opt.get('use_hflip', True), opt.get('use_rot', True)
        self.key_view = bool(opt.get('key_view', False))
        self.context_size = opt.get('context_size')
        if self.context_size is not None and not (isinstance(self.context_size, int)
                                                  and self.context_size >= (self.gt_size or 1)):
            raise ValueError(f'dataset {opt.get("name", "")!r}: context_size must be an int of at least gt_size '
                             f'({self.gt_size}), not {self.context_size!r}')
        self.color_jitter = color_jitter_ranges(opt.get('color_jitter', False), opt.get('name', ''))
        self.scale_range = opt.get('scale_range', [1, 1])
        if not (isinstance(self.scale_range, (list, tuple)) and len(self.scale_range) == 2
                and all(isinstance(v, (int, float)) and v > 0 for v in self.scale_range)
                and self.scale_range[0] <= self.scale_range[1]):
            raise ValueError(f'dataset {opt.get("name", "")!r}: scale_range must be [min, max] with 0 < min <= max, '
                             f'not {self.scale_range!r}')
        self.seed = opt.get('seed', 0)
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f'seed must be a non-negative int, not {self.seed!r}')
        self.tasks = [self._load_task(task, spec) for task, spec in resolved]
        repeats = self._repeats(resolved)
        self.samples = [(t, i) for t, td in enumerate(self.tasks) for _ in range(repeats[t])
                        for i in range(len(td.pairs))]

    def _load_task(self, task, spec):
        found, backend, where = find_task_pairs(task, spec, self.opt.get('io_backend'))
        if found.missing:
            more = f' (and {len(found.missing) - 1} more)' if len(found.missing) > 1 else ''
            raise FileNotFoundError(f'task {task.name!r}: degraded image {found.missing[0]} has no clean partner'
                                    f'{more} in {where}')
        if not found.pairs:
            raise ValueError(f'task {task.name!r} is empty: no images found in {where}')
        synthesised = [lq is None for lq, _ in found.pairs]
        sigma = spec.get('sigma', task.sigma)
        synthesize = spec.get('synthesize', self.opt.get('synthesize', False))
        if not isinstance(synthesize, bool):
            raise ValueError(f'task {task.name!r}: synthesize must be true or false, not {synthesize!r}')
        if synthesize and not task.kind:
            raise ValueError(f'task {task.name!r}: synthesize: true, but this task has no synthesis (CDD-11 '
                             'subsets are read as pairs); remove synthesize or give its degraded images')
        if any(synthesised) and sigma is None and not synthesize:
            raise ValueError(f'task {task.name!r}: {where} gives clean images only, but only noise tasks '
                             'synthesise their degraded images unless `synthesize: true`; give the degraded '
                             'images too')
        if any(synthesised) and not all(synthesised):
            raise ValueError(f'task {task.name!r}: {where} mixes pairs and clean-only entries')
        if synthesize and not all(synthesised):
            raise ValueError(f'task {task.name!r}: synthesize: true degrades clean images, but {where} holds '
                             'degraded images too; point it at clean images only')
        kind = ('noise' if sigma is not None else task.kind) if all(synthesised) else None
        quantize = spec.get('noise_quantize', self.opt.get('noise_quantize', 'truncate'))
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f'task {task.name!r}: noise_quantize {quantize!r} is not one of {QUANTIZE_MODES}')
        lmdb = None
        if backend == 'lmdb':
            lmdb = {'gt': spec['dataroot_gt']}
            if not all(synthesised):
                lmdb['lq'] = spec['dataroot_lq']
            for folder in lmdb.values():
                check_lmdb(folder)
        return TaskData(task, found.pairs, backend, where, sigma, quantize, synthesis=kind, lmdb=lmdb)

    def _repeats(self, resolved):
        """Per-task repeat factors (training only): per task `repeat`, else the dataset's 'release' or dict."""
        default = self.opt.get('repeat', {})
        names = [task.name for task, _ in resolved]
        if isinstance(default, dict):
            for name in default:
                if name not in names:
                    raise ValueError(f'repeat names task {name!r}, which is not in this dataset ({", ".join(names)})')
        elif default != 'release':
            raise ValueError(f"repeat must be 'release' or a mapping task -> factor, not {default!r}")
        repeats = []
        for task, spec in resolved:
            factor = spec.get('repeat', task.release_repeat if default == 'release' else default.get(task.name, 1))
            if not (isinstance(factor, int) and factor >= 1):
                raise ValueError(f'task {task.name!r}: repeat must be a positive int, not {factor!r}')
            repeats.append(factor if self.is_train else 1)
        return repeats

    def __len__(self):
        return len(self.samples)

    # the plugin's sampler passes indices past len(self) when the epoch is enlarged (dataset_enlarge_ratio),
    # so each repeat of a sample keys its own randomness; __getitem__ takes them modulo len(self)
    accepts_enlarged_index = True

    def set_epoch(self, epoch):
        """Key each training sample's randomness on (seed, epoch, index) from now on.

        BasicSR's sampler calls this (see `vlu_plugin.utils.exact_resume`); the crops, flips and noise of a
        sample then depend neither on the worker that loads it nor on what was loaded before, so a
        resumed run sees exactly the batches an uninterrupted one would, with any number of workers.
        """
        self.epoch = epoch

    # ---- reading ----------------------------------------------------------------------------------
    def _name(self, td, ref, role):
        return f'{td.lmdb[role]} key {ref}' if td.backend == 'lmdb' else ref

    def _read(self, td, ref, role):
        """Decode one image of task `td` as float32 RGB; errors name the file."""
        if td.backend == 'lmdb':
            content = lmdb_reader(td.lmdb[role]).get(ref)
            if content is None:
                raise FileNotFoundError(f'LMDB {td.lmdb[role]} has no key {ref!r}, though its meta_info.txt lists '
                                        'it; the LMDB is damaged: rebuild it (vlu prepare lmdb)')
        else:
            try:
                content = DISK.get(ref)
            except OSError as err:
                raise FileNotFoundError(f'cannot read image {ref}: {err.strerror or err}') from None
        return decode_image(content, self._name(td, ref, role))

    def _read_clean(self, td, ref):
        """A clean image that training degrades on the fly, decoded once per process while the cache has room:
        decoding a whole photo costs more than cutting and degrading a patch of it. Cached images are read-only
        (every view is cut from them and copied)."""
        key = (td.backend, td.lmdb['gt'] if td.lmdb else None, ref)
        cache = self.__dict__.setdefault('_clean_cache', {})
        if key in cache:
            return cache[key]
        img = self._read(td, ref, 'gt')
        if sum(v.nbytes for v in cache.values()) + img.nbytes <= CLEAN_CACHE_BYTES:
            img.setflags(write=False)
            cache[key] = img
        return img

    def _synthesis_rng(self, index, td):
        """Generator for a synthesised sample: fixed per (seed, index, task) in validation; in training also drawn
        from Python's `random`, which BasicSR/torch seed per worker, so workers and epochs differ."""
        entropy = [self.seed, index, td.task.label, int(round((td.sigma or 0) * 1000))]
        if self.is_train:
            entropy.append(random.getrandbits(32))
        return np.random.default_rng(entropy)

    def _clean_region(self, gt, size, rng):
        """A random square of a clean image, rescaled by a factor from `scale_range` to `size` px, augmented."""
        h, w = gt.shape[:2]
        scale = rng.uniform(*self.scale_range)
        src = min(h, w, max(1, round(size / scale)))
        top, left = int(rng.integers(0, h - src + 1)), int(rng.integers(0, w - src + 1))
        region = gt[top:top + src, left:left + src]
        if src != size:
            region = cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA if src > size else cv2.INTER_CUBIC)
            region = np.clip(region, 0, 1)  # bicubic overshoots; low light's gamma of a negative value is NaN
        else:
            region = region.copy()  # augment flips in place; `gt` may be the cached image
        region = augment(region, self.use_hflip, self.use_rot)
        if self.color_jitter:  # content colours and exposure must not tell the degradation apart
            region = region[:, :, rng.permutation(3)]
            mean = float(region.mean())
            contrast = rng.uniform(*self.color_jitter['contrast'])  # drawn before brightness: keep the order
            brightness = rng.uniform(*self.color_jitter['brightness'])
            region = np.clip((region - mean) * contrast + mean * brightness, 0, 1)
        return np.ascontiguousarray(region, dtype=np.float32)

    def _synthesise(self, td, gt, rng):
        """The degraded version of clean `gt` by the task's synthesis, parameters drawn from `rng`."""
        if td.synthesis == 'noise':
            return add_gaussian_noise(gt, td.sigma, rng, td.quantize)
        return random_degradation(td.synthesis, gt, rng)[0]

    def _view(self, lq, gt, gt_name, augmented=False):
        """One (lq, gt) view: a random augmented patch in training, the whole image otherwise.

        A synthesised sample was `augmented` as clean content before its degradation (rain still falls
        downwards, motion stays motion), so its views are only cut, not flipped again."""
        if self.is_train:
            gt, lq = paired_random_crop(gt, lq, self.gt_size, 1, gt_name)
            # copies: augment flips in place, which must not touch the full image a second view is cut from
            gt, lq = (gt.copy(), lq.copy()) if augmented else augment([gt.copy(), lq.copy()], self.use_hflip,
                                                                       self.use_rot)
        return lq, gt

    def __getitem__(self, index):
        if self.is_train and getattr(self, 'epoch', None) is not None:
            random.seed(f'{self.seed}/{self.epoch}/{index}')  # BasicSR's crop and augment draw from `random`
        t, i = self.samples[index % len(self.samples)]
        td = self.tasks[t]
        lq_ref, gt_ref = td.pairs[i]
        gt_name = self._name(td, gt_ref, 'gt')
        gt = self._read_clean(td, gt_ref) if lq_ref is None and self.is_train else self._read(td, gt_ref, 'gt')
        lq = None if lq_ref is None else self._read(td, lq_ref, 'lq')
        if lq is not None and lq.shape[:2] != gt.shape[:2]:
            raise ValueError(f'size mismatch in task {td.task.name!r}: degraded {self._name(td, lq_ref, "lq")} is '
                             f'{lq.shape[0]}x{lq.shape[1]} but clean {gt_name} is {gt.shape[0]}x{gt.shape[1]} (HxW)')
        if self.is_train and lq is not None and self.context_size:  # the context the views are cut from
            gt, lq = paired_random_crop(gt, lq, self.context_size, 1, gt_name)
        if self.is_train and min(gt.shape[:2]) < self.gt_size:
            raise ValueError(f'image {gt_name} is {gt.shape[0]}x{gt.shape[1]} (HxW), smaller than '
                             f'gt_size {self.gt_size}; remove it or lower gt_size')
        if lq is None:
            rng = self._synthesis_rng(index, td)
            if self.is_train:  # degrade only the region the view(s) are cut from: any size of clean image
                size = self.context_size or self.gt_size * (2 if self.key_view else 1)
                gt = self._clean_region(gt, size, rng)
            lq = self._synthesise(td, gt, rng)
        lq_out, gt_out = self._view(lq, gt, gt_name, augmented=lq_ref is None)
        if lq_ref is None:  # synthesised: the task in the name keeps validation images of each sigma apart
            stem, ext = osp.splitext(gt_ref)
            lq_path = f'{stem}_{td.task.name}{ext}'
        else:
            lq_path = lq_ref
        lq_t, gt_t = img2tensor([lq_out, gt_out], bgr2rgb=False, float32=True)
        sample = {'lq': lq_t, 'gt': gt_t, 'lq_path': lq_path, 'gt_path': gt_ref,
                  'deg_label': td.task.label, 'deg_text': td.task.text}
        if td.task.components:  # a composite (CDD-11) image: which atomic degradations it holds, and its subset
            sample['deg_multi_hot'] = torch.tensor(multi_hot(td.task), dtype=torch.float32)
            sample['deg_subset'] = '_'.join(td.task.components)
        if self.key_view:
            key, _ = self._view(lq, gt, gt_name, augmented=lq_ref is None)
            sample['lq_key'] = img2tensor(key, bgr2rgb=False, float32=True)
        if self.is_train and self.context_size:
            sample['lq_context'] = img2tensor(np.ascontiguousarray(lq), bgr2rgb=False, float32=True)
        return sample
