"""Exact resume for BasicSR 1.4.2: a run killed after a checkpoint continues as if it had never stopped.

BasicSR restarts the interrupted epoch from its first batch and reseeds nothing, so a resumed run sees
other batches than an uninterrupted one. Three additions make it exact:
- the training state also stores the Python, NumPy and torch RNG states, restored on resume (and, for
  fp16 training, the GradScaler's loss scale and growth tracker): `PluginModelMixin` does both;
- the train sampler (`ResumableSampler`, BasicSR's EnlargedSampler underneath) skips the samples the
  interrupted epoch had already consumed;
- the sampler tells the dataset its epoch (`dataset.set_epoch`), so datasets that key their randomness
  on (seed, epoch, index), as MultiDegradationDataset does, are exact with any number of workers.
Datasets drawing from the global RNGs (BasicSR's own) are exact with `num_worker_per_gpu: 0`.
`vlu_plugin.patch_basicsr()` makes BasicSR's train pipeline use the sampler and skip.
"""
import random
from collections import Counter

import numpy as np
import torch
from basicsr.data.data_sampler import EnlargedSampler


def rng_state():
    """The Python, NumPy and torch RNG states as tensors and plain lists (loadable with weights_only)."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {'python': [version, list(mt_state), gauss], 'torch': torch.get_rng_state(),
            'numpy': [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss]}


def set_rng_state(state):
    """Restore what `rng_state()` returned."""
    version, mt_state, gauss = state['python']
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state['torch'])


def consumed_samples(resume_state, iters_per_epoch, batch_size):
    """How many samples of its epoch the run saved in `resume_state` had already drawn (0: none to skip)."""
    consumed = resume_state['iter'] - resume_state['epoch'] * iters_per_epoch  # drop_last: full epochs only
    return consumed * batch_size if 0 < consumed < iters_per_epoch else 0


class ResumableSampler(EnlargedSampler):
    """BasicSR's EnlargedSampler (same epoch order), which can skip the samples a resumed epoch already used
    and tells the dataset its epoch.

    Datasets with `accepts_enlarged_index` get each repeat of a sample in an enlarged epoch as its own index
    (index + len(dataset) * repeat, distinct per process too), so one that keys its randomness on
    (seed, epoch, index) does not draw the same crop for every repeat.
    """

    skip = 0  # samples to leave out of the next epoch only (set for the epoch a run resumes in)

    def __iter__(self):
        indices = list(super().__iter__())
        if getattr(self.dataset, 'accepts_enlarged_index', False):
            size, seen = len(self.dataset), Counter()
            enlarged = []
            for index in indices:
                enlarged.append(index + size * (seen[index] * self.num_replicas + self.rank))
                seen[index] += 1
            indices = enlarged
        skip, self.skip = self.skip, 0
        return iter(indices[skip:])

    def set_epoch(self, epoch):
        """Set the sampler's epoch and pass it to datasets that key their randomness on it."""
        super().set_epoch(epoch)
        if hasattr(self.dataset, 'set_epoch'):
            self.dataset.set_epoch(epoch)
