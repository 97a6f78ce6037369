"""The paper's metric (float RGB, scikit-image) against BasicSR's uint8 definition on the same pair."""
import numpy as np
import pytest
from basicsr.metrics import calculate_psnr, calculate_ssim
from skimage import data

from vlu_plugin.metrics.paper_metric import calculate_psnr_float, calculate_ssim_float


@pytest.fixture
def pair():
    """A clean image and a float 'network output' (noisy, then smoothed) in [0, 1], RGB HWC."""
    import cv2
    clean = data.astronaut()[::4, ::4].astype(np.float64) / 255
    rng = np.random.default_rng(0)
    noisy = np.clip(clean + rng.normal(0, 25 / 255, clean.shape), 0, 1)
    return clean, cv2.GaussianBlur(noisy, (5, 5), 1.0)


def test_paper_metric_against_basicsr_uint8(pair):
    clean, output = pair
    to_uint8_bgr = lambda img: np.round(img[..., ::-1] * 255).astype(np.uint8)  # noqa: E731  what BasicSR sees
    psnr_paper, ssim_paper = calculate_psnr_float(output, clean), calculate_ssim_float(output, clean)
    psnr_basicsr = calculate_psnr(to_uint8_bgr(output), to_uint8_bgr(clean), crop_border=0)
    ssim_basicsr = calculate_ssim(to_uint8_bgr(output), to_uint8_bgr(clean), crop_border=0)
    # PSNR differs only by BasicSR's 8-bit quantisation of the output ...
    assert psnr_paper == pytest.approx(psnr_basicsr, abs=0.05) and psnr_paper != psnr_basicsr
    # ... SSIM by its window (11x11 Gaussian vs skimage's 7x7 uniform): not interchangeable in tables
    assert abs(ssim_paper - ssim_basicsr) > 1e-3


def test_identical_images_and_shape_mismatch(pair):
    clean, _ = pair
    assert calculate_ssim_float(clean, clean) == pytest.approx(1.0)
    with pytest.raises(ValueError, match='shapes differ'):
        calculate_psnr_float(clean, clean[:-1])
