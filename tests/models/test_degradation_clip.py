"""DegradationCLIP (tiny open_clip config, CPU), its training model, VLUNetModel's use of it, release checkpoints."""
import os
import subprocess
import sys

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # guard: nothing here may download

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402

import vlu_plugin  # noqa: E402,F401  (before basicsr)
from toy_degradation_data import PROMPTS, toy_batch  # noqa: E402
from vlu_plugin.archs.degradation_clip_arch import DegradationCLIP, cached_pretrained_file  # noqa: E402
from vlu_plugin.utils.checkpoints import convert_official  # noqa: E402
from vlu_plugin.models.degradation_clip_model import read_degradation_clip_weights  # noqa: E402

from conftest import TESTS as TESTS_DIR  # noqa: E402  (toy_degradation_data lives there)
from conftest import TINY_CLIP  # noqa: E402  (the shared tiny CLIP; other test modules import it from here too)


def tiny_clip(**kwargs):
    """A DegradationCLIP on the tiny config with the toy prompts (random backbone unless told otherwise)."""
    opts = dict(prompts=PROMPTS, pretrained=None, clip_config=TINY_CLIP)
    opts.update(kwargs)
    return DegradationCLIP(**opts)


def train_steps(net, images, labels, steps, lr=1e-3):
    """Adam on the trainable parameters; returns the cross-entropy before each step."""
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_shapes_and_preprocessing():
    torch.manual_seed(0)
    net = tiny_clip().eval()
    images = torch.rand(3, 3, 50, 81)  # any size: resized and centre-cropped to 64×64 inside
    with torch.no_grad():
        assert net.embed(images).shape == (3, 64)
        assert net.text_embeddings().shape == (2, 64)
        logits = net.logits(images)
        assert logits.shape == (3, 2) and torch.equal(net(images), logits)
        assert torch.allclose(logits, net.embed(images) @ net.text_embeddings().t())
        probs = net.classify(images)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3))
    assert net.preprocess(images).shape == (3, 3, 64, 64)
    # release adapter layout: indices 0,1,3,4,6,7 hold weights
    assert {k.split('.')[0] for k in net.image_adapter.state_dict()} == {'0', '1', '3', '4', '6', '7'}


def test_frozen_backbone_stays_frozen_and_adapters_learn():
    torch.manual_seed(0)
    net = tiny_clip()
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    images, labels = toy_batch(16, seed=0)
    losses = train_steps(net, images, labels, steps=10)
    print(f'frozen backbone, adapters only: cross-entropy {losses[0]:.4f} -> {losses[-1]:.4f}')
    assert all(not p.requires_grad and p.grad is None for p in net.backbone.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.backbone.state_dict().items())
    assert not net.backbone.training  # a frozen backbone stays in eval mode
    assert losses[-1] < 0.1 * losses[0]
    val_images, val_labels = toy_batch(16, seed=5)
    net.eval()
    with torch.no_grad():
        accuracy = (net.classify(val_images).argmax(dim=1) == val_labels).float().mean().item()
    print(f'held-out accuracy: {accuracy:.3f}')
    assert accuracy == 1.0


def test_learnable_state_round_trip_and_trainable_backbone(tmp_path):
    torch.manual_seed(0)
    images, labels = toy_batch(8, seed=1)
    # random backbone: its weights are part of the learnable state, so embeddings reproduce exactly
    net = tiny_clip(train_backbone=True)
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    train_steps(net, images, labels, steps=2)
    assert any(not torch.equal(before[k], v) for k, v in net.backbone.state_dict().items())
    state = net.learnable_state_dict()
    assert any(k.startswith('backbone.') for k in state)
    copy = tiny_clip().load_learnable(state)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(copy.eval().embed(images), net.embed(images), atol=1e-6)

    # pretrained (here: a local file) and frozen: only the adapters (and prompt tokens) are saved
    backbone_file = tmp_path / 'tiny_backbone.pt'
    torch.save(net.backbone.state_dict(), backbone_file)
    pretrained = tiny_clip(pretrained=str(backbone_file))
    assert torch.equal(pretrained.backbone.positional_embedding, net.backbone.positional_embedding)
    assert {k.split('.')[0] for k in pretrained.learnable_state_dict()} == {'image_adapter', 'text_adapter',
                                                                             'prompt_tokens'}


def test_prompt_and_label_mismatches_raise_clear_errors():
    with pytest.raises(ValueError, match='num_classes=3 but 2 prompts'):
        tiny_clip(num_classes=3)
    net = tiny_clip()
    with pytest.raises(ValueError, match='label 2 out of range for 2 prompts'):
        net.check_labels(torch.tensor([0, 2]))
    other = tiny_clip(prompts=['image with haze', 'image with low light'])
    with pytest.raises(ValueError, match='trained with the prompts'):
        other.load_learnable(net.learnable_state_dict())


def test_pretrained_tags_never_download(tmp_path, monkeypatch):
    import huggingface_hub
    import open_clip.pretrained

    def forbidden(*args, **kwargs):
        raise AssertionError('attempted a download')

    for module, name in ((open_clip.pretrained, 'download_pretrained_from_url'),
                         (open_clip.pretrained, 'download_pretrained_from_hf'), (huggingface_hub, 'hf_hub_download')):
        monkeypatch.setattr(module, name, forbidden)
    with pytest.raises(ValueError, match="'no_such_tag' is neither an existing file nor an open_clip tag"):
        DegradationCLIP(prompts=PROMPTS, pretrained='no_such_tag')
    with pytest.raises(FileNotFoundError, match='laion2b_s34b_b79k.*not in the local cache.*pretrained: /path'):
        DegradationCLIP(prompts=PROMPTS, pretrained='laion2b_s34b_b79k', cache_dir=str(tmp_path))
    # a tag already in a Hugging Face cache is found there, without the network
    repo = tmp_path / 'models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text('0123abcd')
    weights = repo / 'snapshots' / '0123abcd' / 'open_clip_model.safetensors'
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b'stand-in')
    assert cached_pretrained_file('ViT-B-32', 'laion2b_s34b_b79k', str(tmp_path)) == str(weights)


def release_layout(net, lightning=False):
    """`net`'s adapters as the release stores them: clip_tuned.pth, or inside the VLU-Net Lightning checkpoint."""
    renames = {'image_adapter.': 'ad_imageEncoder.adapter.', 'text_adapter.': 'ad_textEncoder.adapter.'}
    adapters = {renames[k[:k.index('.') + 1]] + k[k.index('.') + 1:]: v.clone()
                for k, v in net.state_dict().items() if k.startswith(tuple(renames))}
    if not lightning:
        return {'epoch': 90, 'learnable_params': adapters}
    state = {f'model_degradation.{k}': v for k, v in adapters.items()}
    state['model_degradation.ad_imageEncoder.clip_model.logit_scale'] = torch.tensor(4.6)  # the frozen CLIP: dropped
    state['net.output.weight'] = torch.zeros(3, 96, 3, 3)  # the restoration network: dropped
    return {'epoch': 150, 'state_dict': state}


@pytest.mark.parametrize('lightning', [False, True])
def test_release_checkpoints_convert_and_reproduce_embeddings(tmp_path, lightning):
    torch.manual_seed(0)
    trained = tiny_clip().eval()
    path = tmp_path / ('vlunet.ckpt' if lightning else 'clip_tuned.pth')
    torch.save(release_layout(trained, lightning), path)

    converted = convert_official('DegradationCLIP', torch.load(path, weights_only=True))
    assert set(converted) == {k for k in trained.state_dict() if k.startswith(('image_adapter.', 'text_adapter.'))}
    fresh = tiny_clip().eval()
    fresh.backbone.load_state_dict(trained.backbone.state_dict())  # the release's backbone is the pretrained CLIP
    fresh.load_learnable(read_degradation_clip_weights(str(path)))
    images = toy_batch(4, seed=2)[0]
    with torch.no_grad():
        assert torch.allclose(fresh.embed(images), trained.embed(images), atol=1e-6)
        assert torch.allclose(fresh.logits(images), trained.logits(images), atol=1e-5)


def test_vlunet_model_uses_the_frozen_clip(tmp_path):
    from basicsr.models import build_model
    torch.manual_seed(0)
    clip = tiny_clip().eval()
    path = tmp_path / 'clip_tuned.pth'
    torch.save({'params': clip.learnable_state_dict()}, path)
    clip_block = {'type': 'DegradationCLIP', 'prompts': PROMPTS, 'pretrained': None, 'clip_config': TINY_CLIP}
    opt = {'model_type': 'VLUNetModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': {'type': 'VLUNet', 'de_dim': 2, 'dim': 12, 'num_blocks': [1, 1, 1, 1],
                         'num_refinement_blocks': 1, 'heads': [1, 1, 2, 2], 'clip_dim': 64},
           'degradation_clip': clip_block, 'path': {'pretrain_network_degradation_clip': str(path)}}
    model = build_model(opt)
    assert all(not p.requires_grad for p in model.net_clip.parameters()) and not model.net_clip.training
    assert not any('adapter' in k or 'backbone' in k for k in model.net_g.state_dict())
    images = toy_batch(2, size=(32, 32))[0]
    (vector, ) = model.condition(images)
    assert vector.shape == (2, 64) and not vector.requires_grad
    assert torch.allclose(vector, clip.embed(images), atol=1e-6)
    assert model.degradation_probabilities(images).shape == (2, 2)
    # training with a context view (`context_size`): the CLIP judges the context, the network restores the patch
    context, seen = toy_batch(2, size=(64, 64))[0], []
    model.net_g = lambda lq, vector: seen.append((lq, vector)) or lq
    model.compute_losses = dict
    model.feed_data({'lq': images, 'gt': images, 'lq_context': context})
    model.training_losses(1)
    assert seen[0][0] is model.lq and torch.allclose(seen[0][1], clip.embed(context), atol=1e-6)

    opt['network_g']['clip_dim'] = 32
    with pytest.raises(ValueError, match='clip_dim is 32 but the degradation CLIP embeds in 64'):
        build_model(opt)


# ---- whole BasicSR pipelines, each in its own process (BasicSR's logger is a per-process singleton) ----
RUNNER = """import sys
sys.path.insert(0, {tests!r})
import vlu_plugin  # noqa: F401
import toy_degradation_data
toy_degradation_data.register()
from vlu_cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_with_toy_data(args, cwd, timeout=180):
    """`vlu <args>` in `cwd` with ToyDegradationDataset registered; returns the merged log."""
    runner = cwd / 'run_vlu_toy.py'
    runner.write_text(RUNNER.format(tests=TESTS_DIR))
    # one thread: these models are tiny, and on a busy 2-core machine two OpenMP threads mostly wait for each other
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    proc = subprocess.run([sys.executable, str(runner), *args], cwd=cwd, env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, f'vlu {" ".join(args)} failed:\n{proc.stdout[-4000:]}'
    return proc.stdout


def toy_set(name, num, seed, size=(48, 40), **loader):
    """A ToyDegradationDataset block."""
    return {'name': name, 'type': 'ToyDegradationDataset', 'num': num, 'seed': seed, 'size': list(size), **loader}


def clip_training_options(backbone_file, total_iter):
    """DegradationCLIPModel on the toy data: frozen 'pretrained' tiny backbone, two validation sets."""
    return {
        'name': 'toy_clip', 'model_type': 'DegradationCLIPModel', 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': toy_set('toy_train', 64, 0, use_shuffle=True, num_worker_per_gpu=0, batch_size_per_gpu=8,
                             dataset_enlarge_ratio=1, prefetch_mode=None),
            'val_1': toy_set('toy_val_a', 6, 1), 'val_2': toy_set('toy_val_b', 4, 2, size=(30, 70)),
        },
        'network_clip': {'type': 'DegradationCLIP', 'prompts': PROMPTS, 'num_classes': 2, 'clip_config': TINY_CLIP,
                         'pretrained': str(backbone_file), 'train_backbone': False},
        'path': {'pretrain_network_clip': None, 'resume_state': None},
        'train': {'optim_clip': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': total_iter, 'warmup_iter': -1},
        'val': {'val_freq': 10, 'save_img': False},
        'logger': {'print_freq': 5, 'save_checkpoint_freq': 5, 'use_tb_logger': False},
    }


def write_options(path, opt):
    """Write `opt` as YAML to `path`; returns the path as a string."""
    path.write_text(yaml.safe_dump(opt))
    return str(path)


def read_csv(path):
    """The rows of a CSV file with a header, as dicts."""
    import csv
    with open(path) as f:
        return list(csv.DictReader(f))


def test_clip_training_resume_then_vlunet_training(tmp_path):
    torch.manual_seed(0)
    backbone_file = tmp_path / 'tiny_backbone.pt'  # stands in for pretrained open_clip weights
    torch.save(tiny_clip().backbone.state_dict(), backbone_file)

    log = run_with_toy_data(['train', '-opt', write_options(tmp_path / 'clip10.yml',
                                                            clip_training_options(backbone_file, 10))], tmp_path)
    exp = tmp_path / 'experiments' / 'toy_clip'
    saved = torch.load(exp / 'models' / 'net_clip_10.pth', weights_only=True)
    assert {k.split('.')[0] for k in saved['params']} == {'image_adapter', 'text_adapter', 'prompt_tokens'}
    assert (exp / 'models' / 'net_clip_10.pth').stat().st_size < 300_000  # adapters only: no backbone
    assert 'l_ce:' in log and 'train_acc:' in log and 'Validation toy_val_b' in log and 'Validation overall' in log
    rows = [r for r in read_csv(exp / 'metrics.csv') if r['metric'] == 'degradation_acc']
    print('CLIP validation accuracy:', [(r['iter'], r['dataset'], r['value']) for r in rows])
    assert {r['dataset'] for r in rows} == {'toy_val_a', 'toy_val_b', 'overall'}
    assert float(rows[-1]['value']) == 1.0 and rows[-1]['dataset'] == 'overall'
    assert len(read_csv(exp / 'degradation_predictions.csv')) == 2 * (6 + 4)  # iter 10 and the final round

    # BasicSR's auto-resume finds net_clip_10.pth through path.pretrain_network_clip and continues to 15
    log = run_with_toy_data(['train', '-opt', write_options(tmp_path / 'clip15.yml',
                                                            clip_training_options(backbone_file, 15)),
                             '--auto_resume'], tmp_path)
    assert 'Resuming training from epoch' in log and 'iter: 10' in log, log[-3000:]
    assert 'Loaded DegradationCLIP weights from' in log and 'net_clip_10.pth' in log
    assert (exp / 'models' / 'net_clip_15.pth').is_file()

    # VLU-Net trains with the fine-tuned CLIP frozen beside it and reports the CLIP's accuracy
    clip_block = clip_training_options(backbone_file, 0)['network_clip']
    vlunet = {
        'name': 'toy_vlunet', 'model_type': 'VLUNetModel', 'num_gpu': 0, 'manual_seed': 0,
        # batch 1 at the validation size: CPU convolutions pay a warm-up per input shape
        'datasets': {'train': toy_set('toy_pairs', 2, 3, size=(32, 32), use_shuffle=True, num_worker_per_gpu=0,
                                      batch_size_per_gpu=1, dataset_enlarge_ratio=1, prefetch_mode=None),
                     'val_1': toy_set('toy_pairs_val', 4, 4, size=(32, 32))},
        'network_g': {'type': 'VLUNet', 'de_dim': 2, 'dim': 12, 'num_blocks': [1, 1, 1, 1],
                      'num_refinement_blocks': 1, 'heads': [1, 1, 2, 2], 'clip_dim': 64},
        'degradation_clip': clip_block,
        'path': {'pretrain_network_g': None, 'resume_state': None,
                 'pretrain_network_degradation_clip': str(exp / 'models' / 'net_clip_latest.pth')},
        'train': {'optim_g': {'type': 'AdamW', 'lr': 2e-4}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [100]},
                  'total_iter': 1, 'warmup_iter': -1, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}},
        'val': {'val_freq': 10, 'save_img': False, 'metrics': {'psnr': {'type': 'calculate_psnr_float'}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 1, 'use_tb_logger': False},
    }
    log = run_with_toy_data(['train', '-opt', write_options(tmp_path / 'vlunet.yml', vlunet)], tmp_path)
    exp = tmp_path / 'experiments' / 'toy_vlunet'
    net_g = torch.load(exp / 'models' / 'net_g_1.pth', weights_only=True)['params']
    assert not any('adapter' in k or 'backbone' in k for k in net_g)
    accuracy = [r for r in read_csv(exp / 'metrics.csv') if r['metric'] == 'degradation_acc']
    print('VLUNetModel validation degradation_acc:', [(r['iter'], r['value']) for r in accuracy])
    assert accuracy and float(accuracy[-1]['value']) == 1.0
