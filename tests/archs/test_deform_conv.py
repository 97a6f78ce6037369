"""The plugin's modulated deformable convolution against torchvision.ops.deform_conv2d: values and gradients.

Tolerances (float32): forward within 1e-5 absolute; input, weight and mask gradients within 1e-4 of the
largest gradient; offset gradients the same, except at samples within 1e-4 of an integer coordinate
(the border −1 included). There the bilinear weight's derivative jumps (the kernel's one-sided
derivative is taken), and the two kernels add base position and offset in different orders, so float
rounding can put a sample on different sides of the jump. Exactly integer samples (zero offsets:
AirNet's initialisation, and every pixel next to the padding) match, and are tested separately.
"""
import pytest
import torch
from torchvision.ops import deform_conv2d as tv_deform_conv2d

from vlu_plugin.archs.airnet_arch import AirNet
from vlu_plugin.archs.deform_conv import deform_conv2d, resolve_impl

KINK = 1e-4


def make_inputs(b, c, h, w, cout=None, offset_groups=1, weight_groups=1, scale=2.0, kernel=3, stride=1, padding=1,
                dilation=1, integer=False, seed=0):
    """Random x, offset, weight, mask and bias for one deformable convolution (all requiring grad)."""
    g = torch.Generator().manual_seed(seed)
    cout = cout or c
    taps = kernel * kernel
    ho = (h + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    x = torch.randn(b, c, h, w, generator=g)
    if integer:
        offset = torch.randint(-3, 4, (b, 2 * offset_groups * taps, ho, wo), generator=g).float()
    else:
        offset = torch.randn(b, 2 * offset_groups * taps, ho, wo, generator=g) * scale
    weight = torch.randn(cout, c // weight_groups, kernel, kernel, generator=g) / (c * taps) ** 0.5
    mask = torch.rand(b, offset_groups * taps, ho, wo, generator=g)
    bias = torch.randn(cout, generator=g)
    return [t.requires_grad_() for t in (x, offset, weight, mask, bias)], dict(stride=stride, padding=padding,
                                                                                dilation=dilation)


def values_and_grads(fn, tensors, conv_args):
    """Output and the gradients of a fixed random projection of it, w.r.t. x, offset, weight, mask, bias."""
    x, offset, weight, mask, bias = tensors
    out = fn(x, offset, weight, bias, mask=mask, **conv_args)
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return out.detach(), torch.autograd.grad((out * projection).sum(), tensors)


def near_kink(offset, kernel, conv_args):
    """Offset entries (same shape as `offset`) whose sample lies within KINK of an integer y or x."""
    b, channels, ho, wo = offset.shape
    s, p, d = conv_args['stride'], conv_args['padding'], conv_args['dilation']
    taps = kernel * kernel
    off = offset.detach().view(b, -1, taps, 2, ho, wo)
    tap = torch.arange(taps)
    base_y = (torch.arange(ho) * s - p).view(ho, 1) + (tap // kernel * d).view(taps, 1, 1)
    base_x = (torch.arange(wo) * s - p).view(1, wo) + (tap % kernel * d).view(taps, 1, 1)
    pos = torch.stack([off[:, :, :, 0] + base_y, off[:, :, :, 1] + base_x], 3)
    frac = pos - pos.round()
    kink = (frac.abs() < KINK).any(dim=3, keepdim=True).expand_as(pos)  # both directions of that sample
    return kink.reshape(b, channels, ho, wo)


def assert_matches_torchvision(tensors, conv_args, kernel=3, exclude_kinks=True):
    """Forward and all gradients of the plugin's kernel against torchvision's, with the module's tolerances."""
    ours = values_and_grads(lambda *a, **k: deform_conv2d(*a, impl='torch', **k), tensors, conv_args)
    ref = values_and_grads(tv_deform_conv2d, tensors, conv_args)
    assert ours[0].shape == ref[0].shape
    assert (ours[0] - ref[0]).abs().max() < 1e-5
    for name, got, want in zip(('x', 'offset', 'weight', 'mask', 'bias'), ours[1], ref[1]):
        diff = (got - want).abs()
        if name == 'offset' and exclude_kinks:
            kink = near_kink(tensors[1], kernel, conv_args)
            assert kink.float().mean() < 0.01, 'the random offsets should rarely sit on a kink'
            diff = diff[~kink]
        assert diff.max() <= 1e-4 * want.abs().max(), (name, diff.max().item(), want.abs().max().item())


@pytest.mark.parametrize('case', [
    dict(b=1, c=8, h=9, w=7),                                  # odd sizes
    dict(b=3, c=6, h=5, w=12, cout=4),                         # batch > 1, Cout != Cin
    dict(b=2, c=8, h=6, w=6, scale=6.0),                       # many offsets pointing outside the image
    dict(b=2, c=8, h=7, w=5, offset_groups=2, weight_groups=2),  # offset and weight groups
    dict(b=1, c=4, h=9, w=8, stride=2, padding=2, dilation=2),  # stride / dilation
    dict(b=2, c=5, h=1, w=3),                                  # a single row
])
def test_matches_torchvision_values_and_gradients(case):
    tensors, conv_args = make_inputs(**case)
    assert_matches_torchvision(tensors, conv_args)


def test_channels_last_input_keeps_its_layout_and_matches():
    # AirNet runs channels_last: output and input gradient stay so, with torchvision's values
    tensors, conv_args = make_inputs(2, 8, 7, 6)
    x = tensors[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out = deform_conv2d(x, *tensors[1:3], tensors[4], mask=tensors[3], impl='torch', **conv_args)
    out.sum().backward()
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert_matches_torchvision([x] + tensors[1:], conv_args)


def test_offsets_far_outside_give_zero_and_match():
    tensors, conv_args = make_inputs(2, 4, 5, 5, scale=0.0)
    with torch.no_grad():
        tensors[1].fill_(50.25)  # every sample far below-right of the image
    out = deform_conv2d(tensors[0], tensors[1], tensors[2], mask=tensors[3], impl='torch', **conv_args)
    assert torch.count_nonzero(out) == 0
    assert_matches_torchvision(tensors, conv_args)


def test_nan_offsets_give_nan_not_an_index_error():
    tensors, conv_args = make_inputs(1, 4, 5, 6)
    with torch.no_grad():
        tensors[1][0, 3, 2, 2] = float('nan')
    out = deform_conv2d(tensors[0], tensors[1], tensors[2], mask=tensors[3], impl='torch', **conv_args)
    assert torch.isnan(out[0, :, 2, 2]).all() and torch.isfinite(out[0, :, 0, 0]).all()


def test_exact_integer_samples_match_without_exclusions():
    # integer offsets put every sample on a kink, including the border y = -1 / x = -1 next to the padding
    tensors, conv_args = make_inputs(2, 6, 8, 7, integer=True)
    assert_matches_torchvision(tensors, conv_args, exclude_kinks=False)
    zeros, _ = make_inputs(2, 6, 8, 7, scale=0.0)  # AirNet's initial offsets
    assert_matches_torchvision(zeros, conv_args, exclude_kinks=False)


def test_impl_choice_per_device_and_bad_value():
    assert resolve_impl('auto', torch.device('cpu')) == 'torch'
    assert resolve_impl('auto', torch.device('cuda')) == 'torchvision'  # the established CUDA kernel
    assert resolve_impl('torchvision', torch.device('cpu')) == 'torchvision'
    with pytest.raises(ValueError, match='deform_impl'):
        resolve_impl('cuda', torch.device('cpu'))
    with pytest.raises(ValueError, match='network_g.deform_impl'):
        AirNet(deform_impl='fast')


def tiny_airnet(impl, seed=0):
    """A small AirNet whose offset/mask convs are random (trained-like), so the offsets are not all zero."""
    torch.manual_seed(seed)
    net = AirNet(num_feat=8, num_groups=1, num_blocks=2, encoder_dims=(8, 16, 16), queue_size=8, deform_impl=impl)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if 'conv_offset_mask' in name:
                p.normal_(0, 0.3)
    return net


def test_airnet_with_the_plugin_kernel_equals_the_torchvision_airnet():
    ours, ref = tiny_airnet('torch'), tiny_airnet('torchvision')
    assert ours.state_dict().keys() == ref.state_dict().keys()  # checkpoints load either way
    ref.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 13, 11, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ours.eval()(x) - ref.eval()(x)).abs().max() < 1e-5
    key = torch.rand_like(x)
    grads = []
    for net in (ours, ref):
        net.train()
        restored, logits, _ = net(x, key)
        (restored.abs().mean() + logits.mean()).backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[1]:
        want = grads[1][name]
        assert (grads[0][name] - want).abs().max() <= 1e-4 * want.abs().max() + 1e-7, name


def test_set_deform_impl_switches_every_deformable_conv():
    net = tiny_airnet('auto')
    net.set_deform_impl('torchvision')
    impls = {m.impl for m in net.modules() if hasattr(m, 'conv_offset_mask')}
    assert impls == {'torchvision'}
