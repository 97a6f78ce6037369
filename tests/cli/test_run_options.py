"""Runs from an `!include` option file leave `options_resolved.yml`; `vlu report` / `vlu restore -opt` read it.
The built wheel carries what `vlu demo` reads at run time."""
import os
import shutil
import subprocess
import sys
import zipfile

import yaml

from conftest import REPO, run_vlu, write_images
from test_train_pipeline import paired_options, write_options
from vlu_cli import main


def test_include_run_is_reported_and_restored_from_its_folders(image_pairs, tmp_path):
    root = image_pairs
    opt = paired_options(root, 'tiny_include', total_iter=2)
    (root / '_shared').mkdir()
    write_options(root / '_shared' / 'datasets.yml', opt.pop('datasets'))
    text = yaml.safe_dump(opt) + 'datasets: !include _shared/datasets.yml\n'
    (root / 'options').mkdir()
    (root / 'options' / 'train.yml').write_text(text.replace('_shared/', '../_shared/'))
    run_vlu(['train', '-opt', 'options/train.yml'], cwd=root)
    exp = root / 'experiments' / 'tiny_include'
    # BasicSR's verbatim copy keeps the `!include` (relative to options/); the resolved copy is plain YAML
    assert '!include' in (exp / 'train.yml').read_text()
    resolved = yaml.safe_load((exp / 'options_resolved.yml').read_text())
    assert resolved['datasets']['val']['name'] == 'pairs_val' and resolved['name'] == 'tiny_include'

    test_opt = dict(resolved, name='tiny_include_test', datasets={'test_1': resolved['datasets']['val']})
    test_opt['path'] = {'pretrain_network_g': str(exp / 'models' / 'net_g_latest.pth'), 'strict_load_g': True}
    for key in ('train', 'logger'):
        test_opt.pop(key)
    write_options(root / '_shared' / 'test_sets.yml', test_opt.pop('datasets'))
    (root / 'options' / 'test.yml').write_text(yaml.safe_dump(test_opt)
                                               + 'datasets: !include ../_shared/test_sets.yml\n')
    run_vlu(['test', '-opt', 'options/test.yml'], cwd=root)
    results = root / 'results' / 'tiny_include_test'
    assert yaml.safe_load((results / 'options_resolved.yml').read_text())['datasets']['test_1']['name'] == 'pairs_val'

    assert main(['report', str(exp), str(results), '--out', str(tmp_path / 'report')]) == 0
    table = (tmp_path / 'report' / 'report.md').read_text()
    assert 'VLUNet' in table and 'pairs_val' in table  # the network's name came from the resolved options

    write_images(tmp_path / 'in', 1, size=(24, 20))
    assert main(['restore', '-opt', str(exp), str(tmp_path / 'in'), str(tmp_path / 'out'), '--tile', '0']) == 0
    assert (tmp_path / 'out' / 'img000.png').is_file()


def test_wheel_ships_the_demo_options(tmp_path):
    """`pip install .` (not -e) must find options/demo/*.yml inside the package."""
    repo = REPO
    source = tmp_path / 'src'  # a copy: building in the checkout would leave build/ and *.egg-info there
    shutil.copytree(repo, source, ignore=shutil.ignore_patterns('.git', 'tests', 'datasets', 'experiments', 'results',
                                                                 '__pycache__', '*.egg-info', 'build', 'dist'))
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
                    str(tmp_path / 'wheel'), str(source)], check=True, timeout=300)
    (wheel, ) = (tmp_path / 'wheel').glob('vlu_plugin-*.whl')
    names = zipfile.ZipFile(wheel).namelist()
    demo = {n for n in names if n.startswith('vlu_plugin/options/demo/') and n.endswith('.yml')}
    assert {'vlu_plugin/options/demo/vlunet.yml', 'vlu_plugin/options/demo/degradation_clip.yml'} <= demo, names
    assert any(n.startswith('vlu_plugin/options/demo/_shared/') for n in demo)  # the blocks they !include
    # the `vlu` command is the package vlu_cli beside vlu_plugin
    assert 'vlu_cli/__init__.py' in names and 'vlu_cli/demo.py' in names, names
    (entry_points, ) = [n for n in names if n.endswith('.dist-info/entry_points.txt')]
    assert 'vlu = vlu_cli:main' in zipfile.ZipFile(wheel).read(entry_points).decode()
    # unpacked (what `pip install` puts in site-packages), the demo finds its options inside the installed vlu_plugin
    site = tmp_path / 'site'
    zipfile.ZipFile(wheel).extractall(site)
    found = subprocess.run([sys.executable, '-c', 'from vlu_cli.demo import OPTIONS_DIR; print(OPTIONS_DIR)'],
                           env=dict(os.environ, PYTHONPATH=str(site)), cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.strip()
    assert found == str(site / 'vlu_plugin' / 'options' / 'demo') and os.path.isfile(os.path.join(found, 'vlunet.yml'))
