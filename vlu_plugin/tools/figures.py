"""The report's figures: a comparison grid, training curves and the degradation CLIP's confusion matrix.

Figures are `matplotlib.figure.Figure` objects drawn straight to files (no pyplot, so importing this module
never changes the matplotlib backend of the program that imports it). They take the report's records
(`report.Run` objects and `report.clip_accuracy` results) and import nothing of the report.
"""
import glob
import os.path as osp

import cv2
import matplotlib
import numpy as np
from matplotlib.figure import Figure

from vlu_plugin.metrics.paper_metric import calculate_psnr_float
from vlu_plugin.utils.atomic import atomic_path

INPUT_LABEL = 'degraded input'  # the inputs scored against the ground truth: the report's first row, the curves' line


def _figure(rows=1, columns=1, figsize=(4, 3)):
    """A (figure, axes grid) pair that belongs to no pyplot window."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, columns, squeeze=False)


def _save(fig, path):
    with atomic_path(path, suffix='.png') as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches='tight')
    return True


def _read_rgb(path):
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _first_example(run, dataset):
    """(name, lq path, gt path, output path) of the first image of `dataset` saved by a test run, or None."""
    folder = osp.join(run.folder, 'visualization', dataset)
    for lq in sorted(glob.glob(osp.join(folder, '*_lq.png'))):
        name = osp.basename(lq)[:-len('_lq.png')]
        outputs = [p for p in glob.glob(osp.join(folder, f'{name}_*.png')) if not p.endswith(('_lq.png', '_gt.png'))]
        gt = osp.join(folder, f'{name}_gt.png')
        if outputs and osp.isfile(gt):
            return name, lq, gt, sorted(outputs)[-1]
    return None


def _output_for(run, dataset, name):
    outputs = [p for p in glob.glob(osp.join(run.folder, 'visualization', dataset, f'{name}_*.png'))
               if not p.endswith(('_lq.png', '_gt.png'))]
    return sorted(outputs)[-1] if outputs else None


def comparison(runs, datasets, path):
    """For each set: degraded, each model's output and the ground truth, PSNR on each tile."""
    reference = next(iter(runs.values()), None)
    examples = []
    for dataset in datasets:
        found = next((ex for ex in (_first_example(r, dataset) for r in runs.values()) if ex), None)
        if found:
            examples.append((dataset, found))
    if reference is None or not examples:
        return False
    labels = list(runs)
    columns = ['degraded'] + labels + ['ground truth']
    fig, axes = _figure(len(examples), len(columns), figsize=(2.2 * len(columns), 2.3 * len(examples)))
    for row, (dataset, (name, lq_path, gt_path, _)) in enumerate(examples):
        gt = _read_rgb(gt_path)
        tiles = [('degraded', lq_path)] + [(label, _output_for(runs[label], dataset, name)) for label in labels]
        tiles.append(('ground truth', gt_path))
        for col, (label, tile_path) in enumerate(tiles):
            ax = axes[row, col]
            ax.axis('off')
            img = _read_rgb(tile_path) if tile_path else None
            if img is None:
                continue
            ax.imshow(img)
            caption = label if row == 0 else ''
            if label != 'ground truth' and img.shape == gt.shape:
                caption = f'{caption}\n{calculate_psnr_float(img, gt):.2f} dB'.strip()
            ax.set_title(caption, fontsize=8)
        axes[row, 0].text(-0.08, 0.5, dataset, transform=axes[row, 0].transAxes, rotation=90, va='center',
                          ha='right', fontsize=8)
    return _save(fig, path)


def running_mean(values, window):
    """The mean of each value and the `window - 1` before it (fewer at the start)."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.maximum(np.arange(1, len(values) + 1) - window, 0)]) / counts


def curves(experiments, path, inputs=None):
    """Training L1 (raw trace behind its running mean) and each validation set's PSNR over iterations, with the
    degraded input's PSNR (`inputs`: {set: dB}) as a dashed line: a curve below it makes images worse."""
    if not experiments:
        return False
    datasets = list(dict.fromkeys(d for run in experiments.values() for d in run.datasets
                                  if any((d, 'psnr') in h for h in run.history.values())))
    fig, axes = _figure(1, 1 + max(1, len(datasets)), figsize=(4.2 + 2.9 * max(1, len(datasets)), 3.4))
    ax_loss, psnr_axes = axes[0, 0], axes[0, 1:]
    colours = matplotlib.rcParams['axes.prop_cycle'].by_key()['color']
    for index, (label, run) in enumerate(experiments.items()):
        colour = colours[index % len(colours)]
        iters, losses = run.training_losses()
        values = losses.get('l_pix')
        if values:
            steps = iters[-len(values):]
            ax_loss.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
            ax_loss.plot(steps, running_mean(values, max(1, len(values) // 10)), color=colour, label=label)
        for ax, dataset in zip(psnr_axes, datasets):
            points = sorted((it, h[(dataset, 'psnr')]) for it, h in run.history.items()
                            if it != float('inf') and (dataset, 'psnr') in h)
            if points:
                ax.plot(*zip(*points), marker='o', markersize=3, color=colour, label=label)
    ax_loss.set(title='training L1 (faint: logged values)', xlabel='iteration', yscale='log')
    for ax, dataset in zip(psnr_axes, datasets):
        if inputs and np.isfinite(inputs.get(dataset, np.nan)):
            line = ax.axhline(inputs[dataset], color='0.4', linestyle='--', linewidth=1, label=INPUT_LABEL)
            ax.legend(handles=[line], fontsize=7)  # the models' colours are named once, beside the loss
        ax.set(title=f'validation PSNR: {dataset}', xlabel='iteration', ylabel='dB')
    for ax in axes[0]:
        ax.grid(alpha=0.3)
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def confusion(accuracy, path, names=None):
    """Row-normalised confusion matrix of the degradation CLIP over every class (`report.clip_accuracy` output);
    `names` maps labels to class names (default: the 3/5-task degradations)."""
    from vlu_plugin.data.tasks import TASKS
    _, exact, by_type, _, pairs = accuracy
    names = names or {task.label: task.name for task in TASKS}
    n = max(len(names), 1 + max(max(pair) for pair in pairs))
    matrix = np.zeros((n, n))
    for label, predicted in pairs:
        matrix[label, predicted] += 1
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, axes = _figure(figsize=(1.2 + 0.9 * n, 1.0 + 0.8 * n))
    ax = axes[0, 0]
    ax.imshow(normalised, cmap='Blues', vmin=0, vmax=1)
    ticks = [names.get(i, str(i)) for i in range(n)]
    ax.set_xticks(range(n), ticks, rotation=45, ha='right', fontsize=8)
    ax.set_yticks(range(n), ticks, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f'{int(matrix[i, j])}', ha='center', va='center', fontsize=8,
                    color='white' if normalised[i, j] > 0.5 else 'black')
    ax.set(xlabel='predicted', ylabel='true',
           title=f'degradation CLIP: type accuracy {by_type:.3f}, exact {exact:.3f}')
    return _save(fig, path)
