"""`vlu demo --quick` runs every stage on a reduced benchmark and writes the whole report; a re-run redoes nothing.

What the demo measures (PSNR, CLIP accuracy) is the demo's result, not asserted here: a few iterations learn
nothing. The test checks that each stage ran and that the report holds every model, set and figure.
"""
import csv

import cv2

from conftest import run_vlu

MODELS = ('VLUNet', 'PromptIR', 'AirNet')
TASKS = ('noise_sigma25', 'haze', 'rain', 'blur', 'low_light')
STAGES = 7  # the CLIP, then training and testing of three models (--quick has no ablations)


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / 'demo'
    args = ['demo', '--quick', '--iters', '3', '--clip-iters', '2', '--out', str(out)]
    log = run_vlu(args, cwd=tmp_path, timeout=600).stdout
    report = out / 'report'
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

    again = run_vlu(args, cwd=tmp_path).stdout
    assert again.count('done already') == STAGES, again
