"""`vlu train` / `vlu test` run BasicSR's own pipelines on CPU: AdamW, auto-resume, results under the CWD."""
import csv
import os

import torch
import yaml

from conftest import TINY_VLUNET, run_vlu
from vlu_plugin.archs.vlunet_arch import VLUNet

NET = {'type': 'VLUNet', **TINY_VLUNET}


def paired_options(root, name, total_iter=4):
    """Tiny VLUNet options over BasicSR's PairedImageDataset (no degradation vector)."""
    pair = {'dataroot_gt': str(root / 'gt'), 'dataroot_lq': str(root / 'lq'), 'io_backend': {'type': 'disk'}}
    return {
        'name': name, 'model_type': 'AllInOneModel', 'scale': 1, 'num_gpu': 'auto', 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'pairs', 'type': 'PairedImageDataset', **pair, 'gt_size': 16, 'use_hflip': True,
                      'use_rot': True, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 1,
                      'prefetch_mode': None},
            'val': {'name': 'pairs_val', 'type': 'PairedImageDataset', **pair},
        },
        'network_g': NET,
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0.9, 'optim_g': {'type': 'AdamW', 'lr': 2e-4, 'weight_decay': 0.01},
                  'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [6], 'eta_min': 1e-6},
                  'total_iter': total_iter, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': 2, 'save_img': True,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0},
                            'psnr_float': {'type': 'calculate_psnr_float'}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }


def write_options(path, opt):
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f)
    return str(path)


def test_train_resume_and_test_on_cpu(image_pairs):
    root = image_pairs
    first = paired_options(root, 'tiny_vlunet')
    first['train']['scheduler']['periods'] = [4]  # the cosine ends with the run; the resume below extends both
    opt_path = write_options(root / 'train.yml', first)
    log = run_vlu(['train', '-opt', opt_path], cwd=root).stdout
    exp = root / 'experiments' / 'tiny_vlunet'
    assert (exp / 'models' / 'net_g_4.pth').is_file(), log
    assert 'Validation pairs_val' in log and '# psnr_float' in log
    # validations at 2 and 4, and the final one recorded at 4 (BasicSR's counter ends past total_iter)
    with open(exp / 'metrics.csv') as f:
        assert {row['iter'] for row in csv.DictReader(f)} == {'2', '4'}
    assert not (exp / 'vlu.lock').exists()  # the run's lock is gone with it
    # validation images go under the set's name, so sets sharing file names never overwrite each other
    assert (exp / 'visualization' / 'pairs_val' / 'img000_2.png').is_file()
    assert (exp / 'metrics.csv').read_text().startswith('iter,dataset,metric,value')

    # the checkpoint loads into a bare VLUNet
    state = torch.load(exp / 'models' / 'net_g_4.pth', weights_only=True)
    VLUNet(**{k: v for k, v in NET.items() if k != 'type'}).load_state_dict(state['params'], strict=True)

    # resume on CPU from the latest training state and train further, with the cosine stretched to the new end
    # (the saved scheduler state holds the old periods, which end at 4)
    longer = paired_options(root, 'tiny_vlunet', total_iter=6)
    log = run_vlu(['train', '-opt', write_options(root / 'train6.yml', longer), '--auto_resume'], cwd=root).stdout
    assert 'Resuming training from epoch' in log and 'iter: 4' in log, log[-3000:]
    assert (exp / 'models' / 'net_g_6.pth').is_file()

    # BasicSR's test pipeline writes results under the current directory
    test_opt = {'name': 'tiny_test', 'model_type': 'AllInOneModel', 'scale': 1, 'num_gpu': 'auto',
                'datasets': {'test_1': {'name': 'pairs_test', 'type': 'PairedImageDataset',
                                        'dataroot_gt': str(root / 'gt'), 'dataroot_lq': str(root / 'lq'),
                                        'io_backend': {'type': 'disk'}}},
                'network_g': NET,
                'path': {'pretrain_network_g': str(exp / 'models' / 'net_g_6.pth'), 'param_key_g': 'params_ema',
                         'strict_load_g': True},
                'val': {'save_img': True, 'suffix': None, 'crop_to_multiple': 16,
                        'metrics': {'psnr': {'type': 'calculate_psnr_float'}}}}
    log = run_vlu(['test', '-opt', write_options(root / 'test.yml', test_opt)], cwd=root).stdout
    assert os.path.isfile(root / 'results' / 'tiny_test' / 'visualization' / 'pairs_test' / 'img000_tiny_test.png')
    assert 'Validation pairs_test' in log
