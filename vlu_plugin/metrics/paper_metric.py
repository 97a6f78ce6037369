"""PSNR and SSIM as the all-in-one papers compute them, by named protocol (`metrics/protocols.py`).

BasicSR's `calculate_psnr` / `calculate_ssim` take uint8 images and an 11×11 Gaussian SSIM window;
VLU-Net, PromptIR, AirNet and AdaIR report skimage's PSNR (data_range 1) and its default SSIM (7×7 uniform
window) on unquantised RGB outputs, the default protocol `rgb_float_skimage`. These take float HWC RGB
arrays in [0, 1] (the plugin's models pass them such arrays for every metric marked `takes_float`) and
compute the metric as `protocol` says: quantised to uint8 and handed to BasicSR's functions for the
`*_uint8_basicsr` protocols, on the float images with skimage otherwise.
"""
import numpy as np
from basicsr.metrics.psnr_ssim import calculate_psnr, calculate_ssim
from basicsr.utils.registry import METRIC_REGISTRY
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vlu_plugin.metrics.protocols import DEFAULT, get_protocol


def _float_pair(img, img2, crop_border):
    img = np.clip(np.asarray(img, dtype=np.float64), 0, 1)
    img2 = np.clip(np.asarray(img2, dtype=np.float64), 0, 1)
    if img.shape != img2.shape:
        raise ValueError(f'image shapes differ: {img.shape} vs {img2.shape}')
    if crop_border:
        border = (slice(crop_border, -crop_border), ) * 2
        img, img2 = img[border], img2[border]
    return img, img2


def _uint8_bgr(img):
    """A float RGB image in [0, 1] as BasicSR's tensor2img makes it: rounded to uint8, channels in BGR order."""
    return np.ascontiguousarray((img * 255.0).round().astype(np.uint8)[..., ::-1])


def _basicsr_score(metric, img, img2, spec, crop):
    """BasicSR's own `metric` (calculate_psnr / calculate_ssim) on the images rounded to 8-bit BGR, as its
    protocols define; it crops the border itself."""
    a, b = _float_pair(img, img2, 0)
    return float(metric(_uint8_bgr(a), _uint8_bgr(b), crop, input_order='HWC', test_y_channel=spec.channel == 'y'))


def _score(img, img2, crop_border, protocol, basicsr_metric, float_metric):
    """The metric by `protocol`: BasicSR's `basicsr_metric` for the quantising protocols, else
    `float_metric(img, img2, protocol spec)` on the clipped, border-cropped float images.

    An explicit crop_border overrides the protocol's."""
    spec = get_protocol(protocol or DEFAULT)
    crop = spec.crop_border if crop_border is None else crop_border
    if spec.quantize:
        return _basicsr_score(basicsr_metric, img, img2, spec, crop)
    return float(float_metric(*_float_pair(img, img2, crop), spec))


@METRIC_REGISTRY.register()
def calculate_psnr_float(img, img2, crop_border=None, protocol=DEFAULT, **kwargs):
    """PSNR (dB) of float RGB HWC images in [0, 1] by `protocol` (default: the papers' skimage float RGB)."""
    return _score(img, img2, crop_border, protocol, calculate_psnr,
                  lambda a, b, spec: peak_signal_noise_ratio(b, a, data_range=1))


@METRIC_REGISTRY.register()
def calculate_ssim_float(img, img2, crop_border=None, protocol=DEFAULT, **kwargs):
    """SSIM of float RGB HWC images in [0, 1] by `protocol` (default: skimage's 7×7 uniform window, RGB)."""
    return _score(img, img2, crop_border, protocol, calculate_ssim,
                  lambda a, b, spec: structural_similarity(b, a, data_range=1, channel_axis=-1,
                                                           gaussian_weights=spec.ssim == 'gaussian_skimage'))


calculate_psnr_float.takes_float = True
calculate_ssim_float.takes_float = True
