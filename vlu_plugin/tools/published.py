"""Published PSNR/SSIM of each method, with their source, for `vlu report` to print beside measured runs.

Numbers are shown only when the runs were measured on the same benchmark (the val sets are exactly a preset's
test sets on the public data, not the embedded synthetic benchmark) and under the same metric protocol
(`metrics/protocols.py`) as the paper's table; otherwise a note says why they are left out.

Per-set values are keyed by task name (vlu_plugin/data/tasks.py), so they land in the column of whichever
val set holds that task. Averages are the papers' own (the plain mean of their columns).
"""
import math
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, Tuple

from vlu_plugin.data.tasks import CDD11_SUBSETS, PRESETS, val_task_names
from vlu_plugin.metrics.protocols import protocol_of_options

LABEL_SUFFIX = ' (published)'
# The benchmarks' test-time crop, part of their protocol beside the metric's: the 3/5-task papers centre-crop
# lq and gt to multiples of 16 (`val.crop_to_multiple: 16`); OneRestore scores CDD-11's whole images.
BENCHMARK_CROP = {'3task': 16, '5task': 16, 'cdd11': None}

VLUNET_TABLE = 'VLU-Net paper (CVPR 2025, arXiv 2503.16930), all-in-one tables'
ONERESTORE_XLSX = 'OneRestore (ECCV 2024) img_file/metrics_CDD-11_psnr_ssim.xlsx and README'


@dataclass(frozen=True)
class Published:
    """One method's published numbers on one benchmark: per task (may be empty) and the average."""
    method: str
    benchmark: str  # a key of tasks.PRESETS
    protocol: str  # a key of protocols.PROTOCOLS
    average: Tuple[float, float]
    source: str
    per_task: Dict[str, Tuple[float, float]] = field(default_factory=dict)


def _sets(tasks, values):
    """{task: (psnr, ssim)} from parallel sequences."""
    return dict(zip(tasks, values))


_3TASK = ('dehaze', 'derain', 'denoise_15', 'denoise_25', 'denoise_50')
_5TASK = ('dehaze', 'derain', 'denoise_25', 'deblur', 'lowlight')
_CDD11 = tuple(f'cdd11_{s}' for s in CDD11_SUBSETS)

PUBLISHED = (
    Published('AirNet', '3task', 'rgb_float_skimage', (31.20, .910), VLUNET_TABLE, _sets(
        _3TASK, [(27.94, .962), (34.90, .967), (33.92, .932), (31.26, .888), (28.00, .797)])),
    Published('PromptIR', '3task', 'rgb_float_skimage', (32.06, .913), VLUNET_TABLE, _sets(
        _3TASK, [(30.58, .974), (36.37, .972), (33.98, .933), (31.31, .888), (28.06, .799)])),
    Published('AdaIR', '3task', 'rgb_float_skimage', (32.69, .918), 'AdaIR paper (ICLR 2025), average only'),
    Published('VLU-Net', '3task', 'rgb_float_skimage', (32.70, .919), VLUNET_TABLE, _sets(
        _3TASK, [(30.71, .980), (38.93, .984), (34.13, .935), (31.48, .892), (28.23, .804)])),
    # MoCE-IR's test code computes SSIM with skimage's gaussian_weights=True (src/test.py)
    Published('MoCE-IR', '3task', 'rgb_float_skimage_gaussian', (32.73, .917),
              'MoCE-IR paper (CVPR 2025), average only'),
    Published('AirNet', '5task', 'rgb_float_skimage', (25.49, .846), VLUNET_TABLE, _sets(
        _5TASK, [(21.04, .884), (32.98, .951), (30.91, .882), (24.35, .781), (18.18, .735)])),
    Published('PromptIR', '5task', 'rgb_float_skimage', (29.15, .904), VLUNET_TABLE, _sets(
        _5TASK, [(26.54, .949), (36.37, .970), (31.47, .886), (28.71, .881), (22.68, .832)])),
    Published('AdaIR', '5task', 'rgb_float_skimage', (30.20, .910), 'AdaIR paper (ICLR 2025), average only'),
    Published('VLU-Net', '5task', 'rgb_float_skimage', (30.11, .905), VLUNET_TABLE, _sets(
        _5TASK, [(30.84, .980), (38.54, .982), (31.43, .891), (27.46, .840), (22.29, .833)])),
    Published('MoCE-IR', '5task', 'rgb_float_skimage_gaussian', (30.58, .919),
              'MoCE-IR paper (CVPR 2025), average only'),
    # CDD-11: per subset from OneRestore's spreadsheet (rows 01_input, 11_AirNet, 14_PromptIR,
    # 16_OneRestore_visual), rounded; the averages are its README's (the spreadsheet's means round to them)
    Published('input', 'cdd11', 'rgb_float_skimage', (16.00, .6008), ONERESTORE_XLSX, _sets(_CDD11, [
        (12.00, .3685), (15.87, .8082), (22.02, .7923), (23.62, .8791), (14.94, .5306), (14.61, .4157),
        (13.50, .3830), (14.78, .7144), (14.79, .7391), (15.25, .4834), (14.63, .4949)])),
    Published('AirNet', 'cdd11', 'rgb_float_skimage', (23.75, .8140), ONERESTORE_XLSX, _sets(_CDD11, [
        (24.83, .7775), (24.21, .9513), (26.55, .8914), (26.79, .9193), (23.23, .7785), (22.82, .7099),
        (23.29, .7230), (22.21, .8679), (23.29, .9012), (21.80, .7084), (22.24, .7249)])),
    Published('PromptIR', 'cdd11', 'rgb_float_skimage', (25.90, .8499), ONERESTORE_XLSX, _sets(_CDD11, [
        (26.32, .8054), (26.10, .9686), (31.56, .9463), (31.53, .9595), (24.49, .7888), (25.05, .7712),
        (24.51, .7610), (24.54, .9237), (23.70, .9254), (23.74, .7523), (23.33, .7468)])),
    Published('OneRestore', 'cdd11', 'rgb_float_skimage', (28.47, .8784), ONERESTORE_XLSX, _sets(_CDD11, [
        (26.48, .8258), (32.52, .9895), (33.40, .9639), (34.31, .9725), (25.79, .8221), (25.58, .7995),
        (25.19, .7894), (29.99, .9570), (30.21, .9642), (24.78, .7880), (24.90, .7905)])),
)


def is_published_label(label):
    """Whether a table row's label is a published row (never marked best, never in results.csv)."""
    return label.endswith(LABEL_SUFFIX)


def _paths_of(opt):
    """The root / meta_info_dir paths of an option dict's val sets."""
    for key, block in (opt.get('datasets') or {}).items():
        if key != 'train' and isinstance(block, dict):
            for name in ('root', 'meta_info_dir', 'lmdb_dir', 'dataroot_gt'):
                if isinstance(block.get(name), str):
                    yield block[name]


def _is_synthetic(opt, folder):
    """Whether the val sets are the embedded synthetic benchmark: a path named `synthetic`, or a benchmark.json
    (its build record) at the path from here or from the run's output root (`<out>/experiments/<name>`)."""
    for path in _paths_of(opt):
        parts = osp.normpath(path).split(osp.sep)
        if 'synthetic' in parts:
            return True
        for base in ('', osp.join(folder, '..', '..')):
            if osp.isfile(osp.join(base, path, 'benchmark.json')):
                return True
    return False


def benchmark_of(opt, folder=''):
    """The preset whose test sets a run's val sets are exactly (one task per set), or None (also for the
    embedded synthetic benchmark, whose numbers are not the papers')."""
    sets = val_task_names(opt)
    if not sets or any(len(tasks) != 1 for tasks in sets.values()) or _is_synthetic(opt, folder):
        return None
    tasks = sorted(tasks[0] for tasks in sets.values())
    return next((name for name, preset in PRESETS.items() if sorted(preset['test']) == tasks), None)


def compare(runs):
    """(benchmark, protocol, crop, {dataset name: task}) shared by every run, or None when they differ or are
    unknown; crop is the runs' `val.crop_to_multiple`."""
    keys = set()
    columns = {}
    for run in runs.values():
        opt = getattr(run, 'options', {}) or {}
        crop = (opt.get('val') or {}).get('crop_to_multiple') or None
        keys.add((benchmark_of(opt, run.folder), protocol_of_options(opt), crop))
        columns.update({name: tasks[0] for name, tasks in val_task_names(opt).items() if len(tasks) == 1})
    if len(keys) != 1:
        return None
    benchmark, protocol, crop = keys.pop()
    return (benchmark, protocol, crop, columns) if benchmark else None


def published_rows(runs, datasets):
    """(rows in report.table's shape, note lines): the published numbers matching the runs, with sources."""
    shared = compare(runs)
    if shared is None:
        return [], []
    benchmark, protocol, crop, columns = shared
    if crop != BENCHMARK_CROP[benchmark]:
        wanted = BENCHMARK_CROP[benchmark]
        return [], [f'Published {benchmark} numbers not shown: the runs use val.crop_to_multiple {crop}, the '
                    f'papers {wanted if wanted else "none (whole images)"}.', '']
    entries = [p for p in PUBLISHED if p.benchmark == benchmark]
    shown = [p for p in entries if p.protocol == protocol]
    left_out = [p for p in entries if p.protocol != protocol]
    nan = (math.nan, math.nan)
    rows = [(p.method + LABEL_SUFFIX, [p.per_task.get(columns.get(d), nan) for d in datasets], p.average)
            for p in shown]
    notes = []
    if shown:
        sources = '; '.join(f'{p.method}: {p.source}' for p in shown)
        notes.append(f'Published rows ({benchmark}, protocol {protocol}), as the papers report them: {sources}.')
    if left_out:
        other = ', '.join(f'{p.method} ({p.protocol}, {p.average[0]:.2f}/{p.average[1]:.3f})' for p in left_out)
        notes.append(f'Published numbers on another metric protocol, not shown as rows: {other}.')
    return rows, notes + ([''] if notes else [])


def protocol_line(runs):
    """The report's sentence on how the metrics were computed."""
    from vlu_plugin.metrics.protocols import PROTOCOLS
    names = {protocol_of_options(getattr(run, 'options', {}) or {}) for run in runs.values()}
    if len(names) == 1 and None not in names:
        name = names.pop()
        return f'PSNR (dB) / SSIM by the metric protocol {name}: {PROTOCOLS[name].what}.'
    return 'PSNR (dB) / SSIM as each run\'s val.metrics define them (the runs do not share one named protocol).'

