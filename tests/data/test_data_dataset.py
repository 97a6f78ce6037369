"""MultiDegradationDataset over the tiny synthetic benchmark: disk vs LMDB, labels, views, loaders, bad inputs."""
import os
import pickle
import random

import cv2
import numpy as np
import pytest
import torch

import vlu_plugin  # noqa: F401  (shims before basicsr)
from basicsr.data import build_dataset
from vlu_plugin.data.image_io import decode_image, read_image
from vlu_plugin.data.tasks import get_preset, get_task


@pytest.fixture
def bench(synthetic_benchmark):
    """conftest's quick 64-px benchmark (3 whole training photos, 3 test crops per task), built once per run."""
    return synthetic_benchmark


def make(**opt):
    opt.setdefault('name', 'test')
    opt.setdefault('phase', 'train')
    return build_dataset(dict(opt, type='MultiDegradationDataset'))


def disk_opt(bench, **extra):
    """Training from the clean photos on disk, every degradation synthesised."""
    return dict(tasks='5task', synthesize=True, dataroot_gt=os.path.join(bench, 'train', 'clean'), **extra)


def lmdb_opt(bench, **extra):
    """The same photos from the benchmark's LMDB."""
    return dict(tasks='5task', synthesize=True, io_backend={'type': 'lmdb'},
                dataroot_gt=os.path.join(bench, 'lmdb', 'clean_train_gt.lmdb'), **extra)


def val_opt(bench, tasks='5task'):
    """The fixed test sets through their pair lists."""
    return dict(tasks=tasks, root=bench, meta_info_dir=os.path.join(bench, 'meta_info'))


def write(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return str(path)


def test_disk_and_lmdb_give_identical_samples(bench):
    disk = make(**disk_opt(bench, gt_size=32, key_view=True, repeat='release'))
    lmdb = make(**lmdb_opt(bench, gt_size=32, key_view=True, repeat='release'))
    assert len(disk) == len(lmdb) == 3 * (3 * 3 + 1 + 120 + 1 + 1)
    for index in range(0, len(disk), 7):
        random.seed(index)
        a = disk[index]
        random.seed(index)
        b = lmdb[index]
        for key in ('lq', 'gt', 'lq_key'):
            assert a[key].shape == (3, 32, 32) and a[key].dtype == torch.float32
            assert torch.equal(a[key], b[key]), (index, key)
        assert (a['deg_label'], a['deg_text']) == (b['deg_label'], b['deg_text'])
    # a pickled copy (as spawned workers get) reads the same LMDBs in this process: py-lmdb forbids a
    # second open of an environment, so datasets of one process must share the handles
    copy = pickle.loads(pickle.dumps(lmdb))
    random.seed(0)
    a = copy[0]
    random.seed(0)
    assert torch.equal(a['lq'], lmdb[0]['lq'])


def test_labels_and_texts_match_the_preset(bench):
    for preset, phase, count in (('5task', 'val', 3), ('3task', 'train', 3)):
        opt = dict(disk_opt(bench, gt_size=32), tasks=preset) if phase == 'train' else val_opt(bench, preset)
        ds = make(phase=phase, **opt)
        split = 'train' if phase == 'train' else 'test'
        tasks = get_preset(preset, split)
        assert len(ds) == count * len(tasks)
        seen = [(s['deg_label'], s['deg_text']) for s in (ds[i] for i in range(len(ds)))]
        assert sorted(set(seen)) == [(t.label, t.text) for t in tasks]
        assert all(0 <= s['lq'].min() and s['lq'].max() <= 1 for s in (ds[0], ds[len(ds) - 1]))


def test_validation_noise_is_deterministic_and_named_per_task(bench):
    clean = os.path.join(bench, 'test', 'clean')
    tasks = [{'name': f'denoise_{s}', 'dataroot_gt': clean} for s in (15, 50)]
    first, second = make(phase='val', tasks=tasks), make(phase='val', tasks=tasks)
    a, b = first[0], second[0]
    assert torch.equal(a['lq'], b['lq']) and a['lq'].shape == (3, 64, 64)
    assert a['lq_path'].endswith('_denoise_15.png') and first[3]['lq_path'].endswith('_denoise_50.png')
    assert len({first[i]['lq_path'] for i in range(len(first))}) == len(first)
    measured = (first[3]['lq'] - first[3]['gt']).std().item() * 255  # sigma 50, clipping shrinks it a bit
    assert 35 < measured < 52


def test_training_noise_differs_between_draws_and_key_view(bench):
    ds = make(tasks=[{'name': 'denoise_25', 'dataroot_gt': os.path.join(bench, 'test', 'clean')}],
              gt_size=64, use_hflip=False, use_rot=False, key_view=True)
    random.seed(0)
    a = ds[0]
    b = ds[0]
    assert not torch.equal(a['gt'], b['gt'])  # a new random crop of the clean image each draw
    assert not torch.equal(a['lq'], b['lq'])
    assert not torch.equal(a['lq'], a['lq_key'])  # the key view is another crop of the same degraded region
    noise = (a['lq'] - a['gt']).std().item() * 255
    assert 12 < noise < 27  # sigma 25 (clipping lowers it)


@pytest.mark.parametrize('task', ['dehaze', 'derain', 'deblur', 'lowlight'])
def test_synthesised_training_degrades_fresh_crops(bench, task):
    ds = make(tasks=[task], synthesize=True, dataroot_gt=os.path.join(bench, 'train', 'clean'), gt_size=32,
              scale_range=[0.5, 2.0])  # zooming in (bicubic) overshoots [0, 1] before the synthesis
    for index in range(12):
        sample = ds[index]
        assert torch.isfinite(sample['lq']).all() and 0 <= sample['gt'].min() and sample['gt'].max() <= 1
    random.seed(1)
    a, b = ds[0], ds[0]
    assert a['lq'].shape == a['gt'].shape == (3, 32, 32) and a['deg_label'] == get_task(task).label
    assert not torch.equal(a['gt'], b['gt']) and not torch.equal(a['lq'], a['gt'])
    psnr = lambda s: -10 * torch.log10(((s['lq'] - s['gt']) ** 2).mean()).item()  # noqa: E731
    assert 5 < psnr(a) < 40


def contains_patch(context, patch):
    """Whether `patch` (C, h, w) is a sub-block of `context` (C, H, W)."""
    h, w = patch.shape[-2:]
    blocks = context.unfold(1, h, 1).unfold(2, w, 1)  # C, H-h+1, W-w+1, h, w
    return bool(((blocks - patch[:, None, None]).abs().amax(dim=(0, 3, 4)) == 0).any())


def test_context_view_holds_the_patches(bench, tmp_path):
    synthesised = make(**disk_opt(bench, gt_size=16, context_size=48, key_view=True))
    for index in (0, 5, 17):
        sample = synthesised[index]
        assert sample['lq_context'].shape == (3, 48, 48)
        assert contains_patch(sample['lq_context'], sample['lq'])  # both views are cut from the context
        assert contains_patch(sample['lq_context'], sample['lq_key'])
    paired_task = pair_folders(tmp_path, lq_shape=(40, 48, 3), gt_shape=(40, 48, 3))
    (tmp_path / 'lq' / 'a.png').write_bytes(cv2.imencode('.png', np.random.default_rng(0).integers(
        0, 255, (40, 48, 3), dtype=np.uint8))[1].tobytes())
    paired = make(tasks=[paired_task], gt_size=16, context_size=32, use_hflip=False, use_rot=False)
    sample = paired[0]
    assert sample['lq_context'].shape == (3, 32, 32) and contains_patch(sample['lq_context'], sample['lq'])
    assert 'lq_context' not in make(phase='val', **val_opt(bench))[0]  # validation: whole images, no context
    with pytest.raises(ValueError, match=r"context_size must be an int of at least gt_size \(32\), not 16"):
        make(**disk_opt(bench, gt_size=32, context_size=16))


def test_synthesis_needs_clean_images_and_valid_scale_range(bench, tmp_path):
    with pytest.raises(ValueError, match=r"color_jitter.brightness must be \[lo, hi\]"):
        make(**disk_opt(bench, gt_size=32, color_jitter={'brightness': [1.3, 0.5]}))
    with pytest.raises(ValueError, match=r"color_jitter takes \['brightness', 'contrast'\], not \['hue'\]"):
        make(**disk_opt(bench, gt_size=32, color_jitter={'hue': [0, 1]}))
    with pytest.raises(ValueError, match=r"scale_range must be \[min, max\]"):
        make(**disk_opt(bench, gt_size=32, scale_range=[1.0, 0.5]))
    task = pair_folders(tmp_path)
    with pytest.raises(ValueError, match=r"synthesize: true degrades clean images, but .*gt holds degraded"):
        make(tasks=[task], synthesize=True, gt_size=32)


def test_repeats_of_a_sample_in_an_enlarged_epoch_differ(bench):
    from vlu_plugin.utils.exact_resume import ResumableSampler
    ds = make(**disk_opt(bench, gt_size=32))
    sampler = ResumableSampler(ds, 1, 0, ratio=3)
    sampler.set_epoch(0)
    indices = list(sampler)
    assert len(indices) == 3 * len(ds) and max(indices) >= len(ds)  # the plugin's sampler keeps the repeat
    views = {}
    for index in indices[:4 * len(ds) // 3]:
        views.setdefault(index % len(ds), []).append(ds[index]['lq'])
    repeated = [v for v in views.values() if len(v) > 1]
    assert repeated and all(not torch.equal(v[0], other) for v in repeated for other in v[1:])
    assert torch.equal(ds[indices[0]]['lq'], ds[indices[0]]['lq'])  # each (epoch, index) is still reproducible


def test_dataloader_with_two_workers(bench):
    ds = make(**disk_opt(bench, gt_size=32, key_view=True))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=True, num_workers=2, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(ds) // 3
    batch = batches[0]
    assert batch['lq'].shape == batch['gt'].shape == batch['lq_key'].shape == (3, 3, 32, 32)
    assert batch['deg_label'].dtype == torch.int64 and len(batch['deg_text']) == 3
    assert all(get_task_text == text for get_task_text, text in
               zip([get_preset('5task')[int(lbl)].text for lbl in batch['deg_label']], batch['deg_text']))


def test_grey_rgba_16bit_and_palette_inputs_become_rgb(tmp_path):
    from PIL import Image
    base = (np.arange(40 * 48 * 3) % 251).reshape(40, 48, 3).astype(np.uint8)
    grey = write(tmp_path / 'grey.png', base[:, :, 0])
    rgba = write(tmp_path / 'rgba.png', np.dstack([base, np.full(base.shape[:2], 7, np.uint8)]))
    deep = write(tmp_path / 'deep.png', base.astype(np.uint16) * 257)
    palette = str(tmp_path / 'palette.png')
    Image.fromarray(base[:, :, ::-1]).convert('P').save(palette)
    rgb = base[:, :, ::-1].astype(np.float32) / 255.
    assert np.array_equal(read_image(grey), np.repeat(rgb[:, :, 2:3], 3, axis=2))
    assert np.allclose(read_image(rgba), rgb) and np.allclose(read_image(deep), rgb, atol=1e-6)
    assert read_image(palette).shape == (40, 48, 3) and read_image(palette).dtype == np.float32
    ds = make(phase='val', tasks=[{'name': 'denoise_25', 'dataroot_gt': str(tmp_path)}])
    assert [tuple(ds[i]['gt'].shape) for i in range(len(ds))] == [(3, 40, 48)] * 4


# ---- bad inputs: each error names the file or option -------------------------------------------------
def pair_folders(tmp_path, lq_shape=(40, 48, 3), gt_shape=(40, 48, 3), names=('a',)):
    for name in names:
        write(tmp_path / 'lq' / f'{name}.png', np.zeros(lq_shape, np.uint8))
        write(tmp_path / 'gt' / f'{name}.png', np.zeros(gt_shape, np.uint8))
    return {'name': 'derain', 'dataroot_lq': str(tmp_path / 'lq'), 'dataroot_gt': str(tmp_path / 'gt')}


def test_bad_input_missing_partner(tmp_path):
    task = pair_folders(tmp_path)
    write(tmp_path / 'lq' / 'orphan.png', np.zeros((40, 48, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match=r"orphan\.png has no clean partner"):
        make(phase='val', tasks=[task])
    (tmp_path / 'list.txt').write_text('./lq/a.png, ./gt/a.png\n./lq/orphan.png, ./gt/orphan.png\n')
    with pytest.raises(FileNotFoundError, match=r"list\.txt line 2: clean partner .*gt/orphan\.png does not exist"):
        make(phase='val', tasks=[{'name': 'derain', 'meta_info_file': str(tmp_path / 'list.txt')}])


def test_bad_input_missing_partner_in_lmdb(bench, tmp_path):
    from vlu_plugin.data.image_io import write_lmdb
    lq = os.path.join(bench, 'test', 'derain')
    write_lmdb(lq, ['chelsea_00.png'], ['not_in_gt'], str(tmp_path / 'lq.lmdb'))
    task = {'name': 'derain', 'io_backend': {'type': 'lmdb'}, 'dataroot_lq': str(tmp_path / 'lq.lmdb'),
            'dataroot_gt': os.path.join(bench, 'lmdb', 'clean_train_gt.lmdb')}
    with pytest.raises(FileNotFoundError, match=r"lq\.lmdb:not_in_gt has no clean partner"):
        make(phase='val', tasks=[task])


def test_bad_input_size_mismatch(tmp_path):
    ds = make(phase='val', tasks=[pair_folders(tmp_path, gt_shape=(40, 50, 3))])
    with pytest.raises(ValueError, match=r"size mismatch.*lq/a\.png is 40x48 but clean .*gt/a\.png is 40x50"):
        ds[0]


def test_bad_input_unreadable_image(tmp_path):
    task = pair_folders(tmp_path)
    (tmp_path / 'lq' / 'a.png').write_bytes(b'not a png at all')
    with pytest.raises(ValueError, match=r"unreadable image .*lq/a\.png"):
        make(phase='val', tasks=[task])[0]
    with pytest.raises(ValueError, match=r"unreadable image x\.png"):
        decode_image(b'', 'x.png')


def test_bad_input_smaller_than_gt_size(tmp_path):
    ds = make(tasks=[pair_folders(tmp_path)], gt_size=64)
    with pytest.raises(ValueError, match=r"gt/a\.png is 40x48 \(HxW\), smaller than gt_size 64"):
        ds[0]


def test_bad_input_empty_task(tmp_path):
    (tmp_path / 'lq').mkdir()
    (tmp_path / 'gt').mkdir()
    task = {'name': 'derain', 'dataroot_lq': str(tmp_path / 'lq'), 'dataroot_gt': str(tmp_path / 'gt')}
    with pytest.raises(ValueError, match=r"task 'derain' is empty: no images found in .*gt"):
        make(phase='val', tasks=[task])
    with pytest.raises(FileNotFoundError, match=r"folder .*nowhere does not exist"):
        make(phase='val', tasks=[{'name': 'dehaze', 'root': str(tmp_path / 'nowhere')}])


def test_bad_input_unknown_task_and_misspelled_keys(tmp_path):
    task = pair_folders(tmp_path)
    with pytest.raises(ValueError, match=r"unknown task 'dehazing'; known tasks: denoise_15, .*lowlight"):
        make(phase='val', tasks=[dict(task, name='dehazing')])
    with pytest.raises(ValueError, match=r"unknown option 'use_flip'.*did you mean 'use_hflip'.*allowed keys"):
        make(tasks=[task], gt_size=32, use_flip=True)
    with pytest.raises(ValueError, match=r"unknown option 'sigm' in task 'derain'.*sigma"):
        make(phase='val', tasks=[dict(task, sigm=3)])


def test_bad_input_clean_only_images_for_a_paired_task(tmp_path):
    pair_folders(tmp_path)
    with pytest.raises(ValueError, match=r"task 'dehaze': .*gt gives clean images only"):
        make(phase='val', tasks=[{'name': 'dehaze', 'dataroot_gt': str(tmp_path / 'gt')}])


def test_bad_input_options(tmp_path):
    task = pair_folders(tmp_path)
    with pytest.raises(ValueError, match=r"training needs gt_size"):
        make(tasks=[task])
    with pytest.raises(ValueError, match=r"repeat names task 'derian'"):
        make(tasks=[task], gt_size=32, repeat={'derian': 3})
    with pytest.raises(ValueError, match=r"noise_quantize 'floor'"):
        make(phase='val', tasks=[{'name': 'denoise_15', 'dataroot_gt': str(tmp_path / 'gt'),
                                  'noise_quantize': 'floor'}])
    with pytest.raises(FileNotFoundError, match=r"LMDB .*missing\.lmdb does not exist"):
        make(phase='val', tasks=[dict(task, io_backend={'type': 'lmdb'}, dataroot_gt=str(tmp_path / 'missing.lmdb'))])
    assert get_task('derain').label == 4
