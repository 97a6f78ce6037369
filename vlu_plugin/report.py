"""Side-by-side reports of this plugin's BasicSR experiment and result folders.

Each folder is an experiment (`experiments/<name>`, with a training log) or a result (`results/<name>`);
both hold the option file BasicSR copied there and the `metrics.csv` / `degradation_predictions.csv`
that the plugin's models write during validation. The report is a per-set PSNR/SSIM table (average
last, best per column marked), `results.csv`, `comparison.png`, `curves.png` and `clip_confusion.png`.
"""
import csv
import glob
import json
import math
import os
import os.path as osp
import re
from collections import OrderedDict, defaultdict

import numpy as np
import yaml


def atomic_write_text(path, text):
    """Write `text` to `path` through a temporary file, so a reader never sees half a file."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def _options(folder):
    """The option file BasicSR copied into `folder` (the newest .yml), as a dict; {} when there is none."""
    ymls = sorted(glob.glob(osp.join(folder, '*.yml')), key=osp.getmtime)
    if not ymls:
        return {}
    with open(ymls[-1]) as f:
        return yaml.safe_load(f) or {}


def iteration(value):
    """A record's iteration: its number during training, +inf for a test run (BasicSR passes the run's name)."""
    return int(value) if str(value).lstrip('-').isdigit() else math.inf


def _read_csv(path):
    if not osp.isfile(path):
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


class Run:
    """One experiment or result folder: its label, final metrics per set, and training curves."""

    def __init__(self, folder):
        self.folder = folder
        if not osp.isdir(folder):
            raise FileNotFoundError(f'not a folder: {folder}')
        info_path = osp.join(folder, 'run.json')
        info = json.load(open(info_path)) if osp.isfile(info_path) else {}
        opt = _options(folder)
        self.label = (info.get('network') or (opt.get('network_g') or {}).get('type')
                      or osp.basename(osp.normpath(folder)))
        if info.get('variant'):
            self.label = f'{self.label} ({info["variant"]})'
        rows = _read_csv(osp.join(folder, 'metrics.csv'))
        self.is_experiment = bool(glob.glob(osp.join(folder, 'train_*.log')))
        if not rows and not self.is_experiment:
            raise FileNotFoundError(f'{folder}: no metrics.csv (run validation or `vlu test` with val.metrics)')
        self.history = defaultdict(dict)  # iter → {(dataset, metric): value}
        self.datasets = list(OrderedDict.fromkeys(r['dataset'] for r in rows))
        for r in rows:
            self.history[iteration(r['iter'])][(r['dataset'], r['metric'])] = float(r['value'])
        self.final = {}
        for it in sorted(self.history):  # later validations overwrite earlier ones
            self.final.update(self.history[it])
        self.predictions = _read_csv(osp.join(folder, 'degradation_predictions.csv'))

    def metric(self, dataset, name):
        """The final value of `name` on `dataset` (nan when absent)."""
        return self.final.get((dataset, name), float('nan'))

    def training_losses(self):
        """(iterations, {loss name: values}) parsed from BasicSR's training log."""
        iters, losses = [], defaultdict(list)
        for log in sorted(glob.glob(osp.join(self.folder, 'train_*.log'))):
            with open(log) as f:
                for line in f:
                    match = re.search(r'iter:\s*([\d,]+).*?\]\s*(.*)$', line)
                    if not match or 'l_' not in match.group(2):
                        continue
                    iters.append(int(match.group(1).replace(',', '')))
                    for name, value in re.findall(r'(l_\w+): ([-\d.e+]+)', match.group(2)):
                        losses[name].append(float(value))
        return iters, losses

    def validation_curve(self, metric='psnr'):
        """(iterations, mean of `metric` over the sets) across the validations of a run."""
        points = []
        for it in sorted(k for k in self.history if k != math.inf):
            values = [v for (_, m), v in self.history[it].items() if m == metric]
            if values:
                points.append((it, float(np.mean(values))))
        return [p[0] for p in points], [p[1] for p in points]


def merge_runs(folders):
    """Runs by label; a result folder's final metrics win over an experiment's for the same label."""
    runs = OrderedDict()
    experiments = {}
    for folder in folders:
        run = Run(folder)
        if run.is_experiment:
            experiments[run.label] = run
        if any(m == 'psnr' for _, m in run.final) and (run.label not in runs or not run.is_experiment):
            runs[run.label] = run
    return runs, experiments


def input_quality(runs, dataset):
    """(PSNR, SSIM) of the degraded inputs against the ground truth, from the images a test run saved."""
    import cv2

    from vlu_plugin.metrics.paper_metric import calculate_psnr_float, calculate_ssim_float
    for run in runs.values():
        lq_paths = sorted(glob.glob(osp.join(run.folder, 'visualization', dataset, '*_lq.png')))
        pairs = [(p, p[:-len('_lq.png')] + '_gt.png') for p in lq_paths]
        pairs = [(lq, gt) for lq, gt in pairs if osp.isfile(gt)]
        if pairs:
            read = [[cv2.imread(p)[..., ::-1] / 255.0 for p in pair] for pair in pairs]
            return (float(np.mean([calculate_psnr_float(lq, gt) for lq, gt in read])),
                    float(np.mean([calculate_ssim_float(lq, gt) for lq, gt in read])))
    return float('nan'), float('nan')


def table(runs, metrics=('psnr', 'ssim')):
    """Rows of (label, [(psnr, ssim) per set], (avg psnr, avg ssim)) over the union of the runs' sets.

    A first row, 'degraded input', scores the inputs themselves when a test run saved them.
    """
    datasets = list(OrderedDict.fromkeys(d for run in runs.values() for d in run.datasets))
    rows = []
    inputs = [input_quality(runs, d) for d in datasets]
    if not all(math.isnan(c[0]) for c in inputs):
        rows.append(('degraded input', inputs, tuple(float(np.nanmean([c[i] for c in inputs])) for i in range(2))))
    for label, run in runs.items():
        cells = [tuple(run.metric(d, m) for m in metrics) for d in datasets]
        average = tuple(float(np.nanmean([c[i] for c in cells])) if cells else float('nan')
                        for i in range(len(metrics)))
        rows.append((label, cells, average))
    return datasets, rows


def _best(rows, column, index):
    values = [(r[1] + [r[2]])[column][index] for r in rows if r[0] != 'degraded input']
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else None


def format_table(datasets, rows, markdown=True):
    """The table as Markdown (best per column in bold) or plain text (best marked with *)."""
    header = ['model'] + datasets + ['average']
    lines = []
    for label, cells, average in rows:
        out = [label]
        for column, cell in enumerate(cells + [average]):
            text = f'{cell[0]:.2f}/{cell[1]:.4f}'
            best = label != 'degraded input' and _best(rows, column, 0) == cell[0] and len(rows) > 1
            out.append((f'**{text}**' if markdown else f'{text}*') if best else text)
        lines.append(out)
    if markdown:
        return '\n'.join(['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] +
                         ['| ' + ' | '.join(line) + ' |' for line in lines])
    widths = [max(len(str(row[i])) for row in [header] + lines) for i in range(len(header))]
    return '\n'.join('  '.join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header] + lines)


def write_results_csv(path, datasets, rows):
    """One row per model and set (and the average): PSNR and SSIM."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['model', 'dataset', 'psnr', 'ssim'])
        for label, cells, average in rows:
            for name, (psnr, ssim) in zip(datasets + ['average'], cells + [average]):
                writer.writerow([label, name, f'{psnr:.4f}', f'{ssim:.4f}'])
    os.replace(tmp, path)


def clip_accuracy(predictions):
    """The last validation's degradation predictions: (iteration, exact accuracy, type accuracy, per-class
    accuracy by label, [(label, predicted)]). Type accuracy counts noise at any sigma as noise."""
    from vlu_plugin.data.tasks import TASKS
    kind = {task.label: task.kind for task in TASKS}
    last = max(iteration(p['iter']) for p in predictions)
    pairs = [(int(p['label']), int(p['predicted'])) for p in predictions if iteration(p['iter']) == last]
    exact = float(np.mean([label == predicted for label, predicted in pairs]))
    by_type = float(np.mean([kind.get(label, label) == kind.get(predicted, predicted) for label, predicted in pairs]))
    per_class = {label: float(np.mean([p == label for lbl, p in pairs if lbl == label]))
                 for label in sorted({label for label, _ in pairs})}
    return last, exact, by_type, per_class, pairs


def clip_lines(predictions):
    """The report's paragraph on the degradation CLIP."""
    from vlu_plugin.data.tasks import TASKS
    _, exact, by_type, per_class, pairs = clip_accuracy(predictions)
    names = {task.label: task.name for task in TASKS}
    classes = ', '.join(f'{names.get(label, label)} {value:.2f}' for label, value in per_class.items())
    return [f'Degradation CLIP on {len(pairs)} test images: type accuracy {by_type:.3f} (noise at any sigma counted '
            f'as noise), exact {len(TASKS)}-label accuracy {exact:.3f}. Per class: {classes}.', '']


def build_report(folders, out_dir, title='All-in-one restoration', clip_folder=None, notes=()):
    """Write report.md, results.csv and the figures for `folders` into `out_dir`; returns the plain table.

    The CLIP paragraph and confusion matrix come from `clip_folder` (a DegradationCLIPModel experiment)
    when given, else from the first run that recorded degradation predictions.
    """
    from vlu_plugin import figures
    os.makedirs(out_dir, exist_ok=True)
    runs, experiments = merge_runs(folders)
    datasets, rows = table(runs)
    write_results_csv(osp.join(out_dir, 'results.csv'), datasets, rows)
    clip_run = Run(clip_folder) if clip_folder else next((r for r in runs.values() if r.predictions), None)
    predictions = clip_run.predictions if clip_run is not None else []
    made = {
        'comparison.png': figures.comparison(runs, datasets, osp.join(out_dir, 'comparison.png')),
        'curves.png': figures.curves(experiments, osp.join(out_dir, 'curves.png')),
        'clip_confusion.png': bool(predictions) and figures.confusion(clip_accuracy(predictions),
                                                                        osp.join(out_dir, 'clip_confusion.png')),
    }
    lines = [f'# {title}', '', 'PSNR (dB) / SSIM on RGB float images in [0, 1] (best PSNR per column in bold).', '',
             format_table(datasets, rows), '']
    if predictions:
        lines += clip_lines(predictions)
    lines += list(notes)
    lines += [f'![{name}]({name})' for name, ok in made.items() if ok]
    atomic_write_text(osp.join(out_dir, 'report.md'), '\n'.join(lines) + '\n')
    return format_table(datasets, rows, markdown=False)
