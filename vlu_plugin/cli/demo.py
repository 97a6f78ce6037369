"""`vlu demo`: the embedded all-in-one benchmark end to end, on CPU, with no download.

Stages: build the benchmark, fine-tune the degradation CLIP, train VLU-Net, PromptIR and AirNet under one
protocol (options/demo/), test each on every task's test set, and report side by side. Every stage runs
BasicSR's own pipeline in a subprocess under `--out`; a re-run skips the stages whose outputs exist
(`--force` redoes them) and resumes an interrupted training from its last checkpoint.
"""
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import time

OPTIONS_DIR = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'options', 'demo')
MODELS = ('vlunet', 'promptir', 'airnet')  # option files under options/demo/, in training order


def add_parser(subparsers):
    """Register `vlu demo`."""
    parser = subparsers.add_parser('demo', help='fine-tune the CLIP, train and test VLU-Net, PromptIR and AirNet '
                                   'on the embedded benchmark, and report side by side')
    parser.add_argument('--out', default='runs/demo', help='working folder (experiments, results, report)')
    parser.add_argument('--iters', type=int, default=None, help='training iterations per restoration model '
                        '(default 120; 20 with --quick)')
    parser.add_argument('--clip-iters', type=int, default=None, help='CLIP fine-tuning iterations (default 600)')
    parser.add_argument('--quick', action='store_true', help='a small benchmark of 64-px crops and short runs '
                        '(< 3 minutes)')
    parser.add_argument('--force', action='store_true', help='redo every stage')
    return 'demo'


def load_options(name):
    """A demo option file with its `!include`s resolved, as plain dicts."""
    import yaml

    import vlu_plugin  # noqa: F401  (the !include-aware loader)
    from basicsr.utils.options import ordered_yaml
    path = osp.join(OPTIONS_DIR, f'{name}.yml')
    if not osp.isfile(path):
        raise FileNotFoundError(f'demo option file missing: {path} (run vlu demo from a source checkout)')
    with open(path) as f:
        return yaml.safe_load(yaml.safe_dump(_plain(yaml.load(f, Loader=ordered_yaml()[0]))))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def scale_schedule(opt, iters):
    """Set the run length and everything measured in iterations from it."""
    train = opt['train']
    train['total_iter'] = iters
    if 'scheduler' in train:
        train['scheduler']['periods'] = [iters]
    train['warmup_iter'] = -1 if iters < 40 else max(1, iters // 20)
    if 'encoder_warmup_iter' in train:
        train['encoder_warmup_iter'] = max(1, iters // 10)  # AirNet: 10 % as in the release
    opt['val']['val_freq'] = iters // 2 + 1  # once mid-run; BasicSR validates again after the last iteration
    opt['logger']['save_checkpoint_freq'] = max(1, iters // 3)
    opt['logger']['print_freq'] = max(1, min(10, iters // 10))
    return opt


def test_options(train_opt):
    """The test options of a trained demo model: its validation sets, its last weights, images saved."""
    opt = {k: v for k, v in train_opt.items() if k not in ('train', 'logger')}
    opt['datasets'] = {k: v for k, v in train_opt['datasets'].items() if k != 'train'}
    opt['path'] = dict(train_opt['path'], pretrain_network_g=f'experiments/{train_opt["name"]}/models/net_g_latest.pth')
    opt['val'] = dict(train_opt['val'], save_img=True)
    return opt


class Stage:
    """One step of the demo: a BasicSR pipeline run in a subprocess, with a progress bar over iterations."""

    def __init__(self, title, kind, opt, done_file, total=None):
        self.title, self.kind, self.opt, self.done_file, self.total = title, kind, opt, done_file, total

    def run(self, out, force, index, count):
        import yaml
        from tqdm import tqdm
        name = self.opt['name']
        if osp.exists(osp.join(out, self.done_file)) and not force:
            print(f'[{index}/{count}] {self.title}: done already ({self.done_file})')
            return
        root = 'experiments' if self.kind == 'train' else 'results'
        if force:
            shutil.rmtree(osp.join(out, root, name), ignore_errors=True)
        os.makedirs(osp.join(out, 'options'), exist_ok=True)
        opt_path = osp.join(out, 'options', f'{self.kind}_{name}.yml')
        with open(opt_path, 'w') as f:
            yaml.safe_dump(self.opt, f, sort_keys=False)
        args = [sys.executable, '-m', f'vlu_plugin.{self.kind}', '-opt', opt_path]
        if self.kind == 'train':
            args.append('--auto_resume')  # continues an interrupted run; a fresh one starts at 0
        log_path = osp.join(out, 'logs', f'{self.kind}_{name}.log')
        os.makedirs(osp.dirname(log_path), exist_ok=True)
        start = time.time()
        bar = tqdm(total=self.total, desc=f'[{index}/{count}] {self.title}', unit='it' if self.total else ' lines',
                   leave=True, dynamic_ncols=True)
        with open(log_path, 'w') as log:
            proc = subprocess.Popen(args, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=dict(os.environ, PYTHONUNBUFFERED='1'))
            for line in proc.stdout:
                log.write(line)
                match = re.search(r'\biter:\s*([\d,]+)', line)  # not total_iter: in the options dump
                if self.total and match:
                    bar.update(min(self.total, int(match.group(1).replace(',', ''))) - bar.n)
                elif not self.total and 'Validation' in line:
                    bar.update(1)
            proc.wait()
        bar.close()
        if proc.returncode != 0:
            with open(log_path) as f:
                tail = ''.join(f.readlines()[-25:])
            raise RuntimeError(f'{self.title} failed (exit {proc.returncode}); log: {log_path}\n{tail}')
        print(f'    {self.title}: {time.time() - start:.0f} s')


def plan(args):
    """The demo's stages, with option files resolved for this run."""
    iters = args.iters or (20 if args.quick else 120)
    clip_iters = args.clip_iters or (40 if args.quick else 600)
    clip = load_options('degradation_clip')
    clip['train']['total_iter'] = clip_iters
    if args.quick:  # whole crops of the 64-px quick benchmark
        clip['datasets']['train']['gt_size'] = 64
    clip['val']['val_freq'] = max(1, clip_iters // 2)
    clip['logger'].update(save_checkpoint_freq=clip_iters, print_freq=max(1, min(10, clip_iters // 10)))
    stages = [Stage('fine-tune the degradation CLIP', 'train', clip,
                    f'experiments/{clip["name"]}/models/net_clip_latest.pth', clip_iters)]
    trained = [scale_schedule(load_options(model), iters) for model in MODELS]
    for opt in trained:
        label = opt['network_g']['type']
        train_opt = opt
        if args.quick:  # no validation while training: the test stage measures every set once
            train_opt = dict(opt, datasets={'train': opt['datasets']['train']})
        stages.append(Stage(f'train {label}', 'train', train_opt,
                            f'experiments/{opt["name"]}/models/net_g_latest.pth', iters))
    for opt in trained:
        stages.append(Stage(f'test {opt["network_g"]["type"]}', 'test', test_options(opt),
                            f'results/{opt["name"]}/metrics.csv'))
    return stages, trained


def run(args):
    """Run every stage, then print the table and write the report."""
    from vlu_plugin.data.synthetic_benchmark import build_synthetic_benchmark
    from vlu_plugin.report import build_report
    start = time.time()
    out = osp.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    stages, trained = plan(args)
    count = len(stages) + 2
    print(f'[1/{count}] embedded benchmark -> {out}/datasets/synthetic')
    build_synthetic_benchmark(osp.join(out, 'datasets', 'synthetic'), size=64 if args.quick else 128, quick=args.quick,
                              force=args.force)
    for index, stage in enumerate(stages, start=2):
        stage.run(out, args.force, index, count)
    print(f'[{count}/{count}] report')
    folders = [osp.join(out, 'results', opt['name']) for opt in trained]
    folders += [osp.join(out, 'experiments', opt['name']) for opt in trained]
    table = build_report(folders, osp.join(out, 'report'), title='vlu demo: embedded 5-task benchmark (CPU)')
    print(table)
    print(f'report: {out}/report/report.md    total time {time.time() - start:.0f} s')
    return 0
