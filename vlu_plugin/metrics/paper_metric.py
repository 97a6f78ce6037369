"""PSNR and SSIM as the all-in-one papers compute them: RGB float images in [0, 1], scikit-image's definitions.

BasicSR's `calculate_psnr` / `calculate_ssim` take uint8 images and an 11×11 Gaussian SSIM window;
VLU-Net, PromptIR and AirNet report skimage's PSNR (data_range 1) and its default SSIM (7×7 uniform
window) on unquantised RGB outputs. These take float HWC RGB arrays in [0, 1]; the plugin's models
pass them such arrays for every metric marked `takes_float`.
"""
import numpy as np
from basicsr.utils.registry import METRIC_REGISTRY
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _float_pair(img, img2, crop_border):
    img = np.clip(np.asarray(img, dtype=np.float64), 0, 1)
    img2 = np.clip(np.asarray(img2, dtype=np.float64), 0, 1)
    if img.shape != img2.shape:
        raise ValueError(f'image shapes differ: {img.shape} vs {img2.shape}')
    if crop_border:
        border = (slice(crop_border, -crop_border), ) * 2
        img, img2 = img[border], img2[border]
    return img, img2


@METRIC_REGISTRY.register()
def calculate_psnr_float(img, img2, crop_border=0, **kwargs):
    """PSNR (dB) of float RGB HWC images in [0, 1] with data_range 1, as the all-in-one papers report it."""
    img, img2 = _float_pair(img, img2, crop_border)
    return float(peak_signal_noise_ratio(img2, img, data_range=1))


@METRIC_REGISTRY.register()
def calculate_ssim_float(img, img2, crop_border=0, **kwargs):
    """SSIM of float RGB HWC images in [0, 1]: skimage's default 7×7 uniform window, mean over channels."""
    img, img2 = _float_pair(img, img2, crop_border)
    return float(structural_similarity(img2, img, data_range=1, channel_axis=-1))


calculate_psnr_float.takes_float = True
calculate_ssim_float.takes_float = True
