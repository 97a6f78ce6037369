"""The embedded 5-task benchmark: crops of scikit-image's bundled colour photos, degraded by `synthesis`.

Split by image, so no test content is in training. Layout under `out`:
  train/clean/*.png, train/{dehaze,derain,deblur,lowlight}/*.png       (same names as the clean crops)
  test/clean/*.png,  test/{denoise_15,denoise_25,denoise_50,dehaze,derain,deblur,lowlight}/*.png
  meta_info/<task or source>_<split>.txt  pair lists, paths relative to `out` (the release's `./x, ./y`)
  lmdb/<task or source>_train_{lq,gt}.lmdb  the training pairs as BasicSR LMDBs (noise: clean gt only)
  benchmark.json                          build settings, counts and per-image degradation parameters
Training noise is made on the fly from train/clean; test noise is fixed files, as in the release.
"""
import json
import os
import os.path as osp
import shutil

import cv2
import numpy as np
from basicsr.utils.lmdb_util import LmdbMaker
from tqdm import tqdm

from vlu_plugin.data.image_io import encode_png
from vlu_plugin.data.synthesis import add_gaussian_noise, motorcycle_depth, random_degradation
from vlu_plugin.data.tasks import TASKS, TASKS_BY_NAME

VERSION = 1
TRAIN_IMAGES = ('astronaut', 'motorcycle_left', 'motorcycle_right', 'retina', 'immunohistochemistry',
                'hubble_deep_field', 'colorwheel')
TEST_IMAGES = ('chelsea', 'coffee', 'rocket')
KINDS = {'dehaze': 'haze', 'derain': 'rain', 'deblur': 'blur', 'lowlight': 'lowlight'}  # task -> synthesis kind
NOISE_TASKS = ('denoise_15', 'denoise_25', 'denoise_50')


def load_image(name):
    """A bundled scikit-image colour image as float32 RGB in [0, 1], with metric depth for the left motorcycle."""
    from skimage import data
    if name.startswith('motorcycle_'):
        left, right, _ = data.stereo_motorcycle()
        img, depth = (left, motorcycle_depth()) if name == 'motorcycle_left' else (right, None)
    else:
        img, depth = getattr(data, name)(), None
    return img[:, :, :3].astype(np.float32) / 255., depth


def random_crops(img, depth, size, count, rng):
    """`count` size x size crops at full and half resolution, avoiding flat regions; with depth crops."""
    crops = []
    for k in range(count):
        scale = 0.5 if k % 2 and min(img.shape[:2]) * 0.5 >= size else 1.0
        src, dep = img, depth
        if scale != 1.0:
            dsize = (round(img.shape[1] * scale), round(img.shape[0] * scale))
            src = cv2.resize(img, dsize, interpolation=cv2.INTER_AREA)
            dep = None if depth is None else cv2.resize(depth, dsize, interpolation=cv2.INTER_LINEAR)
        for _ in range(20):  # skip black sky / background crops: nothing to restore there
            top = int(rng.integers(0, src.shape[0] - size + 1))
            left = int(rng.integers(0, src.shape[1] - size + 1))
            patch = src[top:top + size, left:left + size]
            if patch.std() > 0.05:
                break
        crops.append((patch, None if dep is None else dep[top:top + size, left:left + size]))
    return crops


def _write(root, rel, png, store=None):
    path = osp.join(root, rel)
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.write(png)
    if store is not None:
        store.append((osp.splitext(osp.basename(rel))[0], png))


def _write_lmdb(path, items, size):
    """Write (key, png bytes) items with BasicSR's LmdbMaker and an explicit map size."""
    map_size = sum((len(png) // 4096 + 2) * 4096 for _, png in items) * 2 + (1 << 20)
    maker = LmdbMaker(path, map_size=map_size)
    for key, png in items:
        maker.put(png, key, (size, size, 3))
    maker.close()


def _plan(size, quick, seed):
    """[(split, name, clean uint8 crop, depth crop)] in a fixed order."""
    plan = []
    for split, names in (('train', TRAIN_IMAGES), ('test', TEST_IMAGES)):
        for index, image in enumerate(names):
            img, depth = load_image(image)
            count = 1 if quick else (min(10, max(1, round(img.shape[0] * img.shape[1] / (2 * size * size))))
                                     if split == 'train' else 3)
            rng = np.random.default_rng([seed, split == 'test', index])
            for k, (crop, dep) in enumerate(random_crops(img, depth, size, count, rng)):
                plan.append((split, f'{image}_{k:02d}', np.round(crop * 255).astype(np.uint8), dep))
    return plan


def _build(root, config, progress):
    """Write the whole benchmark into the empty folder `root`; returns the info dict."""
    size, seed = config['size'], config['seed']
    plan = _plan(size, config['quick'], seed)
    lists, lmdb_items, params = {}, {}, {}
    for number, (split, name, crop, depth) in enumerate(tqdm(plan, desc='synthetic benchmark', unit='crop',
                                                               disable=not progress)):
        png = encode_png(crop)
        clean_rel = f'{split}/clean/{name}.png'
        _write(root, clean_rel, png, lmdb_items.setdefault('denoise_train_gt', []) if split == 'train' else None)
        clean = crop.astype(np.float32) / 255.
        jobs = list(KINDS) if split == 'train' else [task.name for task in TASKS]
        if split == 'train':
            lists.setdefault('denoise_train', []).append(f'./{clean_rel}')
        for task in jobs:
            rng = np.random.default_rng([seed, number, TASKS_BY_NAME[task].label])
            if task in KINDS:
                lq, p = random_degradation(KINDS[task], clean, rng, depth)
            else:
                lq, p = add_gaussian_noise(clean, TASKS_BY_NAME[task].sigma, rng), {'sigma': TASKS_BY_NAME[task].sigma}
            lq_rel = f'{split}/{task}/{name}.png'
            store = lmdb_items.setdefault(f'{task}_train_lq', []) if split == 'train' else None
            _write(root, lq_rel, encode_png(lq), store)
            if split == 'train':
                lmdb_items.setdefault(f'{task}_train_gt', []).append((name, png))
            lists.setdefault(f'{task}_{split}', []).append(f'./{lq_rel}, ./{clean_rel}')
            params[lq_rel] = p
    os.makedirs(osp.join(root, 'meta_info'))
    for list_name, lines in lists.items():
        with open(osp.join(root, 'meta_info', f'{list_name}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    for db_name, items in lmdb_items.items():
        os.makedirs(osp.join(root, 'lmdb'), exist_ok=True)
        _write_lmdb(osp.join(root, 'lmdb', f'{db_name}.lmdb'), items, size)
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
