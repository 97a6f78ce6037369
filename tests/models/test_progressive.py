"""Restormer's progressive learning: the phase of each iteration and the batches cut to it."""
from types import SimpleNamespace

import pytest
import torch

from vlu_plugin.models.airnet_model import AirNetModel
from vlu_plugin.models.all_in_one_model import AllInOneModel
from vlu_plugin.models.degradation_clip_model import DegradationCLIPModel
from vlu_plugin.models.progressive import ProgressivePatches
from vlu_plugin.models.vlunet_model import VLUNetModel

DATA = {'name': 'train', 'gt_size': 48, 'batch_size_per_gpu': 4,
        'iters': [3, 2, 1], 'gt_sizes': [16, 32, 48], 'mini_batch_sizes': [4, 2, 1]}


def test_phases_follow_the_iteration_and_the_last_one_stays():
    schedule = ProgressivePatches(DATA)
    assert [schedule.phase(i) for i in range(1, 9)] == [(4, 16)] * 3 + [(2, 32)] * 2 + [(1, 48)] * 3


def test_cut_keeps_the_first_samples_and_one_window_drawn_from_the_iteration():
    schedule = ProgressivePatches(DATA, seed=5)
    lq, gt = torch.rand(4, 3, 48, 48), torch.rand(4, 3, 48, 48)
    (lq_cut, gt_cut), (labels, paths) = schedule.cut(4, [lq, gt], [torch.arange(4), ['a', 'b', 'c', 'd']])
    assert lq_cut.shape == gt_cut.shape == (2, 3, 32, 32)
    assert labels.tolist() == [0, 1] and paths == ['a', 'b']
    # lq and gt are cut at the same place, a window of the loaded patch
    windows = [(t, l) for t in range(17) for l in range(17) if torch.equal(lq[:2, :, t:t + 32, l:l + 32], lq_cut)]
    assert len(windows) == 1 and torch.equal(gt[:2, :, windows[0][0]:windows[0][0] + 32,
                                                 windows[0][1]:windows[0][1] + 32], gt_cut)
    again, _ = ProgressivePatches(DATA, seed=5).cut(4, [lq], [])  # a resumed run cuts the same window
    assert torch.equal(again[0], lq_cut)
    tops = {tuple(schedule.cut(i, [torch.arange(48.).view(1, 1, 48, 1).expand(4, 1, 48, 48)], [])[0][0][0, 0, 0, :1]
                  .tolist()) for i in range(1, 4)}
    assert len(tops) > 1  # the window moves from one iteration to the next


@pytest.mark.parametrize('change, message', [
    ({'iters': [3, 2]}, 'one entry per phase'),
    ({'gt_sizes': [16, 32, 64]}, 'gt_size (48) must be at least the largest of gt_sizes (64)'),
    ({'mini_batch_sizes': [8, 2, 1]}, 'batch_size_per_gpu (4) must be at least the largest of mini_batch_sizes'),
    ({'iters': 6}, 'iters is 6'),
])
def test_bad_schedules_are_named(change, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        ProgressivePatches(dict(DATA, **change))


def test_the_clip_refuses_a_schedule():
    state = SimpleNamespace(net_clip=torch.nn.Identity(), opt={'datasets': {'train': DATA}, 'train': {}})
    with pytest.raises(ValueError, match='progressive learning .* is for restoration models'):
        DegradationCLIPModel.init_training_settings(state)


def test_no_schedule_without_the_keys():
    assert ProgressivePatches.from_options({'datasets': {'train': {'gt_size': 48}}}) is None
    assert ProgressivePatches.from_options({'datasets': {'train': DATA}, 'manual_seed': 3}).seed == 3


@pytest.mark.parametrize('model, extra_image, extra_sample', [
    (AllInOneModel, None, None), (AirNetModel, 'lq_key', None), (VLUNetModel, None, 'lq_context')])
def test_each_model_cuts_all_of_its_views(model, extra_image, extra_sample):
    views = {'lq': torch.rand(4, 3, 48, 48), 'gt': torch.rand(4, 3, 48, 48), 'deg_label': torch.arange(4),
             'batch_paths': list('abcd')}
    if extra_image:
        views[extra_image] = torch.rand(4, 3, 48, 48)
    if extra_sample:
        views[extra_sample] = torch.rand(4, 3, 128, 128)
    state = SimpleNamespace(progressive=ProgressivePatches(DATA), _phase=None, SPATIAL_VIEWS=model.SPATIAL_VIEWS,
                            PER_SAMPLE=model.PER_SAMPLE, **views)
    model.cut_to_phase(state, 4)
    for name in ('lq', 'gt', extra_image):
        if name:
            assert getattr(state, name).shape == (2, 3, 32, 32), name
    assert state.deg_label.tolist() == [0, 1] and state.batch_paths == ['a', 'b']
    if extra_sample:
        assert getattr(state, extra_sample).shape == (2, 3, 128, 128)  # the CLIP's context keeps its size
