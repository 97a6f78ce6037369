"""Two separable synthetic 'degradations' for the degradation-CLIP tests, in memory and as a BasicSR dataset.

Label 0 ("image with noise"): bright image plus strong noise; label 1 ("image with low light"): the
same content darkened. The dataset gives the MultiDegradationDataset's keys (lq, gt, lq_path,
deg_label, deg_text) without files, so pipeline tests do not depend on the real data code.
"""
import torch
import torch.nn.functional as F

PROMPTS = ['image with noise', 'image with low light']


def toy_pair(label, size, generator):
    """(lq, gt), each (3, H, W) in [0, 1], of degradation `label` (0 noisy, 1 dark)."""
    h, w = size
    coarse = torch.rand(1, 3, h // 8 + 1, w // 8 + 1, generator=generator)
    gt = (0.3 + 0.4 * F.interpolate(coarse, size=(h, w), mode='bilinear', align_corners=False))[0]
    if label == 0:
        lq = gt + 0.15 * torch.randn(gt.shape, generator=generator)
    else:
        lq = 0.25 * gt + 0.02 * torch.randn(gt.shape, generator=generator)
    return lq.clamp(0, 1), gt


def toy_batch(count, size=(48, 40), seed=0):
    """`count` degraded images (count, 3, H, W) with alternating labels 0, 1, 0, ... (count,)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 2
    images = torch.stack([toy_pair(int(label), size, generator)[0] for label in labels])
    return images, labels


class ToyDegradationDataset(torch.utils.data.Dataset):
    """BasicSR dataset of `num` toy pairs (options: num, size [h, w], seed, name)."""

    def __init__(self, opt):
        self.opt = opt
        self.num = opt.get('num', 16)
        self.size = tuple(opt.get('size', (48, 40)))
        self.seed = opt.get('seed', 0)

    def __len__(self):
        return self.num

    def __getitem__(self, index):
        label = index % 2
        lq, gt = toy_pair(label, self.size, torch.Generator().manual_seed(self.seed * 100003 + index))
        return {'lq': lq, 'gt': gt, 'lq_path': f'toy/{self.opt["name"]}_{index:03d}.png', 'deg_label': label,
                'deg_text': PROMPTS[label]}


def register():
    """Register ToyDegradationDataset in BasicSR's dataset registry (once per process)."""
    from basicsr.utils.registry import DATASET_REGISTRY
    if 'ToyDegradationDataset' not in DATASET_REGISTRY:
        DATASET_REGISTRY.register(ToyDegradationDataset)
