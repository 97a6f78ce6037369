"""`vlu convert`: round trips from checkpoints written in the releases' layouts, safetensors, and safe loading."""
import argparse
import re

import pytest
import torch

from test_vlunet_arch import TO_RELEASE
from vlu_cli import main
from vlu_cli.convert import clip_adapters_path, convert
from vlu_plugin.archs.airnet_arch import AirNet
from vlu_plugin.archs.promptir_arch import PromptIR
from vlu_plugin.archs.vlunet_arch import VLUNet
from vlu_plugin.utils.checkpoints import load_checkpoint

VLUNET_SMALL = dict(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, clip_dim=32)
PROMPTIR_SMALL = dict(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, prompt_sizes=(16, 8, 4))
AIRNET_SMALL = dict(num_feat=16, num_groups=1, num_blocks=1, encoder_dims=(16, 32, 64), queue_size=16)

# This package's names → the releases' (written out once, in test_vlunet_arch, independently of
# vlu_plugin.utils.checkpoints); PromptIR differs from Restormer's names only in LayerNorm's `body`.
VLUNET_NAMES = TO_RELEASE
RESTORMER_NAMES = TO_RELEASE[:1]


class CustomHyperParameters:
    """Stands for any user class pickled into a checkpoint (weights_only refuses it)."""

    def __init__(self):
        self.lr = 2e-4


def renamed(net, names, prefix=''):
    """`net`'s state dict under the release's names, with `prefix` added."""
    state = {}
    for key, value in net.state_dict().items():
        for pattern, replacement in names:
            key = re.sub(pattern, replacement, key)
        if key.endswith('gradient_descent.prompt_param'):
            value = value.unsqueeze(0)  # VLU-Net's release keeps a leading axis on each bank
        state[prefix + key] = value.clone()
    return state


def randomised(net, seed=0):
    """Perturb every parameter so equal outputs cannot come from an initialisation pattern."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return net.eval()


def adapter_state(width=32, seed=1):
    """The release's adapter weights (Linear, LayerNorm, GELU, Linear, LayerNorm, GELU, Linear, LayerNorm)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for side in ('ad_imageEncoder', 'ad_textEncoder'):
        for i in (0, 1, 3, 4, 6, 7):
            shape = (width, width) if i in (0, 3, 6) else (width, )
            state[f'{side}.adapter.{i}.weight'] = torch.randn(shape, generator=gen)
            state[f'{side}.adapter.{i}.bias'] = torch.randn(width, generator=gen)
    return state


def load_params(path):
    """The state dict of a converted file, .pth ({'params': ...}) or .safetensors (flat)."""
    ckpt = load_checkpoint(path)
    return ckpt['params'] if 'params' in ckpt else ckpt


def outputs_equal(net, state, cls, kwargs, *inputs):
    """Load `state` strictly into a fresh `cls(**kwargs)` and compare its output with `net`'s."""
    fresh = cls(**kwargs).eval()
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        return torch.equal(net(*inputs), fresh(*inputs))


@pytest.mark.parametrize('ext', ['.pth', '.safetensors'])
def test_vlunet_lightning_checkpoint_and_its_clip_adapters(tmp_path, ext):
    net = randomised(VLUNet(**VLUNET_SMALL))
    state = renamed(net, VLUNET_NAMES, 'net.')
    state['net.down1_2_i.body.0.weight'] = torch.randn_like(net.down1_2.body[0].weight)  # the release's dead module
    state.update({f'model_degradation.{k}': v for k, v in adapter_state().items()})
    state['model_degradation.ad_imageEncoder.clip_model.logit_scale'] = torch.ones(())  # the frozen CLIP: dropped
    src = tmp_path / 'release.ckpt'
    torch.save({'state_dict': state, 'epoch': 3, 'global_step': 30}, src)

    out = str(tmp_path / f'vlunet{ext}')
    written = convert('vlunet', str(src), out)
    assert [p for p, _ in written] == [out, clip_adapters_path(out)]
    assert clip_adapters_path(out).endswith(f'vlunet_clip_adapters{ext}')
    x, v = torch.rand(1, 3, 24, 16), torch.randn(1, 32)
    assert outputs_equal(net, load_params(out), VLUNet, VLUNET_SMALL, x, v)
    adapters = load_params(clip_adapters_path(out))
    assert sorted(adapters) == sorted(re.sub(r'^ad_(image|text)Encoder\.adapter\.', r'\1_adapter.', k)
                                      for k in adapter_state())
    assert torch.equal(adapters['image_adapter.3.weight'], adapter_state()['ad_imageEncoder.adapter.3.weight'])


def test_clip_adapters_from_clip_tuned_load_into_degradation_clip(tmp_path):
    from vlu_plugin.archs.degradation_clip_arch import DegradationCLIP
    src = tmp_path / 'clip_tuned.pth'
    torch.save({'epoch': 99, 'learnable_params': adapter_state(), 'optimizer': {'state': {}, 'param_groups': []}}, src)
    out = tmp_path / 'clip_adapters.pth'
    convert('clip-adapters', str(src), str(out))
    tiny = dict(embed_dim=32, vision_cfg=dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16),
                text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
    clip = DegradationCLIP(clip_config=tiny, pretrained=None)
    clip.load_learnable(load_params(out))
    assert torch.equal(clip.text_adapter[7].bias, adapter_state()['ad_textEncoder.adapter.7.bias'])


def test_promptir_lightning_checkpoint(tmp_path):
    net = randomised(PromptIR(**PROMPTIR_SMALL))
    state = renamed(net, RESTORMER_NAMES, 'net.')
    for i in (1, 2, 3):  # convs the release creates but never calls
        state[f'net.chnl_reduce{i}.weight'] = torch.randn(4, 4, 1, 1)
        state[f'net.reduce_noise_channel_{i}.weight'] = torch.randn(4, 4, 1, 1)
    src = tmp_path / 'promptir.ckpt'
    torch.save({'state_dict': state, 'epoch': 1}, src)
    out = tmp_path / 'promptir.safetensors'
    convert('promptir', str(src), str(out))
    assert outputs_equal(net, load_params(out), PromptIR, PROMPTIR_SMALL, torch.rand(1, 3, 32, 24))


@pytest.mark.parametrize('name, size', [('All.pth', 24), ('All.safetensors', 16)])
def test_airnet_plain_state_dict(tmp_path, name, size):
    """The release's plain AirNet state dict converts from .pth and from .safetensors alike."""
    from safetensors.torch import save_file
    net = randomised(AirNet(**AIRNET_SMALL))
    src = tmp_path / name
    if name.endswith('.safetensors'):
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(src))
    else:
        torch.save(net.state_dict(), src)
    out = tmp_path / 'airnet.pth'
    convert('airnet', str(src), str(out))
    assert outputs_equal(net, load_params(out), AirNet, AIRNET_SMALL, torch.rand(1, 3, size, size))


def test_pickled_object_refused_unless_trusted(tmp_path):
    net = AirNet(**AIRNET_SMALL)
    src = tmp_path / 'All.pth'
    torch.save({'state_dict': net.state_dict(), 'hparams': CustomHyperParameters()}, src)
    out = tmp_path / 'airnet.pth'
    with pytest.raises(RuntimeError, match='refusing to load.*--trust'):
        convert('airnet', str(src), str(out))
    assert not out.exists()
    convert('airnet', str(src), str(out), trust=True)
    assert set(load_params(out)) == set(net.state_dict())


def test_cli_refuses_then_accepts_with_trust(tmp_path, monkeypatch, capsys):
    # argparse.Namespace: what Lightning's hyper_parameters often hold
    net = AirNet(**AIRNET_SMALL)
    torch.save({'state_dict': net.state_dict(), 'hyper_parameters': argparse.Namespace(lr=2e-4)}, tmp_path / 'a.pth')
    monkeypatch.chdir(tmp_path)
    assert main(['convert', 'airnet', 'a.pth', 'out.pth']) != 0
    refused = capsys.readouterr().err
    assert 'refusing to load' in refused and '--trust' in refused
    assert not (tmp_path / 'out.pth').exists()
    assert main(['convert', 'airnet', 'a.pth', 'out.pth', '--trust']) == 0
    accepted = capsys.readouterr().out
    assert 'wrote out.pth' in accepted and 'differs from the full-size AirNet' in accepted
