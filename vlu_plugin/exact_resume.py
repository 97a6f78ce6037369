"""Exact resume for BasicSR 1.4.2: a run killed after a checkpoint continues as if it had never stopped.

BasicSR restarts the interrupted epoch from its first batch and reseeds nothing, so a resumed run sees
other batches than an uninterrupted one. Three additions make it exact:
- the training state also stores the Python, NumPy and torch RNG states, restored on resume (and, for
  fp16 training, the GradScaler's loss scale and growth tracker);
- the train sampler skips the samples the interrupted epoch had already consumed;
- the sampler tells the dataset its epoch (`dataset.set_epoch`), so datasets that key their randomness
  on (seed, epoch, index), as MultiDegradationDataset does, are exact with any number of workers.
Datasets drawing from the global RNGs (BasicSR's own) are exact with `num_worker_per_gpu: 0`.
"""
import os
import random

import numpy as np
import torch
from basicsr.utils.dist_util import master_only

_resume_position = {}  # {'epoch': e, 'iter': i} of the state being resumed from, set by load_resume_state


def remember_position(resume_state):
    """Record where the run resumes (called from compat.load_resume_state)."""
    _resume_position.update(epoch=resume_state['epoch'], iter=resume_state['iter'])


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


@master_only
def save_training_state(self, epoch, current_iter):
    """BasicSR's training state plus the RNG states, written atomically by the rank that saves."""
    from vlu_plugin.checkpoints import save_checkpoint
    if current_iter == -1:
        return
    state = {'epoch': epoch, 'iter': current_iter, 'rng': rng_state(),
             'optimizers': [o.state_dict() for o in self.optimizers],
             'schedulers': [s.state_dict() for s in self.schedulers]}
    scaler = getattr(self, 'grad_scaler', None)
    if scaler is not None and scaler.is_enabled():  # fp16 training (train.amp): its loss scale and growth count
        state['grad_scaler'] = scaler.state_dict()
    save_checkpoint(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'))


def wrap_resume_training(original):
    """BaseModel.resume_training that also restores the RNG states and the fp16 GradScaler saved with the state."""

    def resume_training(self, resume_state):
        original(self, resume_state)
        if 'rng' in resume_state:
            set_rng_state(resume_state['rng'])
        scaler = getattr(self, 'grad_scaler', None)
        if scaler is not None and 'grad_scaler' in resume_state:
            scaler.load_state_dict(resume_state['grad_scaler'])  # a disabled scaler (not fp16 now) ignores it

    resume_training.__doc__ = original.__doc__
    return resume_training


def wrap_create_dataloaders(original):
    """basicsr.train.create_train_val_dataloader that makes the train sampler skip consumed samples."""

    def create_train_val_dataloader(opt, logger):
        result = original(opt, logger)
        train_loader, train_sampler = result[0], result[1]
        if _resume_position and train_sampler is not None and len(train_loader):
            per_epoch = len(train_loader)  # drop_last: every full epoch runs exactly this many iterations
            consumed = _resume_position['iter'] - _resume_position['epoch'] * per_epoch
            if 0 < consumed < per_epoch:
                train_sampler.skip = consumed * opt['datasets']['train']['batch_size_per_gpu']
                logger.info(f'Exact resume: skipping the {consumed} iterations epoch '
                            f'{_resume_position["epoch"]} had already run.')
        return result

    return create_train_val_dataloader


def sampler_iter(self):
    """EnlargedSampler's epoch order (seeded by the epoch), minus the samples a resumed epoch already used.

    Datasets with `accepts_enlarged_index` get the index before the modulo: one that keys its randomness
    on (seed, epoch, index) would otherwise draw the same crop for every repeat of a sample in an epoch.
    """
    g = torch.Generator()
    g.manual_seed(self.epoch)
    indices = torch.randperm(self.total_size, generator=g).tolist()
    if not getattr(self.dataset, 'accepts_enlarged_index', False):
        indices = [v % len(self.dataset) for v in indices]
    indices = indices[self.rank:self.total_size:self.num_replicas]
    skip, self.skip = getattr(self, 'skip', 0), 0
    return iter(indices[skip:])


def sampler_set_epoch(self, epoch):
    """Set the sampler's epoch and pass it to datasets that key their randomness on it."""
    self.epoch = epoch
    if hasattr(self.dataset, 'set_epoch'):
        self.dataset.set_epoch(epoch)


def install():
    """Patch BasicSR 1.4.2 for exact resume."""
    import basicsr.train
    from basicsr.data.data_sampler import EnlargedSampler
    from basicsr.models.base_model import BaseModel

    BaseModel.save_training_state = save_training_state
    BaseModel.resume_training = wrap_resume_training(BaseModel.resume_training)
    basicsr.train.create_train_val_dataloader = wrap_create_dataloaders(basicsr.train.create_train_val_dataloader)
    EnlargedSampler.__iter__ = sampler_iter
    EnlargedSampler.set_epoch = sampler_set_epoch
