"""The embedded 5-task benchmark from scikit-image's bundled colour photographs, degraded by `synthesis`.

Split by photograph, so no test content is in training. Training has no fixed degraded files: the
clean photos are stored whole and `MultiDegradationDataset` (`synthesize: true`) cuts a random, randomly
rescaled crop and degrades it with freshly drawn parameters for every sample. The test sets are fixed
files, drawn once from the same parameter ranges. Layout under `out`:
  train/clean/<photo>.png            the whole clean training photos
  lmdb/clean_train_gt.lmdb           the same photos as a BasicSR LMDB (what the demo trains from)
  test/clean/*.png, test/{denoise_15,denoise_25,denoise_50,dehaze,derain,deblur,lowlight}/*.png
  meta_info/clean_train.txt, meta_info/<task>_test.txt   lists, paths relative to `out` (`./x, ./y`)
  benchmark.json                     build settings, counts and each test image's degradation parameters
"""
import json
import os
import os.path as osp
import shutil

import cv2
import numpy as np
from tqdm import tqdm

from vlu_plugin.data.image_io import encode_png, write_lmdb
from vlu_plugin.data.synthesis import add_gaussian_noise, random_degradation
from vlu_plugin.data.tasks import TASKS

VERSION = 2
TRAIN_IMAGES = ('astronaut', 'motorcycle_left', 'motorcycle_right')
TEST_IMAGES = ('chelsea', 'coffee', 'rocket')
TEST_CROPS = 4  # per test photo and task (1 with quick)


def load_image(name):
    """A bundled scikit-image colour photograph as float32 RGB in [0, 1]."""
    from skimage import data
    if name.startswith('motorcycle_'):
        left, right, _ = data.stereo_motorcycle()
        img = left if name == 'motorcycle_left' else right
    else:
        img = getattr(data, name)()
    return img[:, :, :3].astype(np.float32) / 255.


def random_crops(img, size, count, rng):
    """`count` size x size crops, alternately at full and half resolution, avoiding flat regions."""
    crops = []
    for k in range(count):
        src = img
        if k % 2 and min(img.shape[:2]) * 0.5 >= size:
            src = cv2.resize(img, (round(img.shape[1] * 0.5), round(img.shape[0] * 0.5)), interpolation=cv2.INTER_AREA)
        for _ in range(20):  # skip flat sky / background crops: nothing to restore there
            top = int(rng.integers(0, src.shape[0] - size + 1))
            left = int(rng.integers(0, src.shape[1] - size + 1))
            patch = src[top:top + size, left:left + size]
            if patch.std() > 0.05:
                break
        crops.append(patch)
    return crops


def _write(root, rel, png):
    path = osp.join(root, rel)
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(png)


def _degrade(task, clean, rng):
    """A test image of `task` from `clean` and its parameters."""
    if task.sigma is not None:
        return add_gaussian_noise(clean, task.sigma, rng), {'sigma': task.sigma}
    return random_degradation(task.kind, clean, rng)


def _build(root, config, progress):
    """Write the whole benchmark into the empty folder `root`; returns the info dict."""
    size, seed = config['size'], config['seed']
    lists, params = {'clean_train': []}, {}
    for name in TRAIN_IMAGES:
        clean = np.round(load_image(name) * 255).astype(np.uint8)
        png, rel = encode_png(clean), f'train/clean/{name}.png'
        _write(root, rel, png)
        lists['clean_train'].append(f'./{rel}')
    crops = []
    for index, name in enumerate(TEST_IMAGES):
        rng = np.random.default_rng([seed, 1, index])
        for k, crop in enumerate(random_crops(load_image(name), size, 1 if config['quick'] else TEST_CROPS, rng)):
            crops.append((f'{name}_{k:02d}', np.round(crop * 255).astype(np.uint8)))
    for number, (name, crop) in enumerate(tqdm(crops, desc='synthetic benchmark', unit='crop', disable=not progress)):
        clean_rel = f'test/clean/{name}.png'
        _write(root, clean_rel, encode_png(crop))
        for task in TASKS:
            lq, p = _degrade(task, crop.astype(np.float32) / 255., np.random.default_rng([seed, number, task.label]))
            lq_rel = f'test/{task.name}/{name}.png'
            _write(root, lq_rel, encode_png(lq))
            lists.setdefault(f'{task.name}_test', []).append(f'./{lq_rel}, ./{clean_rel}')
            params[lq_rel] = p
    os.makedirs(osp.join(root, 'meta_info'))
    for list_name, lines in lists.items():
        with open(osp.join(root, 'meta_info', f'{list_name}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    # the package's one LMDB writer, from the PNGs just written (keys: the image names)
    write_lmdb(osp.join(root, 'train', 'clean'), [f'{name}.png' for name in TRAIN_IMAGES], list(TRAIN_IMAGES),
               osp.join(root, 'lmdb', 'clean_train_gt.lmdb'))
    info = {'config': config, 'train_images': TRAIN_IMAGES, 'test_images': TEST_IMAGES,
            'counts': {k: len(v) for k, v in sorted(lists.items())}, 'params': params}
    with open(osp.join(root, 'benchmark.json'), 'w') as f:
        json.dump(info, f, indent=1)
    return info


def build_synthetic_benchmark(out='datasets/synthetic', size=128, quick=False, force=False, seed=0, progress=True):
    """Build the embedded benchmark under `out` unless it is already there with the same settings.

    Built in a hidden sibling folder and renamed into place, so an interrupted build never leaves a
    half-written benchmark or LMDB behind. Returns the benchmark's info dict (see benchmark.json).
    """
    if size < 32:
        raise ValueError(f'size {size} is too small; use at least 32')
    config = {'version': VERSION, 'size': int(size), 'quick': bool(quick), 'seed': int(seed)}
    out = osp.abspath(out)
    info_path = osp.join(out, 'benchmark.json')
    if osp.exists(out):
        if osp.isfile(info_path):
            with open(info_path) as f:
                info = json.load(f)
            if info.get('config') == config and not force:
                if progress:
                    print(f'{out} is up to date ({sum(info["counts"].values())} list entries); nothing to do')
                return info
        elif os.listdir(out):
            raise FileExistsError(f'{out} exists and was not made by `vlu prepare synthetic`; '
                                  'remove it or choose another --out')
    parent, base = osp.split(out)
    os.makedirs(parent, exist_ok=True)
    tmp, old = osp.join(parent, f'.{base}.building-{os.getpid()}'), osp.join(parent, f'.{base}.old-{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        info = _build(tmp, config, progress)
        if osp.exists(out):
            os.rename(out, old)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    if progress:
        counts = ', '.join(f'{k} {v}' for k, v in info['counts'].items())
        print(f'wrote {out}: {counts}')
    return info
