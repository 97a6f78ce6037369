"""PromptIR and AirNet: full-size fidelity to the releases, checkpoint layouts, sizes, gradients, MoCo behaviour."""
import re

import pytest
import torch
import torch.nn.functional as F

import vlu_plugin  # noqa: F401  (its shims before basicsr)
from basicsr.archs import build_network
from basicsr.losses import build_loss

from vlu_plugin.archs.airnet_arch import AirNet
from vlu_plugin.archs.promptir_arch import PromptIR, PromptBlock, default_prompt_dims
from vlu_plugin.utils.checkpoints import convert_official

PROMPTIR_SMALL = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, prompt_sizes=(16, 8, 4))
AIRNET_SMALL = dict(num_feat=8, num_groups=2, num_blocks=2, encoder_dims=(8, 16, 32), queue_size=12)

# This package's PromptIR names → the release's (net/model.py), written out independently of the converter.
PROMPTIR_TO_RELEASE = ((r'(norm\d)\.', r'\1.body.'), )
# The release's six convs that its forward never calls, with their full-size shapes (out, in).
PROMPTIR_DEAD = {'chnl_reduce1': (64, 64), 'chnl_reduce2': (128, 128), 'chnl_reduce3': (256, 320),
                 'reduce_noise_channel_1': (48, 112), 'reduce_noise_channel_2': (96, 224),
                 'reduce_noise_channel_3': (192, 448)}
# AirNet keeps the release's tree (R., E.E.encoder_q/encoder_k/queue/queue_ptr): no renames.
AIRNET_TO_RELEASE = ()


def rename(state, renames, prefix=''):
    """A copy of `state` with every key rewritten by `renames` and prefixed."""
    out = {}
    for key, value in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[prefix + key] = value.clone()
    return out


def promptir_release_checkpoint(net):
    """A Lightning checkpoint in the release's layout with `net`'s weights plus the release's dead convs."""
    state = rename(net.state_dict(), PROMPTIR_TO_RELEASE, prefix='net.')
    for name, (c_out, c_in) in PROMPTIR_DEAD.items():
        state[f'net.{name}.weight'] = torch.randn(c_out, c_in, 1, 1)
    return {'state_dict': state, 'epoch': 1, 'global_step': 10}


def randomised(net, seed=0):
    """Perturb every float tensor (parameters, BN statistics, the queue) so nothing passes on an init pattern."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                noise = torch.randn(t.shape, generator=gen) * 0.05
                t.copy_(t + noise.abs() if name.endswith('running_var') else t + noise)
    return net


# ---- PromptIR --------------------------------------------------------------------------------------

def test_promptir_full_size_parameter_count_and_release_layout():
    net = PromptIR()
    assert sum(p.numel() for p in net.parameters()) == 35_376_967
    assert default_prompt_dims(48) == (64, 128, 320)
    ckpt = promptir_release_checkpoint(net)
    assert len(ckpt['state_dict']) == 548
    assert sum(v.numel() for v in ckpt['state_dict'].values()) == 35_592_263  # the release's count
    assert ckpt['state_dict']['net.prompt1.prompt_param'].shape == (1, 5, 64, 64, 64)
    assert ckpt['state_dict']['net.noise_level3.attn.qkv.weight'].shape == (2112, 704, 1, 1)
    net.load_state_dict(convert_official('PromptIR', ckpt), strict=True)


def test_promptir_takes_no_decoder_flag():
    with pytest.raises(TypeError):
        PromptIR(decoder=True)  # the decoder prompts are the only behaviour; nothing is ignored silently


def test_promptir_converter_round_trip_reproduces_outputs():
    torch.manual_seed(0)
    net = randomised(PromptIR(**PROMPTIR_SMALL)).eval()
    restored = PromptIR(**PROMPTIR_SMALL).eval()
    restored.load_state_dict(convert_official('PromptIR', promptir_release_checkpoint(net)), strict=True)
    x = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        assert torch.equal(net(x), restored(x))


@pytest.mark.parametrize('size', [(37, 53), (8, 8), (3, 5)])
def test_promptir_any_size_returns_input_shape(size):
    net = PromptIR(**PROMPTIR_SMALL).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_promptir_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    net = PromptIR(**PROMPTIR_SMALL).train()
    F.l1_loss(net(torch.rand(2, 3, 24, 32)), torch.rand(2, 3, 24, 32)).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_prompt_mixture_equals_weighted_sum_of_the_bank():
    torch.manual_seed(0)
    block = PromptBlock(prompt_dim=4, prompt_len=3, prompt_size=6, lin_dim=5)
    x = torch.randn(2, 5, 6, 6)
    weights = torch.softmax(block.linear_layer(x.mean(dim=(2, 3))), dim=1)
    expected = torch.stack([sum(w[i] * block.prompt_param[0, i] for i in range(3)) for w in weights])
    assert torch.allclose(block(x), block.conv3x3(expected), atol=1e-6)


def test_promptir_builds_from_the_registry():
    net = build_network({'type': 'PromptIR', **PROMPTIR_SMALL})
    assert isinstance(net, PromptIR)


# ---- AirNet ----------------------------------------------------------------------------------------

def test_airnet_full_size_parameter_count_and_release_layout():
    net = AirNet()
    assert sum(p.numel() for p in net.parameters()) == 8_930_313
    state = rename(net.state_dict(), AIRNET_TO_RELEASE)  # All.pth: a plain state dict
    assert len(state) == 584
    assert sum(k.endswith(('running_mean', 'running_var', 'num_batches_tracked')) for k in state) == 54
    expected_shapes = {
        'R.head.0.weight': (64, 3, 3, 3),
        'R.body.0.body.0.dgm1.dcn.weight': (64, 64, 3, 3),
        'R.body.0.body.0.dgm1.dcn.conv_offset_mask.weight': (27, 128, 3, 3),
        'R.body.0.body.0.dgm1.sft.conv_gamma.2.weight': (64, 64, 1, 1),
        'R.body.4.body.5.weight': (64, 64, 3, 3),
        'R.body.5.weight': (64, 64, 3, 3),
        'R.tail.0.bias': (3, ),
        'E.E.queue': (256, 1280),
        'E.E.queue_ptr': (1, ),
        'E.E.encoder_q.E_pre.backbone.1.running_var': (64, ),
        'E.E.encoder_q.E.1.backbone.0.weight': (256, 128, 3, 3),
        'E.E.encoder_k.mlp.2.weight': (256, 256),
    }
    assert {k: tuple(state[k].shape) for k in expected_shapes} == expected_shapes
    assert state['E.E.queue_ptr'].dtype == torch.long
    assert 'R.body.0.body.0.dgm1.dcn.bias' not in state
    AirNet().load_state_dict(convert_official('AirNet', state), strict=True)


def test_airnet_converter_round_trip_reproduces_outputs():
    torch.manual_seed(0)
    net = randomised(AirNet(**AIRNET_SMALL)).eval()
    restored = AirNet(**AIRNET_SMALL).eval()
    restored.load_state_dict(convert_official('AirNet', rename(net.state_dict(), AIRNET_TO_RELEASE)), strict=True)
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(net(x), restored(x))
    assert torch.equal(net.E.E.queue, restored.E.E.queue)


@pytest.mark.parametrize('size', [(37, 53), (3, 5)])
def test_airnet_odd_sizes_in_eval_and_training(size):
    net = AirNet(**AIRNET_SMALL).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        assert net(x).shape == x.shape
    restored, logits, _ = net.train()(x, torch.rand(2, 3, *size))
    assert restored.shape == x.shape and logits.shape == (2, 1 + 12)


def test_airnet_training_forward_returns_logits_and_moves_key_encoder_and_queue():
    torch.manual_seed(0)
    net = AirNet(**AIRNET_SMALL).train()
    key_before = net.E.E.encoder_k.mlp[0].weight.clone()
    with torch.no_grad():  # make the query encoder differ so the momentum step is visible
        net.E.E.encoder_q.mlp[0].weight.add_(1.0)
    queue_before = net.E.E.queue.clone()
    x_query, x_key = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    restored, logits, labels = net(x_query, x_key)
    assert restored.shape == x_query.shape
    assert logits.shape == (4, 1 + 12)
    assert labels.dtype == torch.long and labels.device == logits.device and not labels.any()
    assert torch.allclose(net.E.E.encoder_k.mlp[0].weight, key_before + 0.001)
    assert int(net.E.E.queue_ptr) == 4
    assert torch.allclose(net.E.E.queue[:, :4].norm(dim=0), torch.ones(4))  # normalised keys written
    assert not torch.equal(net.E.E.queue[:, :4], queue_before[:, :4])
    assert torch.equal(net.E.E.queue[:, 4:], queue_before[:, 4:])
    # InfoNCE over these logits: the positive (column 0) is the query·key similarity over the temperature
    loss = F.l1_loss(restored, torch.rand_like(restored)) + build_loss({'type': 'InfoNCELoss', 'loss_weight': 0.1})(
        logits, labels)
    loss.backward()
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad
    assert all(p.grad is None for p in net.E.E.encoder_k.parameters())


def test_airnet_queue_accepts_batches_that_do_not_divide_it():
    net = AirNet(**AIRNET_SMALL).train()  # queue of 12
    moco = net.E.E
    keys = F.normalize(torch.randn(5, 32), dim=1)
    moco.enqueue(keys)
    moco.enqueue(keys)
    moco.enqueue(keys)  # 15 keys into 12 slots: the third batch wraps around
    assert int(moco.queue_ptr) == 3
    assert torch.equal(moco.queue[:, :3], keys[2:].t()) and torch.equal(moco.queue[:, 10:], keys[:2].t())
    moco.enqueue(F.normalize(torch.randn(30, 32), dim=1))  # larger than the queue: its last 12 keys stay
    assert int(moco.queue_ptr) == (3 + 12) % 12


def test_airnet_eval_forward_ignores_the_key_and_changes_nothing():
    torch.manual_seed(0)
    net = randomised(AirNet(**AIRNET_SMALL)).eval()
    state_before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        out = net(x)
        assert torch.equal(out, net(x, torch.rand(1, 3, 16, 16)))
        assert torch.equal(out, net(x, torch.rand(1, 3, 24, 8)))
    assert all(torch.equal(v, state_before[k]) for k, v in net.state_dict().items())


def test_airnet_contrastive_warm_up_step_trains_only_the_encoder():
    torch.manual_seed(0)
    net = AirNet(**AIRNET_SMALL).train()
    logits, labels = net.contrastive(torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16))
    assert logits.shape == (3, 13) and labels.device == logits.device
    build_loss({'type': 'InfoNCELoss'})(logits, labels).backward()
    assert all(p.grad is None for p in net.R.parameters())
    assert all(p.grad is not None for p in net.E.E.encoder_q.parameters())
    with pytest.raises(RuntimeError):
        net.eval().contrastive(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_airnet_encoder_runs_channels_last_on_every_path():
    # the warm-up (contrastive), training and eval forwards all reach the encoders' convolutions channels_last
    net = AirNet(**AIRNET_SMALL).train()
    seen = []
    for encoder in (net.E.E.encoder_q, net.E.E.encoder_k):
        encoder.E_pre.register_forward_pre_hook(
            lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    net.contrastive(torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16))
    net(torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16))
    with torch.no_grad():
        net.eval()(torch.rand(1, 3, 16, 16))
    assert seen == [True] * 5  # query and key of two training steps, then the eval query


def test_airnet_builds_from_the_registry():
    assert isinstance(build_network({'type': 'AirNet', **AIRNET_SMALL}), AirNet)


def test_info_nce_is_weighted_cross_entropy():
    logits, labels = torch.randn(4, 9), torch.zeros(4, dtype=torch.long)
    loss = build_loss({'type': 'InfoNCELoss', 'loss_weight': 0.1})
    assert torch.allclose(loss(logits, labels), 0.1 * F.cross_entropy(logits, labels))
