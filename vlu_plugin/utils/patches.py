"""Process-level fixes to BasicSR 1.4.2's train and test pipelines: `patch_basicsr()`, idempotent.

The plugin's entry points (`vlu train/test`, `python -m vlu_plugin.train/test`) call it; call it yourself before
`basicsr.train.train_pipeline` / `basicsr.test.test_pipeline` to run them with the plugin's behaviour.
Importing `vlu_plugin` does not: BasicSR then behaves exactly as without the plugin. It changes names in
`basicsr.train`, `basicsr.test`, `basicsr.utils.options` and `basicsr.utils.dist_util` only, never a class:
- option files are read with a safe loader (no Python tags) that understands `!include`, checked in one pass
  before anything is built (`options_check`), and every run leaves `options_resolved.yml` beside its outputs;
- resume works without a GPU, takes the newest readable training state, refuses one past total_iter, and
  the train sampler (`exact_resume.ResumableSampler`, a subclass of EnlargedSampler) skips what the
  interrupted epoch consumed;
- one live run per experiment folder (`experiment_lock`); `--auto_resume` never archives the folder it resumes;
- distributed training without CUDA uses gloo;
- a training set without one full batch is refused.
Model-level fixes (optimizers, CPU DDP, atomic and safe checkpoints, RNG states) are in
`vlu_plugin.models.base.PluginModelMixin`, which the plugin's models inherit.
"""
import sys

from vlu_plugin.utils.exact_resume import ResumableSampler

_PATCHED = False
_RESUME = {}  # {'epoch', 'iter'} of the state load_resume_state returned, until the train loader is made


def load_resume_state(opt):
    """Load the training state to resume from, on the device the options ask for (CPU included)."""
    import os.path as osp

    import torch
    from basicsr.utils import check_resume, scandir

    from vlu_plugin.utils import experiment_lock
    from vlu_plugin.utils.checkpoints import load_error_reason
    from vlu_plugin.utils.errors import UserError
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
    _RESUME.update(epoch=resume_state['epoch'], iter=resume_state['iter'])  # for the sampler's skip
    return resume_state


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


_OPTION_FILE = {}  # {'path': the option file of this process's train/test run}, for messages after parsing


def wrap_parse_options(original, phase):
    """BasicSR's parse_options, after the option file and `--force_yml` passed `validate_options`."""

    def parse_options(root_path, is_train=True):
        import argparse

        from vlu_plugin.utils.options_check import apply_force_yml, load_option_file, validate_options
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
    from vlu_plugin.utils.options_check import write_resolved_options
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

    from vlu_plugin.utils import experiment_lock
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
    from vlu_plugin.utils.errors import UserError
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
    """basicsr.train.create_train_val_dataloader, then `check_train_loader`, and the resumed epoch's consumed
    samples skipped by the sampler (exact resume)."""

    def create_train_val_dataloader(opt, logger):
        from vlu_plugin.utils.exact_resume import consumed_samples
        result = original(opt, logger)
        train_loader, train_sampler = result[0], result[1]
        check_train_loader(opt, train_loader)
        position = dict(_RESUME)
        _RESUME.clear()  # one resume per load_resume_state
        if position and isinstance(train_sampler, ResumableSampler):
            train_sampler.skip = consumed_samples(position, len(train_loader),
                                                  opt['datasets']['train']['batch_size_per_gpu'])
            if train_sampler.skip:
                logger.info(f'Exact resume: skipping the {train_sampler.skip} samples epoch '
                            f'{position["epoch"]} had already used.')
        return result

    return create_train_val_dataloader


_ORIGINAL_ORDERED_YAML = None


def ordered_yaml():
    """BasicSR's (Loader, Dumper) pair with the plugin's safe, `!include`-aware option loader."""
    from vlu_plugin.utils.options_check import option_loader
    return option_loader(), _ORIGINAL_ORDERED_YAML()[1]


def patch_basicsr():
    """Apply the process-level fixes above to BasicSR 1.4.2's pipelines; calling it again does nothing."""
    global _PATCHED, _ORIGINAL_ORDERED_YAML
    if _PATCHED:
        return
    import basicsr.test
    import basicsr.train
    import basicsr.utils.dist_util as dist_util
    import basicsr.utils.options as options

    _ORIGINAL_ORDERED_YAML = options.ordered_yaml
    options.ordered_yaml = ordered_yaml
    dist_util._init_dist_pytorch = init_dist_pytorch
    basicsr.train.EnlargedSampler = ResumableSampler  # the name create_train_val_dataloader builds
    basicsr.train.load_resume_state = load_resume_state
    basicsr.train.parse_options = wrap_parse_options(basicsr.train.parse_options, 'train')
    basicsr.test.parse_options = wrap_parse_options(basicsr.test.parse_options, 'test')
    basicsr.train.make_exp_dirs = make_exp_dirs
    basicsr.train.copy_opt_file = wrap_copy_opt_file(basicsr.train.copy_opt_file)
    basicsr.test.make_exp_dirs = make_test_dirs
    basicsr.train.create_train_val_dataloader = wrap_create_train_loader(basicsr.train.create_train_val_dataloader)
    _PATCHED = True


def run_pipeline(phase, argv=None):
    """`patch_basicsr()`, then BasicSR's `phase` ('train' or 'test') pipeline with `argv` as its command line
    (sys.argv is restored afterwards) and outputs under the current directory."""
    import importlib
    import os
    patch_basicsr()
    pipeline = getattr(importlib.import_module(f'basicsr.{phase}'), f'{phase}_pipeline')
    saved = sys.argv
    if argv is not None:  # BasicSR's parser reads sys.argv only
        sys.argv = [saved[0]] + list(argv)
    try:
        return pipeline(os.getcwd())
    finally:
        sys.argv = saved
