"""Degradation synthesis: Gaussian noise, rain streaks, haze, motion/defocus blur and low light.

Every function takes a clean float32 RGB HWC image in [0, 1] and returns one of the same shape. Random
draws come only from the numpy Generator passed in, so a seeded Generator gives identical output.
BasicSR's `add_gaussian_noise`/`add_poisson_noise` draw from numpy's global state instead, so they cannot
be seeded per sample; its Gaussian kernel is reused to widen rain streaks.
Parameter ranges (`RANGES`) span the public recipes (Rain100L-like to heavier rain, RESIDE's airlight,
GoPro-like motion lengths, Lv et al.'s low-light model); their sources are listed in `datasets/README.md`.
"""
import math

import cv2
import numpy as np
from basicsr.data.degradations import bivariate_Gaussian

RANGES = {
    'haze': {'beta': (1.0, 2.0), 'airlight': (0.7, 1.0)},  # relative depth in [0, 1]; RESIDE's airlight range
    # light (Rain100L: density .002-.004, length 10-20) to moderate rain, within +-25 degrees of vertical
    'rain': {'density': (0.002, 0.006), 'length': (10, 25), 'angle': (-25, 25), 'alpha': (0.6, 0.9)},
    'motion': {'length': (9, 25), 'angle': (0, 180)},
    'defocus': {'radius': (2, 6)},
    'lowlight': {'alpha': (0.9, 1.0), 'beta': (0.5, 1.0), 'gamma': (1.5, 5.0),  # Lv et al.
                 'peak': (100, 1000), 'read_sigma': (1 / 255, 5 / 255)},
}


def add_gaussian_noise(img, sigma, rng, quantize='truncate'):
    """Add i.i.d. N(0, sigma^2) noise per channel on the 0-255 scale, clipped; 'truncate' floors as the release."""
    noisy = np.clip(img.astype(np.float64) * 255. + rng.standard_normal(img.shape) * sigma, 0, 255)
    if quantize == 'truncate':  # the release's astype(uint8): about -0.5 grey level of bias
        noisy = np.floor(noisy)
    elif quantize == 'round':
        noisy = np.round(noisy)
    elif quantize != 'none':
        raise ValueError(f"noise_quantize must be 'truncate', 'round' or 'none', not {quantize!r}")
    return (noisy / 255.).astype(np.float32)


def line_kernel(length, angle):
    """A normalised 1-px line of `length` px at `angle` degrees (counter-clockwise from horizontal)."""
    length = max(1.0, float(length))
    size = int(math.ceil(length)) | 1
    c, rad = (size - 1) / 2, math.radians(angle)
    # bilinear splatting of dense samples along the segment: sub-pixel length and angle, symmetric
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, 8 * size)
    x, y = c + t * math.cos(rad), c - t * math.sin(rad)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    kernel = np.zeros((size + 1, size + 1), np.float64)
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(kernel, (y0 + dy, x0 + dx), wgt)
    kernel = kernel[:size, :size].astype(np.float32)
    return kernel / kernel.sum()


def disk_kernel(radius):
    """A normalised disk of `radius` px (defocus point spread function)."""
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    kernel = (xx ** 2 + yy ** 2 <= radius ** 2 + 1e-6).astype(np.float32)
    return kernel / kernel.sum()


def _filter(img, kernel):
    """Convolve each channel with `kernel`, reflecting at the borders."""
    return cv2.filter2D(img.astype(np.float32), -1, kernel[::-1, ::-1], borderType=cv2.BORDER_REFLECT)


def motion_blur(img, length, angle):
    """Uniform linear motion blur of `length` px at `angle` degrees."""
    return np.clip(_filter(img, line_kernel(length, angle)), 0, 1)


def defocus_blur(img, radius):
    """Defocus blur with a disk of `radius` px."""
    return np.clip(_filter(img, disk_kernel(radius)), 0, 1)


def rain_layer(shape, rng, density, length, angle, width=0.8):
    """A streak layer in [0, 1]: sparse random seeds smeared along a line tilted `angle` degrees from vertical."""
    h, w = shape
    seeds = (rng.random((h, w)) < density) * rng.uniform(0.5, 1.0, (h, w))
    streaks = _filter(seeds.astype(np.float32), line_kernel(length, 90 + angle))
    if width > 0:  # widen the 1-px lines a little, as in Rain100L
        streaks = _filter(streaks, bivariate_Gaussian(5, width, width, 0, isotropic=True).astype(np.float32))
    peak = streaks.max()
    return streaks / peak if peak > 0 else streaks


def add_rain(img, rng, density=0.003, length=15, angle=0.0, alpha=0.8, width=0.8):
    """Add bright rain streaks (one direction, Rain100L-like light rain) and clip to [0, 1]."""
    layer = rain_layer(img.shape[:2], rng, density, length, angle, width)
    return np.clip(img + alpha * layer[:, :, None], 0, 1).astype(np.float32)


def add_haze(img, beta, airlight, depth):
    """Atmospheric scattering I = J t + A (1 - t), t = exp(-beta * depth); depth HxW in beta's units."""
    t = np.exp(-beta * np.asarray(depth, np.float32))[:, :, None]
    return np.clip(img * t + airlight * (1 - t), 0, 1).astype(np.float32)


def synthetic_depth(h, w, rng):
    """A smooth depth map in [0, 1], far at the top, with gentle random undulation."""
    ramp = np.linspace(1, 0, h, dtype=np.float32)[:, None].repeat(w, axis=1)
    bumps = cv2.resize(rng.random((4, 4)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    depth = 0.75 * ramp + 0.25 * bumps
    return (depth - depth.min()) / max(float(np.ptp(depth)), 1e-6)


def low_light(img, rng, alpha=0.95, beta=0.75, gamma=2.0, peak=300., read_sigma=2 / 255):
    """Darken as beta * (alpha * x) ** gamma (Lv et al.), then add Poisson shot and Gaussian read noise."""
    dark = beta * np.power(alpha * img.astype(np.float64), gamma)
    shot = rng.poisson(dark * peak) / peak
    return np.clip(shot + rng.normal(0, read_sigma, img.shape), 0, 1).astype(np.float32)


def _uniform(rng, bounds):
    return float(rng.uniform(*bounds))


def random_degradation(kind, img, rng):
    """Degrade `img` with `kind` ('haze', 'rain', 'blur', 'lowlight') at parameters drawn from RANGES.

    Haze uses a synthetic relative depth (far at the top). Returns (degraded image, parameters dict).
    """
    if kind == 'haze':
        params = {k: _uniform(rng, v) for k, v in RANGES['haze'].items()}
        return add_haze(img, params['beta'], params['airlight'], synthetic_depth(*img.shape[:2], rng)), params
    if kind == 'rain':
        params = {k: _uniform(rng, v) for k, v in RANGES['rain'].items()}
        return add_rain(img, rng, **params), params
    if kind == 'blur':
        if rng.random() < 0.75:  # GoPro blur is camera motion; some defocus for variety
            params = {k: _uniform(rng, v) for k, v in RANGES['motion'].items()}
            return motion_blur(img, **params), dict(params, type='motion')
        params = {k: _uniform(rng, v) for k, v in RANGES['defocus'].items()}
        return defocus_blur(img, **params), dict(params, type='defocus')
    if kind == 'lowlight':
        ranges = dict(RANGES['lowlight'])
        params = {k: _uniform(rng, v) for k, v in ranges.items() if k != 'peak'}
        params['peak'] = float(np.exp(rng.uniform(*np.log(ranges['peak']))))  # log-uniform photon count
        return low_light(img, rng, **params), params
    raise ValueError(f"unknown degradation {kind!r}; known: haze, rain, blur, lowlight (noise: add_gaussian_noise)")
