"""CDD-11 on a tiny synthetic folder shaped like OneRestore's: lists, labels, check, a VLU-Net run, option files."""
import csv
import glob
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
import yaml

import vlu_plugin  # noqa: F401  (shims before basicsr)
from basicsr.data import build_dataset
from conftest import REPO, run_vlu
from vlu_cli import main
from vlu_cli.prepare import PRESET_NAMES
from vlu_plugin.data.tasks import (ATOMIC, CDD11_PROMPTS, CDD11_SUBSETS, CDD11_TASKS, PRESETS, get_task,
                                   label_space_of, resolve_tasks)
from vlu_plugin.utils.options_check import load_option_file

OPTIONS = osp.join(REPO, 'options')
MODELS = ('VLUNet', 'PromptIR', 'AirNet', 'AdaIR', 'MoCEIR')
TINY_CLIP = {'embed_dim': 32, 'vision_cfg': {'image_size': 32, 'patch_size': 16, 'width': 32, 'layers': 1,
                                             'head_width': 16},
             'text_cfg': {'context_length': 16, 'width': 32, 'heads': 2, 'layers': 1}}
NAMES = ('000001.png', '000002.png')  # the same names in clear/ and every subset, as OneRestore ships them


def write(path, seed, size=(24, 32)):
    """A random RGB PNG of `size` (h, w)."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


@pytest.fixture
def cdd11_root(tmp_path):
    """datasets/cdd11/{train,test}/{clear,<11 subsets>}/00000N.png, two images per folder."""
    root = tmp_path / 'datasets'
    for split in ('train', 'test'):
        for k, folder in enumerate(('clear',) + CDD11_SUBSETS):
            for i, name in enumerate(NAMES):
                write(root / 'cdd11' / split / folder / name, 100 * k + i)
    return root


def test_cdd11_table_labels_prompts_and_multi_hot():
    assert [t.name for t in CDD11_TASKS] == [f'cdd11_{s}' for s in CDD11_SUBSETS]
    assert [t.label for t in CDD11_TASKS] == list(range(11))
    assert CDD11_PROMPTS[9] == 'image with low light, haze and rain' and CDD11_PROMPTS[0] == 'image with low light'
    assert get_task('cdd11_haze_snow').components == ('haze', 'snow')
    assert set(PRESET_NAMES) == set(PRESETS)  # the CLI's choices, kept free of imports, match the table
    shipped = load_option_file(osp.join(OPTIONS, '_shared', 'degradation_clip_cdd11.yml'))
    assert shipped['prompts'] == CDD11_PROMPTS and shipped['num_classes'] == 11
    # one label space per dataset: CDD-11 labels 0-10 and the 7 release labels would collide
    with pytest.raises(ValueError, match='mixes CDD-11 subsets'):
        resolve_tasks({'name': 'x', 'phase': 'val', 'tasks': ['cdd11_low', 'dehaze'], 'root': 'datasets'})


def test_lists_dataset_labels_and_check(cdd11_root, capsys):
    assert main(['prepare', 'lists', '--root', str(cdd11_root), '--preset', 'cdd11']) == 0
    out = capsys.readouterr().out
    assert 'complete: every set was found' in out and 'took part in no pair' not in out, out
    lists = sorted(osp.basename(p) for p in glob.glob(str(cdd11_root / 'meta_info' / '*.txt')))
    assert lists == sorted(f'cdd11_{s}_{split}.txt' for s in CDD11_SUBSETS for split in ('train', 'test'))
    lines = (cdd11_root / 'meta_info' / 'cdd11_low_haze_test.txt').read_text().splitlines()
    assert lines == [f'./cdd11/test/low_haze/{n}, ./cdd11/test/clear/{n}' for n in NAMES]

    common = {'type': 'MultiDegradationDataset', 'root': str(cdd11_root),
              'meta_info_dir': str(cdd11_root / 'meta_info')}
    train = build_dataset({**common, 'name': 'cdd11_all', 'phase': 'train', 'tasks': 'cdd11', 'gt_size': 16})
    assert len(train) == 22
    seen = {}
    for index in range(len(train)):
        sample = train[index]
        subset = sample['deg_subset']
        assert sample['lq'].shape == (3, 16, 16) and f'/{subset}/' in sample['lq_path']
        assert sample['deg_text'] == CDD11_PROMPTS[sample['deg_label']]
        assert sample['deg_multi_hot'].tolist() == [float(a in subset.split('_')) for a in ATOMIC]
        seen[subset] = sample['deg_label']
    assert seen == {s: label for label, s in enumerate(CDD11_SUBSETS)}
    val = build_dataset({**common, 'name': 'CDD11_low_haze_rain', 'phase': 'val', 'tasks': ['cdd11_low_haze_rain']})
    sample = val[0]
    assert len(val) == 2 and sample['lq'].shape == (3, 24, 32) and sample['deg_label'] == 9
    assert sample['deg_multi_hot'].tolist() == [1, 1, 1, 0]
    batch = torch.utils.data.default_collate([val[0], val[1]])  # the composite label batches like the others
    assert batch['deg_multi_hot'].shape == (2, 4) and batch['deg_subset'] == ['low_haze_rain'] * 2

    assert main(['prepare', 'check', '--root', str(cdd11_root), '--preset', 'cdd11']) == 0
    assert 'every set is usable' in capsys.readouterr().out
    os.remove(cdd11_root / 'cdd11' / 'test' / 'clear' / NAMES[0])  # both test lists now name a missing gt
    for name in NAMES:
        os.remove(cdd11_root / 'cdd11' / 'test' / 'snow' / name)
    os.remove(cdd11_root / 'meta_info' / 'cdd11_snow_test.txt')
    assert main(['prepare', 'check', '--root', str(cdd11_root), '--preset', 'cdd11']) == 1
    captured = capsys.readouterr()
    assert 'missing gt: cdd11/test/clear/000001.png' in captured.out
    assert 'cdd11_snow_test' in captured.err  # an empty subset is unusable


def shipped(kind, model):
    """The shipped CDD-11 option file of `model`, includes resolved."""
    return load_option_file(osp.join(OPTIONS, kind, model, f'{kind}_{model}_cdd11.yml'))


@pytest.mark.parametrize('model', MODELS)
def test_shipped_cdd11_options_resolve_one_val_set_per_subset(model):
    train, test = shipped('train', model), shipped('test', model)
    assert label_space_of(train) == 'cdd11' and train['val'] == test['val'] | {'save_img': False}
    assert not train['val'].get('crop_to_multiple')  # OneRestore scores whole images
    assert {k: v for k, v in train['datasets'].items() if k != 'train'} == dict(test['datasets'])
    resolved = resolve_tasks(dict(train['datasets']['train'], phase='train'))
    assert [t.name for t, _ in resolved] == [t.name for t in CDD11_TASKS]
    assert all(spec['meta_info_file'].endswith(f'{t.name}_train.txt') for t, spec in resolved)
    vals = [resolve_tasks(dict(block, phase='val')) for key, block in test['datasets'].items()]
    assert [[t.name for t, _ in v] for v in vals] == [[t.name] for t in CDD11_TASKS]
    if model == 'VLUNet':
        assert train['network_g']['de_dim'] == 11 and train['degradation_clip']['prompts'] == CDD11_PROMPTS


def test_vlunet_trains_on_cdd11_through_basicsr_and_reports_per_subset(cdd11_root, tmp_path):
    """The shipped VLU-Net CDD-11 options, shrunk: two training steps, one validation per subset, the report."""
    from vlu_plugin.archs.degradation_clip_arch import DegradationCLIP
    from vlu_plugin.tools.report import build_report
    assert main(['prepare', 'lists', '--root', str(cdd11_root), '--preset', 'cdd11']) == 0
    torch.manual_seed(0)
    clip = DegradationCLIP(prompts=CDD11_PROMPTS, pretrained=None, clip_config=TINY_CLIP)
    torch.save({'params': clip.learnable_state_dict()}, tmp_path / 'clip.pth')
    opt = shipped('train', 'VLUNet')
    opt.update(name='tiny_cdd11', num_gpu=0)
    for key, block in opt['datasets'].items():
        block.update(root=str(cdd11_root), meta_info_dir=str(cdd11_root / 'meta_info'))
    opt['datasets']['train'].update(gt_size=16, batch_size_per_gpu=2, num_worker_per_gpu=0)
    opt['network_g'].update(dim=12, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2],
                            clip_dim=32)
    opt['degradation_clip'].update(pretrained=None, clip_config=TINY_CLIP)
    opt['path']['pretrain_network_degradation_clip'] = str(tmp_path / 'clip.pth')
    opt['train'].update(total_iter=2, warmup_iter=-1, scheduler={'type': 'CosineAnnealingRestartLR',
                                                                 'periods': [2], 'eta_min': 1e-6})
    opt['val']['val_freq'] = 2
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    path = tmp_path / 'train_tiny_cdd11.yml'
    path.write_text(yaml.safe_dump(json.loads(json.dumps(opt)), sort_keys=False))  # plain dicts, val_1..val_11 in order
    run_vlu(['train', '-opt', str(path)], cwd=tmp_path, timeout=600)  # generous: other jobs share the CPUs
    exp = tmp_path / 'experiments' / 'tiny_cdd11'
    with open(exp / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert {r['dataset'] for r in rows if r['metric'] == 'psnr'} == {f'CDD11_{s}' for s in CDD11_SUBSETS}
    with open(exp / 'degradation_predictions.csv') as f:
        labels = {(r['dataset'], int(r['label'])) for r in csv.DictReader(f)}
    assert labels == {(f'CDD11_{s}', label) for label, s in enumerate(CDD11_SUBSETS)}

    text = build_report([str(exp)], str(tmp_path / 'report'))
    report = (tmp_path / 'report' / 'report.md').read_text()
    assert 'CDD11_low_haze_snow' in text and 'OneRestore (published)' in text and 'PromptIR (published)' in text
    assert '24.90/0.7905' in text  # OneRestore's published low_haze_snow cell, in that subset's column
    assert 'protocol rgb_float_skimage' in report and 'exact 11-subset accuracy' in report
    assert 'per atomic degradation' in report and 'snow' in report
    per_subset = report.split('Per set:')[1].splitlines()  # one row per subset, models across
    assert per_subset[2].startswith('| set | VLUNet |') and 'OneRestore (published)' in per_subset[2]
    assert [line.split(' | ')[0] for line in per_subset[4:16]] == [f'| CDD11_{s}' for s in CDD11_SUBSETS] + [
        '| average']
    with open(tmp_path / 'report' / 'results.csv') as f:
        assert not any('published' in r['model'] for r in csv.DictReader(f))
