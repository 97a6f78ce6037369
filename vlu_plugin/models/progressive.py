"""Restormer's progressive learning: training patches grow and batches shrink as training goes on.

Restormer's option names, in `datasets.train`: `iters` (the length of each phase, in iterations),
`gt_sizes` and `mini_batch_sizes` (one per phase). The loader yields `batch_size_per_gpu` patches of
`gt_size` pixels, at least the largest of each; every training step keeps the first `mini_batch_size` samples of
the batch and cuts the same random `gt_sizes[j]` window out of each, as Restormer's training loop does (it
also draws which samples; ours are random draws already). Iterations past the sum of `iters` stay in the
last phase. The window is drawn from the iteration number, so a resumed run cuts the same windows.
"""
from itertools import accumulate

import torch

KEYS = ('iters', 'gt_sizes', 'mini_batch_sizes')


def requested(opt):
    """Whether the options' `datasets.train` sets any of the progressive-learning keys."""
    dataset_opt = (opt.get('datasets') or {}).get('train') or {}
    return any(key in dataset_opt for key in KEYS)


class ProgressivePatches:
    """The patch size and batch size of every training iteration, and the batches cut to them."""

    def __init__(self, dataset_opt, seed=0):
        name = f'datasets.train ({dataset_opt.get("name", "")!r})'
        lists = {}
        for key in KEYS:
            value = dataset_opt.get(key)
            if not (isinstance(value, list) and value and all(isinstance(v, int) and v > 0 for v in value)):
                raise ValueError(f'{name}: progressive learning needs {", ".join(KEYS)} as lists of positive '
                                 f'ints, one per phase; {key} is {value!r}')
            lists[key] = value
        if len({len(v) for v in lists.values()}) != 1:
            raise ValueError(f'{name}: iters, gt_sizes and mini_batch_sizes must have one entry per phase; got '
                             + ', '.join(f'{k} of {len(v)}' for k, v in lists.items()))
        for key, loaded in (('gt_sizes', 'gt_size'), ('mini_batch_sizes', 'batch_size_per_gpu')):
            if max(lists[key]) > dataset_opt.get(loaded, 0):
                raise ValueError(f'{name}: {loaded} ({dataset_opt.get(loaded)}) must be at least the largest of '
                                 f'{key} ({max(lists[key])}): each step cuts its batch from the loaded one')
        self.phase_ends = list(accumulate(lists['iters']))
        self.gt_sizes, self.batch_sizes, self.seed = lists['gt_sizes'], lists['mini_batch_sizes'], seed

    @classmethod
    def from_options(cls, opt):
        """The schedule of `opt['datasets']['train']`, or None when it sets none of the three keys."""
        if not requested(opt):
            return None
        return cls(opt['datasets']['train'], opt.get('manual_seed') or 0)

    def phase(self, current_iter):
        """(mini-batch size, patch size) of 1-based iteration `current_iter`."""
        j = next((i for i, end in enumerate(self.phase_ends) if current_iter <= end), len(self.phase_ends) - 1)
        return self.batch_sizes[j], self.gt_sizes[j]

    def cut(self, current_iter, spatial, per_sample):
        """`spatial` (B, C, H, W) tensors cut to this iteration's batch and window; `per_sample` ones
        (labels, contexts, lists of paths) to its batch. Returns the two lists in the same order."""
        batch, size = self.phase(current_iter)
        height, width = spatial[0].shape[-2:]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + current_iter)
        top = int(torch.randint(height - size + 1, (1, ), generator=generator))
        left = int(torch.randint(width - size + 1, (1, ), generator=generator))
        spatial = [t[:batch, :, top:top + size, left:left + size] for t in spatial]
        return spatial, [None if t is None else t[:batch] for t in per_sample]
