"""PluginModelMixin: what the plugin's models change in BasicSR 1.4.2's BaseModel, for themselves only.

Put it before the BasicSR base class (`class M(MixedPrecisionMixin, PluginModelMixin, SRModel)`). A lab's
own models, which do not inherit it, keep BasicSR's behaviour. It gives:
- any torch.optim optimizer by name (1.4.2 knows only Adam; the release trains with AdamW);
- DDP without device ids when the model runs on the CPU (1.4.2 passes a CUDA device id);
- checkpoints and training states written atomically (a kill mid-save leaves the previous file, never a
  truncated one that `--auto_resume` would pick), and loaded with `weights_only=True`, damage named as damage;
- training states that also hold the RNG states and the fp16 GradScaler (exact resume, see exact_resume),
  and on resume the scheduler of the options (a longer run's new `periods`) at the saved position;
- the final validation recorded at train.total_iter (BasicSR's counter ends past it);
- an unknown key in a network block names the key and the allowed ones (`check_network_options`).
"""
import inspect
import time

import torch
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import ARCH_REGISTRY

from vlu_plugin.utils.hints import did_you_mean

# a scheduler's state holds its schedule (periods, milestones, ...) next to its position; these are position
_SCHEDULER_POSITION = {'base_lrs', 'last_epoch', '_step_count', '_last_lr', '_get_lr_called_within_step', 'verbose',
                       '_is_initial'}


def check_network_options(opt):
    """Raise a clear error for an unknown `type` or keys the architecture's constructor does not take."""
    opt = dict(opt)
    network_type = opt.pop('type', None)
    if network_type not in ARCH_REGISTRY:
        raise KeyError(f'unknown network type {network_type!r}; registered: {", ".join(sorted(ARCH_REGISTRY.keys()))}')
    params = inspect.signature(ARCH_REGISTRY.get(network_type).__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    allowed = [name for name in params if name != 'self']
    unknown = [key for key in opt if key not in allowed]
    if unknown:
        said = ', '.join(f'{k!r}{did_you_mean(k, allowed)}' for k in unknown)
        raise ValueError(f'network {network_type}: unknown option {said}; allowed: {", ".join(allowed)}')


def build_network(opt):
    """BasicSR's build_network after `check_network_options`."""
    from basicsr.archs import build_network as basicsr_build_network
    check_network_options(opt)
    return basicsr_build_network(opt)


class PluginModelMixin:
    """BaseModel fixes for the plugin's models: optimizers, CPU DDP, atomic and safe checkpoints, exact resume."""

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        """Any torch.optim optimizer by name."""
        optim_cls = getattr(torch.optim, optim_type, None)
        if not (isinstance(optim_cls, type) and issubclass(optim_cls, torch.optim.Optimizer)):
            raise NotImplementedError(f'optimizer {optim_type!r} is not a torch.optim optimizer '
                                      '(option train.optim_*.type)')
        return optim_cls(params, lr, **kwargs)

    def model_to_device(self, net):
        """Move `net` to the model's device; wrap it in DDP (device ids only on CUDA) or DataParallel."""
        from torch.nn.parallel import DataParallel, DistributedDataParallel
        net = net.to(self.device)
        if self.opt['dist']:
            device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
            return DistributedDataParallel(net, device_ids=device_ids,
                                           find_unused_parameters=self.opt.get('find_unused_parameters', False))
        if self.opt['num_gpu'] > 1:
            return DataParallel(net)
        return net

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _save(self, obj, path, what):
        """Write `obj` atomically; like BasicSR, retry a failed write and log (not raise) when it keeps failing."""
        from vlu_plugin.utils.checkpoints import save_checkpoint
        for attempt in range(3):
            try:
                return save_checkpoint(obj, path)
            except Exception as error:
                get_root_logger().warning(f'Save {what} error: {error}, remaining retry times: {2 - attempt}')
                time.sleep(1)
        get_root_logger().warning(f'Still cannot save {path}. Just ignore it.')

    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR's `<label>_<iter>.pth` of {param_key: state dict} (CPU tensors, no `module.`), written atomically."""
        import os
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError('save_network: as many param keys as networks are needed')
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = {(k[len('module.'):] if k.startswith('module.') else k): v.cpu() for k, v in state.items()}
        label = 'latest' if current_iter == -1 else current_iter
        self._save(save_dict, os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth'), 'model')

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """BasicSR's load_network, reading with `weights_only=True` (a pickled object is refused, not run)."""
        from vlu_plugin.utils.checkpoints import load_checkpoint
        net = self.get_bare_model(net)
        load_net = load_checkpoint(load_path)
        if param_key is not None:
            if param_key not in load_net and 'params' in load_net:
                param_key = 'params'
                get_root_logger().info('Loading: params_ema does not exist, use params.')
            load_net = load_net[param_key]
        get_root_logger().info(f'Loading {net.__class__.__name__} model from {load_path}, '
                               f'with param key: [{param_key}].')
        load_net = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in load_net.items()}
        self._print_different_keys_loading(net, load_net, strict)
        net.load_state_dict(load_net, strict=strict)

    @master_only
    def save_training_state(self, epoch, current_iter):
        """BasicSR's training state plus the RNG states (and fp16's GradScaler), written atomically."""
        import os

        from vlu_plugin.utils.exact_resume import rng_state
        if current_iter == -1:
            return
        state = {'epoch': epoch, 'iter': current_iter, 'rng': rng_state(),
                 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers]}
        scaler = getattr(self, 'grad_scaler', None)
        if scaler is not None and scaler.is_enabled():  # fp16 training (train.amp): its loss scale and growth count
            state['grad_scaler'] = scaler.state_dict()
        self._save(state, os.path.join(self.opt['path']['training_states'], f'{current_iter}.state'), 'training state')

    def resume_training(self, resume_state):
        """BasicSR's resume_training, then the RNG states and GradScaler saved with the state, and the options'
        schedule at the saved position (torch restores the old periods; the cosine fails past their end)."""
        from vlu_plugin.utils.exact_resume import set_rng_state
        super().resume_training(resume_state)
        if 'rng' in resume_state:
            set_rng_state(resume_state['rng'])
        scaler = getattr(self, 'grad_scaler', None)
        if scaler is not None and 'grad_scaler' in resume_state:
            scaler.load_state_dict(resume_state['grad_scaler'])  # a disabled scaler (not fp16 now) ignores it
        self._reschedule()

    def _reschedule(self):
        """Give each scheduler the schedule (periods, milestones) of the current options, keeping its position."""
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

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """BasicSR's validation, with the iteration capped at train.total_iter: BasicSR's loop leaves its counter
        past the end (one per remaining epoch), so the final validation was recorded at a later iteration."""
        total = (self.opt.get('train') or {}).get('total_iter') if self.opt.get('is_train') else None
        if isinstance(current_iter, int) and total is not None and current_iter > int(total):
            current_iter = int(total)
        return super().validation(dataloader, current_iter, tb_logger, save_img)
