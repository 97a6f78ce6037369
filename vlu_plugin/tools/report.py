"""Side-by-side reports of this plugin's BasicSR experiment and result folders.

Each folder is an experiment (`experiments/<name>`, with a training log) or a result (`results/<name>`);
both hold the run's `options_resolved.yml` (older runs: the option file BasicSR copied there) and the
validation records the plugin's models write (`utils/records.py`: metrics.csv, degradation_predictions.csv). The report is a per-set PSNR/SSIM table (average
last, best per column marked), `results.csv`, `comparison.png`, `curves.png` and `clip_confusion.png`.
"""
import csv
import glob
import math
import os
import os.path as osp
import re
from collections import OrderedDict, defaultdict

import numpy as np

from vlu_plugin.tools.published import is_published_label
from vlu_plugin.tools import figures
from vlu_plugin.tools.figures import INPUT_LABEL
from vlu_plugin.utils import records
from vlu_plugin.utils.atomic import atomic_path, atomic_write
from vlu_plugin.utils.errors import UserError
from vlu_plugin.utils.records import iteration

def _options(folder):
    """The options of the run in `folder` (its `options_resolved.yml`, else the option file BasicSR copied there),
    as a dict; {} when there is none or it cannot be read: the label then falls back."""
    from vlu_plugin.utils.options_check import load_option_file, run_option_file
    try:
        path = run_option_file(folder)
    except UserError:  # several verbatim copies and no resolved one: the newest
        path = sorted(glob.glob(osp.join(folder, '*.yml')), key=osp.getmtime)[-1]
    if path is None:
        return {}
    try:
        return load_option_file(path)
    except (UserError, OSError, KeyError):
        return {}


class Run:
    """One experiment or result folder: its label, final metrics per set, and training curves."""

    def __init__(self, folder):
        self.folder = folder
        if not osp.isdir(folder):
            raise UserError(f'{folder}: no such folder' if not osp.exists(folder) else f'{folder}: not a folder')
        info = records.read_run_info(folder)
        opt = _options(folder)
        self.options = opt  # what the published numbers are matched on (benchmark, metric protocol)
        self.network = (info.get('network') or (opt.get('network_g') or {}).get('type')
                        or osp.basename(osp.normpath(folder)))
        if info.get('variant'):  # e.g. VLU-Net without its CLIP
            self.network = f'{self.network} ({info["variant"]})'
        self.name = str(opt.get('name') or osp.basename(osp.normpath(folder)))
        self.label = self.network
        metrics_path = osp.join(folder, records.METRICS)
        rows = records.read_metrics(folder)
        self.is_experiment = bool(glob.glob(osp.join(folder, 'train_*.log')))
        if not rows and not self.is_experiment:  # an experiment without validation still has its curves
            raise UserError(f'{folder}: no metrics in metrics.csv' if osp.isfile(metrics_path) else
                            f'{folder}: no metrics.csv (run validation, or `vlu test` with val.metrics)')
        self.history = defaultdict(dict)  # iter → {(dataset, metric): value}
        self.datasets = list(OrderedDict.fromkeys(r['dataset'] for r in rows))
        for line, r in enumerate(rows, start=2):
            try:
                value = float(r['value'])
            except (TypeError, ValueError):
                raise UserError(f'{metrics_path} line {line}: value {r["value"]!r} is not a number') from None
            self.history[iteration(r['iter'])][(r['dataset'], r['metric'])] = value
        self.final = {}
        for it in sorted(self.history):  # later validations overwrite earlier ones
            self.final.update(self.history[it])
        self.predictions = records.read_csv(osp.join(folder, records.PREDICTIONS))

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
    """(runs by label, experiments by label): one table row per run.

    Two folders are one run only when they hold the same experiment name and network, one an experiment
    and one a result (BasicSR's experiments/<name> and results/<name>, as `vlu demo` passes them): the
    result's final metrics win and the experiment gives the curves. Labels are the network's name; runs of
    the same network add their experiment name, and the folder's path where even that repeats.
    """
    loaded, seen = [], set()
    for folder in folders:
        if osp.realpath(folder) not in seen:  # a folder named twice counts once
            seen.add(osp.realpath(folder))
            loaded.append(Run(folder))
    groups = []
    for run in loaded:
        partner = next((g for g in groups if (g[0].network, g[0].name) == (run.network, run.name)
                        and all(r.is_experiment != run.is_experiment for r in g)), None)
        if partner is None:
            groups.append([run])
        else:
            partner.append(run)

    def label(group, rule):
        first = group[0]
        return {0: first.network, 1: f'{first.network} ({first.name})',
                2: f'{first.network} ({osp.normpath(first.folder)})'}[rule]

    labels = [label(g, 0) for g in groups]
    for rule in (1, 2):
        labels = [label(g, rule) if labels.count(text) > 1 else text for g, text in zip(groups, labels)]
    runs, experiments = OrderedDict(), OrderedDict()
    for group, text in zip(groups, labels):
        for run in group:
            run.label = text
        # runs with restoration metrics (not a CLIP experiment's accuracy only), results first
        scored = sorted((r for r in group if any(m == 'psnr' for _, m in r.final)), key=lambda r: r.is_experiment)
        if scored:
            runs[text] = scored[0]
        trained = [r for r in group if r.is_experiment]
        if trained:
            experiments[text] = trained[0]
    return runs, experiments


def _mean_of_scores(values):
    """The mean of the finite scores, NaN when there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float('nan')


def input_quality(runs, dataset, protocol=None):
    """(PSNR, SSIM) of the degraded inputs against the ground truth, from the images a test run saved."""
    import cv2

    from vlu_plugin.metrics.paper_metric import calculate_psnr_float, calculate_ssim_float
    from vlu_plugin.metrics.protocols import DEFAULT
    protocol = protocol or DEFAULT
    for run in runs.values():
        lq_paths = sorted(glob.glob(osp.join(run.folder, 'visualization', dataset, '*_lq.png')))
        pairs = [(p, p[:-len('_lq.png')] + '_gt.png') for p in lq_paths]
        pairs = [(lq, gt) for lq, gt in pairs if osp.isfile(gt)]
        if pairs:
            read = [[cv2.imread(p)[..., ::-1] / 255.0 for p in pair] for pair in pairs]
            return (float(np.mean([calculate_psnr_float(lq, gt, protocol=protocol) for lq, gt in read])),
                    float(np.mean([calculate_ssim_float(lq, gt, protocol=protocol) for lq, gt in read])))
    return float('nan'), float('nan')


def table(runs, metrics=('psnr', 'ssim'), protocol=None):
    """Rows of (label, [(psnr, ssim) per set], (avg psnr, avg ssim)) over the union of the runs' sets.

    A first row, 'degraded input', scores the inputs themselves when a test run saved them.
    """
    datasets = list(OrderedDict.fromkeys(d for run in runs.values() for d in run.datasets))
    rows = []
    inputs = [input_quality(runs, d, protocol) for d in datasets]
    if not all(math.isnan(c[0]) for c in inputs):
        rows.append((INPUT_LABEL, inputs, tuple(_mean_of_scores([c[i] for c in inputs]) for i in range(2))))
    for label, run in runs.items():
        cells = [tuple(run.metric(d, m) for m in metrics) for d in datasets]
        # a metric no set recorded (SSIM off, say) averages to NaN, shown as '-', without numpy's warning
        average = tuple(_mean_of_scores([c[i] for c in cells]) for i in range(len(metrics)))
        rows.append((label, cells, average))
    return datasets, rows


def _best(rows, column, index):
    values = [(r[1] + [r[2]])[column][index] for r in rows if r[0] != INPUT_LABEL and not is_published_label(r[0])]
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else None


def format_table(datasets, rows, markdown=True):
    """The table as Markdown (best per column in bold) or plain text (best marked with *)."""
    header = ['model'] + datasets + ['average']
    lines = []
    for label, cells, average in rows:
        out = [label]
        for column, cell in enumerate(cells + [average]):
            text = '-' if math.isnan(cell[0]) else f'{cell[0]:.2f}/{cell[1]:.4f}'
            best = (label != INPUT_LABEL and not is_published_label(label) and _best(rows, column, 0) == cell[0]
                    and len(rows) > 1)
            out.append((f'**{text}**' if markdown else f'{text}*') if best else text)
        lines.append(out)
    if markdown:
        return '\n'.join(['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] +
                         ['| ' + ' | '.join(line) + ' |' for line in lines])
    widths = [max(len(str(row[i])) for row in [header] + lines) for i in range(len(header))]
    return '\n'.join('  '.join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header] + lines)


def format_per_set(datasets, rows):
    """The table transposed as Markdown, one row per set (then the average) and one column per model: benchmarks
    with many sets (CDD-11's 11 subsets) read better down than across."""
    header = ['set'] + [label for label, _, _ in rows]
    lines = [[name] + ['-' if math.isnan(cells[i][0]) else f'{cells[i][0]:.2f}/{cells[i][1]:.4f}'
                       for _, cells, _ in rows] for i, name in enumerate(datasets)]
    lines.append(['average'] + [f'{average[0]:.2f}/{average[1]:.4f}' for _, _, average in rows])
    return '\n'.join(['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] +
                     ['| ' + ' | '.join(line) + ' |' for line in lines])


PER_SET_FROM = 7  # sets from which report.md adds the transposed table


def write_results_csv(path, datasets, rows):
    """One row per model and set (and the average): PSNR and SSIM."""
    with atomic_path(path) as tmp, open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['model', 'dataset', 'psnr', 'ssim'])
        for label, cells, average in rows:
            for name, (psnr, ssim) in zip(datasets + ['average'], cells + [average]):
                writer.writerow([label, name, f'{psnr:.4f}', f'{ssim:.4f}'])


def clip_accuracy(predictions, space='allinone'):
    """The last validation's degradation predictions: (iteration, exact accuracy, type accuracy, per-class
    accuracy by label, [(label, predicted)]). Type accuracy counts noise at any sigma as noise; for CDD-11
    (`space` 'cdd11') it is the mean over low light, haze, rain and snow of the presence accuracy."""
    from vlu_plugin.data.tasks import TASKS
    kind = {task.label: task.kind for task in TASKS}
    last = max(iteration(p['iter']) for p in predictions)
    pairs = [(int(p['label']), int(p['predicted'])) for p in predictions if iteration(p['iter']) == last]
    exact = float(np.mean([label == predicted for label, predicted in pairs]))
    if space == 'cdd11':
        from vlu_plugin.tools.multilabel import atomic_accuracy
        by_type = float(np.mean(list(atomic_accuracy(pairs).values())))
    else:
        by_type = float(np.mean([kind.get(label, label) == kind.get(predicted, predicted)
                                 for label, predicted in pairs]))
    per_class = {label: float(np.mean([p == label for lbl, p in pairs if lbl == label]))
                 for label in sorted({label for label, _ in pairs})}
    return last, exact, by_type, per_class, pairs


def clip_lines(predictions, space='allinone'):
    """The report's paragraph on the degradation CLIP."""
    from vlu_plugin.data.tasks import TASKS
    _, exact, by_type, per_class, pairs = clip_accuracy(predictions, space)
    if space == 'cdd11':
        from vlu_plugin.tools.multilabel import clip_lines as composite_lines
        return composite_lines(exact, per_class, pairs)
    names = {task.label: task.name for task in TASKS}
    classes = ', '.join(f'{names.get(label, label)} {value:.2f}' for label, value in per_class.items())
    return [f'Degradation CLIP on {len(pairs)} test images: type accuracy {by_type:.3f} (noise at any sigma counted '
            f'as noise), exact {len(TASKS)}-label accuracy {exact:.3f}. Per class: {classes}.', '']


def build_report(folders, out_dir, title='All-in-one restoration', clip_folder=None, notes=()):
    """Write report.md, results.csv and the figures for `folders` into `out_dir`; returns the plain table.

    The CLIP paragraph and confusion matrix come from `clip_folder` (a DegradationCLIPModel experiment)
    when given, else from the first run that recorded degradation predictions.
    """
    from vlu_plugin.data.tasks import LABEL_SPACES, label_space_of
    from vlu_plugin.metrics.protocols import protocol_of_options
    from vlu_plugin.tools.published import protocol_line, published_rows
    runs, experiments = merge_runs(folders)  # every folder is read before anything is written
    if osp.exists(out_dir) and not osp.isdir(out_dir):
        raise UserError(f'--out {out_dir}: exists and is not a folder')
    os.makedirs(out_dir, exist_ok=True)
    protocols = {protocol_of_options(run.options) for run in runs.values()}
    datasets, rows = table(runs, protocol=protocols.pop() if len(protocols) == 1 else None)
    write_results_csv(osp.join(out_dir, 'results.csv'), datasets, rows)
    published, published_notes = published_rows(runs, datasets)  # beside the measured rows, never in results.csv
    has_inputs = rows and rows[0][0] == INPUT_LABEL
    input_psnr = {d: cell[0] for d, cell in zip(datasets, rows[0][1])} if has_inputs else {}  # curves' reference
    rows = rows + published
    clip_run = Run(clip_folder) if clip_folder else next((r for r in runs.values() if r.predictions), None)
    predictions = clip_run.predictions if clip_run is not None else []
    space = label_space_of(clip_run.options) if clip_run is not None else 'allinone'
    names = {task.label: task.name for task in LABEL_SPACES[space]}
    made = {
        'comparison.png': figures.comparison(runs, datasets, osp.join(out_dir, 'comparison.png')),
        'curves.png': figures.curves(experiments, osp.join(out_dir, 'curves.png'), input_psnr),
        'clip_confusion.png': bool(predictions) and figures.confusion(clip_accuracy(predictions, space),
                                                                        osp.join(out_dir, 'clip_confusion.png'),
                                                                        names),
    }
    lines = [f'# {title}', '', protocol_line(runs) + ' Best measured PSNR per column in bold.', '',
             format_table(datasets, rows), ''] + published_notes
    if len(datasets) >= PER_SET_FROM:
        lines += ['Per set:', '', format_per_set(datasets, rows), '']
    if predictions:
        lines += clip_lines(predictions, space)
    lines += list(notes)
    lines += [f'![{name}]({name})' for name, ok in made.items() if ok]
    atomic_write(osp.join(out_dir, 'report.md'), '\n'.join(lines) + '\n')
    # the printed table carries the published rows' sources too
    return '\n'.join([format_table(datasets, rows, markdown=False)] + [n for n in published_notes if n])
