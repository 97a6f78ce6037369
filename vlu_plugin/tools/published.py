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

import yaml

from vlu_plugin.data.tasks import PRESETS, val_task_names
from vlu_plugin.metrics.protocols import protocol_of_options

LABEL_SUFFIX = ' (published)'
# The benchmarks' test-time crop, part of their protocol beside the metric's: the 3/5-task papers centre-crop
# lq and gt to multiples of 16 (`val.crop_to_multiple: 16`); OneRestore scores CDD-11's whole images.
BENCHMARK_CROP = {'3task': 16, '5task': 16, 'cdd11': None}


@dataclass(frozen=True)
class Published:
    """One method's published numbers on one benchmark: per task (may be empty) and the average."""
    method: str
    benchmark: str  # a key of tasks.PRESETS
    protocol: str  # a key of protocols.PROTOCOLS
    average: Tuple[float, float]
    source: str
    per_task: Dict[str, Tuple[float, float]] = field(default_factory=dict)


def load_published(path=osp.join(osp.dirname(osp.abspath(__file__)), 'published.yml')):
    """The Published entries of a data file (`published.yml` beside this module, shipped as package data)."""
    with open(path) as f:
        data = yaml.safe_load(f)
    sources = data['sources']
    return tuple(Published(e['method'], e['benchmark'], e['protocol'], tuple(e['average']),
                           sources.get(e['source'], e['source']),
                           {task: tuple(v) for task, v in (e.get('per_task') or {}).items()})
                 for e in data['published'])


PUBLISHED = load_published()


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

