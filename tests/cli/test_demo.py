"""`vlu demo --quick` runs every stage on a reduced benchmark and writes the whole report; a re-run redoes nothing.

What the demo measures (PSNR, CLIP accuracy) is the demo's result, not asserted here: a few iterations learn
nothing. The test checks that each stage ran and that the report holds every model, set and figure.
"""
import csv
from argparse import Namespace

import cv2
import pytest

import vlu_plugin  # noqa: F401  (shims before basicsr)
from vlu_cli import demo
from basicsr.archs import build_network
from vlu_plugin.models.progressive import KEYS as PROGRESSIVE_KEYS
from vlu_plugin.utils.errors import UserError

MODELS = ('VLUNet', 'PromptIR', 'AirNet')
TASKS = ('noise_sigma25', 'haze', 'rain', 'blur', 'low_light')
STAGES = 7  # the CLIP, then training and testing of three models (--quick has no ablations)


def test_quick_demo_end_to_end(quick_demo):
    # conftest runs DEMO_ARGS (the shortest run with every phase) twice in the background while the other tests run
    log, again = quick_demo.logs()
    report = quick_demo.cwd / 'first_report'  # as the first run left it
    for name in ('report.md', 'results.csv', 'timings.csv', 'comparison.png', 'curves.png', 'clip_confusion.png'):
        assert (report / name).is_file(), log[-3000:]
    for name in ('comparison.png', 'curves.png', 'clip_confusion.png'):
        assert cv2.imread(str(report / name)) is not None

    with open(report / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    assert {(r['model'], r['dataset']) for r in rows} == {(m, t) for m in MODELS + ('degraded input', )
                                                           for t in TASKS + ('average', )}
    with open(report / 'timings.csv') as f:
        timings = {r['stage']: r['seconds'] for r in csv.DictReader(f)}
    assert len(timings) == STAGES + 3 and all(float(s) > 0 for s in timings.values()), timings  # + benchmark,
    text = (report / 'report.md').read_text()  # report and total
    assert all(model in text for model in MODELS) and '**' in text
    assert 'type accuracy' in text and 'exact 7-label accuracy' in text

    assert again.count('done already') == STAGES, again


def test_demo_plan_starts_the_longest_training_first_and_validates_twice():
    args = Namespace(quick=False, iters=None, clip_iters=None, ablations=True, device='cpu',
                     models=demo.DEFAULT_MODELS)
    stages, trained, _ = demo.plan(args)
    trainings = [s.opt['name'] for s in stages if s.kind == 'train']
    # the CLIP first, then AirNet (free of the CLIP, the slowest step) beside it, then the CLIP's users
    assert trainings[:3] == ['demo_degradation_clip', 'demo_airnet', 'demo_vlunet'], trainings
    assert [o['name'] for o in trained][:3] == ['demo_vlunet', 'demo_promptir', 'demo_airnet']  # report order
    iters = demo.DEFAULTS['iters']
    for opt in trained:
        val_freq = opt['val']['val_freq']
        # one validation inside the run, one by BasicSR after the last iteration
        assert opt['train']['total_iter'] == iters and iters // val_freq == 1, (opt['name'], val_freq)
    # one progressive-learning schedule for all, its phases scaled to the run
    schedules = {tuple(tuple(o['datasets']['train'][k]) for k in PROGRESSIVE_KEYS) for o in trained}
    assert len(schedules) == 1 and sum(schedules.pop()[0]) == iters
    quick = demo.scale_schedule(demo.load_options('vlunet'), 3)['datasets']['train']
    assert quick['iters'] == [2, 1]  # two thirds and one third of three iterations


def test_demo_runs_ready_trainings_before_ready_tests():
    started = []

    class Recorded(demo.Stage):
        def run(self, out, force, threads, slot):
            started.append(self.name)
            return 0.0

    def stage(kind, name, needs=()):
        return Recorded(name, kind, {'name': name}, 'done', needs=needs)

    stages = [stage('train', 'a'), stage('test', 'a', ['train_a']), stage('train', 'b', ['train_a']),
              stage('test', 'b', ['train_b'])]
    demo.run_stages(stages, 'unused', force=False, jobs=1, threads=1)
    # after a's training both a's test and b's training are ready: b's training goes first
    assert started == ['train_a', 'train_b', 'test_a', 'test_b']


def test_demo_models_share_one_parameter_budget_and_the_clip_runs_only_when_needed():
    count = {model: sum(p.numel() for p in build_network(demo.load_options(model)['network_g']).parameters())
             for model in demo.MODELS}
    for model, params in count.items():  # equal budgets within +-10 % (issue 11)
        assert abs(params / count['vlunet'] - 1) <= 0.10, count
    args = Namespace(quick=True, iters=None, clip_iters=None, ablations=False, device='cpu',
                     models=demo.model_list('MoCEIR, adair'))
    stages, trained, _ = demo.plan(args)
    assert [o['name'] for o in trained] == ['demo_adair', 'demo_moceir']
    assert not any(s.opt['name'] == 'demo_degradation_clip' for s in stages)  # neither uses the CLIP
    with pytest.raises(UserError, match='keep vlunet in --models'):
        demo.plan(Namespace(**dict(vars(args), ablations=True)))
    with pytest.raises(Exception, match='swinir: choose from vlunet,promptir,airnet,adair,moceir'):
        demo.model_list('vlunet,swinir')


def test_curves_draw_each_sets_input_psnr_as_a_reference_line(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from vlu_plugin.tools import figures
    run = SimpleNamespace(datasets=['haze', 'blur'], training_losses=lambda: ([10, 20], {'l_pix': [0.2, 0.1]}),
                          history={450: {('haze', 'psnr'): 14.0, ('blur', 'psnr'): 25.0},
                                   900: {('haze', 'psnr'): 16.0, ('blur', 'psnr'): 26.0}})
    drawn = {}

    def keep(fig, path):  # the figure itself instead of its PNG
        drawn['fig'] = fig
        return True
    monkeypatch.setattr(figures, '_save', keep)
    assert figures.curves({'VLUNet': run}, str(tmp_path / 'curves.png'), {'haze': 11.1, 'blur': float('nan')})
    haze, blur = drawn['fig'].axes[1:]
    references = [line.get_ydata()[0] for line in haze.get_lines() if line.get_label() == 'degraded input']
    assert references == [pytest.approx(11.1)]
    assert all(line.get_label() != 'degraded input' for line in blur.get_lines())  # no input score: no line
