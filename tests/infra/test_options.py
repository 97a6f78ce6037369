"""Every shipped option file loads, shares its data/validation blocks, and builds its networks at full size."""
import functools
import glob
import json
import os.path as osp

import pytest
import yaml
from basicsr.archs import build_network
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY
from conftest import REPO

from vlu_cli.demo import OPTIONS_DIR as DEMO_OPTIONS_DIR  # shipped inside the package
from vlu_plugin.data.tasks import DATASET_KEYS, check_keys

ROOT = osp.join(REPO, 'options')
FULL_SIZE = {'VLUNet': 35_342_660, 'PromptIR': 35_376_967, 'AirNet': 8_930_313, 'AdaIR': 28_766_086,
             'MoCEIR': 25_353_796}
FULL_SIZE_CDD11 = dict(FULL_SIZE, VLUNet=37_319_012)  # one prompt-bank entry per CDD-11 subset (de_dim 11)
DEMO_SIZES = {'VLUNet': 2_554_851}  # the others must be within ±10 % of it


def load(path):
    with open(path) as f:
        return yaml.load(f, Loader=ordered_yaml()[0])


def option_files(kind):
    return sorted(glob.glob(osp.join(ROOT, kind, '*', '*.yml')))


@functools.lru_cache(maxsize=None)
def parameter_count(network_json):
    """Parameters of the network `network_g` (as JSON) describes: built once for the files that share it."""
    return sum(p.numel() for p in build_network(json.loads(network_json)).parameters())


def check_datasets(opt, path):
    assert opt['datasets'], path
    for key, block in opt['datasets'].items():
        assert DATASET_REGISTRY.get(block['type'])
        # BasicSR adds phase and scale itself; the loader keys are BasicSR's own
        check_keys(dict(block), DATASET_KEYS, f'{path}: datasets.{key}')


@pytest.mark.parametrize('path', option_files('train') + option_files('test'), ids=osp.basename)
def test_full_size_option_file_builds(path):
    opt = load(path)
    cdd11 = path.endswith('_cdd11.yml')
    assert MODEL_REGISTRY.get(opt['model_type'])
    check_datasets(opt, path)
    if 'network_g' in opt:
        count = parameter_count(json.dumps(opt['network_g'], sort_keys=True))
        assert count == (FULL_SIZE_CDD11 if cdd11 else FULL_SIZE)[opt['network_g']['type']]
        assert opt['val']['metrics']['psnr'] == {'type': 'calculate_psnr_float', 'protocol': 'rgb_float_skimage'}
    clip_opt = opt.get('network_clip') or opt.get('degradation_clip')
    if clip_opt is not None:
        assert clip_opt['clip_model'] == 'ViT-B-32' and clip_opt['pretrained'] == 'laion2b_s34b_b79k'
        assert not clip_opt['train_backbone'] and len(clip_opt['prompts']) == (11 if cdd11 else 7)


def test_release_clip_block_builds_at_full_size():
    opt = load(osp.join(ROOT, 'train', 'DegradationCLIP', 'train_DegradationCLIP_5task.yml'))
    clip = build_network(dict(opt['network_clip'], pretrained=None))  # the weights are not here: random init
    assert clip.embed_dim == 512
    assert sum(p.numel() for p in clip.image_adapter.parameters()) == 3 * (512 * 512 + 512) + 3 * 2 * 512


def test_models_share_one_data_and_validation_block():
    for setting in ('3task', '5task', 'cdd11'):
        blocks = {}
        for model in ('VLUNet', 'PromptIR', 'AirNet', 'AdaIR', 'MoCEIR'):
            opt = load(osp.join(ROOT, 'train', model, f'train_{model}_{setting}.yml'))
            vals = {k: dict(v) for k, v in opt['datasets'].items() if k != 'train'}
            train = {k: v for k, v in opt['datasets']['train'].items()
                     if k not in ('batch_size_per_gpu', 'key_view', 'num_worker_per_gpu')}
            blocks[model] = (vals, train, dict(opt['val']))
        assert all(block == blocks['VLUNet'] for block in blocks.values()), setting


def test_demo_options_are_one_protocol_with_comparable_sizes():
    opts = {name: load(osp.join(DEMO_OPTIONS_DIR, f'{name}.yml')) for name in ('vlunet', 'promptir', 'airnet')}
    sizes = {}
    for name, opt in opts.items():
        check_datasets(opt, name)
        net = build_network(dict(opt['network_g']))
        sizes[opt['network_g']['type']] = sum(p.numel() for p in net.parameters())
    assert sizes['VLUNet'] == DEMO_SIZES['VLUNet']
    assert all(abs(n / sizes['VLUNet'] - 1) <= 0.10 for n in sizes.values()), sizes
    shared = [(o['datasets']['val_1'], o['val'], o['train']['optim_g'], o['train']['scheduler'],
               o['train']['total_iter'], o['datasets']['train']['gt_size'], o['datasets']['train']['batch_size_per_gpu'])
              for o in opts.values()]
    assert shared[0] == shared[1] == shared[2]


def test_include_override_and_remove(tmp_path):
    (tmp_path / 'shared.yml').write_text('train: {a: 1, b: {c: 2}}\nval_1: {name: x}\n')
    (tmp_path / 'main.yml').write_text('d: !include {file: shared.yml, override: {train: {b: {c: 3}}}, '
                                       'remove: [val_1]}\n')
    assert load(tmp_path / 'main.yml') == {'d': {'train': {'a': 1, 'b': {'c': 3}}}}
    (tmp_path / 'bad.yml').write_text('d: !include missing.yml\n')
    with pytest.raises(FileNotFoundError, match='bad.yml: !include missing.yml'):
        load(tmp_path / 'bad.yml')
