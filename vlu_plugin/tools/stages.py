"""What each VLU-Net unfolding stage did to an image: its output as a picture, and the D-GDM's prompt mixture.

`StageRecorder` hooks the eight stages (`VLUNet.stages()`) for one forward pass. Stage outputs are
feature maps with 48–384 channels; `features_to_image` shows them through a fixed random projection to
three channels (the same seeded orthonormal projection for every image, so colours are comparable
across images of a run, though not across stages of different widths), each channel stretched between
its 1st and 99th percentiles. The mixture weights are softmax(prompt_weights(v)) of each stage's D-GDM,
i.e. the weights over the prompt bank (uniform when the network runs without a degradation vector).
"""
import csv
import os
import os.path as osp

import numpy as np
import torch

PROJECTION_SEED = 0


class StageRecorder:
    """Forward hooks on a VLUNet's stages that keep each stage's output and its prompt-mixture weights."""

    def __init__(self, net):
        self.net = net
        self.outputs, self.weights, self.handles = {}, {}, []

    def __enter__(self):
        for name, stage in self.net.stages():
            self.handles.append(stage.register_forward_hook(self._keep_output(name)))
            self.handles.append(stage.gradient_descent.register_forward_hook(self._keep_weights(name)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _keep_output(self, name):
        def hook(module, inputs, output):
            self.outputs[name] = output.detach().float().cpu()
        return hook

    def _keep_weights(self, name):
        def hook(module, inputs, output):
            x, _, vector = inputs
            with torch.no_grad():  # the same softmax(prompt_weights(v)) the D-GDM just applied
                self.weights[name] = module.mixture_weights(vector, x.shape[0]).float().cpu()
        return hook


def _projection(channels):
    """A fixed (channels × 3) matrix with orthonormal columns (seeded: identical for every image)."""
    gen = torch.Generator().manual_seed(PROJECTION_SEED + channels)
    matrix = torch.randn(channels, max(3, channels), generator=gen)
    q, _ = torch.linalg.qr(matrix)
    out = torch.zeros(channels, 3)
    out[:, :min(3, channels)] = q[:, :3]
    return out


def features_to_image(features, size=None):
    """(C, h, w) features → uint8 RGB (h, w, 3) via the fixed projection and percentile stretching."""
    c, h, w = features.shape
    rgb = torch.einsum('chw,cd->hwd', features, _projection(c)).reshape(-1, 3)
    sample = rgb[torch.linspace(0, rgb.shape[0] - 1, min(rgb.shape[0], 1 << 18)).long()]
    low, high = torch.quantile(sample, 0.01, dim=0), torch.quantile(sample, 0.99, dim=0)
    rgb = ((rgb - low) / (high - low).clamp_min(1e-8)).clamp(0, 1).reshape(h, w, 3)
    img = (rgb.numpy() * 255).round().astype(np.uint8)
    if size is not None and (h, w) != tuple(size):
        import cv2
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return img


def save_stages(recorder, folder, image_size):
    """Write the stage pictures, prompt_weights.csv and prompt_weights.png for batch item 0 into `folder`."""
    import cv2
    os.makedirs(folder, exist_ok=True)
    names = [name for name, _ in recorder.net.stages() if name in recorder.outputs]
    padded = recorder.outputs[names[0]].shape[-2:]
    for index, name in enumerate(names):
        features = recorder.outputs[name][0]
        # crop the network's padding (to a multiple of 8) at this stage's resolution
        factor_h, factor_w = padded[0] // features.shape[-2], padded[1] // features.shape[-1]
        features = features[:, :-(-image_size[0] // factor_h), :-(-image_size[1] // factor_w)]
        img = features_to_image(features, image_size)
        cv2.imwrite(osp.join(folder, f'{index:02d}_{name}.png'), img[:, :, ::-1])
    weights = np.stack([recorder.weights[name][0].numpy() for name in names])
    # bank entries are learned, not tied to the CLIP's prompt texts, so they are only numbered
    labels = [f'bank {i}' for i in range(weights.shape[1])]
    with open(osp.join(folder, 'prompt_weights.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['stage', *labels])
        writer.writerows([name, *(f'{v:.6f}' for v in row)] for name, row in zip(names, weights))
    plot_weights(weights, names, labels, osp.join(folder, 'prompt_weights.png'))
    return weights


def plot_weights(weights, stage_names, labels, path):
    """A small heat map of the prompt-mixture weights: one row per stage, one column per bank entry."""
    import matplotlib
    matplotlib.use('Agg')  # files only; no display needed
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * weights.shape[1], 0.9 + 0.35 * len(stage_names)), dpi=100)
    image = ax.imshow(weights, cmap='viridis', vmin=0, vmax=max(1e-6, float(weights.max())), aspect='auto')
    ax.set_xticks(range(weights.shape[1]), labels, rotation=45, ha='right', fontsize=7)
    ax.set_yticks(range(len(stage_names)), stage_names, fontsize=7)
    for (row, col), value in np.ndenumerate(weights):
        ax.text(col, row, f'{value:.2f}', ha='center', va='center', fontsize=6, color='w' if value < 0.5 else 'k')
    ax.set_title('D-GDM prompt-mixture weights', fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
