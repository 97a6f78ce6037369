"""Named metric protocols (each equals the code it names) and the published numbers `vlu report` prints beside runs."""
import math

import numpy as np
import pytest
import torch
import yaml

import vlu_plugin  # noqa: F401  (shims before basicsr)
from basicsr.metrics.psnr_ssim import calculate_psnr, calculate_ssim
from basicsr.utils import tensor2img
from skimage.metrics import structural_similarity
from vlu_plugin.utils.errors import UserError
from vlu_plugin.metrics.paper_metric import calculate_psnr_float, calculate_ssim_float
from vlu_plugin.metrics.protocols import PROTOCOLS, protocol_of_metric, protocol_of_options
from vlu_plugin.utils.options_check import validate_options
from vlu_plugin.tools.published import PUBLISHED, benchmark_of
from vlu_plugin.tools.report import build_report


@pytest.fixture
def pair():
    """A clean RGB float image and a noisy, blurred float 'output' of it (HWC, [0, 1])."""
    rng = np.random.default_rng(0)
    clean = np.clip(np.cumsum(rng.normal(0, 0.05, (40, 48, 3)), axis=1) % 1.0, 0, 1)
    output = np.clip(clean + rng.normal(0, 0.08, clean.shape), 0, 1)
    return output, clean


def test_basicsr_protocols_equal_basicsr_on_its_own_uint8_images(pair):
    output, clean = pair
    as_tensor = [torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].float() for x in pair]
    out8, gt8 = tensor2img([as_tensor[0]]), tensor2img([as_tensor[1]])  # what BasicSR's validation scores
    for name, y in (('rgb_uint8_basicsr', False), ('y_uint8_basicsr', True)):
        assert calculate_psnr_float(output, clean, protocol=name) == pytest.approx(
            calculate_psnr(out8, gt8, 0, test_y_channel=y), abs=1e-9)
        assert calculate_ssim_float(output, clean, protocol=name) == pytest.approx(
            calculate_ssim(out8, gt8, 0, test_y_channel=y), abs=1e-9)
    # Y-channel numbers are far from RGB ones: the reason protocols are never mixed
    assert calculate_psnr_float(output, clean, protocol='y_uint8_basicsr') > calculate_psnr_float(output, clean) + 1


def test_skimage_protocols_and_border_crop(pair):
    output, clean = pair
    assert calculate_ssim_float(output, clean) == pytest.approx(
        structural_similarity(clean, output, data_range=1, channel_axis=-1))
    gaussian = calculate_ssim_float(output, clean, protocol='rgb_float_skimage_gaussian')
    assert gaussian == pytest.approx(structural_similarity(clean, output, data_range=1, channel_axis=-1,
                                                           gaussian_weights=True))
    assert abs(gaussian - calculate_ssim_float(output, clean)) > 1e-3  # MoCE-IR's SSIM is another number
    assert calculate_psnr_float(output, clean, protocol='rgb_float_skimage_gaussian') == calculate_psnr_float(
        output, clean)
    assert calculate_psnr_float(output, clean, crop_border=4) == calculate_psnr_float(output[4:-4, 4:-4],
                                                                                      clean[4:-4, 4:-4])
    with pytest.raises(ValueError, match="unknown metric protocol 'rgb_float'"):
        calculate_psnr_float(output, clean, protocol='rgb_float')


def test_protocol_of_options_and_the_option_check():
    assert protocol_of_metric({'type': 'calculate_psnr_float'}) == 'rgb_float_skimage'
    assert protocol_of_metric({'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': True}) == 'y_uint8_basicsr'
    assert protocol_of_metric({'type': 'calculate_psnr_float', 'crop_border': 4}) is None  # no protocol crops 4
    mixed = {'val': {'metrics': {'psnr': {'type': 'calculate_psnr_float'},
                                 'ssim': {'type': 'calculate_ssim', 'crop_border': 0}}}}
    assert protocol_of_options(mixed) is None
    assert set(PROTOCOLS) >= {p.protocol for p in PUBLISHED}
    opt = {'name': 'x', 'model_type': 'AllInOneModel', 'num_gpu': 0, 'path': {},
           'datasets': {'test_1': {'name': 't', 'type': 'MultiDegradationDataset'}},
           'val': {'metrics': {'ssim': {'type': 'calculate_ssim_float', 'protocol': 'y_uint8'}}}}
    with pytest.raises(UserError, match="val.metrics.ssim.protocol: unknown metric protocol 'y_uint8'"):
        validate_options(opt, 'x.yml', phase='test')


def test_published_averages_are_the_means_of_their_sets():
    """A check on the data entry: where a paper gives every set, its average is their plain mean."""
    for entry in PUBLISHED:
        if entry.per_task:
            for i, tolerance in ((0, 0.011), (1, 0.0011)):
                mean = float(np.mean([v[i] for v in entry.per_task.values()]))
                assert mean == pytest.approx(entry.average[i], abs=tolerance), (entry.method, entry.benchmark, i)
    assert {(p.method, p.benchmark) for p in PUBLISHED} >= {
        (m, b) for m in ('AirNet', 'PromptIR', 'AdaIR', 'VLU-Net', 'MoCE-IR') for b in ('3task', '5task')} | {
        (m, 'cdd11') for m in ('input', 'AirNet', 'PromptIR', 'OneRestore')}


def result_folder(path, name, val_blocks, metrics, values, crop=16):
    """A `results/<name>` folder as `vlu test` leaves it: its option file and metrics.csv."""
    path.mkdir(parents=True)
    opt = {'name': name, 'model_type': 'AllInOneModel', 'network_g': {'type': 'PromptIR'},
           'datasets': {f'test_{i}': dict(block, type='MultiDegradationDataset') for i, block in
                        enumerate(val_blocks, 1)},
           'val': {'metrics': metrics, 'crop_to_multiple': crop}}
    (path / f'test_{name}.yml').write_text(yaml.safe_dump(opt))
    rows = ['iter,dataset,metric,value'] + [f'{name},{block["name"]},{metric},{value}' for block, (p, s) in
                                            zip(val_blocks, values) for metric, value in (('psnr', p), ('ssim', s))]
    (path / 'metrics.csv').write_text('\n'.join(rows) + '\n')
    return str(path)


FIVE = [{'name': n, 'tasks': [t], 'root': 'datasets', 'meta_info_dir': 'datasets/meta_info'} for n, t in (
    ('SOTS_outdoor', 'dehaze'), ('Rain100L', 'derain'), ('CBSD68_sigma25', 'denoise_25'), ('GoPro', 'deblur'),
    ('LOL', 'lowlight'))]
PAPER = {'psnr': {'type': 'calculate_psnr_float', 'protocol': 'rgb_float_skimage'},
         'ssim': {'type': 'calculate_ssim_float', 'protocol': 'rgb_float_skimage'}}


def test_report_prints_published_rows_only_for_the_same_benchmark_and_protocol(tmp_path):
    values = [(30.0, 0.95), (35.0, 0.96), (30.5, 0.87), (27.0, 0.83), (21.0, 0.80)]
    folder = result_folder(tmp_path / 'results' / 'PromptIR_5task', 'PromptIR_5task', FIVE, PAPER, values)
    text = build_report([folder], str(tmp_path / 'report'))
    lines = {line.split('  ')[0]: line for line in text.splitlines()}
    assert 'VLU-Net (published)' in lines and 'AdaIR (published)' in lines
    assert '30.84/0.9800' in lines['VLU-Net (published)'] and '30.11/0.9050' in lines['VLU-Net (published)']
    assert '- ' in lines['AdaIR (published)'] + ' '  # average only: the per-set cells are blank
    assert '*' in lines['PromptIR'] and '*' not in lines['VLU-Net (published)']  # published rows are never "best"
    report = (tmp_path / 'report' / 'report.md').read_text()
    assert 'MoCE-IR (rgb_float_skimage_gaussian, 30.58/0.919)' in report and 'VLU-Net paper' in report
    assert 'MoCE-IR (published)' not in text and 'VLU-Net paper' in text  # `vlu report` prints the sources too

    y = {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': True},
         'ssim': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': True}}
    folder = result_folder(tmp_path / 'results' / 'y', 'y_run', FIVE, y, values)
    assert '(published)' not in build_report([folder], str(tmp_path / 'report_y'))

    folder = result_folder(tmp_path / 'results' / 'whole', 'whole_images', FIVE, PAPER, values, crop=None)
    text = build_report([folder], str(tmp_path / 'report_whole'))
    assert '(published)' not in text  # the 5-task papers crop to multiples of 16: another protocol
    assert 'crop_to_multiple None, the papers 16' in (tmp_path / 'report_whole' / 'report.md').read_text()

    demo = [dict(b, root='datasets/synthetic', meta_info_dir='datasets/synthetic/meta_info') for b in FIVE]
    assert benchmark_of({'datasets': {f'val_{i}': b for i, b in enumerate(demo)}}) is None
    folder = result_folder(tmp_path / 'results' / 'demo', 'demo_run', demo, PAPER, values)
    text = build_report([folder], str(tmp_path / 'report_demo'))
    assert '(published)' not in text and not math.isnan(float(text.splitlines()[1].split()[1].split('/')[0]))
    assert benchmark_of({'datasets': {'val_1': FIVE[0]}}) is None  # one set is not the 5-task benchmark
