"""Mixed precision (train.amp, val.precision, vlu restore --precision) and torch.compile (train.compile)."""

import pytest
import torch
from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import run_vlu, train_then_kill
from test_airnet_model import AIRNET
from test_degradation_clip import PROMPTS, TINY_CLIP
from test_reliability import logged_losses, read_log, training_options
from test_train_pipeline import NET, write_options
from torch import nn

from vlu_plugin.utils import precision

TOTAL = 6  # iterations of the SIGKILL test's runs (checkpoints every 3)

@ARCH_REGISTRY.register()
class TinyConvNet(nn.Module):
    """Two 3x3 convs with a residual: the smallest network worth compiling in a test."""

    def __init__(self, channels=4):
        super().__init__()
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.tail = nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, x):
        return x + self.tail(torch.relu(self.head(x)))


def model_options(tmp_path, model_type, network, **train):
    """In-process BasicSR options for one training model on the CPU."""
    opt = {'name': 'unit', 'model_type': model_type, 'num_gpu': 0, 'is_train': True, 'dist': False, 'scale': 1,
           'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                    'experiments_root': str(tmp_path), 'models': str(tmp_path), 'training_states': str(tmp_path)},
           'train': {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 2e-3},
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5}, 'total_iter': 100,
                     'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}, **train},
           'val': {'metrics': None}}
    if model_type == 'DegradationCLIPModel':
        opt['network_clip'] = network
        opt['path']['pretrain_network_clip'] = None
        opt['train']['optim_clip'] = opt['train'].pop('optim_g')
    else:
        opt['network_g'] = network
    return opt


def record_dtypes(net):
    """Dtypes of every conv/linear output during the next forwards (a list filled by hooks)."""
    seen = []
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def batch(seed=0, size=16, labels=False):
    g = torch.Generator().manual_seed(seed)
    data = {'lq': torch.rand(2, 3, size, size, generator=g), 'gt': torch.rand(2, 3, size, size, generator=g),
            'lq_key': torch.rand(2, 3, size, size, generator=g), 'lq_path': ['a', 'b']}
    if labels:
        data['deg_label'] = torch.tensor([0, 1])
    return data


@pytest.mark.parametrize('model_type,network,key,extra', [
    ('AirNetModel', dict(AIRNET), 'l_pix', {'encoder_warmup_iter': 0}),
    ('AllInOneModel', dict(NET), 'l_pix', {}),  # VLU-Net / PromptIR's model
    ('DegradationCLIPModel', {'type': 'DegradationCLIP', 'prompts': PROMPTS[:2], 'pretrained': None,
                              'clip_config': TINY_CLIP}, 'l_ce', {'optim_g': {'type': 'Adam', 'lr': 1e-4}}),
])
def test_bf16_training_runs_in_bf16_and_its_loss_falls(tmp_path, model_type, network, key, extra):
    torch.manual_seed(0)
    model = build_model(model_options(tmp_path, model_type, network, amp='bf16', **extra))
    net = model.get_bare_model(model.net_clip if model_type == 'DegradationCLIPModel' else model.net_g)
    dtypes = record_dtypes(net)
    data = batch(size=64 if model_type == 'DegradationCLIPModel' else 16, labels=True)
    losses = []
    for it in range(1, 7):
        model.feed_data(data)
        model.optimize_parameters(it)
        losses.append(model.log_dict[key])
    assert torch.bfloat16 in dtypes  # the forward ran under autocast ...
    assert all(p.dtype == torch.float32 for p in net.parameters())  # ... on float32 master weights
    assert not model.grad_scaler.is_enabled()  # bf16 needs no loss scaling
    assert losses[-1] < 0.8 * losses[0], losses


def test_fp16_training_uses_the_grad_scaler_and_keeps_the_nan_check(tmp_path):
    model = build_model(model_options(tmp_path, 'AllInOneModel', dict(NET), amp='fp16',
                                      grad_scaler={'init_scale': 2.0**24, 'growth_interval': 2}))
    assert model.grad_scaler.is_enabled()
    for it in range(1, 5):
        model.feed_data(batch())
        model.optimize_parameters(it)
    assert model.grad_scaler.get_scale() < 2.0**24  # the first steps overflowed in fp16 and backed off
    bad = batch()
    bad['lq'][0, 0, 0, 0] = float('nan')
    model.feed_data(bad)
    with pytest.raises(FloatingPointError, match='non-finite loss'):
        model.optimize_parameters(5)


def test_bad_amp_values_name_the_option(tmp_path):
    with pytest.raises(ValueError, match='train.amp'):
        build_model(model_options(tmp_path, 'AllInOneModel', dict(NET), amp='int8'))
    with pytest.raises(ValueError, match='train.grad_scaler'):
        build_model(model_options(tmp_path, 'AllInOneModel', dict(NET), amp='fp16', grad_scaler={'scale': 2}))


def test_val_precision_runs_inference_in_bf16_with_float_output(tmp_path):
    opt = model_options(tmp_path, 'AirNetModel', dict(AIRNET))
    opt['val']['precision'] = 'bf16'
    model = build_model(opt)
    dtypes = record_dtypes(model.net_g)
    model.feed_data(batch())
    model.test()
    assert torch.bfloat16 in dtypes and model.output.dtype == torch.float32


def test_grad_scaler_state_round_trips_through_the_training_state(tmp_path):
    opt = model_options(tmp_path, 'AllInOneModel', dict(NET), amp='fp16',
                        grad_scaler={'init_scale': 2.0**24, 'growth_interval': 2})
    model = build_model(opt)
    for it in range(1, 4):
        model.feed_data(batch())
        model.optimize_parameters(it)
    model.save_training_state(0, 3)
    state = torch.load(tmp_path / '3.state', weights_only=True)
    assert state['grad_scaler'] == model.grad_scaler.state_dict() and state['grad_scaler']['scale'] != 2.0**24
    resumed = build_model(opt)
    resumed.resume_training(state)
    assert resumed.grad_scaler.state_dict() == model.grad_scaler.state_dict()


def fp16_options(root, name):
    """The SIGKILL test's tiny VLU-Net run in fp16, with a scaler whose scale moves every few iterations."""
    opt = training_options(root, name, total_iter=TOTAL)
    opt['train'].update(amp='fp16', grad_scaler={'init_scale': 2.0**24, 'growth_interval': 2})
    return opt


def test_fp16_grad_scaler_state_survives_sigkill_and_auto_resume(image_pairs):
    root = image_pairs
    # generous timeouts: this machine's load, not the run, decides how long a tiny run takes
    run_vlu(['train', '-opt', write_options(root / 'ref.yml', fp16_options(root, 'ref'))], cwd=root, timeout=900)
    ref_exp = root / 'experiments' / 'ref'
    ref_losses = logged_losses(read_log(ref_exp))
    assert sorted(ref_losses) == list(range(1, TOTAL + 1))

    opt_path = write_options(root / 'killed.yml', fp16_options(root, 'killed'))
    exp = root / 'experiments' / 'killed'
    states = train_then_kill(opt_path, root, exp, timeout=900)
    assert states and states[-1] < TOTAL, f'the run finished before it could be killed: {states}'
    saved = torch.load(exp / 'training_states' / f'{states[-1]}.state', weights_only=True)['grad_scaler']
    assert saved['scale'] != 2.0**24  # the state holds a scale the run moved, which a fresh scaler would not have

    run_vlu(['train', '-opt', opt_path, '--auto_resume'], cwd=root, timeout=900)
    losses = logged_losses(read_log(exp))
    later = list(range(states[-1] + 1, TOTAL + 1))
    assert [losses[it] for it in later] == [ref_losses[it] for it in later]
    final = torch.load(exp / 'training_states' / f'{TOTAL}.state', weights_only=True)['grad_scaler']
    expected = torch.load(ref_exp / 'training_states' / f'{TOTAL}.state', weights_only=True)['grad_scaler']
    assert final == expected
    weights = torch.load(exp / 'models' / f'net_g_{TOTAL}.pth', weights_only=True)['params']
    reference = torch.load(ref_exp / 'models' / f'net_g_{TOTAL}.pth', weights_only=True)['params']
    assert all(torch.equal(weights[k], reference[k]) for k in reference)


def test_compile_keeps_checkpoint_keys(tmp_path):
    # aot_eager: dynamo and AOT autograd as with the default backend, without minutes of C++ compilation
    net = {'type': 'TinyConvNet', 'compile': {'backend': 'aot_eager'}}
    model = build_model(model_options(tmp_path, 'AllInOneModel', net))
    bare = model.get_bare_model(model.net_g)
    assert isinstance(bare, TinyConvNet) and bare._compiled_call_impl is not None
    for it in (1, 2):
        model.feed_data(batch())
        model.optimize_parameters(it)
    model.save(0, 2)
    saved = torch.load(tmp_path / 'net_g_2.pth', weights_only=True)['params']
    assert set(saved) == set(TinyConvNet().state_dict())  # no _orig_mod. prefixes


def test_compile_without_a_compiler_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv('CXX', raising=False)
    monkeypatch.setattr(precision.shutil, 'which', lambda name: None)
    with pytest.raises(RuntimeError, match='train.compile.*C\\+\\+ compiler'):
        build_model(model_options(tmp_path, 'AllInOneModel', {'type': 'TinyConvNet'}, compile=True))


def test_restore_precision_bf16_is_close_to_fp32(trained, tmp_path):
    import cv2
    from conftest import write_images

    from vlu_cli import main
    write_images(tmp_path / 'in', 1, size=(24, 32))
    outputs = {}
    for name in ('fp32', 'bf16'):
        args = ['restore', '-opt', str(trained / 'test.yml'), '--clip', str(trained / 'clip.pth'), str(tmp_path / 'in'),
                str(tmp_path / name), '--precision', name]
        assert main(args) == 0
        outputs[name] = cv2.imread(str(tmp_path / name / 'img000.png')).astype(int)
    diff = abs(outputs['fp32'] - outputs['bf16'])
    assert 0 < diff.max() <= 24, diff.max()  # bf16 really ran, and stayed close to fp32


def test_bench_prints_precision_and_the_airnet_reference(tmp_path, capsys):
    import csv

    from vlu_cli import main
    out = tmp_path / 'bench.csv'
    assert main(['bench', '--quick', '--arch', 'AirNet', '--threads', '1', '--runs', '1', '--warmup', '0',
                 '--precision', 'bf16', '--no-backward', '--csv', str(out)]) == 0
    with open(out) as f:
        rows = {r['arch']: r for r in csv.DictReader(f)}
    assert set(rows) == {'AirNet', 'AirNet (torchvision dcn)'}
    assert {r['precision'] for r in rows.values()} == {'bf16'} and rows['AirNet']['compile'] == 'False'
    # the two kernels agree to fp32 rounding, but the bf16 layers around them round it to bf16's 2**-8
    assert float(rows['AirNet']['speedup_fwd']) > 0 and float(rows['AirNet']['max_abs_diff']) < 2 ** -5
    assert ' bf16 ' in capsys.readouterr().out
