"""`vlu demo`: the embedded all-in-one benchmark end to end, with no download.

Stages: build the benchmark, fine-tune the degradation CLIP, train VLU-Net, PromptIR and AirNet under one
protocol (the option files in `vlu_plugin/options/demo/`) and, with `--ablations`, two VLU-Net variants
(uniform prompt mixture; the ground-truth prompt's text embedding as the degradation vector), test each on
every task's test set, and report side by side. Every stage runs BasicSR's own pipeline in a subprocess under `--out`, `--jobs`
at a time (one thread each on a CPU), each starting as soon as what it needs is done. A re-run skips the
stages whose outputs exist (`--force` redoes them) and resumes an interrupted training from its last
checkpoint.
"""
import argparse
import copy
import csv
import importlib.util
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

# shipped inside vlu_plugin (package data); found without importing it, which would import torch and BasicSR
OPTIONS_DIR = osp.join(importlib.util.find_spec('vlu_plugin').submodule_search_locations[0], 'options', 'demo')
MODELS = ('vlunet', 'promptir', 'airnet', 'adair', 'moceir')  # option files in OPTIONS_DIR, in the report's order
DEFAULT_MODELS = MODELS[:3]  # AdaIR and MoCE-IR only on request (`--models`): the 15-minute budget holds three
# Stages start in this order when their inputs are ready: the longest training first (an AirNet step costs
# about 2.5 VLU-Net steps on a CPU), so that it overlaps the CLIP -> VLU-Net chain.
START_ORDER = ('airnet', 'moceir', 'adair', 'vlunet', 'promptir')
ABLATIONS = {'uniform': 'uniform prompt mixture (no CLIP)', 'true_label': 'true-label vector'}
DEFAULTS = {'iters': 900, 'clip_iters': 1000}
QUICK = {'iters': 150, 'clip_iters': 150}  # the CLIP -> VLU-Net chain ends first: a longer CLIP costs no time
CLIP_PATH_KEY = 'pretrain_network_degradation_clip'


def add_parser(subparsers):
    """Register `vlu demo`."""
    parser = subparsers.add_parser('demo', help='fine-tune the CLIP, train and test VLU-Net, PromptIR and AirNet '
                                   '(and two VLU-Net ablations) on the embedded benchmark, and report side by side')
    parser.add_argument('--out', default='runs/demo', help='working folder (experiments, results, report)')
    parser.add_argument('--iters', type=int, default=None,
                        help=f'training iterations per restoration model (default {DEFAULTS["iters"]}; '
                        f'{QUICK["iters"]} with --quick)')
    parser.add_argument('--clip-iters', type=int, default=None,
                        help=f'CLIP fine-tuning iterations (default {DEFAULTS["clip_iters"]}; '
                        f'{QUICK["clip_iters"]} with --quick)')
    parser.add_argument('--quick', action='store_true', help='a small benchmark of 64-px crops and short runs '
                        '(a few minutes)')
    parser.add_argument('--ablations', action='store_true', help='also train and test VLU-Net with a uniform '
                        'prompt mixture and with the true label\'s text embedding (two more models)')
    parser.add_argument('--models', type=model_list, default=DEFAULT_MODELS,
                        help=f'comma-separated networks to train (default {",".join(DEFAULT_MODELS)}; also '
                        f'{",".join(m for m in MODELS if m not in DEFAULT_MODELS)}, each with the same parameter budget)')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto',
                        help='auto: CUDA when present, else the CPU (default)')
    parser.add_argument('--jobs', type=int, default=2, help='stages run at once (default 2: one per core on a '
                        '2-core CPU, each with --threads threads)')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads per stage (default 1)')
    parser.add_argument('--force', action='store_true', help='redo every stage')
    return 'demo'


def model_list(text):
    """`--models`: known names, comma-separated, in the report's order."""
    names = [name.strip().lower() for name in text.split(',') if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f'{",".join(unknown) or repr(text)}: choose from {",".join(MODELS)}')
    return tuple(model for model in MODELS if model in names)


def load_options(name):
    """A demo option file with its `!include`s resolved, as plain dicts."""
    import yaml

    from vlu_plugin.utils.options_check import option_loader, plain
    path = osp.join(OPTIONS_DIR, f'{name}.yml')
    if not osp.isfile(path):
        raise FileNotFoundError(f'demo option file missing: {path} (reinstall vlu_plugin)')
    with open(path) as f:
        return yaml.safe_load(yaml.safe_dump(plain(yaml.load(f, Loader=option_loader()))))


def scale_schedule(opt, iters, validations=2):
    """Set the run length and everything measured in iterations from it."""
    train = opt['train']
    train['total_iter'] = iters
    if 'scheduler' in train:
        train['scheduler']['periods'] = [iters]
    train['warmup_iter'] = -1 if iters < 40 else max(1, iters // 20)
    phases = opt['datasets']['train'].get('iters')
    if phases:  # progressive learning: the same fractions of the run, the last phase takes the rounding
        scaled = [max(1, round(p * iters / sum(phases))) for p in phases[:-1]]
        opt['datasets']['train']['iters'] = scaled + [max(1, iters - sum(scaled))]
    if 'encoder_warmup_iter' in train:
        train['encoder_warmup_iter'] = max(1, iters // 10)  # AirNet: 10 % as in the release
    # `validations` in all for the curves: BasicSR validates once more after the last iteration, so
    # validations - 1 of them inside the run (each costs ~20 s of a CPU run)
    opt['val']['val_freq'] = iters // validations + 1
    opt['logger']['save_checkpoint_freq'] = max(1, iters // 3)
    opt['logger']['print_freq'] = max(1, min(20, iters // 20))
    return opt


def ablation(vlunet_opt, kind):
    """The VLU-Net options with one change: no CLIP (`uniform`) or the true label's text embedding."""
    opt = copy.deepcopy(vlunet_opt)
    opt['name'] = f'{opt["name"]}_{kind}'
    if kind == 'uniform':
        del opt['degradation_clip']
        del opt['path'][CLIP_PATH_KEY]
    else:
        opt['degradation_vector'] = 'true_label'
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

    def __init__(self, title, kind, opt, done_file, total=None, needs=()):
        self.title, self.kind, self.opt, self.done_file, self.total = title, kind, opt, done_file, total
        self.needs, self.seconds = tuple(needs), None

    @property
    def name(self):
        """The experiment / result name, unique per stage kind."""
        return f'{self.kind}_{self.opt["name"]}'

    def run(self, out, force, threads, slot):
        """Run the stage (unless done), return its wall time in seconds (None when skipped)."""
        import yaml
        from tqdm import tqdm
        name = self.opt['name']
        if osp.exists(osp.join(out, self.done_file)) and not force:
            tqdm.write(f'{self.title}: done already ({self.done_file})')
            return None
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
        env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        start = time.time()
        bar = tqdm(total=self.total, desc=self.title, unit='it' if self.total else ' sets', position=slot,
                   leave=True, dynamic_ncols=True)
        with open(log_path, 'w') as log:
            proc = subprocess.Popen(args, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=env)
            for line in proc.stdout:
                log.write(line)
                match = re.search(r'\biter:\s*([\d,]+)', line)  # not total_iter: in the options dump
                if self.total and match:
                    bar.update(min(self.total, int(match.group(1).replace(',', ''))) - bar.n)
                elif not self.total and 'Validation' in line:
                    bar.update(1)
            proc.wait()
        if proc.returncode == 0 and self.total:  # the log prints every print_freq iterations, not the last one
            bar.update(self.total - bar.n)
        bar.close()
        if proc.returncode != 0:
            with open(log_path) as f:
                tail = ''.join(f.readlines()[-25:])
            raise RuntimeError(f'{self.title} failed (exit {proc.returncode}); log: {log_path}\n{tail}')
        seconds = time.time() - start
        tqdm.write(f'{self.title}: {seconds:.0f} s')
        return seconds


def plan(args):
    """The demo's stages (each naming the stages it needs), the trained options, and the CLIP's options."""
    preset = QUICK if args.quick else DEFAULTS
    iters, clip_iters = args.iters or preset['iters'], args.clip_iters or preset['clip_iters']
    num_gpu = {'auto': 'auto', 'cpu': 0, 'cuda': 1}[args.device]
    clip = load_options('degradation_clip')
    clip['num_gpu'] = num_gpu
    clip['train']['total_iter'] = clip_iters
    clip['train']['scheduler']['periods'] = [clip_iters]
    if args.quick:  # whole crops of the 64-px quick benchmark
        clip['datasets']['train']['gt_size'] = 64
    clip['val']['val_freq'] = clip_iters + 1  # once, by BasicSR after the last iteration
    clip['logger'].update(save_checkpoint_freq=clip_iters, print_freq=max(1, min(20, clip_iters // 20)))
    clip_stage = Stage('fine-tune the degradation CLIP', 'train', clip,
                       f'experiments/{clip["name"]}/models/net_clip_latest.pth', clip_iters)
    from vlu_plugin.utils.errors import UserError
    models = args.models
    if args.ablations and 'vlunet' not in models:
        raise UserError('--ablations trains VLU-Net variants: keep vlunet in --models')
    trained = [scale_schedule(load_options(model), iters) for model in models]
    if args.ablations:
        trained += [ablation(trained[0], kind) for kind in ABLATIONS]
    needs_clip = any(CLIP_PATH_KEY in opt['path'] for opt in trained)
    stages = [clip_stage] if needs_clip else []
    start_rank = {opt['name']: START_ORDER.index(model) for opt, model in zip(trained, models)}
    for opt in sorted(trained, key=lambda o: start_rank.get(o['name'], len(START_ORDER))):
        opt['num_gpu'] = num_gpu
        needs = [clip_stage.name] if CLIP_PATH_KEY in opt['path'] else []
        train_opt = opt
        if args.quick:  # no validation while training: the test stage measures every set once
            train_opt = dict(opt, datasets={'train': opt['datasets']['train']})
        train = Stage(f'train {opt["name"]}', 'train', train_opt, f'experiments/{opt["name"]}/models/net_g_latest.pth',
                      iters, needs)
        stages.append(train)
        stages.append(Stage(f'test {opt["name"]}', 'test', test_options(opt), f'results/{opt["name"]}/metrics.csv',
                            needs=needs + [train.name]))
    return stages, trained, clip


def run_stages(stages, out, force, jobs, threads):
    """Run the stages `jobs` at a time, each once the stages it needs are done; raises the first failure."""
    pending, running, done, lock = list(stages), {}, set(), threading.Lock()
    free_slots = list(range(jobs))

    def start(stage, slot):
        try:
            stage.seconds = stage.run(out, force, threads, slot)
        finally:
            with lock:
                free_slots.append(slot)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            ready = [s for s in pending if set(s.needs) <= done]
            # trainings before tests: no stage waits for a test, while a training may hold up others
            # (the default run's critical path is AirNet's training, then PromptIR's)
            ready.sort(key=lambda s: s.kind != 'train')
            for stage in ready:
                if len(running) >= jobs:
                    break
                pending.remove(stage)
                with lock:
                    slot = free_slots.pop(0)
                running[pool.submit(start, stage, slot)] = stage
            if not running:
                raise RuntimeError(f'demo stages wait for stages that never run: {[s.name for s in pending]}')
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                stage = running.pop(future)
                future.result()  # a failed stage stops the demo (running ones finish first)
                done.add(stage.name)


def write_timings(path, rows):
    """timings.csv: each stage's wall time (empty when it was done already)."""
    from vlu_plugin.utils.atomic import atomic_write
    lines = [['stage', 'seconds']] + [[title, '' if seconds is None else f'{seconds:.1f}'] for title, seconds in rows]
    atomic_write(path, ''.join(','.join(map(str, line)) + '\n' for line in lines))


def run(args):
    """Run every stage, then print the table and write the report."""
    from vlu_plugin.data.synthetic_benchmark import build_synthetic_benchmark
    from vlu_plugin.tools.report import build_report
    from vlu_plugin.utils.errors import UserError
    if args.jobs < 1 or args.threads < 1:
        raise UserError(f'--jobs and --threads must be at least 1 (got {args.jobs}, {args.threads})')
    start = time.time()
    out = osp.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    stages, trained, clip = plan(args)
    print(f'embedded benchmark -> {out}/datasets/synthetic')
    build_synthetic_benchmark(osp.join(out, 'datasets', 'synthetic'), size=64 if args.quick else 128, quick=args.quick,
                              force=args.force)
    timings = [('benchmark', time.time() - start)]
    run_stages(stages, out, args.force, args.jobs, args.threads)
    timings += [(stage.title, stage.seconds) for stage in stages]
    report_start = time.time()
    folders = [osp.join(out, 'results', opt['name']) for opt in trained]
    folders += [osp.join(out, 'experiments', opt['name']) for opt in trained]
    ran = [f'{title} {seconds:.0f} s' for title, seconds in timings if seconds is not None]
    notes = [f'Stage times ({args.jobs} at a time, {args.threads} thread(s) each): {", ".join(ran)}; '
             f'{time.time() - start:.0f} s until the report.', '']
    clip_folder = osp.join(out, 'experiments', clip['name'])
    table = build_report(folders, osp.join(out, 'report'), title='vlu demo: embedded 5-task benchmark',
                         clip_folder=clip_folder if any(s.opt is clip for s in stages) else None, notes=notes)
    timings += [('report', time.time() - report_start), ('total', time.time() - start)]
    write_timings(osp.join(out, 'report', 'timings.csv'), timings)
    print(table)
    print('stage times: ' + ', '.join(f'{title} {seconds:.0f} s' for title, seconds in timings if seconds is not None))
    print(f'report: {out}/report/report.md')
    return 0
