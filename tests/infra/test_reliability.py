"""Reliability of long runs: exact resume after SIGKILL, determinism, distributed training on CPU."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import run_vlu, train_then_kill, write_image_pairs
from test_train_pipeline import paired_options, write_options


def training_options(root, name, total_iter=12):
    """Tiny VLUNet training without intermediate validation: checkpoints every 3 iterations, loss every one."""
    opt = paired_options(root, name, total_iter)
    opt['train']['scheduler']['periods'] = [total_iter]
    opt['val']['val_freq'] = 10_000
    opt['logger'].update(print_freq=1, save_checkpoint_freq=3)
    return opt


def logged_losses(log_text):
    """{iteration: 'l_pix' text} from BasicSR's training log lines."""
    losses = {}
    for line in log_text.splitlines():
        if 'l_pix:' in line and 'iter:' in line:
            it = int(line.split('iter:')[1].split(',')[0].replace(' ', ''))
            losses[it] = line.split('l_pix:')[1].split()[0]
    return losses


def read_log(exp):
    return ''.join(open(os.path.join(exp, f)).read() for f in sorted(os.listdir(exp)) if f.startswith('train_'))


@pytest.fixture(scope='module')
def fresh_runs(tmp_path_factory):
    """Two fresh runs of the same 12-iteration options and seed in one folder: `ref` to its end, `killed`
    SIGKILLed once its 3rd-iteration state exists. Returns (folder, ref's log, killed's training states);
    read-only: the resume test resumes a copy."""
    root = write_image_pairs(tmp_path_factory.mktemp('reliability'))
    reference = run_vlu(['train', '-opt', write_options(root / 'ref.yml', training_options(root, 'ref'))], cwd=root)
    opt_path = write_options(root / 'killed.yml', training_options(root, 'killed'))
    states = train_then_kill(opt_path, root, root / 'experiments' / 'killed', timeout=120)
    return root, reference.stdout, states


def test_resume_after_sigkill_continues_exactly(fresh_runs, tmp_path):
    origin, reference, states = fresh_runs
    ref_exp = origin / 'experiments' / 'ref'
    ref_losses = logged_losses(read_log(ref_exp))
    assert sorted(ref_losses) == list(range(1, 13)), reference[-2000:]
    assert states and states[-1] < 12, f'the run finished before it could be killed: {states}'

    root = tmp_path / 'run'  # a copy: the determinism test reads the killed run as it was left
    shutil.copytree(origin, root)
    exp = root / 'experiments' / 'killed'
    resumed = run_vlu(['train', '-opt', str(root / 'killed.yml'), '--auto_resume'], cwd=root).stdout
    assert f'Resuming training from epoch' in resumed
    losses = logged_losses(read_log(exp))
    later = [it for it in range(states[-1] + 1, 13)]
    # the resumed iterations log exactly the uninterrupted run's losses (4 significant digits in the log) ...
    assert [losses[it] for it in later] == [ref_losses[it] for it in later]
    # ... and end with bit-identical weights (tolerance 0)
    final = torch.load(exp / 'models' / 'net_g_12.pth', weights_only=True)
    expected = torch.load(ref_exp / 'models' / 'net_g_12.pth', weights_only=True)
    for key in ('params', 'params_ema'):
        for name, value in expected[key].items():
            assert torch.equal(final[key][name], value), (key, name)


def test_determinism_same_seed_same_checkpoint(fresh_runs):
    # two fresh runs of the same options and seed (one later killed, after this checkpoint) save the same weights
    root = fresh_runs[0]
    a = torch.load(root / 'experiments' / 'ref' / 'models' / 'net_g_3.pth', weights_only=True)['params']
    b = torch.load(root / 'experiments' / 'killed' / 'models' / 'net_g_3.pth', weights_only=True)['params']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


LAUNCHER = '''
import sys, torch, torch.distributed as dist
import vlu_plugin
from basicsr.models.sr_model import SRModel
save = SRModel.save
def save_every_rank(self, epoch, current_iter):
    save(self, epoch, current_iter)
    weights = self.get_bare_model(self.net_g).state_dict()
    torch.save(weights, f'rank{dist.get_rank()}_{current_iter}.pth')
SRModel.save = save_every_rank
from vlu_plugin.train import main
main()
'''


def test_ddp_two_processes_on_cpu_keep_identical_weights(image_pairs):
    root = image_pairs
    opt = training_options(root, 'ddp', total_iter=3)
    opt['val']['val_freq'] = 3  # validation runs on rank 0 only
    # without a CLIP vector VLUNet mixes its prompts uniformly and never calls prompt_weights
    opt['find_unused_parameters'] = True
    (root / 'launch.py').write_text(LAUNCHER)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    # --standalone: the rendezvous takes a free port, so a port held by another run cannot break this one
    proc = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           'launch.py', '-opt', write_options(root / 'ddp.yml', opt), '--launcher', 'pytorch'],
                          cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
    # one rank's failure shows in the other as a reset connection: keep rank 0's lines in the message too
    rank0 = '\n'.join(line for line in proc.stdout.splitlines() if line.startswith('[rank0]'))
    assert proc.returncode == 0, rank0[-3000:] + '\n...\n' + proc.stdout[-4000:]
    log = read_log(root / 'experiments' / 'ddp')
    assert 'world_size: 2' in log
    assert 'Validation pairs_val' in log
    rank0 = torch.load(root / 'rank0_3.pth', weights_only=True)
    rank1 = torch.load(root / 'rank1_3.pth', weights_only=True)
    # each rank saw other batches; DDP's averaged gradients keep the weights identical
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
