"""The degradation task table: name, CLIP label, prompt, and where each task's pairs come from.

Labels follow the order of the release's 7 CLIP prompts (noise15, noise25, noise50, haze, rain, blur,
low light), because the fine-tuned degradation CLIP is what reads them; the release's restoration loader
uses another order (rain and haze swapped) that nothing downstream reads.

CDD-11 (OneRestore's composite degradations) is a second label space: 11 subsets, each a combination of
the atomic degradations low light, haze, rain and snow, labelled 0-10 in OneRestore's subset order. Its
degradation CLIP classifies over the 11 composite prompts (see `CDD11_TASKS`); a dataset never mixes the
two spaces, since their labels would collide.

The naming rules of the public data sets are data (`LAYOUTS`), applied by one scanner in `pairs.py`.
"""
import os.path as osp
from dataclasses import dataclass
from typing import Optional, Tuple

from vlu_plugin.utils.hints import did_you_mean


@dataclass(frozen=True)
class Task:
    """One degradation task: its name, CLIP label and prompt, its data source and synthesis."""
    name: str
    label: int
    text: str
    source: str  # key of SOURCES; the three noise levels share one set of clean images
    kind: str  # the synthesis that makes its degraded images from clean ones (`synthesize: true`; noise always)
    sigma: Optional[float] = None  # Gaussian noise level on the 0-255 scale, made on the fly from clean images
    release_repeat: int = 1  # list repeat factor of the release's training set (`repeat: release`)
    components: Tuple[str, ...] = ()  # the atomic degradations of a composite task (CDD-11), in ATOMIC order
    space: str = 'allinone'  # the label space: 'allinone' (the release's 7 prompts) or 'cdd11'


TASKS = (
    Task('denoise_15', 0, 'image with noise', 'denoise', 'noise', sigma=15, release_repeat=3),
    Task('denoise_25', 1, 'image with many noise', 'denoise', 'noise', sigma=25, release_repeat=3),
    Task('denoise_50', 2, 'image with large amount of noise', 'denoise', 'noise', sigma=50, release_repeat=3),
    Task('dehaze', 3, 'image with haze', 'dehaze', 'haze'),
    Task('derain', 4, 'image with rain', 'derain', 'rain', release_repeat=120),
    Task('deblur', 5, 'image with blur', 'deblur', 'blur'),
    Task('lowlight', 6, 'image with low light', 'lowlight', 'lowlight'),
)
TASKS_BY_NAME = {task.name: task for task in TASKS}
ALIASES = {'delowlight': 'lowlight'}  # the release's spelling
PROMPTS = [task.text for task in sorted(TASKS, key=lambda t: t.label)]  # the release's 7: the one source

# CDD-11: OneRestore's subsets in its own order (`combine_type` without 'clear'), which is also the order
# of the per-subset numbers it publishes.
ATOMIC = ('low', 'haze', 'rain', 'snow')
ATOMIC_WORDS = {'low': 'low light', 'haze': 'haze', 'rain': 'rain', 'snow': 'snow'}
CDD11_SUBSETS = ('low', 'haze', 'rain', 'snow', 'low_haze', 'low_rain', 'low_snow', 'haze_rain', 'haze_snow',
                 'low_haze_rain', 'low_haze_snow')


def composite_prompt(components):
    """The CLIP prompt of a composite degradation in the release's wording: 'image with low light, haze and rain'."""
    words = [ATOMIC_WORDS[c] for c in components]
    return 'image with ' + (words[0] if len(words) == 1 else f'{", ".join(words[:-1])} and {words[-1]}')


# Why one class per subset rather than four independent (multi-label) outputs: VLU-Net's D-GDMs mix a
# bank of de_dim prompts with softmax weights, and its CLIP is fine-tuned with cross-entropy over one prompt
# per label; OneRestore conditions the same way, classifying each image into one of its composite scene types
# whose descriptors are composed from the atomic words. The 11 subsets are mutually exclusive, so an
# 11-way softmax loses nothing: the multi-hot vector (`deg_multi_hot`) follows from the class, and the
# report scores both the subset and each atomic degradation. The prompts name every component, so the
# text adapter sees the composition.
CDD11_TASKS = tuple(Task(f'cdd11_{subset}', label, composite_prompt(subset.split('_')), f'cdd11_{subset}', '',
                         components=tuple(subset.split('_')), space='cdd11')
                    for label, subset in enumerate(CDD11_SUBSETS))
CDD11_PROMPTS = [task.text for task in CDD11_TASKS]
TASKS_BY_NAME.update({task.name: task for task in CDD11_TASKS})
LABEL_SPACES = {'allinone': TASKS, 'cdd11': CDD11_TASKS}

# The 5-task protocol trains on all 7 prompts but tests noise at sigma 25 only.
PRESETS = {
    '3task': {'train': ('denoise_15', 'denoise_25', 'denoise_50', 'dehaze', 'derain'),
              'test': ('denoise_15', 'denoise_25', 'denoise_50', 'dehaze', 'derain')},
    '5task': {'train': ('denoise_15', 'denoise_25', 'denoise_50', 'dehaze', 'derain', 'deblur', 'lowlight'),
              'test': ('denoise_25', 'dehaze', 'derain', 'deblur', 'lowlight')},
    'cdd11': {'train': tuple(t.name for t in CDD11_TASKS), 'test': tuple(t.name for t in CDD11_TASKS)},
}


@dataclass(frozen=True)
class Source:
    """Where a public data set lives under the datasets root, how it is named, and how big it is."""
    name: str
    layout: str  # key of LAYOUTS
    train_dir: str
    test_dir: str
    expected_train: Tuple[int, ...]  # accepted pair counts (several packagings exist)
    expected_test: Tuple[int, ...]
    what: Tuple[str, str]  # (train set, test set) in words


SOURCES = {
    'denoise': Source('denoise', 'clean', 'denoise/train', 'denoise/CBSD68', (5144,), (68,),
                      ('BSD400 + WED, clean images', 'CBSD68, clean images')),
    'dehaze': Source('dehaze', 'reside', 'dehaze/OTS', 'dehaze/SOTS/outdoor', (72135, 313950), (500,),
                     ('RESIDE OTS (AirNet subset or full)', 'RESIDE SOTS-outdoor')),
    'derain': Source('derain', 'rain100l', 'derain/Rain100L/train', 'derain/Rain100L/test', (200,), (100,),
                     ('Rain100L train (RainTrainL)', 'Rain100L test')),
    'deblur': Source('deblur', 'gopro', 'deblur/GoPro/train', 'deblur/GoPro/test', (2103,), (1111,),
                     ('GoPro (GOPRO_Large) train', 'GoPro test')),
    'lowlight': Source('lowlight', 'lol', 'lowlight/LOL/our485', 'lowlight/LOL/eval15', (485,), (15,),
                       ('LOL v1 our485', 'LOL v1 eval15')),
}
# CDD-11 as OneRestore packages it (`CDD-11_train/<subset>/NNNNNN.png` <-> `CDD-11_train/clear/NNNNNN.png`),
# under cdd11/{train,test}. Counts: 1,183 clean images x 11 subsets for training, 200 x 11 for testing, as
# the papers that use it state (not re-counted here).
SOURCES.update({task.source: Source(task.source, task.source, 'cdd11/train', 'cdd11/test', (1183,), (200,),
                                    (f'CDD-11 train, {task.source[6:]}', f'CDD-11 test, {task.source[6:]}'))
                for task in CDD11_TASKS})

# Each layout is a list of (pattern on the degraded file's relative path without extension,
# candidate templates for its clean partner, also without extension). The first matching pattern
# decides; the first template naming an existing image wins; the extension is matched separately
# because packagings differ (SOTS ground truth is PNG in RESIDE, JPEG elsewhere).
LAYOUTS = {
    'clean': (),  # clean images only: every image is a ground truth, the degradation is synthesised
    'rain100l': (
        (r'(?P<pre>(?:.*/)?)rainy/rain-(?P<id>[^/]+)', ('{pre}gt/norain-{id}', '{pre}norain/norain-{id}')),
        (r'(?P<pre>(?:.*/)?)input/(?P<id>[^/]+)', ('{pre}target/{id}',)),
        (r'(?P<pre>(?:.*/)?)rain-(?P<id>[^/]+)', ('{pre}norain-{id}',)),
    ),
    'reside': (  # hazy NNNN_A_beta -> clean NNNN (SOTS hazy/gt, OTS synthetic/partK -> original)
        (r'(?P<pre>(?:.*/)?)(?:hazy|synthetic(?:/part\d+)?|IN)/(?P<id>[^/_]+)(?:_[^/]*)?',
         ('{pre}gt/{id}', '{pre}GT/{id}', '{pre}original/{id}', '{pre}clear/{id}')),
        (r'(?P<pre>(?:.*/)?)input/(?P<id>[^/_]+)(?:_[^/]*)?', ('{pre}target/{id}',)),
    ),
    'gopro': (  # frame names repeat across sequences, so the sequence folder stays in the key
        (r'(?P<pre>(?:.*/)?)blur/(?P<id>[^/]+)', ('{pre}sharp/{id}',)),
        (r'(?P<pre>(?:.*/)?)input/(?P<id>[^/]+)', ('{pre}target/{id}',)),
    ),
    'lol': ((r'(?P<pre>(?:.*/)?)low/(?P<id>[^/]+)', ('{pre}high/{id}',)),),
}
# One CDD-11 layout per subset: its folder pairs with `clear/` by file name; a rule without templates marks
# the other subsets' images as known, so they are neither pairs nor "unused" in this subset's scan.
LAYOUTS.update({f'cdd11_{subset}': (
    (rf'(?P<pre>(?:.*/)?){subset}/(?P<id>[^/]+)', ('{pre}clear/{id}',)),
    (r'(?:.*/)?(?:' + '|'.join(CDD11_SUBSETS) + r')/[^/]+', ()),
) for subset in CDD11_SUBSETS})

SPLITS = ('train', 'test')
PHASE_SPLIT = {'train': 'train', 'val': 'test', 'test': 'test'}

DATASET_KEYS = {
    'tasks': 'preset name, task name or list of task names / task dicts',
    'root': 'datasets root (with a preset) or base of relative list paths',
    'dataroot_gt': 'clean images (folder or LMDB) for every task without a source of its own',
    'synthesize': 'true: degrade clean images on the fly (data.synthesis, random parameters per sample)',
    'scale_range': '[min, max] random rescale of training crops before synthesis (default [1, 1])',
    'color_jitter': 'true (random channel order, contrast and brightness x0.7-1.3 of clean crops before synthesis) '
                    'or {contrast: [lo, hi], brightness: [lo, hi]}',
    'meta_info_dir': 'folder of pair lists named <task or source>_<split>.txt',
    'lmdb_dir': 'folder of LMDBs named <task or source>_<split>_{lq,gt}.lmdb (io_backend lmdb)',
    'io_backend': "{type: disk} (default) or {type: lmdb}",
    'split': 'train or test; defaults to the phase (val/test -> test)',
    'repeat': "'release' or {task: factor}; training only",
    'gt_size': 'training patch size', 'use_hflip': 'flip augmentation', 'use_rot': 'rotation augmentation',
    'key_view': "add lq_key, a second crop of the same degraded image (AirNet)",
    'context_size': 'training: cut the patches from a context_size square of the degraded image, returned as '
                    "lq_context (VLU-Net's CLIP judges the degradation from it, as it sees whole images at test time)",
    'seed': 'seed of synthesised noise', 'noise_quantize': "'truncate' (release), 'round' or 'none'",
    # read by the training models: Restormer's progressive learning (vlu_plugin.models.progressive)
    'iters': 'progressive learning: iterations of each phase',
    'gt_sizes': 'progressive learning: patch size of each phase (at most gt_size)',
    'mini_batch_sizes': 'progressive learning: batch of each phase (at most batch_size_per_gpu)',
    # filled in or read by BasicSR itself
    'name': '', 'type': '', 'phase': '', 'scale': '', 'batch_size_per_gpu': '', 'num_worker_per_gpu': '',
    'dataset_enlarge_ratio': '', 'prefetch_mode': '', 'num_prefetch_queue': '', 'pin_memory': '',
    'persistent_workers': '', 'use_shuffle': '',
}
TASK_KEYS = ('name', 'dataroot_lq', 'dataroot_gt', 'meta_info_file', 'root', 'layout', 'io_backend', 'sigma',
             'noise_quantize', 'repeat', 'synthesize')


def multi_hot(task):
    """The task's atomic degradations as 0/1 over ATOMIC (all zero for a task outside CDD-11)."""
    return [float(a in task.components) for a in ATOMIC]


def _entry_names(entries):
    """Task names of a dataset block's `tasks` value (preset name, task name, or list of names/dicts)."""
    if isinstance(entries, str):
        return list(PRESETS[entries]['test']) if entries in PRESETS else [entries]
    return [e.get('name') if isinstance(e, dict) else e for e in entries or ()]


def label_space_of(opt):
    """The label space ('allinone' or 'cdd11') of the tasks an option dict's datasets name; 'allinone' if none."""
    for block in (opt.get('datasets') or {}).values():
        for name in _entry_names((block or {}).get('tasks')):
            task = TASKS_BY_NAME.get(ALIASES.get(name, name)) if isinstance(name, str) else None
            if task is not None:
                return task.space
    return 'allinone'


def val_task_names(opt):
    """{validation set name: its task names} of an option dict (the `val*` / `test*` dataset blocks)."""
    return {str(block.get('name', key)): _entry_names(block.get('tasks'))
            for key, block in (opt.get('datasets') or {}).items() if key != 'train' and isinstance(block, dict)}


def check_keys(given, allowed, where):
    """Raise naming the first unknown key of `given`, a close match and the allowed keys."""
    for key in given:
        if key not in allowed:
            raise ValueError(f'unknown option {key!r} in {where}{did_you_mean(key, allowed)}; '
                             f'allowed keys: {", ".join(sorted(allowed))}')


def get_task(name):
    """The Task called `name` (release aliases accepted); unknown names list the known ones."""
    name = ALIASES.get(name, name)
    if name not in TASKS_BY_NAME:
        raise ValueError(f'unknown task {name!r}; known tasks: {", ".join(TASKS_BY_NAME)}; '
                       f'presets: {", ".join(PRESETS)}')
    return TASKS_BY_NAME[name]


def get_preset(name, split='train'):
    """The Tasks of preset `name` ('3task' or '5task') for `split` ('train' or 'test')."""
    if name not in PRESETS:
        raise ValueError(f'unknown preset {name!r}; known presets: {", ".join(PRESETS)}; '
                       f'known tasks: {", ".join(TASKS_BY_NAME)}')
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; use one of {SPLITS}')
    return [TASKS_BY_NAME[t] for t in PRESETS[name][split]]


def sources_of(preset):
    """The Sources a preset needs, in task order, each once."""
    names = [t.source for split in SPLITS for t in get_preset(preset, split)]
    return [SOURCES[n] for n in dict.fromkeys(names)]


def _default_source(task, spec, opt, split):
    """Fill a task's missing data source from the dataset-level root / meta_info_dir / lmdb_dir."""
    if any(k in spec for k in ('dataroot_lq', 'dataroot_gt', 'meta_info_file', 'root')):
        return
    if opt.get('dataroot_gt'):  # one set of clean images for every task (synthesis)
        spec['dataroot_gt'] = opt['dataroot_gt']
        return
    backend = spec.get('io_backend', opt.get('io_backend', {'type': 'disk'}))
    if backend.get('type') == 'lmdb':
        folder = opt.get('lmdb_dir') or (osp.join(opt['root'], 'lmdb') if opt.get('root') else None)
        if folder is None:
            raise ValueError(f'task {task.name!r}: io_backend lmdb needs lmdb_dir (or dataroot_lq/dataroot_gt)')
        for stem in (f'{task.name}_{split}', f'{task.source}_{split}'):
            if osp.isdir(osp.join(folder, f'{stem}_gt.lmdb')):
                break
        spec['dataroot_gt'] = osp.join(folder, f'{stem}_gt.lmdb')
        if task.sigma is None or osp.isdir(osp.join(folder, f'{stem}_lq.lmdb')):
            spec['dataroot_lq'] = osp.join(folder, f'{stem}_lq.lmdb')
    elif opt.get('meta_info_dir'):
        for stem in (f'{task.name}_{split}', f'{task.source}_{split}'):
            spec['meta_info_file'] = osp.join(opt['meta_info_dir'], f'{stem}.txt')
            if osp.isfile(spec['meta_info_file']):
                break
        if opt.get('root'):
            spec['root'] = opt['root']
    elif opt.get('root'):
        source = SOURCES[task.source]
        spec['root'] = osp.join(opt['root'], source.train_dir if split == 'train' else source.test_dir)
    else:
        raise ValueError(f'task {task.name!r} has no data: give dataroot_lq/dataroot_gt, meta_info_file, root '
                         'or an LMDB for it, or root / meta_info_dir / lmdb_dir for the whole dataset')


def resolve_tasks(opt):
    """The dataset option dict's tasks as [(Task, task option dict with its data source filled in)]."""
    check_keys(opt, DATASET_KEYS, f'dataset {opt.get("name", "")!r}')
    split = opt.get('split') or PHASE_SPLIT.get(opt.get('phase', 'train'))
    if split not in SPLITS:
        raise ValueError(f'dataset {opt.get("name", "")!r}: unknown phase/split {split!r}; use train, val or test')
    entries = opt.get('tasks')
    if entries is None:
        raise ValueError(f'dataset {opt.get("name", "")!r} needs `tasks`: a preset ({", ".join(PRESETS)}) '
                       f'or a list of tasks ({", ".join(TASKS_BY_NAME)})')
    if isinstance(entries, str):
        entries = [t.name for t in get_preset(entries, split)] if entries in PRESETS else [entries]
    resolved = []
    for entry in entries:
        spec = dict(entry) if isinstance(entry, dict) else {'name': entry}
        check_keys(spec, TASK_KEYS, f'task {spec.get("name", entry)!r}')
        for where in (opt, spec):
            if not isinstance(where.get('io_backend', {}), dict):
                raise ValueError(f'io_backend must be a mapping such as {{type: lmdb}}, not {where["io_backend"]!r}')
        if 'name' not in spec:
            raise ValueError(f'a task entry has no name: {entry}; known tasks: {", ".join(TASKS_BY_NAME)}')
        task = get_task(spec['name'])
        _default_source(task, spec, opt, split)
        resolved.append((task, spec))
    if not resolved:
        raise ValueError(f'dataset {opt.get("name", "")!r}: `tasks` is empty')
    spaces = {task.space for task, _ in resolved}
    if len(spaces) > 1:
        raise ValueError(f'dataset {opt.get("name", "")!r} mixes CDD-11 subsets with the 3/5-task degradations '
                         f'({", ".join(t.name for t, _ in resolved)}): their CLIP labels would collide; '
                         'use one label space per dataset')
    return resolved
