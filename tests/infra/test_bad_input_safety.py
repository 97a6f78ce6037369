"""The bad-input matrix, part 2 (issue #13): option files and experiment folders are safe to hand over.

First the nine inputs that did harm (code run from YAML, a run written outside experiments/, two runs in
one folder, zero-iteration training, a conversion of the wrong network, merged report rows, a partial file
on a full disk, a hanging named pipe, a sideways portrait), then the ones that gave a raw traceback. Every
case asserts the exit status (or the error class), that the message names the file or option, and that
nothing written before changed. Everything runs in-process; nothing here trains (option checks run before
anything is built, so `vlu train` refuses in well under a second).
"""
import csv
import errno
import os
import re
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO
from test_bad_input import snapshot
from test_train_pipeline import paired_options
from vlu_cli import main
from vlu_plugin.utils import experiment_lock, patches
from vlu_plugin.utils.errors import UserError
from vlu_plugin.utils.options_check import apply_force_yml, load_option_file, validate_options

PWNED = '!!python/object/apply:os.system ["touch PWNED"]'


def write_yml(path, opt):
    """Write `opt` as YAML; returns the path as a string."""
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return str(path)


def train_yml(tmp_path, name='run', **changes):
    """A valid tiny training option file in tmp_path (its data folders need not exist: nothing is built)."""
    opt = paired_options(tmp_path, name)
    for dotted, value in changes.items():
        *parents, key = dotted.split('__')
        node = opt
        for parent in parents:
            node = node[parent]
        if value is KeyError:
            del node[key]
        else:
            node[key] = value
    return write_yml(tmp_path / f'{name}.yml', opt)


def run_cli(argv, monkeypatch, capsys, cwd):
    """`vlu <argv>` in-process in `cwd`: (exit status, stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, 'argv', ['vlu'] + list(argv))  # vlu train/test hand sys.argv to BasicSR
    rc = main(list(argv))
    return rc, capsys.readouterr().err


# ---- 1. option files never run code ----------------------------------------------------------------------
@pytest.mark.parametrize('command', ['train', 'test', 'restore', 'report'])
def test_safety_python_tag_in_an_option_file_runs_nothing(tmp_path, monkeypatch, capsys, command):
    opt_path = train_yml(tmp_path)
    with open(opt_path, 'a') as f:
        f.write(f'comment: {PWNED}\n')
    if command == 'report':  # the copy BasicSR keeps in a result folder
        folder = tmp_path / 'results' / 'run'
        folder.mkdir(parents=True)
        (folder / 'run.yml').write_text(open(opt_path).read())
        (folder / 'metrics.csv').write_text('iter,dataset,metric,value\nrun,set,psnr,30.0\nrun,set,ssim,0.9\n')
        argv = ['report', str(folder), '--out', str(tmp_path / 'report')]
    else:
        argv = {'train': ['train', '-opt', opt_path], 'test': ['test', '-opt', opt_path],
                'restore': ['restore', '-opt', opt_path, str(tmp_path), str(tmp_path / 'out')]}[command]
    rc, err = run_cli(argv, monkeypatch, capsys, tmp_path)
    assert not (tmp_path / 'PWNED').exists()
    if command == 'report':  # the copy is passed over (the label falls back to the folder's name), never run
        with open(tmp_path / 'report' / 'results.csv') as f:
            assert rc == 0 and {row['model'] for row in csv.DictReader(f)} == {'run'}
        return
    assert rc == 2
    assert f'vlu {command}: error: {opt_path} (line ' in err and 'refusing the Python tag !!python/object/apply' in err
    assert not (tmp_path / 'experiments').exists() and not (tmp_path / 'results').exists()


def test_safety_python_tag_refused_in_an_included_file_and_by_basicsr_loader(tmp_path):
    from basicsr.utils.options import ordered_yaml
    (tmp_path / 'shared.yml').write_text(f'a: 1\nb: {PWNED}\n')
    (tmp_path / 'main.yml').write_text('name: x\nblock: !include shared.yml\n')
    with pytest.raises(UserError, match=r'main\.yml.*refusing the Python tag'):
        load_option_file(str(tmp_path / 'main.yml'))
    with pytest.raises(yaml.constructor.ConstructorError), open(tmp_path / 'shared.yml') as f:
        yaml.load(f, Loader=ordered_yaml()[0])  # what BasicSR's own parse_options uses
    assert not (tmp_path / 'PWNED').exists()
    # what the safe loader still reads: ordered mappings, !!float, !include
    (tmp_path / 'ok.yml').write_text('lr: !!float 1e-3\nb: !include {file: ok_part.yml}\n')
    (tmp_path / 'ok_part.yml').write_text('z: 1\na: 2\n')
    opt = load_option_file(str(tmp_path / 'ok.yml'))
    assert opt['lr'] == 1e-3 and list(opt['b']) == ['z', 'a']


# ---- 2. names are plain folder names ---------------------------------------------------------------------
@pytest.mark.parametrize('name', ['../precious', '/tmp/abs', 'a/b', '..', '', ' pad'])
def test_safety_name_must_be_a_plain_folder_name(tmp_path, name):
    path = train_yml(tmp_path, name='ok')
    opt = load_option_file(path)
    opt['name'] = name
    with pytest.raises(UserError, match=rf'{path}: name: .*(not a plain folder name|expected a folder name)'):
        validate_options(opt, path)


def test_safety_name_escaping_experiments_leaves_the_folder_alone(tmp_path, monkeypatch, capsys):
    precious = tmp_path / 'precious'
    precious.mkdir()
    (precious / 'thesis.txt').write_text('years of work')
    path = write_yml(tmp_path / 'x.yml', paired_options(tmp_path, '../precious'))
    before = snapshot(tmp_path)
    rc, err = run_cli(['train', '-opt', path], monkeypatch, capsys, tmp_path)
    assert rc == 2 and f"vlu train: error: {path}: name: '../precious' is not a plain folder name" in err
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ['precious', 'x.yml']


# ---- 3. one run per experiment folder --------------------------------------------------------------------
@pytest.fixture
def other_live_process():
    """The pid of a live process that is not this one."""
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_safety_second_train_on_a_live_experiment_is_refused(tmp_path, monkeypatch, capsys, other_live_process):
    path = train_yml(tmp_path, name='busy')
    exp = tmp_path / 'experiments' / 'busy'
    (exp / 'models').mkdir(parents=True)
    (exp / 'models' / 'net_g_2.pth').write_bytes(b'weights of the live run')
    (exp / experiment_lock.LOCK_NAME).write_text(f'{other_live_process} {socket.gethostname()}\n')
    before = snapshot(tmp_path / 'experiments')
    for extra in ([], ['--auto_resume']):
        rc, err = run_cli(['train', '-opt', path, *extra], monkeypatch, capsys, tmp_path)
        assert rc == 2 and f'is in use by a running `vlu train` (pid {other_live_process}' in err
        assert str(exp) in err
        assert snapshot(tmp_path / 'experiments') == before and os.listdir(tmp_path / 'experiments') == ['busy']


def test_safety_stale_lock_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    folder = tmp_path / 'experiments' / 'old'
    folder.mkdir(parents=True)
    (folder / experiment_lock.LOCK_NAME).write_text(f'{dead.pid} {socket.gethostname()}\n')
    experiment_lock.acquire(str(folder))
    assert (folder / experiment_lock.LOCK_NAME).read_text().split()[0] == str(os.getpid())
    experiment_lock.release_all()
    assert not (folder / experiment_lock.LOCK_NAME).exists()


def test_safety_auto_resume_without_states_keeps_the_folder(tmp_path):
    exp = tmp_path / 'experiments' / 'run'
    exp.mkdir(parents=True)
    (exp / 'train_run_1.log').write_text('the first attempt\n')
    opt = {'is_train': True, 'rank': 0, 'auto_resume': True,
           'path': {'experiments_root': str(exp), 'models': str(exp / 'models'), 'log': str(exp),
                    'training_states': str(exp / 'training_states'), 'pretrain_network_g': None}}
    try:
        patches.make_exp_dirs(opt)
        assert os.listdir(tmp_path / 'experiments') == ['run']  # not renamed to run_archived_<time>
        assert (exp / 'train_run_1.log').read_text() == 'the first attempt\n' and (exp / 'models').is_dir()
        assert (exp / experiment_lock.LOCK_NAME).read_text().split()[0] == str(os.getpid())
    finally:
        experiment_lock.release_all()


# ---- 4. training that would train nothing ----------------------------------------------------------------
def test_safety_batch_larger_than_the_training_set_is_refused(image_pairs):
    import logging

    import basicsr.train
    opt = paired_options(image_pairs, 'big_batch')  # 4 pairs
    opt.update(world_size=1, rank=0, dist=False, num_gpu=0)
    for phase, block in opt['datasets'].items():
        block.update(phase=phase, scale=1)
    opt['datasets']['train']['batch_size_per_gpu'] = 64
    with pytest.raises(UserError, match=r'datasets\.train\.batch_size_per_gpu 64 is larger than the 4 training '
                                        r'samples per process \(4 in the set, dataset_enlarge_ratio 1'):
        basicsr.train.create_train_val_dataloader(opt, logging.getLogger('test'))
    opt['datasets']['train']['dataset_enlarge_ratio'] = 16  # 64 samples: one full batch per epoch
    assert len(basicsr.train.create_train_val_dataloader(opt, logging.getLogger('test'))[0]) == 1


# ---- 5. conversions of the wrong network -----------------------------------------------------------------
@pytest.mark.parametrize('kind', ['airnet', 'promptir'])
def test_safety_convert_refuses_another_networks_checkpoint(tmp_path, monkeypatch, capsys, kind):
    from test_convert import VLUNET_NAMES, VLUNET_SMALL, renamed
    from vlu_plugin.archs.vlunet_arch import VLUNet
    torch.save({'state_dict': renamed(VLUNet(**VLUNET_SMALL), VLUNET_NAMES, 'net.')}, tmp_path / 'vlunet.ckpt')
    (tmp_path / 'out.pth').write_bytes(b'an earlier conversion')
    rc, err = run_cli(['convert', kind, 'vlunet.ckpt', 'out.pth'], monkeypatch, capsys, tmp_path)
    arch = {'airnet': 'AirNet', 'promptir': 'PromptIR'}[kind]
    assert rc == 2 and f'vlu convert: error: vlunet.ckpt: not a {arch} checkpoint' in err
    assert 'it looks like a VLUNet checkpoint (100% of its keys match): try `vlu convert vlunet`' in err
    assert (tmp_path / 'out.pth').read_bytes() == b'an earlier conversion'


# ---- 6. report: every run its row ------------------------------------------------------------------------
def result_folder(root, name, network='VLUNet', psnr=30.0, experiment=False):
    """A result (or experiment) folder of `network` with one metric row."""
    folder = root / name
    folder.mkdir(parents=True)
    write_yml(folder / f'{name}.yml', {'name': name, 'network_g': {'type': network}})
    (folder / 'metrics.csv').write_text(f'iter,dataset,metric,value\n4,set5,psnr,{psnr}\n4,set5,ssim,0.9\n')
    if experiment:
        (folder / f'train_{name}.log').write_text('')
    return str(folder)


def test_safety_report_keeps_two_runs_of_one_network(tmp_path, monkeypatch, capsys):
    a = result_folder(tmp_path / 'experiments', 'vlunet_lr1e-4', psnr=30.0, experiment=True)
    b = result_folder(tmp_path / 'experiments', 'vlunet_lr2e-4', psnr=31.0, experiment=True)
    c = result_folder(tmp_path / 'results', 'promptir', network='PromptIR', psnr=29.0)
    rc, _ = run_cli(['report', a, b, c, '--out', 'report'], monkeypatch, capsys, tmp_path)
    assert rc == 0
    with open(tmp_path / 'report' / 'results.csv') as f:
        rows = {(r['model'], r['dataset']): r['psnr'] for r in csv.DictReader(f)}
    assert rows[('VLUNet (vlunet_lr1e-4)', 'set5')] == '30.0000'
    assert rows[('VLUNet (vlunet_lr2e-4)', 'set5')] == '31.0000'
    assert rows[('PromptIR', 'set5')] == '29.0000'


# ---- 7. restore on a full disk ---------------------------------------------------------------------------
def test_safety_restore_on_a_full_disk_cleans_up_and_keeps_the_record(trained, tmp_path, monkeypatch, capsys):
    from conftest import write_images
    from vlu_plugin.utils import atomic
    write_images(tmp_path / 'in', 3, size=(24, 24))
    real_open = open

    class HalfWritten:
        """A file on a disk that fills up half-way through the write."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, 'No space left on device')

    def disk_full_on_the_second_image(path, mode='r', *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return HalfWritten(f) if 'img001.png.tmp' in str(path) else f

    monkeypatch.setattr(atomic, 'open', disk_full_on_the_second_image, raising=False)  # every write goes there
    rc, err = run_cli(['restore', '-opt', str(trained / 'test.yml'), '--clip', str(trained / 'clip.pth'), 'in', 'out',
                       '--tile', '0'], monkeypatch, capsys, tmp_path)
    assert rc == 2
    assert f'cannot write {os.path.join("out", "img001.png")} (restoring {os.path.join("in", "img001.png")}): ' \
           'No space left on device; 1 earlier image(s) are restored and listed in detections.csv' in err
    assert sorted(os.listdir(tmp_path / 'out')) == ['detections.csv', 'img000.png']  # no partial *.tmp* file
    with open(tmp_path / 'out' / 'detections.csv') as f:
        assert [row[0] for row in csv.reader(f)] == ['image', 'img000.png']
    assert cv2.imread(str(tmp_path / 'out' / 'img000.png')).shape == (24, 24, 3)


# ---- 8. named pipes --------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='no named pipes here')
def test_safety_a_named_pipe_is_not_an_image(tmp_path, monkeypatch, capsys):
    from vlu_cli.restore import list_inputs
    from vlu_plugin.data.image_io import list_images, read_image
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    os.mkfifo(folder / 'b.png')  # opening it would block until someone writes
    assert list_images(str(folder)) == ['a.png']
    assert [rel for _, rel in list_inputs(str(folder))] == ['a.png']
    assert 'b.png' in capsys.readouterr().out  # named as passed over
    with pytest.raises(ValueError, match=r'unreadable image .*b\.png: not a regular file'):
        read_image(str(folder / 'b.png'))
    with pytest.raises(UserError, match=r'input .*b\.png: not a regular file or a folder'):
        list_inputs(str(folder / 'b.png'))


# ---- 9. EXIF orientation ---------------------------------------------------------------------------------
def test_safety_exif_orientation_is_applied_on_read(tmp_path):
    from PIL import Image

    from vlu_cli.restore import read_input
    from vlu_plugin.data.image_io import read_image
    stored = np.zeros((16, 32, 3), np.uint8)  # landscape as stored, a red top-left corner
    stored[:4, :4] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    path = str(tmp_path / 'portrait.jpg')
    Image.fromarray(stored).save(path, exif=exif, quality=100)
    img = read_image(path)
    assert img.shape == (32, 16, 3)  # upright: a portrait
    viewer = cv2.imread(path, cv2.IMREAD_COLOR)[:, :, ::-1] / 255.  # OpenCV's colour read applies EXIF too
    assert viewer.shape == img.shape and np.abs(viewer - img).max() < 0.05
    assert img[:4, -4:, 0].mean() > 0.9  # the red corner turned to the top right
    restored_input, (dtype, channels, _) = read_input(path)
    assert restored_input.shape == (32, 16, 3) and channels == 3


# ---- raw tracebacks: option files ------------------------------------------------------------------------
OPTION_CASES = {
    # case: (changes to the valid file, or raw file text, the message after '<file>: ')
    'empty': ('', r'the option file is empty'),
    'not_text': (b'\x89PNG\r\n\x1a\n\0\0\0\rIHDR', r'not a text file'),
    'yaml_list': ('- name: x\n- model_type: y\n', r'expected a mapping of options .* got a YAML list'),
    'bad_yaml': ('name: [unclosed\n', r'not valid YAML'),
    'lr_word': ({'train__optim_g__lr': 'fast'}, r"train\.optim_g\.lr: 'fast' is not a number"),
    'no_train_set': ({'datasets__train': KeyError}, r'datasets\.train: missing: a training run needs a train set'),
    'workers': ({'datasets__train__num_worker_per_gpu': -1}, r'datasets\.train\.num_worker_per_gpu: -1 is below'),
    'enlarge_0': ({'datasets__train__dataset_enlarge_ratio': 0},
                  r'datasets\.train\.dataset_enlarge_ratio: 0 must be greater than 0'),
    'val_freq_0': ({'val__val_freq': 0}, r'val\.val_freq: 0 is below the smallest allowed value, 1'),
    'ckpt_freq_0': ({'logger__save_checkpoint_freq': 0}, r'logger\.save_checkpoint_freq: 0 is below'),
    'seed_word': ({'manual_seed': 'lucky'}, r"manual_seed: 'lucky' is not a whole number"),
    'total_iter_0': ({'train__total_iter': 0}, r'train\.total_iter: 0 is below the smallest allowed value, 1'),
    'total_iter_neg': ({'train__total_iter': -5}, r'train\.total_iter: -5 is below'),
    'batch_0': ({'datasets__train__batch_size_per_gpu': 0}, r'datasets\.train\.batch_size_per_gpu: 0 is below'),
    'short_periods': ({'train__total_iter': 10}, r'train\.scheduler\.periods: they cover 6 iterations, fewer than '
                                                 r'train\.total_iter 10'),
    'no_num_gpu': ({'num_gpu': KeyError}, r'num_gpu: missing'),
    'include_missing': ('name: x\ndatasets: !include nowhere.yml\n', r'!include nowhere\.yml: no such file'),
    'num_gpu_2': ({'num_gpu': 2}, r'num_gpu: 2 GPUs asked for, 0 available \(CUDA is not available here'),
    'phase': ({'datasets__tset': {'type': 'X'}}, r"datasets\.tset: unknown phase 'tset'"),
}


def option_file(tmp_path, case):
    """The option file of OPTION_CASES[case]."""
    spec, _ = OPTION_CASES[case]
    if isinstance(spec, dict):
        return train_yml(tmp_path, name='case', **spec)
    path = tmp_path / 'case.yml'
    path.write_bytes(spec if isinstance(spec, bytes) else spec.encode())
    return str(path)


@pytest.mark.parametrize('case', sorted(OPTION_CASES))
def test_bad_input_option_file_values(tmp_path, monkeypatch, case):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    path = option_file(tmp_path, case)
    before = open(path, 'rb').read()
    with pytest.raises(UserError, match=rf'^{path}: {OPTION_CASES[case][1]}'):
        validate_options(load_option_file(path), path)
    assert open(path, 'rb').read() == before


@pytest.mark.parametrize('case', ['yaml_list', 'lr_word', 'val_freq_0'])
def test_bad_input_option_file_through_vlu_train(tmp_path, monkeypatch, capsys, case):
    path = option_file(tmp_path, case)
    rc, err = run_cli(['train', '-opt', path], monkeypatch, capsys, tmp_path)
    assert rc == 2 and err.startswith(f'vlu train: error: {path}: ') and 'Traceback' not in err
    assert not (tmp_path / 'experiments').exists()


def test_bad_input_unquoted_exponent_is_a_number(tmp_path):
    path = train_yml(tmp_path, name='exp')
    text = open(path).read().replace('lr: 0.0002', 'lr: 1e-3').replace('eta_min: 1.0e-06', 'eta_min: 1e-6')
    open(path, 'w').write(text)
    opt = load_option_file(path)
    assert opt['train']['optim_g']['lr'] == '1e-3'  # YAML 1.1 reads it as a string ...
    validate_options(opt, path)
    assert opt['train']['optim_g']['lr'] == 1e-3 and opt['train']['scheduler']['eta_min'] == 1e-6  # ... a number


@pytest.mark.parametrize('entry, message', [
    ('train:total_iter', r'--force_yml train:total_iter: expected KEY:SUBKEY=VALUE'),
    ('train:totl_iter=5', r"--force_yml train:totl_iter=5: .*run\.yml has no option train:totl_iter .*did you mean "
                          r"'total_iter'"),
    ('trian:total_iter=5', r"has no option trian .*did you mean 'train'"),
])
def test_bad_input_force_yml(tmp_path, monkeypatch, capsys, entry, message):
    path = train_yml(tmp_path)
    with pytest.raises(UserError, match=message):
        apply_force_yml(load_option_file(path), [entry], path)
    rc, err = run_cli(['train', '-opt', path, '--force_yml', entry], monkeypatch, capsys, tmp_path)
    assert rc == 2 and 'vlu train: error: --force_yml' in err and not (tmp_path / 'experiments').exists()
    assert apply_force_yml(load_option_file(path), ['train:total_iter=6'], path)['train']['total_iter'] == 6


# ---- raw tracebacks: resume ------------------------------------------------------------------------------
def resume_options(tmp_path, total_iter=4, auto_resume=True, resume_state=None):
    """The parsed options load_resume_state sees for experiments/run."""
    exp = tmp_path / 'experiments' / 'run'
    return {'name': 'run', 'auto_resume': auto_resume, 'num_gpu': 0, 'rank': 0, 'is_train': True,
            'train': {'total_iter': total_iter},
            'path': {'experiments_root': str(exp), 'resume_state': resume_state, 'models': str(exp / 'models')}}


def training_states(tmp_path, *iters):
    """training_states/<iter>.state files holding what BasicSR saves (without optimizers)."""
    folder = tmp_path / 'experiments' / 'run' / 'training_states'
    folder.mkdir(parents=True, exist_ok=True)
    for it in iters:
        torch.save({'epoch': 0, 'iter': it, 'optimizers': [], 'schedulers': []}, folder / f'{it}.state')
    return folder


@pytest.mark.parametrize('damage', ['truncated', 'random_bytes'])
def test_bad_input_corrupt_latest_state_falls_back(tmp_path, capsys, damage):
    folder = training_states(tmp_path, 2, 4)
    whole = (folder / '4.state').read_bytes()
    (folder / '4.state').write_bytes(whole[:len(whole) // 2] if damage == 'truncated' else os.urandom(len(whole)))
    before = snapshot(folder)
    opt = resume_options(tmp_path)
    try:
        state = patches.load_resume_state(opt)
    finally:
        experiment_lock.release_all()
    assert state['iter'] == 2 and opt['path']['resume_state'] == str(folder / '2.state')
    err = capsys.readouterr().err
    assert f'{folder / "4.state"} is unreadable' in err and 'trying the previous training state' in err
    assert 'weights_only' not in err and snapshot(folder) == before
    (folder / '2.state').write_bytes(b'')
    with pytest.raises(UserError, match=r'training_states: none of the 2 training states is readable'):
        patches.load_resume_state(resume_options(tmp_path))
    with pytest.raises(UserError, match=r'path\.resume_state .*4\.state: not a readable training state'):
        patches.load_resume_state(resume_options(tmp_path, auto_resume=False, resume_state=str(folder / '4.state')))


def test_bad_input_resume_past_total_iter_is_refused(tmp_path):
    folder = training_states(tmp_path, 8)
    with pytest.raises(UserError, match=r'8\.state was saved at iteration 8, past train\.total_iter 4'):
        patches.load_resume_state(resume_options(tmp_path, total_iter=4))
    assert os.listdir(folder) == ['8.state']


# ---- raw tracebacks: report ------------------------------------------------------------------------------
REPORT_CASES = {
    'missing_folder': (lambda f: None, r'{f}: no such folder'),
    'no_metrics': (lambda f: os.remove(os.path.join(f, 'metrics.csv')), r'{f}: no metrics\.csv'),
    'corrupt_run_json': (lambda f: open(os.path.join(f, 'run.json'), 'w').write('{"network": '),
                         r'{f}/run\.json: not valid JSON'),
    'binary_metrics': (lambda f: open(os.path.join(f, 'metrics.csv'), 'wb').write(b'\xff\xfe\0\x81' * 8),
                       r'{f}/metrics\.csv: not a readable CSV file'),
    'malformed_header': (lambda f: open(os.path.join(f, 'metrics.csv'), 'w').write('a;b\n1;2\n'),
                         r'{f}/metrics\.csv: expected the columns iter,dataset,metric,value'),
    'malformed_value': (lambda f: open(os.path.join(f, 'metrics.csv'), 'a').write('4,set5,ssim,high\n'),
                        r"{f}/metrics\.csv line 4: value 'high' is not a number"),
}


@pytest.mark.parametrize('case', sorted(REPORT_CASES) + ['out_is_a_file'])
def test_bad_input_report(tmp_path, monkeypatch, capsys, case):
    good = result_folder(tmp_path / 'results', 'good')
    out = tmp_path / 'report'
    if case == 'out_is_a_file':
        out.write_text('my notes')
        folder, message = good, rf'--out {out}: exists and is not a folder'
    else:
        damage, message = REPORT_CASES[case]
        folder = str(tmp_path / 'results' / 'bad') if case == 'missing_folder' else \
            result_folder(tmp_path / 'results', 'bad')
        damage(folder)
        message = message.format(f=folder)
    before = snapshot(tmp_path)
    rc, err = run_cli(['report', good, folder, '--out', str(out)], monkeypatch, capsys, tmp_path)
    assert rc == 2
    assert re.search(rf'^vlu report: error: {message}', err), err
    assert snapshot(tmp_path) == before  # no report written, nothing changed


# ---- raw tracebacks: restore -----------------------------------------------------------------------------
@pytest.mark.parametrize('case', ['overlap_ge_tile', 'negative_tile', 'opt_is_an_image', 'random_weights',
                                  'output_is_a_file', 'empty_folder'])
def test_bad_input_restore(trained, tmp_path, monkeypatch, capsys, case):
    from conftest import write_images
    write_images(tmp_path / 'in', 1, size=(16, 16))
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'noise.pth').write_bytes(os.urandom(3000))
    (tmp_path / 'out_file').write_text('not a folder')
    opt = str(trained / 'test.yml')
    args, message = {
        'overlap_ge_tile': (['-opt', opt, 'in', 'out', '--tile', '16', '--tile-overlap', '32'],
                            r'--tile-overlap 32 must be smaller than --tile 16'),
        'negative_tile': (['-opt', opt, 'in', 'out', '--tile', '-5'], r'argument --tile: -5 is negative'),
        'opt_is_an_image': (['-opt', str(tmp_path / 'in' / 'img000.png'), 'in', 'out'],
                            rf'{tmp_path}/in/img000\.png: not a text file'),
        'random_weights': (['-opt', opt, '--weights', 'noise.pth', 'in', 'out'],
                           r'noise\.pth: not a readable checkpoint \(truncated, corrupt or not a PyTorch file\)'),
        'output_is_a_file': (['-opt', opt, 'in', 'out_file'], r'output out_file: exists and is not a folder'),
        'empty_folder': (['-opt', opt, 'empty', 'out'], r'input empty: no images in the folder'),
    }[case]
    before = snapshot(tmp_path)
    if case == 'negative_tile':  # argparse's own refusal: usage and status 2 on stderr
        with pytest.raises(SystemExit) as stop:
            run_cli(['restore', *args], monkeypatch, capsys, tmp_path)
        rc, err = stop.value.code, capsys.readouterr().err
    else:
        rc, err = run_cli(['restore', *args], monkeypatch, capsys, tmp_path)
    assert rc == 2 and re.search(message, err), err
    assert 'weights_only' not in err and 'Traceback' not in err
    assert snapshot(tmp_path) == before and not (tmp_path / 'out').exists()


def test_bad_input_restore_names_skipped_files_and_ignores_its_own_outputs(tmp_path, capsys):
    from vlu_cli.restore import list_inputs
    folder = tmp_path / 'in'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    (folder / 'anim.gif').write_bytes(b'GIF89a')
    (folder / 'restored').mkdir()
    cv2.imwrite(str(folder / 'restored' / 'a.png'), np.zeros((8, 8, 3), np.uint8))  # the first run's output
    assert [rel for _, rel in list_inputs(str(folder), str(folder / 'restored'))] == ['a.png']
    out = capsys.readouterr().out
    assert 'anim.gif' in out and 'passed over' in out and 'is inside the input folder' in out


# ---- raw tracebacks: prepare, bench ----------------------------------------------------------------------
@pytest.mark.parametrize('case', ['synthetic_out_file', 'lmdb_target_file', 'lists_out_file', 'size_small',
                                  'size_large', 'bench_arch'])
def test_bad_input_prepare_and_bench(tmp_path, monkeypatch, capsys, case):
    (tmp_path / 'imgs').mkdir()
    cv2.imwrite(str(tmp_path / 'imgs' / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / 'taken').write_text('a file where a folder should go')
    (tmp_path / 'taken.lmdb').write_text('a file named like an LMDB')
    argv, message = {
        'synthetic_out_file': (['prepare', 'synthetic', '--out', 'taken', '--quick'],
                               r'vlu prepare synthetic: error: --out taken: exists and is not a folder'),
        'lmdb_target_file': (['prepare', 'lmdb', 'imgs', 'taken.lmdb', '--overwrite'],
                             r'vlu prepare lmdb: error: LMDB target taken\.lmdb: exists and is not a folder'),
        'lists_out_file': (['prepare', 'lists', '--root', 'imgs', '--preset', '3task', '--out', 'taken'],
                           r'vlu prepare lists: error: --out taken: exists and is not a folder'),
        'size_small': (['prepare', 'synthetic', '--size', '8'], r'argument --size: 8 is out of range: use 32 to 300'),
        'size_large': (['prepare', 'synthetic', '--size', '4096'], r'argument --size: 4096 is out of range'),
        'bench_arch': (['bench', '--arch', 'VLUNett', '--quick'],
                       r"vlu bench: error: --arch: unknown arch \['VLUNett'\]"),
    }[case]
    before = snapshot(tmp_path)
    try:
        rc, err = run_cli(argv, monkeypatch, capsys, tmp_path)
    except SystemExit as stop:  # argparse's refusal at parse time
        rc, err = stop.code, capsys.readouterr().err
    assert rc == 2 and re.search(message, err), err
    assert snapshot(tmp_path) == before and sorted(os.listdir(tmp_path)) == ['imgs', 'taken', 'taken.lmdb']


# ---- every shipped option file passes the checks ---------------------------------------------------------
def test_safety_shipped_option_files_pass_validation(monkeypatch):
    import glob
    root = os.path.join(REPO, 'options')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    files = sorted(glob.glob(os.path.join(root, 'demo', '*.yml'))
                   + [f for phase in ('train', 'test') for f in glob.glob(os.path.join(root, phase, '*', '*.yml'))])
    assert len(files) > 10
    for path in files:
        phase = 'test' if f'{os.sep}test{os.sep}' in path else 'train'
        validate_options(load_option_file(path), path, phase)
