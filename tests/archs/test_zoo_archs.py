"""AdaIR and MoCE-IR: full-size counts and release key layouts, conversion, gradients, a BasicSR training step, restore.

MoCE-IR's routing draws noise in eval mode too (as released); the tests that compare outputs build it
with `eval_routing_noise=False` (deterministic routing), the others say what they use.
"""
import re

import pytest
import torch
import torch.nn.functional as F
import yaml
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models import build_model
from conftest import write_images

from vlu_cli import main
from vlu_cli.convert import convert
from vlu_plugin.archs.adair_arch import AdaIR
from vlu_plugin.archs.moceir_arch import MoCEIR
from vlu_plugin.utils.checkpoints import convert_official, load_checkpoint
from vlu_plugin.losses.moceir_loss import MoCERoutingLoss

ADAIR_SMALL = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)
MOCEIR_SMALL = dict(dim=16, num_blocks=[1, 1, 1, 1], num_dec_blocks=[1, 1, 1], num_refinement_blocks=1)

# This package's names → the releases' (c-yn/AdaIR net/model.py; eduardzamfir/MoCE-IR src/net/moce_ir.py),
# written out here independently of vlu_plugin.utils.checkpoints.
ADAIR_TO_RELEASE = ((r'(norm\d)\.', r'\1.body.'), (r'\.spatial_gate\.', '.SpatialGate.'),
                    (r'\.channel_gate\.', '.ChannelGate.'))
_PLAIN_BLOCK = r'^(encoder\.\d+\.\d+|latent\.\d+|refinement\.\d+)\.'
MOCEIR_TO_RELEASE = (
    (_PLAIN_BLOCK + r'norm1\.', r'\1.norms.0.body.'), (_PLAIN_BLOCK + r'norm2\.', r'\1.norms.1.body.'),
    (_PLAIN_BLOCK + r'attn\.', r'\1.mixer.'),
    (r'\.norms\.(\d)\.(weight|bias)$', r'.norms.\1.body.\2'), (r'\.norm\.(weight|bias)$', r'.norm.body.\1'),
    (r'\.experts\.(\d+)\.', r'.experts.\1.0.'), (r'\.routing\.gate\.', '.routing.gate.2.'),
    (r'^freq_embed\.high_pass\.', 'freq_embed.high_conv.0.conv.'),
    (r'^encoder\.(\d+)\.', r'enc.\1.0.layers.'), (r'^down\.(\d+)\.', r'enc.\1.1.'),
    (r'^(latent|refinement)\.', r'\1.layers.'), (r'^up\.(\d+)\.', r'dec.\1.0.'), (r'^fuse\.(\d+)\.', r'dec.\1.1.'),
    (r'^decoder\.(\d+)\.', r'dec.\1.2.layers.'),
)


def release_checkpoint(net, renames, extra=None):
    """A Lightning checkpoint ('net.' prefix) of `net`'s weights under the release's names, plus `extra` tensors."""
    state = {}
    for key, value in net.state_dict().items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        state[f'net.{key}'] = value.clone()
    state.update({f'net.{k}': v for k, v in (extra or {}).items()})
    return {'state_dict': state, 'epoch': 3, 'global_step': 30}


def adair_dead_modules(dim):
    """The two modules per AFLB the release creates but never calls, at width `dim`: {name: tensor}."""
    dead = {}
    for i, width in ((1, dim * 8), (2, dim * 4), (3, dim * 2)):
        dead[f'fre{i}.conv.weight'] = torch.randn(width, 3, 3, 3)
        dead[f'fre{i}.score_gen.weight'] = torch.randn(2, 2, 7, 7)
        dead[f'fre{i}.score_gen.bias'] = torch.randn(2)
    return dead


def randomised(net, seed=0):
    """Perturb every float tensor (AdaIR's para1 starts at zero, which would hide its frequency path)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=gen) * 0.05)
    return net.eval()


def count(state):
    return sum(v.numel() for v in state.values())


# ---- full size: parameter counts and the releases' key layouts --------------------------------------

def test_adair_full_size_count_and_release_layout():
    net = AdaIR()
    assert sum(p.numel() for p in net.parameters()) == 28_766_086
    ckpt = release_checkpoint(net, ADAIR_TO_RELEASE, adair_dead_modules(48))
    assert count(ckpt['state_dict']) == 28_784_824  # the release's count, its dead modules included
    state = ckpt['state_dict']
    assert state['net.fre1.frequency_refine.SpatialGate.spatial.weight'].shape == (1, 2, 7, 7)
    assert state['net.fre3.channel_cross_agg.kv_dwconv.weight'].shape == (192, 1, 3, 3)
    assert state['net.encoder_level1.0.norm1.body.weight'].shape == (48, )
    net.load_state_dict(convert_official('AdaIR', ckpt), strict=True)


def test_moceir_full_size_counts_and_release_layout():
    net = MoCEIR()
    assert sum(p.numel() for p in net.parameters()) == 25_353_796
    ckpt = release_checkpoint(net, MOCEIR_TO_RELEASE)
    state = ckpt['state_dict']
    assert len(state) == 1262  # 1252 parameters and each decoder block's `complexity` buffer
    assert state['net.dec.2.2.layers.1.adapter.experts.3.0.body.kv_dwconv.weight'].shape == (96, 1, 7, 7)
    assert state['net.dec.0.2.layers.3.adapter.routing.gate.2.weight'].shape == (4, 192)
    assert state['net.enc.0.0.layers.0.norms.0.body.weight'].shape == (48, )
    assert state['net.freq_embed.high_conv.0.conv.weight'].shape == (384, 1, 3, 3)
    net.load_state_dict(convert_official('MoCEIR', ckpt), strict=True)
    del net, ckpt, state
    assert sum(p.numel() for p in MoCEIR(dim=32).parameters()) == 11_477_752  # MoCE-IR-S


# ---- small size ------------------------------------------------------------------------------------

@pytest.mark.parametrize('arch, kwargs', [('AdaIR', ADAIR_SMALL), ('MoCEIR', MOCEIR_SMALL)])
def test_builds_from_the_registry_and_keeps_odd_sizes(arch, kwargs):
    net = build_network({'type': arch, **kwargs}).eval()
    assert type(net).__name__ == arch
    x = torch.rand(1, 3, 21, 18)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_adair_gradients_reach_every_parameter_the_release_trains():
    torch.manual_seed(0)
    net = randomised(AdaIR(**ADAIR_SMALL)).train()
    F.l1_loss(net(torch.rand(2, 3, 16, 24)), torch.rand(2, 3, 16, 24)).backward()
    missing = {n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0}
    # As released: the mask sizes are integer truncations of rate_conv's output (never a gradient), and
    # below 128 pixels per side the low band is empty, so its attention's queries see zeros.
    assert missing == ({f'fre{i}.rate_conv.{j}.weight' for i in (1, 2, 3) for j in (0, 2)}
                       | {f'fre{i}.channel_cross_h.{name}' for i in (1, 2, 3)
                          for name in ('q.weight', 'q_dwconv.weight', 'temperature')})


def test_adair_frequency_bands_follow_the_release_mask_and_train_the_low_band():
    from vlu_plugin.archs.adair_arch import FrequencyLearningBlock
    torch.manual_seed(0)
    block = FrequencyLearningBlock(16, 2)
    with torch.no_grad():
        block.rate_conv[2].weight.zero_()  # rates 0.5: half-sizes int(256 // 128 · 0.5) = 1, a 2×2 box
        block.para1.fill_(1.0)
    img = torch.rand(1, 3, 256, 256)
    high, low = block.frequency_split(img)
    # the release's recipe, written out: shift the spectrum, keep rows/cols 127..128, shift back
    x = block.conv1(img)
    mask = torch.zeros_like(x)
    mask[..., 127:129, 127:129] = 1
    spectrum = torch.roll(torch.fft.fft2(x, norm='forward'), shifts=(128, 128), dims=(2, 3))
    bands = [torch.fft.ifft2(torch.roll(spectrum * m, shifts=(-128, -128), dims=(2, 3)), norm='forward').abs()
             for m in (1 - mask, mask)]
    assert low.abs().amax() > 0
    assert torch.allclose(high, bands[0], atol=1e-5) and torch.allclose(low, bands[1], atol=1e-5)
    block(img, torch.randn(1, 16, 256, 256)).abs().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in block.named_parameters() if not n.startswith('rate_conv'))


def test_moceir_every_parameter_gets_a_gradient_when_every_expert_is_chosen():
    torch.manual_seed(0)
    net = MoCEIR(**MOCEIR_SMALL, top_k=4).train()  # top-4 of 4: no expert is left out of the step
    out = net(torch.rand(2, 3, 16, 16))
    loss = F.l1_loss(out, torch.rand(2, 3, 16, 16)) + MoCERoutingLoss(0.01)(net.routing_records)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    assert len(net.routing_records) == 3  # one per decoder block


def test_moceir_routing_noise_in_eval_is_the_default_and_can_be_turned_off():
    torch.manual_seed(0)
    noisy = randomised(MoCEIR(**MOCEIR_SMALL))
    quiet = MoCEIR(**MOCEIR_SMALL, eval_routing_noise=False).eval()
    quiet.load_state_dict(noisy.state_dict())
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(quiet(x), quiet(x))
        outs = [noisy(x) for _ in range(6)]  # the chosen experts' gate values follow the noise
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    assert noisy.routing_records == []  # recorded in training only


def test_routing_loss_is_zero_for_balanced_routers_and_positive_otherwise():
    from vlu_plugin.archs.moceir_arch import RoutingRecord
    loss = MoCERoutingLoss(loss_weight=1.0)
    balanced = torch.eye(4) * 3  # each of 4 images sends to a different expert
    assert loss([RoutingRecord(balanced, balanced, 0.25, 1, None)]).abs() < 1e-6
    skewed = torch.tensor([[3.0, 0, 0, 0]] * 4)
    assert loss([RoutingRecord(skewed, skewed, 0.25, 1, None)]) > 0.5


def test_fft_loss_is_weighted_l1_of_the_spectra():
    fft = build_loss({'type': 'FFTLoss', 'loss_weight': 0.1})
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    spectra = [torch.view_as_real(torch.fft.rfft2(t)) for t in (a, b)]
    assert torch.allclose(fft(a, b), 0.1 * (spectra[0] - spectra[1]).abs().mean())
    assert fft(a, a) == 0


@pytest.mark.parametrize('kind, cls, kwargs, renames', [
    ('adair', AdaIR, ADAIR_SMALL, ADAIR_TO_RELEASE),
    ('moceir', MoCEIR, dict(MOCEIR_SMALL, eval_routing_noise=False), MOCEIR_TO_RELEASE)])
def test_convert_round_trip_from_the_release_layout(tmp_path, kind, cls, kwargs, renames):
    torch.manual_seed(0)
    net = randomised(cls(**kwargs))
    extra = adair_dead_modules(kwargs['dim']) if kind == 'adair' else None
    src = tmp_path / f'{kind}.ckpt'
    torch.save(release_checkpoint(net, renames, extra), src)
    out = tmp_path / f'{kind}.pth'
    [(path, note)] = convert(kind, str(src), str(out))
    assert 'differs from the full-size' in note  # a small network: the note says so
    fresh = cls(**kwargs).eval()
    fresh.load_state_dict(load_checkpoint(path)['params'], strict=True)
    x = torch.rand(2, 3, 24, 16)
    with torch.no_grad():
        assert torch.equal(net(x), fresh(x))


def model_options(tmp_path, model_type, network):
    return {
        'name': 'zoo_unit', 'model_type': model_type, 'num_gpu': 0, 'is_train': True, 'dist': False, 'scale': 1,
        'network_g': network,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'experiments_root': str(tmp_path), 'models': str(tmp_path), 'training_states': str(tmp_path)},
        'train': {'ema_decay': 0, 'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 0.01},
                  'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [10], 'eta_min': 0},
                  'total_iter': 10, 'warmup_iter': -1, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
                  'fft_opt': {'type': 'FFTLoss', 'loss_weight': 0.1},
                  'routing_opt': {'type': 'MoCERoutingLoss', 'loss_weight': 0.01}},
        'val': {'metrics': None},
    }


@pytest.mark.parametrize('model_type, network, terms', [
    ('AllInOneModel', {'type': 'AdaIR', **ADAIR_SMALL}, {'l_pix', 'l_fft'}),
    ('MoCEIRModel', {'type': 'MoCEIR', **MOCEIR_SMALL}, {'l_pix', 'l_fft', 'l_routing'})])
def test_one_training_step_through_basicsr(tmp_path, model_type, network, terms):
    opt = model_options(tmp_path, model_type, network)
    if model_type == 'AllInOneModel':  # the FFT term is every model's; routing only MoCE-IR's
        del opt['train']['routing_opt']
    torch.manual_seed(0)
    model = build_model(opt)
    net = model.get_bare_model(model.net_g)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model.feed_data({'lq': torch.rand(2, 3, 16, 16), 'gt': torch.rand(2, 3, 16, 16), 'lq_path': ['a', 'b']})
    model.optimize_parameters(1)
    assert set(model.log_dict) == terms and all(v > 0 for v in model.log_dict.values())
    assert not torch.equal(before['output.weight'], net.state_dict()['output.weight'])
    model.test()  # eval mode, with MoCE-IR's default noisy routing
    assert model.output.shape == (2, 3, 16, 16) and net.training


def test_routing_loss_needs_a_routing_network(tmp_path):
    opt = model_options(tmp_path, 'MoCEIRModel', {'type': 'AdaIR', **ADAIR_SMALL})
    model = build_model(opt)
    model.feed_data({'lq': torch.rand(1, 3, 16, 16), 'gt': torch.rand(1, 3, 16, 16), 'lq_path': ['a']})
    with pytest.raises(TypeError, match='routing_opt.*MoCEIR'):
        model.optimize_parameters(1)


@pytest.mark.parametrize('model_type, network', [
    ('AllInOneModel', {'type': 'AdaIR', **ADAIR_SMALL}),
    ('MoCEIRModel', {'type': 'MoCEIR', **MOCEIR_SMALL})])
def test_vlu_restore_builds_them_from_options(tmp_path, model_type, network):
    net = build_network(dict(network))
    torch.save({'params': net.state_dict()}, tmp_path / 'net_g.pth')
    opt = {'name': 'zoo_restore', 'model_type': model_type, 'num_gpu': 'auto', 'network_g': network,
           'path': {'pretrain_network_g': str(tmp_path / 'net_g.pth')}}
    (tmp_path / 'test.yml').write_text(yaml.safe_dump(opt))
    write_images(tmp_path / 'in', 1, size=(20, 28))
    assert main(['restore', '-opt', str(tmp_path / 'test.yml'), str(tmp_path / 'in'), str(tmp_path / 'out'),
                 '--cpu', '--tile', '0']) == 0
    import cv2
    assert cv2.imread(str(tmp_path / 'out' / 'img000.png')).shape == (20, 28, 3)
