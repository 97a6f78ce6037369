"""Shared test helpers: tiny generated images, running `vlu` in a subprocess, and the fixtures built once per run.

BasicSR's logger is a per-process singleton, so whole pipelines run in subprocesses. Session-scoped fixtures
(`trained`, `synthetic_benchmark`) are shared by every test that reads them: tests never write into them.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import vlu_plugin  # noqa: F401  (shims before anything imports basicsr)

# in-process tests read option files and run pipeline pieces as the `vlu` commands do
vlu_plugin.patch_basicsr()

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # nothing may download

TESTS = os.path.dirname(os.path.abspath(__file__))  # tests/: this file and the shared helper modules
REPO = os.path.dirname(TESTS)  # the checkout's root
# The tests of each layer have a folder (archs, data, models, metrics, cli, infra) and some import helpers and
# fixtures from another folder's module by name (`from test_train_pipeline import paired_options`); pytest puts
# only a test file's own folder on sys.path, so every test folder goes there (module names stay unique).
sys.path[1:1] = sorted(entry.path for entry in os.scandir(TESTS) if entry.is_dir() and entry.name != '__pycache__'
                       and entry.path not in sys.path)

# The tiny networks every test builds (one definition): a 2-layer ViT on 64×64 inputs and a 2-layer text tower,
# 64-d embeddings (about 3.4 M parameters, 3.2 M of them the 49,408-token embedding the tokenizer needs), and a
# VLU-Net 12 channels wide with one block per level.
TINY_CLIP = {'embed_dim': 64,
             'vision_cfg': {'image_size': 64, 'patch_size': 16, 'width': 64, 'layers': 2, 'head_width': 32},
             'text_cfg': {'context_length': 16, 'width': 64, 'heads': 2, 'layers': 2}}
TINY_VLUNET = {'dim': 12, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 1, 'heads': [1, 1, 2, 2]}


def write_images(folder, count, size=(48, 40), seed=0, prefix='img'):
    """Write `count` smooth random RGB PNGs of `size` (h, w) into `folder`; returns their paths."""
    import cv2
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (size[0] // 8 + 1, size[1] // 8 + 1, 3)).astype(np.uint8)
        img = cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
        path = os.path.join(folder, f'{prefix}{i:03d}.png')
        cv2.imwrite(path, img)
        paths.append(path)
    return paths


def vlu_env(**extra):
    """The environment every `vlu` subprocess runs in: unbuffered output, two OpenMP threads."""
    return dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='2', **extra)


def vlu_failure(args, proc):
    """The AssertionError for a failed `vlu <args>`, with the end of its log."""
    return AssertionError(f'vlu {" ".join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}')


def run_vlu(args, cwd, timeout=240, check=True):
    """Run `python -m vlu_cli <args>` in `cwd`; returns the CompletedProcess (stdout+stderr merged)."""
    proc = subprocess.run([sys.executable, '-m', 'vlu_cli', *args], cwd=cwd, env=vlu_env(), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        raise vlu_failure(args, proc)
    return proc


def train_then_kill(opt_path, cwd, exp, state_iter=3, timeout=120):
    """Start `vlu train -opt opt_path` and SIGKILL it once `exp/training_states/<state_iter>.state` exists;
    returns the iterations of the training states it left."""
    proc = subprocess.Popen([sys.executable, '-m', 'vlu_cli', 'train', '-opt', str(opt_path)], cwd=cwd, env=vlu_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and not (exp / 'training_states' / f'{state_iter}.state').exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return sorted(int(p.stem) for p in (exp / 'training_states').glob('*.state'))


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine two OpenMP threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_image_pairs(root):
    """A handful of gt/lq PNG pairs (lq = gt plus noise) in root/{gt,lq}; returns root."""
    import cv2
    gt_paths = write_images(root / 'gt', 4)
    rng = np.random.default_rng(1)
    os.makedirs(root / 'lq', exist_ok=True)
    for path in gt_paths:
        img = cv2.imread(path).astype(np.float64)
        noisy = np.clip(img + rng.normal(0, 15, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / 'lq' / os.path.basename(path)), noisy)
    return root


@pytest.fixture
def image_pairs(tmp_path):
    """A handful of gt/lq PNG pairs (lq = gt plus noise) in tmp_path/{gt,lq}."""
    return write_image_pairs(tmp_path)


# ---- built once per test run and shared read-only ------------------------------------------------------------
RESTORE_PROMPTS = ['image with noise', 'image with haze', 'image with rain']
RESTORE_VLUNET = dict(TINY_VLUNET, de_dim=3, clip_dim=64)


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
    """Options for VLUNetModel with a tiny VLU-Net and a tiny CLIP (RESTORE_PROMPTS), their weight files
    (`test.yml`, `net_g.pth`, `clip.pth`) in a temporary folder; read-only."""
    from vlu_plugin.archs.degradation_clip_arch import DegradationCLIP
    from vlu_plugin.archs.vlunet_arch import VLUNet
    import yaml
    root = tmp_path_factory.mktemp('restore')
    torch.manual_seed(0)
    clip = DegradationCLIP(prompts=RESTORE_PROMPTS, pretrained=None, clip_config=TINY_CLIP)
    torch.save({'params': clip.learnable_state_dict()}, root / 'clip.pth')
    net = VLUNet(**RESTORE_VLUNET)
    torch.save({'params': net.state_dict()}, root / 'net_g.pth')
    opt = {'name': 'tiny_restore', 'model_type': 'VLUNetModel', 'num_gpu': 'auto',
           'network_g': {'type': 'VLUNet', **RESTORE_VLUNET},
           'degradation_clip': {'type': 'DegradationCLIP', 'prompts': RESTORE_PROMPTS, 'pretrained': None,
                                'clip_config': TINY_CLIP},
           'path': {'pretrain_network_g': str(root / 'net_g.pth'), 'pretrain_network_degradation_clip': None}}
    (root / 'test.yml').write_text(yaml.safe_dump(opt))
    return root


@pytest.fixture(scope='session')
def synthetic_benchmark(tmp_path_factory):
    """The quick 64-px embedded benchmark (3 whole training photos, 3 test crops per task), as a path string;
    read-only (the tests of building it build their own)."""
    from vlu_plugin.data.synthetic_benchmark import build_synthetic_benchmark
    root = tmp_path_factory.mktemp('data') / 'synthetic'
    build_synthetic_benchmark(str(root), size=64, quick=True, progress=False)
    return str(root)


# ---- slow `vlu` runs started in the background at the start of the session -----------------------------------
# Most of the suite keeps one core busy; a whole `vlu demo` is mostly process start-up (about 9 interpreters
# importing torch and BasicSR), so it runs beside the other tests on the second core, and the test reading it goes
# last so that it finds the run finished instead of waiting for it.
# the fewest iterations that run every phase: AirNet's encoder warm-up (its first iteration) and then the whole
# network; one CLIP step. The stages' cost is their start-up: 3 iterations cost the same CPU time as 1.
DEMO_ARGS = ['demo', '--quick', '--iters', '2', '--clip-iters', '1', '--out', 'demo']


def keep_first_report(cwd):
    """Copy the first demo run's report aside: the re-run rewrites it (its timings empty for skipped stages)."""
    shutil.copytree(cwd / 'demo' / 'report', cwd / 'first_report')


# fixture name -> (`vlu` arguments, then a function of the folder or None), run one after the other
BACKGROUND = {'quick_demo': ((DEMO_ARGS, keep_first_report), (DEMO_ARGS, None))}


class BackgroundVlu:
    """`vlu` commands run one after the other in `cwd` by a thread, each followed by its function of `cwd` (or
    None); `logs()` waits for their merged outputs."""

    def __init__(self, runs, cwd, timeout=600):
        from concurrent.futures import ThreadPoolExecutor
        self.cwd, self.proc, self.stopped = cwd, None, False
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._future = self._pool.submit(self._run_all, runs, timeout)

    def _run_all(self, runs, timeout):
        logs = []
        for args, then in runs:
            if self.stopped:
                raise RuntimeError('stopped at the end of the session')
            # its own process group: stop() ends the stages the demo started too
            self.proc = subprocess.Popen([sys.executable, '-m', 'vlu_cli', *args], cwd=self.cwd, env=vlu_env(),
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         start_new_session=True)
            try:
                out, _ = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                out, _ = self.proc.communicate()
                raise AssertionError(f'vlu {" ".join(args)} ran past {timeout} s:\n{out[-4000:]}')
            if self.proc.returncode != 0:
                raise vlu_failure(args, subprocess.CompletedProcess(args, self.proc.returncode, out))
            logs.append(out)
            if then is not None:
                then(self.cwd)
        return logs

    def _kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def logs(self):
        """The outputs of the runs, in order, once all have finished; raises the first failure."""
        return self._future.result()

    def stop(self):
        """End the runs still going (a session stopped early) and wait for the thread."""
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self._kill()
        self._pool.shutdown(wait=True)


def pytest_collection_modifyitems(items):
    """The tests that read a background run go last (stable order otherwise)."""
    items.sort(key=lambda item: any(name in item.fixturenames for name in BACKGROUND))


@pytest.fixture(scope='session', autouse=True)
def background_runs(request, tmp_path_factory):
    """Starts, with the session's first test, the background runs that a selected test reads."""
    wanted = {name for item in request.session.items for name in BACKGROUND if name in item.fixturenames}
    runs = {name: BackgroundVlu(BACKGROUND[name], tmp_path_factory.mktemp(name)) for name in sorted(wanted)}
    yield runs
    for run in runs.values():
        run.stop()


@pytest.fixture(scope='session')
def quick_demo(background_runs):
    """`vlu demo` with DEMO_ARGS run twice in one folder (`.cwd`), the first run's report kept in `first_report`;
    the test calls `.logs()`, so that a failed run fails the test with its log."""
    return background_runs['quick_demo']
