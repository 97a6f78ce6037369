"""The task table: labels and prompts in CLIP order, presets, option resolution and its errors."""
import pytest

import vlu_plugin  # noqa: F401  (shims before basicsr)
from vlu_plugin.data.tasks import PROMPTS, TASKS, get_preset, get_task, resolve_tasks

RELEASE_PROMPTS = ['image with noise', 'image with many noise', 'image with large amount of noise',
                   'image with haze', 'image with rain', 'image with blur', 'image with low light']


def test_prompts_are_the_release_table_in_label_order():
    assert PROMPTS == RELEASE_PROMPTS
    assert [t.label for t in TASKS] == list(range(7))
    assert all(PROMPTS[t.label] == t.text for t in TASKS)
    assert [get_task(f'denoise_{s}').sigma for s in (15, 25, 50)] == [15, 25, 50]
    assert get_task('delowlight').name == 'lowlight'  # the release's spelling


def test_presets():
    assert [t.label for t in get_preset('3task', 'train')] == [0, 1, 2, 3, 4]
    assert [t.label for t in get_preset('3task', 'test')] == [0, 1, 2, 3, 4]
    assert [t.label for t in get_preset('5task', 'train')] == list(range(7))
    assert [t.name for t in get_preset('5task', 'test')] == ['denoise_25', 'dehaze', 'derain', 'deblur', 'lowlight']


def test_release_repeats():
    assert {t.name: t.release_repeat for t in TASKS if t.release_repeat != 1} == {
        'denoise_15': 3, 'denoise_25': 3, 'denoise_50': 3, 'derain': 120}


def test_resolve_preset_fills_sources(tmp_path):
    (tmp_path / 'lists').mkdir()
    (tmp_path / 'lists' / 'denoise_25_test.txt').write_text('')
    opt = {'name': 'v', 'phase': 'val', 'tasks': '5task', 'root': str(tmp_path),
           'meta_info_dir': str(tmp_path / 'lists')}
    specs = {task.name: spec for task, spec in resolve_tasks(opt)}
    assert list(specs) == ['denoise_25', 'dehaze', 'derain', 'deblur', 'lowlight']
    assert specs['denoise_25']['meta_info_file'].endswith('denoise_25_test.txt')  # the task's own list first
    assert specs['derain']['meta_info_file'].endswith('derain_test.txt')
    layout = resolve_tasks({'phase': 'train', 'tasks': ['derain'], 'root': 'datasets'})[0][1]
    assert layout['root'].replace('\\', '/') == 'datasets/derain/Rain100L/train'


def test_bad_input_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'derainn'.*derain.*presets: 3task, 5task"):
        resolve_tasks({'phase': 'train', 'tasks': ['derainn'], 'root': 'x'})
    with pytest.raises(ValueError, match=r"unknown task '7task'.*presets: 3task, 5task"):
        resolve_tasks({'phase': 'train', 'tasks': '7task', 'root': 'x'})
    with pytest.raises(ValueError, match=r"unknown preset '4task'.*3task, 5task"):
        get_preset('4task')


def test_bad_input_misspelled_option_keys():
    with pytest.raises(ValueError, match=r"unknown option 'gt_szie'.*did you mean 'gt_size'.*allowed keys:.*use_rot"):
        resolve_tasks({'name': 'train', 'phase': 'train', 'tasks': '3task', 'root': 'x', 'gt_szie': 64})
    with pytest.raises(ValueError, match=r"unknown option 'dataroot_qt' in task 'derain'.*dataroot_gt"):
        resolve_tasks({'phase': 'train', 'tasks': [{'name': 'derain', 'dataroot_qt': 'x'}]})


def test_bad_input_io_backend_not_a_mapping():
    with pytest.raises(ValueError, match=r"io_backend must be a mapping such as \{type: lmdb\}, not 'lmdb'"):
        resolve_tasks({'phase': 'train', 'tasks': ['derain'], 'io_backend': 'lmdb', 'lmdb_dir': 'x'})


def test_bad_input_task_without_data():
    with pytest.raises(ValueError, match=r"task 'derain' has no data"):
        resolve_tasks({'phase': 'train', 'tasks': ['derain']})


def test_the_release_prompts_have_one_source():
    """The task table's texts are the CLIP's default prompts, and every option file that lists prompts copies them."""
    import glob
    import os.path as osp

    from vlu_plugin.archs.degradation_clip_arch import RELEASE_PROMPTS
    from vlu_plugin.utils.options_check import load_option_file
    assert list(RELEASE_PROMPTS) == PROMPTS
    from conftest import REPO as root
    listed = {}
    for path in glob.glob(osp.join(root, 'options', '**', '*.yml'), recursive=True) + \
            glob.glob(osp.join(root, 'vlu_plugin', 'options', '**', '*.yml'), recursive=True):
        found = []

        def walk(node):
            if isinstance(node, dict):
                if node.get('type') == 'DegradationCLIP' and 'prompts' in node:
                    found.append(list(node['prompts']))
                for value in node.values():
                    walk(value)
        walk(load_option_file(path))
        if found:
            listed[path] = found
    assert any('demo' in p for p in listed) and any('_shared' in p and 'demo' not in p for p in listed), listed
    from vlu_plugin.data.tasks import CDD11_PROMPTS
    # each list is one label space's prompts from the task table: the release's 7, or CDD-11's 11 composites
    assert all(prompts in (PROMPTS, CDD11_PROMPTS) for found in listed.values() for prompts in found), listed
    assert any(prompts == CDD11_PROMPTS for found in listed.values() for prompts in found), listed
