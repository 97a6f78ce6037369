"""Tiled inference with overlap and linear blending, so memory stays bounded on large images."""
import torch


def _ramp(length, overlap, device, dtype):
    """1-D blending weights: linear ramps of `overlap` samples at both ends, 1 in between (never 0)."""
    idx = torch.arange(length, device=device, dtype=dtype)
    ramp = torch.minimum((idx + 1) / (overlap + 1), (length - idx) / (overlap + 1))
    return ramp.clamp(max=1.0)


def _starts(size, tile, stride):
    """Tile origins covering [0, size): regular steps, the last one flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def tiled_forward(fn, image, tile=512, overlap=32, progress=None):
    """Apply an image-to-image `fn` to (B, C, H, W) `image` in overlapping tiles and blend the results.

    Each output pixel is the weighted mean of the tiles covering it, with weights that ramp linearly
    across the overlaps; an image no larger than one tile is processed whole. `progress(done, total)` is
    called after each tile (a large image on the CPU takes minutes per row of tiles).
    """
    if overlap < 0 or tile <= overlap:
        raise ValueError(f'tile ({tile}) must be larger than overlap ({overlap}) and overlap >= 0')
    b, _, h, w = image.shape
    if h <= tile and w <= tile:
        return fn(image)
    stride = tile - overlap
    out = weight = None
    origins = [(top, left) for top in _starts(h, tile, stride) for left in _starts(w, tile, stride)]
    for done, (top, left) in enumerate(origins, start=1):
        patch = image[..., top:top + tile, left:left + tile]
        result = fn(patch)
        ph, pw = result.shape[-2:]
        wmap = (_ramp(ph, overlap, result.device, result.dtype)[:, None] *
                _ramp(pw, overlap, result.device, result.dtype)[None, :])
        if out is None:
            out = result.new_zeros((b, result.shape[1], h, w))
            weight = result.new_zeros((1, 1, h, w))
        out[..., top:top + ph, left:left + pw] += result * wmap
        weight[..., top:top + ph, left:left + pw] += wmap
        if progress is not None:
            progress(done, len(origins))
    return out / weight
