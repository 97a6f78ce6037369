"""`vlu prepare check`: every known fault of a 3-task data folder is named, and an unusable set fails the run."""
import os

import cv2
import numpy as np

from vlu_cli import main


def write(path, size=(40, 48), seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def test_check_names_each_fault_and_fails_on_an_unusable_set(tmp_path, capsys):
    root = tmp_path / 'datasets'
    for rel in ('denoise/train/BSD400/117025.jpg', 'denoise/train/WED/00001.bmp', 'denoise/CBSD68/101085.png',
                'derain/Rain100L/train/rainy/rain-1.png', 'derain/Rain100L/train/gt/norain-1.png',
                'derain/Rain100L/train/rainy/rain-2.png',  # its clean partner is missing
                'derain/Rain100L/test/rain-001.png', 'derain/Rain100L/test/norain-001.png',
                'dehaze/SOTS/outdoor/hazy/0001_0.8_0.2.jpg', 'dehaze/SOTS/outdoor/gt/0001.png'):
        write(root / rel)
    write(root / 'derain/Rain100L/test/rain-002.png')
    write(root / 'derain/Rain100L/test/norain-002.png', size=(40, 50))  # a pair of different sizes
    lists = root / 'meta_info'
    lists.mkdir()
    # the public BSD400 list's names carry an 'a' the files lack; a listed clean image that does not exist
    (lists / 'denoise_train.txt').write_text('./denoise/train/BSD400/a117025.jpg\n./denoise/train/WED/00001.bmp\n')
    (lists / 'derain_train.txt').write_text(
        './derain/Rain100L/train/rainy/rain-1.png, ./derain/Rain100L/train/gt/norain-1.png\n'
        './derain/Rain100L/train/rainy/rain-2.png, ./derain/Rain100L/train/gt/norain-2.png\n')
    # dehaze/OTS (the haze training set) is absent: unusable

    assert main(['prepare', 'check', '--root', str(root), '--preset', '3task']) == 1
    out, err = capsys.readouterr()
    assert 'prefixed name: listed denoise/train/BSD400/a117025.jpg, the file is denoise/train/BSD400/117025.jpg' in out
    assert 'missing gt: derain/Rain100L/train/gt/norain-2.png' in out
    assert 'unpaired lq (no clean partner in the folder): derain/Rain100L/train/rainy/rain-2.png' in out
    assert 'size mismatch: derain/Rain100L/test/rain-002.png (48, 40) vs derain/Rain100L/test/norain-002.png ' \
           '(50, 40)' in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith('  ')}
    assert '      1 clean images usable, 1 faults' in lines['denoise_train']
    assert '      1 pairs usable, 1 faults' in lines['derain_test']
    assert ' 1 pairs usable, 0 faults: ok' in lines['dehaze_test']
    assert 'UNUSABLE' in lines['dehaze_train']
    assert 'unusable sets: dehaze_train' in err

    write(root / 'dehaze/OTS/synthetic/part1/0025_0.8_0.04.jpg')
    write(root / 'dehaze/OTS/original/0025.jpg')
    assert main(['prepare', 'check', '--root', str(root), '--preset', '3task']) == 0
    assert 'with the faults above' in capsys.readouterr().out
