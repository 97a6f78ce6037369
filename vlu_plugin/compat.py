"""The few shims BasicSR 1.4.2 needs on current torch / torchvision / numpy, in one place.

`install_import_shims()` must run before anything imports `basicsr`; `vlu_plugin/__init__.py` calls it
first thing. `patch_basicsr()` runs after BasicSR is imported and fixes what 1.4.2 gets wrong:
- resume on a machine without a GPU (1.4.2 calls `torch.cuda.current_device()`);
- optimizers other than Adam (the release trains with AdamW);
- distributed training without CUDA (gloo instead of nccl, DDP without device ids);
- checkpoints and training states written atomically, and loaded with `weights_only=True`;
- an unknown key in a network block names the key and the allowed ones (not a bare TypeError);
- exact resume (RNG states, skipping consumed batches; see `exact_resume`);
- option files may share blocks: `datasets: !include ../_shared/5task_datasets.yml`.
Each patch is applied once.
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
    from basicsr.utils import check_resume, scandir

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
    from vlu_plugin import exact_resume
    exact_resume.remember_position(resume_state)
    return resume_state


def build_network(opt):
    """BasicSR's build_network, with a clear error for option keys the architecture does not take."""
    import copy
    import inspect

    from basicsr.utils import get_root_logger
    from basicsr.utils.registry import ARCH_REGISTRY
    opt = copy.deepcopy(dict(opt))
    network_type = opt.pop('type')
    if network_type not in ARCH_REGISTRY:
        raise KeyError(f'unknown network type {network_type!r}; registered: {", ".join(sorted(ARCH_REGISTRY.keys()))}')
    cls = ARCH_REGISTRY.get(network_type)
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = [name for name in params if name != 'self']
        unknown = [key for key in opt if key not in allowed]
        if unknown:
            import difflib
            hints = {k: difflib.get_close_matches(k, allowed, 1) for k in unknown}
            said = ', '.join(f'{k!r}' + (f' (did you mean {hints[k][0]!r}?)' if hints[k] else '') for k in unknown)
            raise ValueError(f'network {network_type}: unknown option {said}; allowed: {", ".join(allowed)}')
    net = cls(**opt)
    get_root_logger().info(f'Network [{net.__class__.__name__}] is created.')
    return net


def init_dist_pytorch(backend='nccl', **kwargs):
    """torchrun's process group: nccl on GPUs as BasicSR does, gloo when CUDA is absent."""
    import os

    import torch
    import torch.distributed as dist
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ['RANK']) % torch.cuda.device_count())
    else:
        backend = 'gloo'
    dist.init_process_group(backend=backend, **kwargs)


def model_to_device(self, net):
    """Move `net` to the model's device; wrap it in DDP (device ids only on CUDA) or DataParallel."""
    import torch
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    net = net.to(self.device)
    if self.opt['dist']:
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        return DistributedDataParallel(net, device_ids=device_ids,
                                       find_unused_parameters=self.opt.get('find_unused_parameters', False))
    if self.opt['num_gpu'] > 1:
        return DataParallel(net)
    return net


class _TorchWithSafeIO:
    """`torch` as BasicSR's BaseModel sees it, except that `save` is atomic and `load` never unpickles code.

    A kill during `torch.save` would leave a truncated `net_g_<iter>.pth` or `<iter>.state` that
    `--auto_resume` then picks; writing a temporary file and renaming it makes each save all-or-nothing.
    """

    def __getattr__(self, name):
        import torch
        return getattr(torch, name)

    @staticmethod
    def save(obj, path, *args, **kwargs):
        """Write `obj` to `path` through a temporary file and a rename."""
        from vlu_plugin.checkpoints import save_checkpoint
        save_checkpoint(obj, path)

    @staticmethod
    def load(f, *args, **kwargs):
        """torch.load with weights_only=True."""
        import torch
        kwargs['weights_only'] = True
        return torch.load(f, *args, **kwargs)


def _deep_update(base, override):
    """`base` with `override`'s keys set recursively (nested mappings merged, other values replaced)."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def _include(loader, node):
    """`!include path` or `!include {file: path, override: {...}, remove: [keys]}`: a YAML file relative to
    the including one.

    The long form changes a few keys of the shared block (e.g. AirNet's `train: {key_view: true}`) or
    drops some (a test file drops `train`), so one data block serves every model and every stage.
    """
    import os.path as osp

    import yaml
    import yaml.nodes
    including = getattr(loader, 'name', '')
    if isinstance(node, yaml.nodes.MappingNode):
        spec = loader.construct_mapping(node, deep=True)
        relative, override, remove = spec.get('file'), spec.get('override') or {}, spec.get('remove') or []
        if not relative or set(spec) - {'file', 'override', 'remove'}:
            raise ValueError(f'{including}: !include takes a path or {{file: path, override: {{...}}, remove: [...]}}'
                             f', got {dict(spec)}')
    else:
        relative, override, remove = loader.construct_scalar(node), {}, []
    path = osp.join(osp.dirname(including), relative) if osp.isfile(including) else relative
    if not osp.isfile(path):
        raise FileNotFoundError(f'{including}: !include {relative}: no such file ({path})')
    with open(path) as f:
        block = _deep_update(yaml.load(f, Loader=type(loader)), override)
    for key in remove:
        if key not in block:
            raise KeyError(f'{including}: !include {relative}: cannot remove {key!r}, it has only {list(block)}')
        del block[key]
    return block


def ordered_yaml():
    """BasicSR's (Loader, Dumper) pair, with an `!include` tag so option files can share blocks."""
    from collections import OrderedDict

    import yaml

    class OptionLoader(yaml.Loader):
        """PyYAML's full loader with ordered mappings (as BasicSR's) and `!include`."""

    OptionLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 lambda loader, node: OrderedDict(loader.construct_pairs(node)))
    OptionLoader.add_constructor('!include', _include)
    return OptionLoader, _ORIGINAL_ORDERED_YAML()[1]


_ORIGINAL_ORDERED_YAML = None


def patch_basicsr():
    """Apply the fixes above to BasicSR 1.4.2; idempotent."""
    global _PATCHED
    if _PATCHED:
        return
    import basicsr.models.base_model as base_model
    import basicsr.train
    import basicsr.utils.dist_util as dist_util
    import basicsr.utils.options as options

    from vlu_plugin import exact_resume

    global _ORIGINAL_ORDERED_YAML
    _ORIGINAL_ORDERED_YAML = options.ordered_yaml
    options.ordered_yaml = ordered_yaml

    basicsr.train.load_resume_state = load_resume_state
    import basicsr.archs
    import basicsr.models.sr_model
    basicsr.archs.build_network = basicsr.models.sr_model.build_network = build_network
    dist_util._init_dist_pytorch = init_dist_pytorch
    base_model.BaseModel.get_optimizer = get_optimizer
    base_model.BaseModel.model_to_device = model_to_device
    base_model.torch = _TorchWithSafeIO()
    exact_resume.install()
    _PATCHED = True
