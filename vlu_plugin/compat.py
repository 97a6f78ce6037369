"""The few shims BasicSR 1.4.2 needs on current torch / torchvision / numpy, in one place.

`install_import_shims()` must run before anything imports `basicsr`; `vlu_plugin/__init__.py` calls it
first thing. `patch_basicsr()` runs after BasicSR is imported and fixes what 1.4.2 gets wrong:
- resume on a machine without a GPU (1.4.2 calls `torch.cuda.current_device()`);
- optimizers other than Adam (the release trains with AdamW);
- distributed training without CUDA (gloo instead of nccl, DDP without device ids);
- checkpoints and training states written atomically, and loaded with `weights_only=True`;
- an unknown key in a network block names the key and the allowed ones (not a bare TypeError);
- exact resume (RNG states, skipping consumed batches; see `exact_resume`);
- option files may share blocks: `datasets: !include ../_shared/5task_datasets.yml`, and are read with a
  safe loader and checked before anything is built (`options_check`);
- one live run per experiment folder (`experiment_lock`); `--auto_resume` never archives the folder it
  resumes, skips an unreadable latest state, and takes the options' new scheduler periods;
- a training set without one full batch is refused; the final validation is recorded at total_iter.
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

    from vlu_plugin import experiment_lock
    from vlu_plugin.checkpoints import load_error_reason
    from vlu_plugin.errors import UserError
    root = opt['path'].get('experiments_root')
    if root and opt['rank'] == 0:
        experiment_lock.check_free(root)  # before anything is read, archived or written
    if opt['num_gpu'] > 0 and torch.cuda.is_available():
        device_id = torch.cuda.current_device()
        location = lambda storage, loc: storage.cuda(device_id)  # noqa: E731
    else:
        location = 'cpu'

    def read(path):
        state = torch.load(path, map_location=location, weights_only=True)
        if not isinstance(state, dict) or not isinstance(state.get('iter'), int):
            raise ValueError('no iteration in it')
        return state

    resume_state = None
    if opt['auto_resume']:
        state_path = osp.join(opt['path']['experiments_root'], 'training_states')
        found = []
        if osp.isdir(state_path):
            found = [v for v in scandir(state_path, suffix='state', recursive=False, full_path=False)
                     if v[:-len('.state')].isdigit()]
        # newest first; a state cut short (a crash mid-write before saves were atomic, a full disk) is
        # named and skipped for the newest readable one
        for name in sorted(found, key=lambda v: int(v[:-len('.state')]), reverse=True):
            path = osp.join(state_path, name)
            try:
                resume_state = read(path)
            except Exception as error:
                print(f'vlu train: warning: {path} is unreadable ({load_error_reason(error)}); '
                      'trying the previous training state', file=sys.stderr, flush=True)
                continue
            opt['path']['resume_state'] = path
            break
        if found and resume_state is None:
            raise UserError(f'{state_path}: none of the {len(found)} training states is readable; '
                            'start without --auto_resume (the folder is then archived) or restore a state')
    elif opt['path'].get('resume_state'):
        path = opt['path']['resume_state']
        if not osp.isfile(path):
            raise UserError(f'path.resume_state {path}: no such file')
        try:
            resume_state = read(path)
        except Exception as error:
            raise UserError(f'path.resume_state {path}: not a readable training state (truncated or corrupt): '
                            f'{load_error_reason(error)}') from None

    if resume_state is None:
        return None
    total_iter = int(opt['train']['total_iter'])
    if resume_state['iter'] > total_iter:
        raise UserError(f'{opt["path"]["resume_state"]} was saved at iteration {resume_state["iter"]}, past '
                        f'train.total_iter {total_iter} of {_OPTION_FILE.get("path", "the options")}: raise '
                        'total_iter to train further, or use another name for a new run')
    check_resume(opt, resume_state['iter'])
    if root and opt['rank'] == 0:
        experiment_lock.acquire(root)
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
    def load(f, map_location='cpu', **kwargs):
        """`checkpoints.load_checkpoint`: weights only, and damage reported as damage (naming the file), not
        as torch's advice to allow pickled code."""
        from vlu_plugin.checkpoints import load_checkpoint
        # BasicSR passes `lambda storage, loc: storage`, i.e. the CPU
        return load_checkpoint(f, map_location='cpu' if callable(map_location) else map_location)


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


_OPTION_LOADER = None


def option_loader():
    """The YAML loader of option files: PyYAML's safe loader (no Python tags, so no code runs), ordered
    mappings as BasicSR's, and `!include`."""
    global _OPTION_LOADER
    if _OPTION_LOADER is None:
        from collections import OrderedDict

        import yaml

        class OptionLoader(yaml.SafeLoader):
            """PyYAML's safe loader with ordered mappings (as BasicSR's) and `!include`."""

        OptionLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                     lambda loader, node: OrderedDict(loader.construct_pairs(node)))
        OptionLoader.add_constructor('!include', _include)
        _OPTION_LOADER = OptionLoader
    return _OPTION_LOADER


def ordered_yaml():
    """BasicSR's (Loader, Dumper) pair with the safe option loader (see `option_loader`)."""
    return option_loader(), _ORIGINAL_ORDERED_YAML()[1]


_OPTION_FILE = {}  # {'path': the option file of this process's train/test run}, for messages after parsing


def wrap_parse_options(original, phase):
    """BasicSR's parse_options, after the option file and `--force_yml` passed `validate_options`."""

    def parse_options(root_path, is_train=True):
        import argparse

        from vlu_plugin.options_check import apply_force_yml, load_option_file, validate_options
        # the flags BasicSR's parser reads; argparse errors are BasicSR's own (usage, exit 2)
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument('-opt')
        pre.add_argument('--force_yml', nargs='+')
        pre.add_argument('--debug', action='store_true')
        known, _ = pre.parse_known_args()
        if known.opt is not None:
            draft = apply_force_yml(load_option_file(known.opt), known.force_yml, known.opt)
            if known.debug and isinstance(draft.get('name'), str) and not draft['name'].startswith('debug'):
                draft['name'] = 'debug_' + draft['name']
            validate_options(draft, known.opt, phase)
            _OPTION_FILE['path'] = known.opt
        opt, args = original(root_path, is_train)
        validate_options(opt, args.opt, phase)  # converts the numbers YAML left as strings in the real options
        if known.opt is not None:
            draft['name'] = opt['name']
            _OPTION_FILE.update(resolved=draft, rank=opt['rank'])
        return opt, args

    return parse_options


def write_run_options(folder):
    """`options_resolved.yml` of this process's run in `folder` (rank 0 only): readers never meet `!include`."""
    from vlu_plugin.options_check import write_resolved_options
    if 'resolved' in _OPTION_FILE and _OPTION_FILE.get('rank', 0) == 0:
        write_resolved_options(_OPTION_FILE['resolved'], folder, _OPTION_FILE.get('path'))


def wrap_copy_opt_file(original):
    """basicsr.train.copy_opt_file (the verbatim copy), then the resolved copy beside it."""

    def copy_opt_file(opt_file, experiments_root):
        original(opt_file, experiments_root)
        write_run_options(experiments_root)

    return copy_opt_file


def make_test_dirs(opt):
    """basicsr.test's make_exp_dirs, then the resolved options in results/<name> (BasicSR copies none there)."""
    from basicsr.utils import misc
    misc.make_exp_dirs(opt)
    write_run_options(opt['path']['results_root'])


def make_exp_dirs(opt):
    """BasicSR's make_exp_dirs, except that a folder another live run holds is refused, a folder that
    `--auto_resume` resumes is never archived, and the new run takes the folder's lock."""
    import os
    import os.path as osp

    from basicsr.utils import misc

    from vlu_plugin import experiment_lock
    if opt['rank'] != 0:  # BasicSR's make_exp_dirs is master_only
        return
    if not opt['is_train']:
        return misc.make_exp_dirs(opt)
    root = opt['path']['experiments_root']
    experiment_lock.check_free(root)
    if opt.get('auto_resume') and osp.isdir(root):
        # resuming a run that saved no state yet: keep its folder (BasicSR would rename it to *_archived_*)
        for key, path in opt['path'].items():
            if key != 'experiments_root' and not any(s in key for s in ('strict_load', 'pretrain_network',
                                                                         'resume', 'param_key')):
                os.makedirs(path, exist_ok=True)
    else:
        misc.make_exp_dirs(opt)
    experiment_lock.acquire(root)


def check_train_loader(opt, train_loader):
    """Refuse a training set that yields no batch (BasicSR drops the last incomplete one): it would 'train'
    zero iterations, exit 0 and save untrained weights."""
    from vlu_plugin.errors import UserError
    if train_loader is None or len(train_loader):
        return
    dataset_opt = opt['datasets']['train']
    samples = len(train_loader.sampler) if train_loader.sampler is not None else len(train_loader.dataset)
    batch = dataset_opt['batch_size_per_gpu']
    ratio = dataset_opt.get('dataset_enlarge_ratio', 1)
    raise UserError(f'{_OPTION_FILE.get("path", "options")}: datasets.train.batch_size_per_gpu {batch} is larger '
                    f'than the {samples} training samples per process ({len(train_loader.dataset)} in the set, '
                    f'dataset_enlarge_ratio {ratio}, {opt["world_size"]} process(es)): no full batch; lower the '
                    'batch size or raise dataset_enlarge_ratio')


def wrap_create_train_loader(original):
    """basicsr.train.create_train_val_dataloader followed by `check_train_loader`."""

    def create_train_val_dataloader(opt, logger):
        result = original(opt, logger)
        check_train_loader(opt, result[0])
        return result

    return create_train_val_dataloader


# a scheduler's state holds its schedule (periods, milestones, ...) next to its position; these are position
_SCHEDULER_POSITION = {'base_lrs', 'last_epoch', '_step_count', '_last_lr', '_get_lr_called_within_step', 'verbose',
                       '_is_initial'}


def wrap_resume_schedule(original):
    """BaseModel.resume_training, then the schedule of the options (a longer run's new `periods`) at the saved
    position: torch restores the old periods with the state, and the cosine fails past their end."""

    def resume_training(self, resume_state):
        import torch
        original(self, resume_state)
        options = dict(self.opt.get('train', {}).get('scheduler') or {})
        kind = options.pop('type', None)  # BasicSR's setup_schedulers has popped it already
        for scheduler in self.schedulers:
            if kind is not None and type(scheduler).__name__ != kind:
                continue
            groups = [{'params': [torch.zeros(1, requires_grad=True)], 'lr': g.get('initial_lr', g['lr'])}
                      for g in scheduler.optimizer.param_groups]
            try:
                fresh = type(scheduler)(torch.optim.SGD(groups, lr=groups[0]['lr']), **options)
            except TypeError:  # a scheduler these options do not describe (a model's own)
                continue
            for key, value in fresh.state_dict().items():
                if key not in _SCHEDULER_POSITION:
                    setattr(scheduler, key, value)

    resume_training.__doc__ = original.__doc__
    return resume_training


def wrap_validation(original):
    """BaseModel.validation with the iteration capped at train.total_iter: BasicSR's loop leaves its counter
    past the end (one per remaining epoch), so the final validation was recorded at a later iteration."""

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        total = (self.opt.get('train') or {}).get('total_iter') if self.opt.get('is_train') else None
        if isinstance(current_iter, int) and total is not None and current_iter > int(total):
            current_iter = int(total)
        return original(self, dataloader, current_iter, tb_logger, save_img)

    validation.__doc__ = original.__doc__
    return validation


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
    import basicsr.test
    basicsr.train.parse_options = wrap_parse_options(basicsr.train.parse_options, 'train')
    basicsr.test.parse_options = wrap_parse_options(basicsr.test.parse_options, 'test')
    basicsr.train.make_exp_dirs = make_exp_dirs
    basicsr.train.copy_opt_file = wrap_copy_opt_file(basicsr.train.copy_opt_file)
    basicsr.test.make_exp_dirs = make_test_dirs
    basicsr.train.create_train_val_dataloader = wrap_create_train_loader(basicsr.train.create_train_val_dataloader)
    base_model.BaseModel.resume_training = wrap_resume_schedule(base_model.BaseModel.resume_training)
    base_model.BaseModel.validation = wrap_validation(base_model.BaseModel.validation)
    _PATCHED = True
