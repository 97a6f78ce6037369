"""The few shims BasicSR 1.4.2 needs on current torch / torchvision / numpy, in one place.

`install_import_shims()` must run before anything imports `basicsr`; `vlu_plugin/__init__.py` calls it
first thing. `patch_basicsr()` runs after BasicSR is imported and fixes what 1.4.2 gets wrong on a
machine without a GPU (resume, optimizers). Each patch is applied once and only where it is needed.
"""
import importlib
import sys

_PATCHED = False


def install_import_shims():
    """Alias torchvision.transforms.functional_tensor (removed in torchvision 0.17) if it is missing."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ImportError:
        # basicsr 1.4.2 only imports rgb_to_grayscale from it, which lives in `functional` now.
        import torchvision.transforms.functional as functional
        sys.modules[name] = functional


def get_optimizer(self, optim_type, params, lr, **kwargs):
    """Build any torch.optim optimizer by name (BasicSR 1.4.2 knows only Adam; the release trains with AdamW)."""
    import torch
    optim_cls = getattr(torch.optim, optim_type, None)
    if not (isinstance(optim_cls, type) and issubclass(optim_cls, torch.optim.Optimizer)):
        raise NotImplementedError(f'optimizer {optim_type!r} is not a torch.optim optimizer '
                                  '(option train.optim_*.type)')
    return optim_cls(params, lr, **kwargs)


def load_resume_state(opt):
    """Load the training state to resume from, on the device the options ask for (CPU included)."""
    import os.path as osp

    import torch
    from basicsr.utils import scandir
    from basicsr.utils.options import check_resume

    resume_state_path = None
    if opt['auto_resume']:
        state_path = osp.join(opt['path']['experiments_root'], 'training_states')
        if osp.isdir(state_path):
            states = list(scandir(state_path, suffix='state', recursive=False, full_path=False))
            if states:
                states = [float(v.split('.state')[0]) for v in states]
                resume_state_path = osp.join(state_path, f'{max(states):.0f}.state')
                opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']

    if resume_state_path is None:
        return None
    if opt['num_gpu'] > 0 and torch.cuda.is_available():
        device_id = torch.cuda.current_device()
        location = lambda storage, loc: storage.cuda(device_id)  # noqa: E731
    else:
        location = 'cpu'
    resume_state = torch.load(resume_state_path, map_location=location, weights_only=True)
    check_resume(opt, resume_state['iter'])
    return resume_state


def patch_basicsr():
    """Fix BasicSR 1.4.2's CPU resume and optimizer choice; idempotent."""
    global _PATCHED
    if _PATCHED:
        return
    import basicsr.train
    from basicsr.models.base_model import BaseModel

    basicsr.train.load_resume_state = load_resume_state
    BaseModel.get_optimizer = get_optimizer
    _PATCHED = True
