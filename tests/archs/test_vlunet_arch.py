"""VLUNet: full-size fidelity to the release, shapes, gradients, determinism and the release-checkpoint converter."""
import re

import pytest
import torch
from basicsr.archs import build_network

from vlu_plugin.archs.vlunet_arch import VLUNet
from vlu_plugin.utils.checkpoints import convert_official

SMALL = dict(dim=16, num_blocks=[1, 1, 1, 2], num_refinement_blocks=1, heads=[1, 2, 4, 8], clip_dim=32)

# This package's names → the release's (net/Final.py), written out independently of the converter.
TO_RELEASE = (
    (r'(norm\d)\.', r'\1.body.'),
    (r'^(patch_embed|down2_3|down3_4|up4_3|up3_2|up2_1)_y\.', r'\1_i.'),
    (r'^(reduce_chan_level[23])_y\.', r'\1_img.'),
    (r'\.gradient_descent\.phi_t\.', '.gradient_descent.phit.'),
    (r'\.gradient_descent\.step_size$', '.gradient_descent.r'),
    (r'\.gradient_descent\.prompt_weights\.', '.gradient_descent.linear.'),
    (r'\.gradient_descent\.prompt_bank$', '.gradient_descent.prompt_param'),
    (r'\.proximal\.', '.denoiser.blocks.'),
)


def release_checkpoint(net):
    """A Lightning checkpoint in the release's layout holding `net`'s weights (plus what the release adds)."""
    state = {}
    for key, value in net.state_dict().items():
        for pattern, replacement in TO_RELEASE:
            key = re.sub(pattern, replacement, key)
        if key.endswith('prompt_param'):
            value = value.unsqueeze(0)  # the release keeps a leading batch axis on each bank
        state['net.' + key] = value.clone()
    # the release's unused y-stream downsampler and its CLIP next to the network
    state['net.down1_2_i.body.0.weight'] = torch.randn_like(net.down1_2.body[0].weight)
    state['model_degradation.ad_imageEncoder.adapter.0.weight'] = torch.randn(4, 4)
    return {'state_dict': state, 'epoch': 1, 'global_step': 10}


def randomised(net, seed=0):
    """Perturb every parameter so that no test passes on an initialisation pattern."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return net


def test_full_size_parameter_count_and_release_layout():
    net = VLUNet()
    assert sum(p.numel() for p in net.parameters()) == 35_342_660
    ckpt = release_checkpoint(net)
    # the release's checkpoint carries one more module (down1_2_i, 10,368 parameters)
    release_params = sum(v.numel() for k, v in ckpt['state_dict'].items() if k.startswith('net.'))
    assert release_params == 35_353_028
    VLUNet().load_state_dict(convert_official('VLUNet', ckpt), strict=True)


def test_converter_round_trip_reproduces_outputs():
    torch.manual_seed(0)
    net = randomised(VLUNet(**SMALL)).eval()
    restored = VLUNet(**SMALL).eval()
    restored.load_state_dict(convert_official('VLUNet', release_checkpoint(net)), strict=True)
    x, v = torch.rand(2, 3, 32, 40), torch.randn(2, 32)
    with torch.no_grad():
        assert torch.equal(net(x, v), restored(x, v))


def test_converter_accepts_bare_state_dict():
    net = VLUNet(**SMALL)
    bare = {k[len('net.'):]: v for k, v in release_checkpoint(net)['state_dict'].items() if k.startswith('net.')}
    VLUNet(**SMALL).load_state_dict(convert_official('VLUNet', bare), strict=True)


@pytest.mark.parametrize('size', [(37, 53), (8, 8), (3, 5)])
def test_any_size_returns_input_shape(size):
    net = VLUNet(**SMALL).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        assert net(x, torch.randn(1, 32)).shape == x.shape


def test_every_parameter_gets_a_gradient():
    net = VLUNet(**SMALL)
    out = net(torch.rand(2, 3, 24, 24), torch.randn(2, 32))
    out.abs().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


def test_deterministic_under_a_seed():
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        net = VLUNet(**SMALL).eval()
        with torch.no_grad():
            outputs.append(net(torch.rand(1, 3, 16, 16), torch.randn(1, 32)))
    assert torch.equal(*outputs)


def test_build_network_from_options():
    net = build_network({'type': 'VLUNet', **SMALL})
    assert isinstance(net, VLUNet)


def test_no_vector_mixes_the_prompt_bank_uniformly():
    net = randomised(VLUNet(**SMALL)).eval()
    x = torch.rand(2, 3, 16, 16)
    gdm = net.encoder_level1.gradient_descent
    weights = gdm.mixture_weights(None, 2)
    assert torch.allclose(weights, torch.full((2, 7), 1 / 7))
    with torch.no_grad():
        out = net(x, None)
        # a vector that maps every stage to uniform weights gives the same result
        for _, stage in net.stages():
            stage.gradient_descent.prompt_weights.weight.zero_()
            stage.gradient_descent.prompt_weights.bias.zero_()
        assert torch.allclose(out, net(x, torch.randn(2, 32)), atol=1e-6)


def test_bad_vector_width_is_a_clear_error():
    net = VLUNet(**SMALL)
    with pytest.raises(ValueError, match=r'degradation_vector must have shape \(1, 32\).*got \(1, 512\)'):
        net(torch.rand(1, 3, 16, 16), torch.randn(1, 512))
