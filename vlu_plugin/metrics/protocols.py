"""Metric protocols, named once: how a paper's table computes PSNR and SSIM, so a run can reproduce it by name.

A protocol fixes the channel (RGB or BasicSR's Y of YCbCr), whether the output is quantised to uint8 first,
the SSIM variant, and the border crop. Select one per metric in the options:

    metrics:
      psnr: {type: calculate_psnr_float, protocol: rgb_float_skimage}
      ssim: {type: calculate_ssim_float, protocol: rgb_float_skimage}

The protocol's facts (which code computes what) are in shared/reference/datasets.md §1.7 and §6 and in the
releases named below. `vlu report` puts published numbers beside measured ones only when the protocols match.
"""
from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Protocol:
    """One way to compute PSNR/SSIM: channel, quantisation, SSIM window, border crop, and who uses it."""
    name: str
    channel: str  # 'rgb' or 'y' (BasicSR's Y of YCbCr, BT.601, [16, 235])
    quantize: bool  # round the output to uint8 first (BasicSR's tensor2img) or keep the float output
    ssim: str  # 'uniform7' (skimage's default), 'gaussian_skimage' (skimage gaussian_weights=True, sample
    #           covariance) or 'gaussian_basicsr' (BasicSR's calculate_ssim: 11x11 Gaussian sigma 1.5)
    crop_border: int
    used_by: Tuple[str, ...]
    what: str


PROTOCOLS = {p.name: p for p in (
    Protocol('rgb_float_skimage', 'rgb', False, 'uniform7', 0,
             ('AirNet', 'PromptIR', 'VLU-Net', 'AdaIR', 'OneRestore (CDD-11)'),
             "float RGB in [0, 1], skimage PSNR (data_range 1) and default SSIM (7x7 uniform window): the "
             "papers' test code (VLU-Net utils/val_utils.py, AdaIR utils/val_utils.py, OneRestore "
             "img_file/cal_psnr_ssim.py)"),
    Protocol('rgb_float_skimage_gaussian', 'rgb', False, 'gaussian_skimage', 0, ('MoCE-IR',),
             'float RGB in [0, 1], skimage PSNR and SSIM with gaussian_weights=True (sigma 1.5, sample '
             'covariance): MoCE-IR src/test.py'),
    Protocol('rgb_uint8_basicsr', 'rgb', True, 'gaussian_basicsr', 0, ('BasicSR defaults',),
             "uint8 RGB, BasicSR's calculate_psnr / calculate_ssim (11x11 Gaussian window)"),
    Protocol('y_uint8_basicsr', 'y', True, 'gaussian_basicsr', 0, ('SR / deraining tables',),
             "uint8, Y channel of YCbCr (BasicSR's test_y_channel), BasicSR's calculate_psnr / calculate_ssim; "
             '3-5 dB above the RGB numbers: never mix with them'),
)}
DEFAULT = 'rgb_float_skimage'
FLOAT_METRICS = ('calculate_psnr_float', 'calculate_ssim_float')  # the plugin's metrics that take `protocol`


def get_protocol(name):
    """The Protocol called `name`; unknown names list the known ones."""
    if name not in PROTOCOLS:
        raise ValueError(f'unknown metric protocol {name!r}; known protocols: {", ".join(PROTOCOLS)}')
    return PROTOCOLS[name]


def protocol_of_metric(metric_opt):
    """The protocol one `val.metrics` entry computes, or None when it is none of PROTOCOLS (e.g. a border crop
    the protocol does not have). BasicSR's own calculate_psnr/ssim map to the *_uint8_basicsr protocols."""
    metric_opt = dict(metric_opt or {})
    kind = metric_opt.get('type')
    if kind in FLOAT_METRICS:
        name = metric_opt.get('protocol', DEFAULT)
        if name not in PROTOCOLS:
            return None
        crop = metric_opt.get('crop_border', PROTOCOLS[name].crop_border)
        return name if crop == PROTOCOLS[name].crop_border else None
    if kind in ('calculate_psnr', 'calculate_ssim') and not metric_opt.get('crop_border', 0):
        return 'y_uint8_basicsr' if metric_opt.get('test_y_channel') else 'rgb_uint8_basicsr'
    return None


def protocol_of_options(opt):
    """The protocol of an option dict's `val.metrics` psnr and ssim entries when both have the same one, else None."""
    metrics = ((opt or {}).get('val') or {}).get('metrics') or {}
    names = {protocol_of_metric(metrics[key]) for key in ('psnr', 'ssim') if key in metrics}
    return names.pop() if len(names) == 1 else None
