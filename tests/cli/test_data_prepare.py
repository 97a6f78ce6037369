"""`vlu prepare synthetic | lmdb | lists`, run in-process through the `vlu` entry point."""
import json
import os

import cv2
import numpy as np
import pytest

import vlu_plugin  # noqa: F401  (shims before basicsr)
from vlu_cli import main
from basicsr.data import build_dataset
from basicsr.data.data_util import paths_from_lmdb
from vlu_plugin.data.synthetic_benchmark import TEST_IMAGES, TRAIN_IMAGES

# A miniature of every public layout the 5-task preset reads (datasets/README.md), one pair each
# except Rain100L test (original release naming) and an LOL eval15 image whose partner is missing.
FAKE_PUBLIC = {
    'denoise/train/BSD400/a100007.jpg': None, 'denoise/train/WED/00001.bmp': None,
    'denoise/CBSD68/101085.png': None,
    'derain/Rain100L/train/rainy/rain-1.png': 'derain/Rain100L/train/gt/norain-1.png',
    'derain/Rain100L/test/rain-001.png': 'derain/Rain100L/test/norain-001.png',
    'derain/Rain100L/test/rain-002.png': 'derain/Rain100L/test/norain-002.png',
    'dehaze/OTS/synthetic/part1/0025_0.8_0.04.jpg': 'dehaze/OTS/original/0025.jpg',
    'dehaze/OTS/synthetic/part2/0025_1_0.2.jpg': 'dehaze/OTS/original/0025.jpg',
    'dehaze/SOTS/outdoor/hazy/0001_0.8_0.2.jpg': 'dehaze/SOTS/outdoor/gt/0001.png',
    'deblur/GoPro/train/GOPR0372_07_00/blur/000047.png': 'deblur/GoPro/train/GOPR0372_07_00/sharp/000047.png',
    'deblur/GoPro/train/GOPR0374_11_00/blur/000047.png': 'deblur/GoPro/train/GOPR0374_11_00/sharp/000047.png',
    'deblur/GoPro/test/GOPR0384_11_00/blur/000001.png': 'deblur/GoPro/test/GOPR0384_11_00/sharp/000001.png',
    'lowlight/LOL/our485/low/2.png': 'lowlight/LOL/our485/high/2.png',
    'lowlight/LOL/eval15/low/1.png': 'lowlight/LOL/eval15/high/1.png',
    'lowlight/LOL/eval15/low/22.png': None,  # partner missing on purpose
}
EXPECTED = {'denoise_train': 2, 'denoise_test': 1, 'derain_train': 1, 'derain_test': 2, 'dehaze_train': 2,
            'dehaze_test': 1, 'deblur_train': 2, 'deblur_test': 1, 'lowlight_train': 1, 'lowlight_test': 1}


def write(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


@pytest.fixture
def fake_public(tmp_path):
    root = tmp_path / 'datasets'
    for index, (lq, gt) in enumerate(FAKE_PUBLIC.items()):
        write(root / lq, index)
        if gt:
            write(root / gt, 100 + index)
    return root


def test_prepare_lists_finds_every_pair_and_names_a_missing_partner(fake_public, capsys):
    assert main(['prepare', 'lists', '--root', str(fake_public), '--preset', '5task']) == 0
    report = capsys.readouterr().out
    assert 'missing partner: lowlight/LOL/eval15/low/22.png' in report
    assert 'incomplete: 0 sets missing or empty (none), 1 degraded images without a partner' in report
    lists = fake_public / 'meta_info'
    counts = {p.stem: len(p.read_text().splitlines()) for p in lists.glob('*.txt')}
    assert counts == EXPECTED
    assert (lists / 'derain_test.txt').read_text().splitlines()[0] == \
        './derain/Rain100L/test/rain-001.png, ./derain/Rain100L/test/norain-001.png'
    assert './dehaze/OTS/original/0025.jpg' in (lists / 'dehaze_train.txt').read_text()
    # the lists feed the dataset directly, for both splits
    for phase, size in (('val', 6), ('train', 2 * 3 + 1 + 2 + 2 + 1)):
        ds = build_dataset({'name': 'p', 'type': 'MultiDegradationDataset', 'phase': phase, 'tasks': '5task',
                            'root': str(fake_public), 'meta_info_dir': str(lists), 'gt_size': 32})
        assert len(ds) == size and ds[len(ds) - 1]['deg_text'] == 'image with low light'
    # scanning the layout directly reports the same missing partner
    with pytest.raises(FileNotFoundError, match=r"eval15/low/22\.png has no clean partner"):
        build_dataset({'name': 'p', 'type': 'MultiDegradationDataset', 'phase': 'val', 'tasks': ['lowlight'],
                       'root': str(fake_public)})


def test_prepare_lists_reports_absent_sets(tmp_path, capsys):
    (tmp_path / 'datasets').mkdir()
    assert main(['prepare', 'lists', '--root', str(tmp_path / 'datasets'), '--preset', '3task']) == 0
    report = capsys.readouterr().out
    assert 'derain_train' in report and 'MISSING' in report and 'incomplete: 6 sets missing' in report


def test_prepare_synthetic_is_split_by_image_idempotent_and_atomic(tmp_path, capsys):
    out = tmp_path / 'synthetic'
    assert main(['prepare', 'synthetic', '--out', str(out), '--size', '48', '--quick']) == 0
    info = json.loads((out / 'benchmark.json').read_text())
    train = (out / 'meta_info' / 'clean_train.txt').read_text().split()
    test = {line.split(',')[-1].strip() for line in (out / 'meta_info' / 'dehaze_test.txt').read_text().splitlines()}
    assert {os.path.basename(p)[:-4] for p in train} == set(TRAIN_IMAGES)  # whole photos, degraded on the fly
    assert {os.path.basename(p).rsplit('_', 1)[0] for p in test} == set(TEST_IMAGES)
    assert sorted(paths_from_lmdb(str(out / 'lmdb' / 'clean_train_gt.lmdb'))) == sorted(TRAIN_IMAGES)
    assert info['counts']['denoise_25_test'] == len(TEST_IMAGES)
    stamp = os.path.getmtime(out / 'benchmark.json')
    assert main(['prepare', 'synthetic', '--out', str(out), '--size', '48', '--quick']) == 0
    assert 'up to date' in capsys.readouterr().out and os.path.getmtime(out / 'benchmark.json') == stamp
    assert main(['prepare', 'synthetic', '--out', str(out), '--size', '56', '--quick']) == 0  # rebuilt in place
    assert json.loads((out / 'benchmark.json').read_text())['config']['size'] == 56
    assert sorted(os.listdir(tmp_path)) == ['synthetic']  # no temporary folder left behind
    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'mine.txt').write_text('x')
    assert main(['prepare', 'synthetic', '--out', str(tmp_path / 'other'), '--quick']) == 2
    assert 'not made by `vlu prepare synthetic`' in capsys.readouterr().err


def test_prepare_lmdb(fake_public, capsys):
    folder = fake_public / 'lowlight' / 'LOL'
    out = fake_public.parent / 'lol.lmdb'
    assert main(['prepare', 'lmdb', str(folder), str(out)]) == 0
    assert paths_from_lmdb(str(out)) == ['eval15/high/1', 'eval15/low/1', 'eval15/low/22', 'our485/high/2',
                                         'our485/low/2']
    assert main(['prepare', 'lmdb', str(folder), str(out)]) == 2
    assert 'exists; remove it or pass --overwrite' in capsys.readouterr().err
    (folder / 'bad.name.png').write_bytes(open(folder / 'our485' / 'low' / '2.png', 'rb').read())
    assert main(['prepare', 'lmdb', str(folder), str(out), '--overwrite']) == 2
    assert 'bad.name.png' in capsys.readouterr().err
    assert sorted(os.listdir(fake_public.parent)) == ['datasets', 'lol.lmdb']  # the failed build left nothing
