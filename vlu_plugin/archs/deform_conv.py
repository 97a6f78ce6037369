"""Modulated deformable convolution (DCNv2) in plain torch ops, fast on CPU; torchvision's kernel on CUDA.

`deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask, impl)` takes the arguments and
layouts of `torchvision.ops.deform_conv2d`: `offset` (B, 2·G·kh·kw, Ho, Wo) holds (dy, dx) per tap and
offset group G, `mask` (B, G·kh·kw, Ho, Wo); weight groups come from `weight.shape[1]`, as there.

Why a second implementation: torchvision's CPU kernel computes, for the backward, one bilinear
coordinate weight per (channel, tap, pixel) in a scalar loop, which makes AirNet's training step ~10×
slower than a plain convolution of the same size. Here the image is laid out channels-last, so each
bilinear corner of each tap is one contiguous row of channels:
- forward: `F.embedding_bag` (sum of the four corner rows, weighted by bilinear weight × mask) builds the
  im2col matrix, then one matmul with the weight;
- backward (hand-written): the matmul's transposes, one `index_add_` per corner for the input
  gradient, and four row-wise dot products that give the mask and offset gradients.
The bilinear rule is torchvision's: a sample with y ≤ −1, y ≥ H, x ≤ −1 or x ≥ W is zero, corners
outside the image count as zero, and the weights use floor(y), floor(x), so the offset derivative at an
exact integer coordinate (−1 included) is the one-sided one torchvision's backward takes too.

`impl`: 'torch' (this file), 'torchvision', or 'auto' (torchvision's kernel on CUDA, where it is the
established default; this one elsewhere).
"""
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

IMPLS = ('auto', 'torch', 'torchvision')


def resolve_impl(impl, device):
    """'torch' or 'torchvision' for `impl` on `device` ('auto': torchvision on CUDA, torch elsewhere)."""
    if impl not in IMPLS:
        raise ValueError(f'deform_impl must be one of {", ".join(IMPLS)}, got {impl!r}')
    if impl == 'auto':
        return 'torchvision' if device.type == 'cuda' else 'torch'
    return impl


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _sampling(x, offset, mask, kernel, stride, padding, dilation):
    """Row indices (R, 4) into the padded channels-last table, corner weights (R, 4) and the pieces of them.

    R = B·Ho·Wo·kh·kw·G rows, ordered (b, ho, wo, tap, group) so that the gathered rows reshape straight
    into the im2col matrix (B·Ho·Wo, taps·C) whose columns match weight.permute(0, 2, 3, 1).
    """
    b, c, h, w = x.shape
    kh, kw = kernel
    ho, wo = offset.shape[-2:]
    taps = kh * kw
    groups = offset.shape[1] // (2 * taps)
    dtype, device = offset.dtype, offset.device
    # offsets (B, G, taps, 2, Ho, Wo) -> (B, Ho, Wo, taps, G)
    off = offset.view(b, groups, taps, 2, ho, wo).permute(0, 4, 5, 2, 1, 3)
    tap_y = (torch.arange(kh, device=device, dtype=dtype) * dilation[0]).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=device, dtype=dtype) * dilation[1]).repeat(kh)
    base_y = (torch.arange(ho, device=device, dtype=dtype) * stride[0] - padding[0]).view(ho, 1, 1, 1)
    base_x = (torch.arange(wo, device=device, dtype=dtype) * stride[1] - padding[1]).view(1, wo, 1, 1)
    py = off[..., 0] + (base_y + tap_y.view(1, 1, taps, 1))
    px = off[..., 1] + (base_x + tap_x.view(1, 1, taps, 1))
    # torchvision's rule: a sample outside (-1, H) x (-1, W) is zero. Exactly -1 is kept here: its value is
    # still zero (its upper/left corners are padding), and its offset gradient is then torchvision's
    # one-sided one (the lower/right corner's value), as at every integer coordinate.
    inside = (py >= -1) & (py < h) & (px >= -1) & (px < w)
    y0, x0 = torch.floor(py), torch.floor(px)
    ly, lx = py - y0, px - x0
    # In the table the image is padded by one zero row/column on each side, so corners at -1 or H/W are
    # read (as zeros) without bounds checks; samples outside have zero weight and any in-range index.
    hp, wp = h + 2, w + 2
    # int32 indices where they fit: half the memory, and sorting them (backward) is ~2x faster
    index_dtype = torch.int32 if b * hp * wp * groups < 2**31 else torch.int64
    # NaN positions (a NaN batch) are not `inside`: any valid index, while their NaN weights still make the
    # output NaN, so the models' non-finite-loss check reports the batch
    y0 = torch.nan_to_num(y0, nan=0.0).clamp_(-1, h - 1).to(index_dtype) + 1
    x0 = torch.nan_to_num(x0, nan=0.0).clamp_(-1, w - 1).to(index_dtype) + 1
    batch = torch.arange(b, device=device, dtype=index_dtype).view(b, 1, 1, 1, 1) * (hp * wp)
    group = torch.arange(groups, device=device, dtype=index_dtype).view(1, 1, 1, 1, groups)
    top_left = (batch + y0 * wp + x0) * groups + group
    row_step = wp * groups
    idx = torch.stack([top_left, top_left + groups, top_left + row_step, top_left + row_step + groups], -1)
    keep = inside.to(dtype)
    hy, hx = 1 - ly, 1 - lx
    bilinear = torch.stack([hy * hx, hy * lx, ly * hx, ly * lx], -1) * keep.unsqueeze(-1)
    m = mask.view(b, groups, taps, ho, wo).permute(0, 3, 4, 2, 1)
    return idx.reshape(-1, 4), bilinear.reshape(-1, 4), m.reshape(-1), ly.reshape(-1), lx.reshape(-1), \
        keep.reshape(-1)


def _table(x, groups):
    """x (B, C, H, W) as a (B·(H+2)·(W+2)·G, C/G) table of channel rows, zero-padded by one pixel."""
    b, c, h, w = x.shape
    # contiguous, always: for B = 1 the reshape alone would be a strided view, on which embedding_bag
    # leaves its fast path (~7x slower)
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1).contiguous()
    return padded.view(b * (h + 2) * (w + 2) * groups, c // groups)


def _weight_matrices(weight):
    """The weight per weight group as (Cout/wg, taps·Cin/wg) matrices in the im2col column order (tap, channel)."""
    cout = weight.shape[0]
    return weight.permute(0, 2, 3, 1).reshape(cout, -1)


class _DeformConv(torch.autograd.Function):
    """Modulated deformable convolution with a hand-written backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, offset, weight, mask, stride, padding, dilation):
        b, c, h, w = x.shape
        cout, cin_g, kh, kw = weight.shape
        taps = kh * kw
        groups = offset.shape[1] // (2 * taps)
        wgroups = c // cin_g
        ho, wo = offset.shape[-2:]
        idx, bilinear, m, ly, lx, keep = _sampling(x, offset, mask, (kh, kw), stride, padding, dilation)
        table = _table(x, groups)
        coeff = bilinear * m.unsqueeze(1)
        cols = F.embedding_bag(idx, table, per_sample_weights=coeff, mode='sum').view(b * ho * wo, taps, c)
        out = _grouped_matmul(cols, weight, wgroups)
        ctx.save_for_backward(weight, table, idx, bilinear, m, ly, lx, keep)
        ctx.shape = (b, c, h, w, ho, wo, groups, wgroups)
        # the output and the input gradient in x's layout, so that channels_last features (AirNet) stay so
        ctx.layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else \
            torch.contiguous_format
        return out.view(b, ho, wo, cout).permute(0, 3, 1, 2).contiguous(memory_format=ctx.layout)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        weight, table, idx, bilinear, m, ly, lx, keep = ctx.saved_tensors
        b, c, h, w, ho, wo, groups, wgroups = ctx.shape
        cout, cin_g, kh, kw = weight.shape
        taps = kh * kw
        go = grad_out.permute(0, 2, 3, 1).reshape(b * ho * wo, cout)
        coeff = bilinear * m.unsqueeze(1)
        grad_cols = _grouped_cols_grad(go, weight, wgroups, taps, c).view(-1, c // groups)
        grad_x = grad_offset = grad_weight = grad_mask = None
        if ctx.needs_input_grad[0]:
            grad_table = _scatter_rows(grad_cols, idx, coeff, table.shape[0])
            grad_x = grad_table.view(b, h + 2, w + 2, c)[:, 1:-1, 1:-1].permute(0, 3, 1, 2).contiguous(
                memory_format=ctx.layout)
            del grad_table
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            # the unmasked samples again: cheaper than keeping an im2col matrix per layer for the whole backward
            samples = F.embedding_bag(idx, table, per_sample_weights=bilinear, mode='sum')
            if ctx.needs_input_grad[2]:
                cols = (samples * m.unsqueeze(1)).view(b * ho * wo, taps, c)
                grad_weight = _grouped_weight_grad(go, cols, weight, wgroups)
                del cols
            if ctx.needs_input_grad[3]:
                grad_m = samples.mul_(grad_cols).sum(1)
                grad_mask = grad_m.view(b, ho, wo, taps, groups).permute(0, 4, 3, 1, 2).reshape(
                    b, groups * taps, ho, wo)
            del samples
        if ctx.needs_input_grad[1]:
            # d(sample)/dy and d(sample)/dx are bilinear-like sums of the same four corners, so they are
            # gathered the same way, with the derivatives of the corner weights
            hy, hx = 1 - ly, 1 - lx
            scale = (m * keep).unsqueeze(1)
            grads = []
            for weights in (torch.stack([-hx, -lx, hx, lx], 1), torch.stack([-hy, hy, -ly, ly], 1)):
                slope = F.embedding_bag(idx, table, per_sample_weights=weights * scale, mode='sum')
                grads.append(slope.mul_(grad_cols).sum(1))
                del slope
            # rows (b, ho, wo, tap, group) -> offset layout (B, G, taps, 2, Ho, Wo)
            grad_pos = torch.stack(grads, -1).view(b, ho, wo, taps, groups, 2)
            grad_offset = grad_pos.permute(0, 4, 3, 5, 1, 2).reshape(b, 2 * groups * taps, ho, wo)
        return grad_x, grad_offset, grad_weight, grad_mask, None, None, None


def _scatter_rows(rows, idx, coeff, size):
    """out (size, D) with out[idx[r, j]] += coeff[r, j] · rows[r]: the transpose of the forward's gather.

    As a gather too: the (row, corner) pairs sorted by destination make each destination row one bag of
    `F.embedding_bag`, which is several times faster on CPU than four weighted `index_add_` passes.
    """
    flat = idx.reshape(-1)
    order = torch.argsort(flat)
    counts = torch.bincount(flat, minlength=size)
    offsets = torch.zeros(size, dtype=idx.dtype, device=idx.device)  # embedding_bag wants one index dtype
    torch.cumsum(counts[:-1], 0, out=offsets[1:])
    source = torch.div(order, idx.shape[1], rounding_mode='floor').to(idx.dtype)
    return F.embedding_bag(source, rows, offsets, per_sample_weights=coeff.reshape(-1)[order], mode='sum')


def _grouped_matmul(cols, weight, wgroups):
    """out (N, Cout) = im2col (N, taps, C) times the weight, per weight group."""
    n, taps, c = cols.shape
    if wgroups == 1:
        return cols.view(n, taps * c) @ _weight_matrices(weight).t()
    cout_g, cin_g = weight.shape[0] // wgroups, c // wgroups
    parts = [cols[:, :, j * cin_g:(j + 1) * cin_g].reshape(n, -1) @
             _weight_matrices(weight[j * cout_g:(j + 1) * cout_g]).t() for j in range(wgroups)]
    return torch.cat(parts, 1)


def _grouped_weight_grad(go, cols, weight, wgroups):
    """d loss / d weight from the output gradient (N, Cout) and the im2col matrix (N, taps, C)."""
    n, taps, c = cols.shape
    cout, cin_g, kh, kw = weight.shape
    cout_g = cout // wgroups
    parts = []
    for j in range(wgroups):
        block = cols if wgroups == 1 else cols[:, :, j * cin_g:(j + 1) * cin_g]
        grad = go[:, j * cout_g:(j + 1) * cout_g].t() @ block.reshape(n, taps * cin_g)
        parts.append(grad.view(cout_g, kh, kw, cin_g).permute(0, 3, 1, 2))
    return torch.cat(parts, 0)


def _grouped_cols_grad(go, weight, wgroups, taps, c):
    """d loss / d im2col (N, taps·C) from the output gradient (N, Cout)."""
    if wgroups == 1:
        return go @ _weight_matrices(weight)
    n = go.shape[0]
    cout_g, cin_g = weight.shape[0] // wgroups, c // wgroups
    parts = [(go[:, j * cout_g:(j + 1) * cout_g] @ _weight_matrices(weight[j * cout_g:(j + 1) * cout_g]))
             .view(n, taps, cin_g) for j in range(wgroups)]
    return torch.cat(parts, 2).reshape(n, taps * c)


def deform_conv2d(x, offset, weight, bias=None, stride=1, padding=0, dilation=1, mask=None, impl='auto'):
    """torchvision.ops.deform_conv2d's result (same arguments and layouts), by `impl` (see the module docstring)."""
    # Under autocast both kernels run in float32 and return x's dtype (torchvision's own autocast rule, which
    # it registers for CUDA only; its CPU kernel has no bf16/fp16): sampling positions in bf16/fp16 would be
    # off by whole pixels on large images.
    dtype = torch.promote_types(torch.promote_types(x.dtype, weight.dtype), torch.float32)
    cast = [None if t is None else t.to(dtype) for t in (x, offset, weight, bias, mask)]
    with torch.autocast(x.device.type, enabled=False):
        if resolve_impl(impl, x.device) == 'torchvision':
            from torchvision.ops import deform_conv2d as tv_deform_conv2d
            x32, offset32, weight32, bias32, mask32 = cast
            out = tv_deform_conv2d(x32, offset32, weight32, bias32, stride, padding, dilation, mask32)
        else:
            out = _deform_conv2d(*cast, stride, padding, dilation)
    return out.to(x.dtype)


def _deform_conv2d(x, offset, weight, bias, mask, stride, padding, dilation):
    """The plugin's kernel on same-dtype tensors, with torchvision's argument checks."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    b, c, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    taps = kh * kw
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if offset.shape[0] != b or offset.shape[1] % (2 * taps) or offset.shape[-2:] != (ho, wo):
        raise ValueError(f'deform_conv2d: offset {tuple(offset.shape)} does not fit input {tuple(x.shape)} and a '
                         f'{kh}x{kw} kernel (expected (B, 2*groups*{taps}, {ho}, {wo}))')
    groups = offset.shape[1] // (2 * taps)
    if c % groups or c % cin_g:
        raise ValueError(f'deform_conv2d: {c} input channels do not split into {groups} offset groups and '
                         f'{c // max(cin_g, 1)} weight groups of {cin_g}')
    if mask is None:
        mask = offset.new_ones(b, groups * taps, ho, wo)
    elif mask.shape != (b, groups * taps, ho, wo):
        raise ValueError(f'deform_conv2d: mask {tuple(mask.shape)} should be {(b, groups * taps, ho, wo)}')
    out = _DeformConv.apply(x, offset, weight, mask, stride, padding, dilation)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
