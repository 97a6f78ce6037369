"""Mixed precision and torch.compile, shared by the training models, `vlu test`, `vlu restore` and `vlu bench`.

Options (all off by default, so existing option files behave as before):
- `train.amp: bf16 | fp16 | ~`: autocast around the forward and the losses of a training step (the
  frozen CLIP's conditioning included); fp16 adds a GradScaler whose state is saved with the training
  state, so exact resume still holds. bf16 needs no scaler (fp32's exponent range).
- `val.precision: fp32 | bf16 | fp16`: autocast for validation and `vlu test`
  (`vlu test -opt X.yml --force_yml val:precision=bf16`); `vlu restore --precision` sets the same.
- `train.compile: true` or `network_g.compile: true` (or a mapping of torch.compile's arguments, e.g.
  `{mode: max-autotune}`): `nn.Module.compile()` on the network. It compiles in place, so the module,
  its parameter names and every saved checkpoint key stay exactly as without it (no `_orig_mod.`).
"""
import contextlib
import os
import shutil

import torch

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}
_OFF = (None, False, '~', 'none', 'off', 'fp32')


def amp_dtype(value, option):
    """The autocast dtype an option value names (None for off / fp32); `option` names it in errors."""
    if isinstance(value, str):
        value = value.strip().lower()
    if value in _OFF:
        return None
    if value not in PRECISIONS:
        raise ValueError(f'{option}: {value!r} is not a precision; use bf16, fp16 or ~ (off)')
    return PRECISIONS[value]


def autocast(device, dtype):
    """torch.autocast on `device` with `dtype`, or a no-op context for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(device, dtype, options=None):
    """A GradScaler for fp16 training (enabled), a disabled one otherwise (its calls then pass through).

    `options` (train.grad_scaler) are GradScaler's own: init_scale, growth_factor, backoff_factor, growth_interval.
    """
    options = dict(options or {})
    allowed = ('init_scale', 'growth_factor', 'backoff_factor', 'growth_interval')
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f'train.grad_scaler: unknown option(s) {unknown}; allowed: {", ".join(allowed)}')
    return torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16, **options)


def compiler_problem(device):
    """Why torch.compile cannot work on `device` here (a sentence), or None when it can."""
    if not hasattr(torch, 'compile'):
        return f'torch {torch.__version__} has no torch.compile (it needs torch >= 2.0)'
    if torch.device(device).type == 'cuda':
        from torch.utils._triton import has_triton
        return None if has_triton() else 'torch.compile on CUDA needs Triton, which is not installed'
    compilers = [os.environ.get('CXX'), 'g++', 'clang++', 'c++']
    if not any(c and shutil.which(c) for c in compilers):
        return 'torch.compile on the CPU needs a C++ compiler (g++ or clang++, or $CXX), and none is on the PATH'
    return None


def compile_network(net, device, option, settings=True):
    """Compile `net` in place (`nn.Module.compile`) and return it; a clear error where no compiler is available.

    `settings`: True, or a mapping of torch.compile's keyword arguments (e.g. {mode: max-autotune}).
    """
    kwargs = dict(settings) if isinstance(settings, dict) else {}
    if kwargs.get('backend', 'inductor') == 'inductor':  # other backends (eager, aot_eager) need no compiler
        problem = compiler_problem(device)
        if problem:
            raise RuntimeError(f'{option}: {problem}. Install one, or leave {option} off.')
    net.compile(**kwargs)
    return net


def inference_autocast(model):
    """The model's `val.precision` autocast (MixedPrecisionMixin), or a no-op for other BasicSR models."""
    return model.eval_autocast() if hasattr(model, 'eval_autocast') else contextlib.nullcontext()


def pop_compile_option(opt, network_key):
    """The compile setting (False, True or torch.compile kwargs) of `<network_key>.compile` or `train.compile`.

    `<network_key>.compile` is removed from the network block, whose other keys are the architecture's arguments.
    """
    net_opt = opt.get(network_key)
    setting = net_opt.pop('compile', False) if isinstance(net_opt, dict) else False
    return setting or (opt.get('train') or {}).get('compile') or False


class MixedPrecisionMixin:
    """`train.amp`, `val.precision` and compilation for a BasicSR model (uses `self.opt`, `self.device`).

    Put it before the BasicSR base class; call `setup_precision()` in `init_training_settings`, run a
    training step's forward and losses in `train_autocast()`, its backward and update through
    `backward_and_step`, and inference in `eval_autocast()`.
    """

    compile_networks = False

    def setup_precision(self):
        """Read `train.amp` (errors name the option) and make the GradScaler (enabled for fp16 only).

        `train.grad_scaler: {init_scale, growth_factor, backoff_factor, growth_interval}` tunes the scaler.
        """
        train_opt = self.opt.get('train') or {}
        self.amp_dtype = amp_dtype(train_opt.get('amp'), 'train.amp')
        self.grad_scaler = grad_scaler(self.device, self.amp_dtype, train_opt.get('grad_scaler'))

    @property
    def eval_dtype(self):
        """The autocast dtype of `val.precision` (None: fp32)."""
        return amp_dtype((self.opt.get('val') or {}).get('precision'), 'val.precision')

    def train_autocast(self):
        """Autocast for a training step's forward and losses (a no-op without `train.amp`)."""
        return autocast(self.device, getattr(self, 'amp_dtype', None))

    def eval_autocast(self):
        """Autocast for inference (a no-op without `val.precision`)."""
        return autocast(self.device, self.eval_dtype)

    def backward_and_step(self, loss, optimizer):
        """loss.backward() and optimizer.step(), through the GradScaler (which passes through unless fp16)."""
        scaler = getattr(self, 'grad_scaler', None)
        if scaler is None or not scaler.is_enabled():
            loss.backward()
            optimizer.step()
            return
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skips the step when fp16 gradients overflowed, and lowers the scale
        scaler.update()

    def model_to_device(self, net):
        """BasicSR's model_to_device, then compilation in place when asked for (checkpoint keys unchanged)."""
        net = super().model_to_device(net)
        if self.compile_networks:
            compile_network(self.get_bare_model(net), self.device, 'train.compile / network_*.compile',
                            self.compile_networks)
        return net
