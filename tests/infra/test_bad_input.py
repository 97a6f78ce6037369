"""The bad-input matrix (issue #8): each case stops with an error naming the offending file or option, and a
failed rebuild or overwrite leaves what was written before intact. Odd but valid inputs (grey, alpha,
16-bit, palette images; crops that are not multiples of 8) are converted or accepted, not rejected.

Further `bad_input` cases live beside the code they test: tests/data/test_data_dataset.py (missing clean
partner, LMDB without a partner, size mismatch, undecodable file, image smaller than gt_size, empty
folder, unknown task and misspelled dataset keys, option values) and tests/data/test_data_tasks.py.
Everything here runs in-process on images of 16 to 64 pixels.
"""
import argparse
import hashlib
import os

import cv2
import numpy as np
import pytest
import torch

import vlu_plugin  # noqa: F401  (shims before basicsr)
from basicsr.data import build_dataset
from basicsr.models import build_model
from conftest import TINY_VLUNET, write_images
from test_degradation_clip import TINY_CLIP, tiny_clip
from toy_degradation_data import PROMPTS
from vlu_plugin.utils.checkpoints import load_checkpoint, save_checkpoint
from vlu_plugin.data.image_io import read_image, write_lmdb
from vlu_plugin.models.base import build_network  # BasicSR's, with errors naming unknown keys

NET = {'type': 'VLUNet', **TINY_VLUNET, 'de_dim': 2, 'clip_dim': 64}
CLIP_BLOCK = {'type': 'DegradationCLIP', 'prompts': PROMPTS, 'pretrained': None, 'clip_config': TINY_CLIP}


# ---- helpers -------------------------------------------------------------------------------------------
def make(**opt):
    """A MultiDegradationDataset from keyword options (phase train unless told)."""
    opt.setdefault('name', 'bad')
    opt.setdefault('phase', 'train')
    return build_dataset(dict(opt, type='MultiDegradationDataset'))


def write(path, img):
    """cv2.imwrite that creates the folder and fails loudly; returns the path as a string."""
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return str(path)


def pairs(tmp_path, names=('a', 'b'), size=(40, 48)):
    """lq/gt folders of identical tiny PNG pairs; returns a derain task block reading them."""
    for i, name in enumerate(names):
        img = np.full((*size, 3), 40 * i + 20, np.uint8)
        write(tmp_path / 'lq' / f'{name}.png', img)
        write(tmp_path / 'gt' / f'{name}.png', img)
    return {'name': 'derain', 'dataroot_lq': str(tmp_path / 'lq'), 'dataroot_gt': str(tmp_path / 'gt')}


def snapshot(folder):
    """{relative path: sha256} of every file under `folder`: 'nothing was lost or changed' in one comparison."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                found[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return found


def digest(path):
    """sha256 of a file's bytes."""
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def lmdb_pair(tmp_path, names=('a', 'b')):
    """lq and gt LMDBs (same keys) of tiny pairs; returns a derain task block reading them."""
    pairs(tmp_path, names)
    for role in ('lq', 'gt'):
        write_lmdb(str(tmp_path / role), [f'{n}.png' for n in names], list(names), str(tmp_path / f'{role}.lmdb'))
    return {'name': 'derain', 'io_backend': {'type': 'lmdb'}, 'dataroot_lq': str(tmp_path / 'lq.lmdb'),
            'dataroot_gt': str(tmp_path / 'gt.lmdb')}


def model_options(tmp_path, model_type='AllInOneModel', is_train=True, **extra):
    """In-process BasicSR model options for a tiny VLUNet trained with Adam + L1."""
    opt = {'name': 'bad', 'model_type': model_type, 'num_gpu': 0, 'is_train': is_train, 'dist': False, 'rank': 0,
           'world_size': 1, 'scale': 1, 'network_g': dict(NET),
           'path': {'models': str(tmp_path / 'models'), 'pretrain_network_g': None, 'strict_load_g': True}}
    if is_train:
        opt['train'] = {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'pixel_opt': {'type': 'L1Loss'},
                        'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}}
    opt.update(extra)
    return opt


@pytest.fixture(scope='module')
def clip_file(tmp_path_factory):
    """The learnable state of the tiny two-prompt DegradationCLIP, as `net_clip_<iter>.pth` holds it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('clip') / 'net_clip_1.pth'
    torch.save({'params': tiny_clip().learnable_state_dict()}, path)
    return str(path)


def vlunet_options(tmp_path, clip_path, clip_block=None):
    """VLUNetModel (test mode) with the tiny CLIP block and its weights file."""
    return model_options(tmp_path, 'VLUNetModel', is_train=False, degradation_clip=dict(clip_block or CLIP_BLOCK),
                         path={'pretrain_network_g': None, 'pretrain_network_degradation_clip': clip_path})


# ---- images --------------------------------------------------------------------------------------------
def test_bad_input_truncated_png(tmp_path):
    task = pairs(tmp_path)
    whole = (tmp_path / 'lq' / 'b.png').read_bytes()
    (tmp_path / 'lq' / 'b.png').write_bytes(whole[:len(whole) // 2])
    ds = make(phase='val', tasks=[task])
    assert ds[0]['lq'].shape == (3, 40, 48)  # the intact pair still reads
    with pytest.raises(ValueError, match=r'unreadable image .*lq/b\.png: .*truncated'):
        ds[1]


def test_bad_input_truncated_png_keeps_the_existing_lmdb(tmp_path):
    pairs(tmp_path)
    target = str(tmp_path / 'gt.lmdb')
    write_lmdb(str(tmp_path / 'gt'), ['a.png', 'b.png'], ['a', 'b'], target)
    before = snapshot(target)
    whole = (tmp_path / 'gt' / 'b.png').read_bytes()
    (tmp_path / 'gt' / 'b.png').write_bytes(whole[:len(whole) // 2])  # its header still says PNG
    with pytest.raises(ValueError, match=r'unreadable image .*gt/b\.png.*gt\.lmdb was not written or changed'):
        write_lmdb(str(tmp_path / 'gt'), ['a.png', 'b.png'], ['a', 'b'], target, overwrite=True)
    assert snapshot(target) == before
    assert sorted(os.listdir(tmp_path)) == ['gt', 'gt.lmdb', 'lq']  # no half-built LMDB left beside it
    with pytest.raises(FileExistsError, match=r'gt\.lmdb exists; remove it or pass --overwrite'):
        write_lmdb(str(tmp_path / 'lq'), ['a.png'], ['a'], target)
    assert snapshot(target) == before


def test_bad_input_prepare_lmdb_of_a_non_image_or_an_empty_folder(tmp_path, capsys):
    from vlu_cli import main
    pairs(tmp_path)
    target = str(tmp_path / 'gt.lmdb')
    assert main(['prepare', 'lmdb', str(tmp_path / 'gt'), target]) == 0
    before = snapshot(target)
    (tmp_path / 'gt' / 'notes.png').write_text('a text file with an image extension')
    assert main(['prepare', 'lmdb', str(tmp_path / 'gt'), target, '--overwrite']) == 2
    err = capsys.readouterr().err
    assert f'unreadable image {tmp_path / "gt" / "notes.png"}: not a decodable image file' in err
    assert f'{target} was not written or changed' in err
    (tmp_path / 'empty').mkdir()
    assert main(['prepare', 'lmdb', str(tmp_path / 'empty'), target, '--overwrite']) == 2
    assert f'no images under {tmp_path / "empty"}' in capsys.readouterr().err
    assert snapshot(target) == before


def test_bad_input_nan_pixels_in_a_float_image(tmp_path):
    img = np.full((16, 16, 3), 0.5, np.float32)
    img[3, 4, 1] = np.nan
    path = write(tmp_path / 'hdr.tif', img)
    with pytest.raises(ValueError, match=r'unreadable image .*hdr\.tif: it holds NaN or infinite pixel values'):
        read_image(path)


def _formats():
    """(name, writer(path, base uint8 RGB) -> expected float RGB)."""
    from PIL import Image

    def grey(path, base):
        write(path, base[:, :, 0])
        return np.repeat(base[:, :, :1], 3, axis=2) / 255.

    def grey16(path, base):
        write(path, base[:, :, 0].astype(np.uint16) * 257)
        return np.repeat(base[:, :, :1], 3, axis=2) / 255.

    def grey_alpha(path, base):
        Image.fromarray(np.dstack([base[:, :, 0], np.full(base.shape[:2], 9, np.uint8)]), 'LA').save(path)
        return np.repeat(base[:, :, :1], 3, axis=2) / 255.

    def rgba(path, base):
        write(path, np.dstack([base[:, :, ::-1], np.full(base.shape[:2], 7, np.uint8)]))
        return base / 255.

    def rgb16(path, base):
        write(path, base[:, :, ::-1].astype(np.uint16) * 257)
        return base / 255.

    def rgba16(path, base):
        write(path, np.dstack([base[:, :, ::-1], np.full(base.shape[:2], 3, np.uint8)]).astype(np.uint16) * 257)
        return base / 255.

    def palette(path, base):
        Image.fromarray(base).convert('P').save(path)
        with Image.open(path) as im:
            return np.asarray(im.convert('RGB')) / 255.  # the palette's colours, not the originals

    return {f.__name__: f for f in (grey, grey16, grey_alpha, rgba, rgb16, rgba16, palette)}


@pytest.mark.parametrize('kind', sorted(_formats()))
def test_bad_input_odd_pixel_formats_are_converted_not_rejected(tmp_path, kind):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (24, 32, 3)).astype(np.uint8)  # RGB
    path = str(tmp_path / 'gt' / f'{kind}.png')
    os.makedirs(os.path.dirname(path))
    expected = _formats()[kind](path, base).astype(np.float32)
    write(tmp_path / 'lq' / f'{kind}.png', base[:, :, ::-1])  # a plain RGB partner
    task = {'name': 'derain', 'dataroot_lq': str(tmp_path / 'lq'), 'dataroot_gt': str(tmp_path / 'gt')}
    # a training crop as large as the image, unaugmented, must be the image itself
    for ds in (make(phase='val', tasks=[task]), make(tasks=[task], gt_size=24, use_hflip=False, use_rot=False)):
        sample = ds[0]
        gt = sample['gt']
        assert gt.dtype == torch.float32 and gt.shape[0] == 3 and 0 <= gt.min() and gt.max() <= 1
        got = gt.permute(1, 2, 0).numpy()
        # the training crop starts at a random column of the 32 px: compare against the matching window
        left = next(x for x in range(32 - got.shape[1] + 1) if np.allclose(got, expected[:, x:x + got.shape[1]],
                                                                             atol=1e-6))
        assert np.allclose(got, expected[:, left:left + got.shape[1]], atol=1e-6)


# ---- pairs and folders ---------------------------------------------------------------------------------
def test_bad_input_missing_degraded_partner(tmp_path):
    task = pairs(tmp_path)
    write(tmp_path / 'gt' / 'lonely.png', np.zeros((40, 48, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"task 'derain': clean image .*gt/lonely\.png has no degraded "
                                                r"partner in .*lq"):
        make(phase='val', tasks=[task])
    (tmp_path / 'list.txt').write_text('./lq/a.png, ./gt/a.png\n./lq/gone.png, ./gt/b.png\n')
    with pytest.raises(FileNotFoundError, match=r'list\.txt line 2: degraded partner .*lq/gone\.png does not exist'):
        make(phase='val', tasks=[{'name': 'derain', 'meta_info_file': str(tmp_path / 'list.txt')}])


@pytest.mark.parametrize('case', ['scale', 'io_backend_type', 'layout', 'lq_without_gt', 'list_line'])
def test_bad_input_dataset_option_values(tmp_path, case):
    task = pairs(tmp_path)
    (tmp_path / 'list.txt').write_text('./lq/a.png, ./gt/a.png, ./gt/b.png\n')
    opt, message = {
        'scale': ({'tasks': [task], 'scale': 4}, r'scale is 4: .*scale 1'),
        'io_backend_type': ({'tasks': [dict(task, io_backend={'type': 'memcached'})]},
                            r"task 'derain': io_backend type 'memcached' is not supported; use 'disk' or 'lmdb'"),
        'layout': ({'tasks': [{'name': 'derain', 'root': str(tmp_path), 'layout': 'rain200h'}]},
                   r"unknown layout 'rain200h'; known layouts: .*rain100l"),
        'lq_without_gt': ({'tasks': [{'name': 'derain', 'dataroot_lq': task['dataroot_lq']}]},
                          r"task 'derain': dataroot_lq .*lq needs a dataroot_gt"),
        'list_line': ({'tasks': [{'name': 'derain', 'meta_info_file': str(tmp_path / 'list.txt')}]},
                      r'list\.txt line 1: expected "degraded, clean"'),
    }[case]
    with pytest.raises(ValueError, match=message):
        make(phase='val', **opt)


# ---- corrupt LMDBs -------------------------------------------------------------------------------------
def test_bad_input_lmdb_bad_meta_info_line(tmp_path):
    task = lmdb_pair(tmp_path)
    meta = tmp_path / 'lq.lmdb' / 'meta_info.txt'
    meta.write_text(meta.read_text().replace('b.png (40,48,3) 1', 'b png 40 48'))
    with pytest.raises(ValueError, match=r'lq\.lmdb/meta_info\.txt line 2: expected .*got \'b png 40 48\''):
        make(phase='val', tasks=[task])


def test_bad_input_lmdb_missing_key(tmp_path):
    task = lmdb_pair(tmp_path)
    for role in ('lq', 'gt'):  # listed in both meta_info files, stored in neither data file
        with open(tmp_path / f'{role}.lmdb' / 'meta_info.txt', 'a') as f:
            f.write('c.png (40,48,3) 1\n')
    ds = make(phase='val', tasks=[task])
    assert ds[1]['gt'].shape == (3, 40, 48)
    with pytest.raises(FileNotFoundError, match=r"LMDB .*gt\.lmdb has no key 'c', though its meta_info\.txt"):
        ds[2]


def test_bad_input_lmdb_truncated_data_file(tmp_path):
    # without the size check this case kills the process with SIGBUS at the first read
    task = lmdb_pair(tmp_path)
    data = tmp_path / 'gt.lmdb' / 'data.mdb'
    size = data.stat().st_size
    with open(data, 'r+b') as f:
        f.truncate(size // 2)
    with pytest.raises(ValueError, match=r'LMDB .*gt\.lmdb: data\.mdb is truncated \(\d+ bytes, its pages need '
                                         rf'{size}\)'):
        make(phase='val', tasks=[task])
    data.write_bytes(b'')
    with pytest.raises(ValueError, match=r'LMDB .*gt\.lmdb: cannot open its data\.mdb'):
        make(phase='val', tasks=[task])


# ---- options -------------------------------------------------------------------------------------------
def test_bad_input_misspelled_network_g_key(tmp_path):
    opt = model_options(tmp_path)
    opt['network_g'] = dict(NET, dimm=16)
    with pytest.raises(ValueError, match=r"network VLUNet: unknown option 'dimm' \(did you mean 'dim'\?\); "
                                         r'allowed: de_dim, .*clip_dim'):
        build_model(opt)


def test_bad_input_misspelled_degradation_clip_key(tmp_path, clip_file):
    block = {k: v for k, v in CLIP_BLOCK.items() if k != 'prompts'}
    block['promts'] = PROMPTS
    with pytest.raises(ValueError, match=r"network DegradationCLIP: unknown option 'promts' \(did you mean "
                                         r"'prompts'\?\); allowed: prompts, clip_model, .*num_classes"):
        build_model(vlunet_options(tmp_path, clip_file, block))


def test_bad_input_unknown_arch_type(tmp_path):
    with pytest.raises(KeyError, match=r"unknown network type 'VLUNett'; registered: .*PromptIR.*VLUNet"):
        build_network({'type': 'VLUNett', 'dim': 12})
    opt = model_options(tmp_path)
    opt['network_g'] = dict(NET, type='PromptIRR')
    with pytest.raises(KeyError, match=r"'PromptIRR'"):
        build_model(opt)


def test_bad_input_include_of_a_missing_file(tmp_path, monkeypatch):
    from basicsr.utils.options import parse_options
    (tmp_path / '_shared').mkdir()
    (tmp_path / '_shared' / 'val.yml').write_text('val_freq: 2\n')
    main = tmp_path / 'train.yml'
    main.write_text('name: x\nval: !include _shared/val.yml\ndatasets: !include _shared/datasets_5tsk.yml\n')
    monkeypatch.setattr('sys.argv', ['vlu train', '-opt', str(main)])
    with pytest.raises(FileNotFoundError, match=r'train\.yml: !include _shared/datasets_5tsk\.yml: no such file '
                                                r'\(.*_shared/datasets_5tsk\.yml\)'):
        parse_options(str(tmp_path), is_train=True)
    main.write_text('val: !include {file: _shared/val.yml, remove: [val_frq]}\n')
    with pytest.raises(KeyError, match=r"train\.yml: !include _shared/val\.yml: cannot remove 'val_frq'"):
        parse_options(str(tmp_path), is_train=True)


def test_bad_input_gt_size_not_a_multiple_of_8_is_accepted(tmp_path):
    """gt_size 60 is accepted, not rejected: VLU-Net, PromptIR and AirNet pad their input to the multiple their
    down-sampling needs and crop the output back (`pad_to_multiple`), so any patch size trains and restores at
    its own size; rejecting it would only forbid option files that work."""
    write_images(tmp_path / 'clean', 2, size=(64, 64))
    ds = make(tasks=[{'name': 'denoise_25', 'dataroot_gt': str(tmp_path / 'clean')}], gt_size=60)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch['lq'].shape == batch['gt'].shape == (2, 3, 60, 60)
    model = build_model(model_options(tmp_path))
    model.feed_data(batch)
    model.optimize_parameters(1)
    assert model.output.shape == (2, 3, 60, 60) and np.isfinite(model.log_dict['l_pix'])


# ---- degradation CLIP: prompts vs labels, weights ------------------------------------------------------
def test_bad_input_clip_num_classes_differs_from_prompts():
    with pytest.raises(ValueError, match=r"DegradationCLIP: num_classes=7 but 2 prompts were given "
                                         r"\(\['image with noise', 'image with low light'\]\)"):
        build_network(dict(CLIP_BLOCK, num_classes=7))


def test_bad_input_dataset_label_without_a_clip_prompt(tmp_path, clip_file):
    model = build_model(vlunet_options(tmp_path, clip_file))
    task = pairs(tmp_path)  # derain: label 4 of the 7-prompt table; this CLIP knows 2 prompts
    batch = torch.utils.data.default_collate([make(phase='val', tasks=[task])[0]])
    with pytest.raises(ValueError, match=r"degradation label 4 out of range for 2 prompts \['image with noise', "
                                         r"'image with low light'\] \(batch \[.*lq/a\.png'\]\)"):
        model.feed_data(batch)


def test_bad_input_clip_weights_missing(tmp_path, clip_file):
    opt = vlunet_options(tmp_path, clip_file)
    del opt['path']['pretrain_network_degradation_clip']
    with pytest.raises(ValueError, match=r'degradation_clip needs path\.pretrain_network_degradation_clip'):
        build_model(opt)
    opt = vlunet_options(tmp_path, str(tmp_path / 'net_clip_9.pth'))
    with pytest.raises(FileNotFoundError, match=r'checkpoint not found: .*net_clip_9\.pth'):
        build_model(opt)
    with pytest.raises(FileNotFoundError, match=r"pretrained must be a local checkpoint .*'/nowhere/clip\.pt' is "
                                                r'not a file'):
        build_network(dict(CLIP_BLOCK, pretrained='/nowhere/clip.pt'))


# ---- NaN / inf during training -------------------------------------------------------------------------
@pytest.mark.parametrize('where', ['nan_lq', 'inf_gt'])
def test_bad_input_non_finite_batch_stops_and_keeps_the_last_checkpoint(tmp_path, where):
    torch.manual_seed(0)
    model = build_model(model_options(tmp_path))
    good = {'lq': torch.rand(2, 3, 16, 16), 'gt': torch.rand(2, 3, 16, 16), 'lq_path': ['ok0.png', 'ok1.png']}
    model.feed_data(good)
    model.optimize_parameters(1)
    model.save_network(model.net_g, 'net_g', 1)  # what BasicSR's trainer does at save_checkpoint_freq
    saved = tmp_path / 'models' / 'net_g_1.pth'
    before = digest(saved)
    weights = {k: v.clone() for k, v in model.net_g.state_dict().items()}

    bad = {k: v.clone() if torch.is_tensor(v) else list(v) for k, v in good.items()}
    bad['lq_path'] = ['ok0.png', f'{where}.png']
    if where == 'nan_lq':
        bad['lq'][1, 0, 3, 3] = float('nan')
    else:
        bad['gt'][1, 2, 5, 5] = float('inf')
    model.feed_data(bad)
    with pytest.raises(FloatingPointError, match=rf"non-finite loss .* at iteration 2; batch: \['ok0\.png', "
                                                 rf"'{where}\.png'\]\. The last checkpoint .* is intact"):
        model.optimize_parameters(2)
    assert digest(saved) == before
    kept = load_checkpoint(saved)['params']
    assert all(torch.equal(kept[k], weights[k]) for k in weights)  # the file holds the last good weights...
    assert all(torch.equal(v, weights[k]) for k, v in model.net_g.state_dict().items())  # ...and no step was taken


# ---- checkpoints ---------------------------------------------------------------------------------------
def test_bad_input_pickled_checkpoint_refused_without_trust(tmp_path, clip_file):
    path = tmp_path / 'clip_tuned.pth'
    state = torch.load(clip_file, weights_only=True)
    torch.save({**state, 'hyper_parameters': argparse.Namespace(lr=2e-4)}, path)
    before = digest(path)
    with pytest.raises(RuntimeError, match=r'clip_tuned\.pth: refusing to load: the file needs pickled Python '
                                           r'objects.*--trust'):
        load_checkpoint(path)
    # from an option file there is no --trust: the error says how to convert the file once
    with pytest.raises(RuntimeError, match=r'clip_tuned\.pth: refusing to load.*vlu convert clip-adapters .*'
                                           r'clip_tuned\.pth clip_adapters\.pth --trust'):
        build_model(vlunet_options(tmp_path, str(path)))
    assert digest(path) == before
    assert set(load_checkpoint(path, trust=True)) == {'params', 'hyper_parameters'}


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'text', 'truncated_safetensors'])
def test_bad_input_damaged_checkpoint_is_not_blamed_on_pickle(tmp_path, damage):
    from safetensors.torch import save_file
    state = {'w': torch.arange(4096, dtype=torch.float32)}
    path = tmp_path / ('net.safetensors' if damage == 'truncated_safetensors' else 'net.pth')
    if damage == 'truncated_safetensors':
        save_file(state, str(path))
    else:
        torch.save({'params': state}, path)
    whole = path.read_bytes()
    path.write_bytes({'truncated': whole[:len(whole) // 2], 'empty': b'', 'text': b'not a checkpoint\n',
                      'truncated_safetensors': whole[:len(whole) // 2]}[damage])
    with pytest.raises(ValueError, match=rf'{path.name}: not a readable (checkpoint|safetensors file)') as error:
        load_checkpoint(path)
    assert 'refusing' not in str(error.value) and '--trust' not in str(error.value)


def test_bad_input_damaged_pretrain_network_g(tmp_path):
    good = tmp_path / 'net_g_1.pth'
    torch.save({'params': build_network(NET).state_dict()}, good)
    bad = tmp_path / 'net_g_2.pth'
    bad.write_bytes(good.read_bytes()[:1000])
    for path, message in ((tmp_path / 'net_g_9.pth', r'net_g_9\.pth'),
                          (bad, r'cannot load .*net_g_2\.pth into VLUNet \(path\.pretrain_network_\*\)')):
        opt = model_options(tmp_path, is_train=False)
        opt['path']['pretrain_network_g'] = str(path)
        with pytest.raises((FileNotFoundError, RuntimeError), match=message):
            build_model(opt)


def test_bad_input_convert_or_load_a_missing_checkpoint(tmp_path, capsys, monkeypatch):
    from vlu_cli import main
    with pytest.raises(FileNotFoundError, match=r'checkpoint not found: .*never_written\.pth'):
        load_checkpoint(tmp_path / 'never_written.pth')
    out = tmp_path / 'airnet.pth'
    save_checkpoint({'params': {'w': torch.ones(3)}}, str(out))
    before = digest(out)
    monkeypatch.chdir(tmp_path)
    assert main(['convert', 'airnet', 'All.pth', 'airnet.pth']) == 2
    assert 'vlu convert: error: checkpoint not found: All.pth' in capsys.readouterr().err
    assert digest(out) == before  # the earlier output is untouched


def test_bad_input_failed_checkpoint_overwrite_keeps_the_old_file(tmp_path):
    path = tmp_path / 'models' / 'net_g_4.pth'
    save_checkpoint({'params': {'w': torch.ones(3)}}, str(path))
    before = digest(path)
    with pytest.raises(Exception, match=r'lambda|pickle'):
        save_checkpoint({'params': {'w': torch.zeros(3)}, 'hook': lambda: None}, str(path))  # unpicklable
    assert digest(path) == before and os.listdir(path.parent) == ['net_g_4.pth']  # no temporary file left


# ---- the embedded benchmark ----------------------------------------------------------------------------
def test_bad_input_failed_benchmark_rebuild_keeps_the_old_benchmark(tmp_path, monkeypatch):
    from vlu_plugin.data import synthetic_benchmark
    out = tmp_path / 'synthetic'
    synthetic_benchmark.build_synthetic_benchmark(str(out), size=32, quick=True, progress=False)
    before = snapshot(out)
    with pytest.raises(ValueError, match=r'size 16 is too small'):
        synthetic_benchmark.build_synthetic_benchmark(str(out), size=16, quick=True, progress=False)

    def disk_full(data_root, rel_paths, keys, lmdb_path, overwrite=False):
        raise OSError(28, 'No space left on device', lmdb_path)

    monkeypatch.setattr(synthetic_benchmark, 'write_lmdb', disk_full)  # fails half-way through a rebuild
    with pytest.raises(OSError, match=r'No space left on device.*\.lmdb'):
        synthetic_benchmark.build_synthetic_benchmark(str(out), size=32, quick=True, progress=False, force=True)
    assert snapshot(out) == before
    assert os.listdir(tmp_path) == ['synthetic']  # no hidden half-built copy left
    other = tmp_path / 'mine'
    write_images(other, 1)
    with pytest.raises(FileExistsError, match=r'mine exists and was not made by `vlu prepare synthetic`'):
        synthetic_benchmark.build_synthetic_benchmark(str(other), size=32, quick=True, progress=False)
    assert os.listdir(other) == ['img000.png']
