"""Measuring networks: parameters, FLOPs, forward and forward+backward time, peak memory, and the VLU-Net release.

Times are medians over several runs after warm-up. When two networks are compared their runs are
interleaved (ours, release, release, ours, ...) so that load from other processes on a shared machine
falls on both alike. Peak memory is the peak resident set size above the level before the step on
CPU (Linux's /proc/self/clear_refs resets the high-water mark, so no extra package is needed), and
`torch.cuda.max_memory_allocated` above the level before the step on CUDA.
"""
import contextlib
import copy
import importlib.util
import os
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from vlu_plugin.utils.memory import status_kb

RELEASE_MODULE = 'vlunet_release_final'


# ---- memory ----------------------------------------------------------------------------------------
def _release_free_memory():
    """Hand freed heap memory back to the OS, so that a step's peak is not hidden by reused freed pages."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may then read low
        pass


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark to the current RSS; False where that is not possible."""
    _release_free_memory()
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_memory_mb(fn, device):
    """Run `fn` once and return the peak memory it added, in MiB (None where it cannot be measured)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if not _reset_peak_rss():
        return None
    before = status_kb('VmRSS')
    fn()
    peak = status_kb('VmHWM')
    return None if before is None or peak is None else max(0, peak - before) / 1024


# ---- FLOPs -----------------------------------------------------------------------------------------
def _deform_conv_flop(x_shape, w_shape, *args, out_shape=None, **kwargs):
    """torchvision's deformable conv counted as the convolution it is (the bilinear sampling is not counted)."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def count_flops(net, inputs):
    """FLOPs of one forward of `net(*inputs)` as torch.utils.flop_counter counts them (2 per multiply-add)."""
    mapping = {}
    deform = getattr(getattr(torch.ops, 'torchvision', None), 'deform_conv2d', None)
    if deform is not None:  # AirNet's deformable convs; FlopCounterMode has no formula for them
        mapping[deform.default] = _deform_conv_flop
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with torch.no_grad(), counter:
        net(*inputs)
    return counter.get_total_flops()


# ---- time ------------------------------------------------------------------------------------------
def forward_fn(net, inputs, context=contextlib.nullcontext):
    """One inference forward (eval mode, no autograd), inside `context()` (e.g. an autocast)."""
    def step():
        with torch.no_grad(), context():
            return net(*inputs)
    return step


def train_step_fn(net, inputs, context=contextlib.nullcontext):
    """One training step without the optimizer: forward and L1-style loss inside `context()`, backward."""
    def step():
        with context():
            out = net(*inputs)
            out = out[0] if isinstance(out, (tuple, list)) else out
            loss = out.float().abs().mean()
        loss.backward()
        for p in net.parameters():
            p.grad = None
    return step


def _timed(fn, device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def median_times(fns, device, runs=5, warmup=1):
    """Median seconds of each callable in `fns` (name → fn), runs interleaved with alternating order."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for i in range(runs):
        for name in (names if i % 2 == 0 else names[::-1]):
            times[name].append(_timed(fns[name], device))
    return {name: statistics.median(t) for name, t in times.items()}


# ---- networks --------------------------------------------------------------------------------------
def build_network(arch):
    """The full-size (default-option) network registered as `arch`."""
    import vlu_plugin  # noqa: F401  (registers the archs)
    from basicsr.utils.registry import ARCH_REGISTRY
    return ARCH_REGISTRY.get(arch)()


def example_inputs(arch, batch, size, device, seed=0):
    """The forward inputs of `arch` for a batch of `size`×`size` images (VLU-Net adds a CLIP vector)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.rand(batch, 3, size, size, generator=gen)]
    if arch == 'VLUNet':
        inputs.append(torch.randn(batch, 512, generator=gen))
    return [t.to(device) for t in inputs]


def load_release_vlunet(repo_dir):
    """The release's VLUNet class from `<repo_dir>/net/Final.py` (needs einops, as the release does)."""
    path = os.path.join(os.path.expanduser(repo_dir), 'net', 'Final.py')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'--reference-vlunet: no net/Final.py in {repo_dir} (give the root of a clone of '
                                'github.com/xianggkl/VLU-Net)')
    if importlib.util.find_spec('einops') is None:
        raise ImportError('--reference-vlunet: the release imports einops, which is not installed; '
                          'pip install einops (only needed for this comparison)')
    if RELEASE_MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(RELEASE_MODULE, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[RELEASE_MODULE] = module
    return sys.modules[RELEASE_MODULE].VLUNet


def paired_vlunets(repo_dir, seed=0):
    """(ours, release) full-size VLU-Nets holding the same weights: the release's random init, converted."""
    from vlu_plugin.utils.checkpoints import convert_official
    torch.manual_seed(seed)
    release = load_release_vlunet(repo_dir)(de_dim=7)
    ours = build_network('VLUNet')
    state = {f'net.{k}': v for k, v in release.state_dict().items()}
    ours.load_state_dict(convert_official('VLUNet', {'state_dict': state}), strict=True)
    return ours, release


def paired_airnets(device):
    """(ours, reference) full-size AirNets with the same weights: ours with the deformable-conv kernel the
    device defaults to (the plugin's on CPU, torchvision's on CUDA), the reference with the other one."""
    from vlu_plugin.archs.deform_conv import resolve_impl
    torch.manual_seed(0)
    ours = build_network('AirNet')
    reference = copy.deepcopy(ours)
    impl = resolve_impl('auto', device)
    other = 'torch' if impl == 'torchvision' else 'torchvision'
    ours.set_deform_impl(impl)
    reference.set_deform_impl(other)
    return ours, reference, other


def max_output_difference(a, b, inputs):
    """Largest absolute difference between the eval-mode outputs of two networks on `inputs`."""
    with torch.no_grad():
        return (a.eval()(*inputs) - b.eval()(*inputs)).abs().max().item()
