"""`vlu demo --quick` runs every stage on a reduced benchmark and writes a sane report; a re-run redoes nothing."""
import csv

import cv2

from conftest import run_vlu

MODELS = ('VLUNet', 'PromptIR', 'AirNet')
TASKS = ('noise_sigma25', 'haze', 'rain', 'blur', 'low_light')


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / 'demo'
    log = run_vlu(['demo', '--quick', '--iters', '6', '--clip-iters', '4', '--out', str(out)], cwd=tmp_path,
                  timeout=600).stdout
    report = out / 'report'
    for name in ('report.md', 'results.csv', 'comparison.png', 'curves.png', 'clip_confusion.png'):
        assert (report / name).is_file(), log[-3000:]
    for name in ('comparison.png', 'curves.png', 'clip_confusion.png'):
        assert cv2.imread(str(report / name)) is not None

    with open(report / 'results.csv') as f:
        rows = list(csv.DictReader(f))
    scores = {(r['model'], r['dataset']): float(r['psnr']) for r in rows}
    assert {(m, t) for m in MODELS + ('degraded input', ) for t in TASKS} <= set(scores)
    for model in MODELS:  # even a few iterations beat the degraded input somewhere
        assert any(scores[model, t] >= scores['degraded input', t] for t in TASKS), scores
    table = (report / 'report.md').read_text()
    assert all(model in table for model in MODELS) and '**' in table

    again = run_vlu(['demo', '--quick', '--iters', '6', '--clip-iters', '4', '--out', str(out)], cwd=tmp_path).stdout
    assert again.count('done already') == 7, again
