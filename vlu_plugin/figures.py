"""The report's figures: a comparison grid, training curves and the degradation CLIP's confusion matrix."""
import glob
import os
import os.path as osp

import matplotlib

matplotlib.use('Agg')  # files only; no display on servers and CI
import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vlu_plugin.metrics.paper_metric import calculate_psnr_float  # noqa: E402


def _save(fig, path):
    tmp = f'{path}.tmp{os.getpid()}.png'
    fig.savefig(tmp, dpi=100, bbox_inches='tight')
    plt.close(fig)
    os.replace(tmp, path)
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
    fig, axes = plt.subplots(len(examples), len(columns), figsize=(2.2 * len(columns), 2.3 * len(examples)),
                             squeeze=False)
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


def curves(experiments, path):
    """Training loss (l_pix) and mean validation PSNR against iterations, one line per model."""
    if not experiments:
        return False
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, run in experiments.items():
        iters, losses = run.training_losses()
        if losses.get('l_pix'):
            ax_loss.plot(iters[-len(losses['l_pix']):], losses['l_pix'], label=label)
        val_iters, psnr = run.validation_curve('psnr')
        if psnr:
            ax_psnr.plot(val_iters, psnr, marker='o', label=label)
    ax_loss.set(title='training L1 loss', xlabel='iteration', yscale='log')
    ax_psnr.set(title='validation PSNR (mean over sets)', xlabel='iteration', ylabel='dB')
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)


def confusion(runs, path, class_names=None):
    """Row-normalised confusion matrix of the degradation CLIP on the test sets (last validation)."""
    from vlu_plugin.data.tasks import PROMPTS
    run = next((r for r in runs.values() if r.predictions), None)
    if run is None:
        return False
    from vlu_plugin.report import iteration
    last = max(iteration(p['iter']) for p in run.predictions)
    rows = [p for p in run.predictions if iteration(p['iter']) == last]
    names = class_names or PROMPTS
    n = max(len(names), 1 + max(max(int(p['label']), int(p['predicted'])) for p in rows))
    matrix = np.zeros((n, n))
    for p in rows:
        matrix[int(p['label']), int(p['predicted'])] += 1
    used = [i for i in range(n) if matrix[i].sum() or matrix[:, i].sum()]
    matrix = matrix[np.ix_(used, used)]
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(used), 0.8 + 0.8 * len(used)))
    ax.imshow(normalised, cmap='Blues', vmin=0, vmax=1)
    ticks = [names[i].replace('image with ', '') if i < len(names) else str(i) for i in used]
    ax.set_xticks(range(len(used)), ticks, rotation=45, ha='right', fontsize=8)
    ax.set_yticks(range(len(used)), ticks, fontsize=8)
    for i in range(len(used)):
        for j in range(len(used)):
            ax.text(j, i, f'{int(matrix[i, j])}', ha='center', va='center', fontsize=8,
                    color='white' if normalised[i, j] > 0.5 else 'black')
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set(xlabel='predicted', ylabel='true', title=f'degradation CLIP, accuracy {accuracy:.3f}')
    return _save(fig, path)
