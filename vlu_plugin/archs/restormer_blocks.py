"""Restormer's building blocks (Zamir et al., CVPR 2022): one copy, shared by VLU-Net, PromptIR, AdaIR, MoCE-IR.

Module and parameter names follow Restormer (`qkv`, `qkv_dwconv`, `project_out`, `temperature`, ...)
so the authors' checkpoints map onto them; the one difference, LayerNorm's weight living directly
on the module instead of in a `body` child, is mapped in `vlu_plugin.utils.checkpoints`.

Speed without changing values (measured on CPU, `vlu bench --reference-vlunet`): tensors are (B, C, H, W)
in channels_last memory, so LayerNorm is torch's fused kernel on a (B, H, W, C) view, 1×1 convolutions
are one matrix product each (`pointwise`), depthwise convolutions run in their fast layout, the channel
attention has a hand-written backward that keeps gradients in that layout and takes q/k/v as the
projections' packed outputs, so it writes their gradients into one buffer per projection (no chunk
concatenation), GDFN computes its gate and value halves separately at aligned widths and gates them
as (B, H, W, C) views (GELU's channels_last path is slower), and Upsample's convolution on the
smallest maps is one matrix product over unfolded patches. Every block also accepts ordinary
contiguous tensors.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

ALIGN = 16  # floats per AVX-512 register: channel counts that are multiples of it vectorise fully
EPS = 1e-12  # F.normalize's


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) tensor; `bias=False` is Restormer's 'BiasFree' variant."""

    def __init__(self, dim, bias=True, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C): a view, not a copy, of a channels_last tensor
        if self.bias is None:  # BiasFree scales without centring, as Restormer does.
            out = x * torch.rsqrt(x.var(-1, keepdim=True, correction=0) + self.eps) * self.weight
        else:
            out = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return out.permute(0, 3, 1, 2)


def layer_norm(dim, layer_norm_type):
    """Restormer's LayerNorm by its option name: 'WithBias' or 'BiasFree'."""
    if layer_norm_type not in ('WithBias', 'BiasFree'):
        raise ValueError(f"LayerNorm_type must be 'WithBias' or 'BiasFree', got {layer_norm_type!r}")
    return ChannelLayerNorm(dim, bias=layer_norm_type == 'WithBias')


def pointwise(conv, x):
    """A 1×1 `conv` applied as one matrix product over the channels (channels_last in, channels_last out).

    The module stays an nn.Conv2d so that checkpoints keep their keys and shapes.
    """
    out = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)
    return out.permute(0, 3, 1, 2)


def _halves(t, padded):
    """The two halves of a weight or bias (None stays None) along dim 0, each zero-padded to `padded` rows.

    `split` + `pad` rather than slicing: backward, the halves' gradients are concatenated once into the
    parameter's, instead of each being scattered into a zero tensor of its full size and the two added.
    """
    if t is None:
        return None, None
    halves = t.chunk(2)
    if padded == halves[0].shape[0]:
        return halves
    return tuple(F.pad(half, (0, 0) * (t.dim() - 1) + (0, padded - half.shape[0])) for half in halves)


def pointwise_dwconv_halves(project, dwconv, x, padded):
    """The two channel halves of `dwconv(project(x))` (a 1×1 conv, then a depthwise 3×3), computed separately.

    GDFN chunks one wide 1×1 + depthwise output into gate and value. Computing each half separately
    gives it its own dense channels_last tensor: no strided slices forward (GELU vectorises fully), no
    concatenation of the halves' gradients backward. Each half gets zero channels up to `padded` (see
    GDFN). (MDTA's q/k/v stay one projection: `channel_attention` writes their gradients into one buffer.)
    """
    weights, biases = _halves(project.weight.flatten(1), padded), _halves(project.bias, padded)
    dw_weights, dw_biases = _halves(dwconv.weight, padded), _halves(dwconv.bias, padded)
    x = x.permute(0, 2, 3, 1)
    return [F.conv2d(F.linear(x, weights[i], biases[i]).permute(0, 3, 1, 2), dw_weights[i], dw_biases[i], padding=1,
                     groups=padded) for i in range(2)]


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity forward; backward, the gradient in channels_last memory format."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return channels_last(grad)


def conv3x3(conv, x):
    """A 3×3 `conv` (stride 1, padding 1, no groups) on a channels_last `x`, channels_last out.

    Where the image has fewer pixels than the convolution has output channels (Upsample at the
    lowest levels: 384→768 channels on 8×8), the weight is the bulk of the data and oneDNN reorders it
    on every call, forward and backward; there one matrix product over the unfolded 3×3 patches is
    2.4× faster (fwd+bwd, measured). Elsewhere oneDNN's convolution is faster.
    """
    b, _, h, w = x.shape
    if h * w >= conv.out_channels:
        return conv(x)
    # unfold's backward (fold) returns a contiguous NCHW gradient; converted back here (small at these
    # sizes), it keeps every block before this one computing its backward in channels_last
    cols = F.unfold(_ChannelsLastGrad.apply(x), 3, padding=1).transpose(1, 2)  # (B, H·W, C·9)
    out = F.linear(cols, conv.weight.flatten(1), conv.bias)  # (B, H·W, C_out): pixel-major
    return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def channels_last(x):
    """`x` in channels_last memory format, the layout every block here runs fastest in on CPU and GPU."""
    return x.contiguous(memory_format=torch.channels_last)


def split_heads(x, num_heads):
    """(B, C, H, W) → (B, heads, C/heads, H·W); a view for NCHW and channels_last tensors alike."""
    b, c, h, w = x.shape
    return x.reshape(b, num_heads, c // num_heads, h * w)


def _heads_view(t, num_heads):
    """(B, C, H, W) channels_last (or a channel slice of one) → its (B, heads, HW, C/heads) view."""
    return split_heads(t, num_heads).transpose(-2, -1)


def _unpack(parts, layout):
    """{role: channel slice} for `parts` whose channels are the blocks named by `layout` ('qkv', ('qv', 'k'), ...)."""
    views = {}
    for part, roles in zip(parts, layout):
        width = part.shape[1] // len(roles)
        views.update((role, part[:, i * width:(i + 1) * width]) for i, role in enumerate(roles))
    return views


class _ChannelAttention(torch.autograd.Function):
    """softmax(norm(q)·norm(k)ᵀ·τ)·v per head, with a hand-written backward (see `channel_attention`)."""

    @staticmethod
    def forward(ctx, temperature, num_heads, layout, *parts):
        views = _unpack(parts, layout)
        shape = views['v'].shape
        q, k, v = (split_heads(views[role], num_heads) for role in 'qkv')
        # |q|, |k| over the pixels as sqrt(q·q): vector_norm along a strided dimension (the pixels of a
        # channels_last view) is 2-5× slower than vecdot's reduction there (measured)
        q_norm, k_norm = (torch.linalg.vecdot(t, t).sqrt_().unsqueeze(-1) for t in (q, k))
        # normalize(q)·normalize(k)ᵀ = (q·kᵀ) / (|q|·|k|ᵀ): scale the small map, not q and k
        scale = q_norm.clamp_min(EPS) * k_norm.clamp_min(EPS).transpose(-2, -1)
        cosine = (q @ k.transpose(-2, -1)) / scale
        attn = torch.softmax(cosine * temperature, dim=-1)
        ctx.save_for_backward(q, k, v, temperature, attn, cosine, scale, q_norm, k_norm)
        ctx.layout = layout
        ctx.part_shapes = [part.shape for part in parts]
        # the backward re-enters the forward's autocast (what torch.amp.custom_bwd does, for any device),
        # so that its products see the dtypes the forward's did
        device = q.device.type
        ctx.autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        # (attn·v)ᵀ = vᵀ·attnᵀ is pixel-major: written straight into a channels_last output (no copy
        # to interleave the heads)
        out = torch.empty(shape, dtype=v.dtype, device=v.device, memory_format=torch.channels_last)
        _matmul_into(_heads_view(out, num_heads), v.transpose(-2, -1), attn.transpose(-2, -1))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        if ctx.autocast is None:  # entering even a disabled autocast costs about a small head's products
            return _ChannelAttention._backward(ctx, grad_out)
        with torch.autocast(grad_out.device.type, dtype=ctx.autocast):
            return _ChannelAttention._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out):
        q, k, v, temperature, attn, cosine, scale, q_norm, k_norm = ctx.saved_tensors
        num_heads = q.shape[1]
        # one channels_last buffer per input part; q's, k's and v's gradients are written into their
        # slices, so autograd concatenates nothing (chunk's backward would) and no head interleaving is copied
        buffers = [torch.empty(shape, dtype=q.dtype, device=q.device, memory_format=torch.channels_last)
                   for shape in ctx.part_shapes]
        grads = {role: _heads_view(view, num_heads) for role, view in _unpack(buffers, ctx.layout).items()}
        grad_out = split_heads(grad_out, num_heads)
        # every large gradient is computed transposed so that it comes out pixel-major
        _matmul_into(grads['v'], grad_out.transpose(-2, -1), attn)
        grad_attn = grad_out @ v.transpose(-2, -1)
        grad_logits = attn * (grad_attn - (grad_attn * attn).sum(-1, keepdim=True))
        grad_temperature = (grad_logits * cosine).sum(dim=(0, 2, 3)).reshape(temperature.shape)
        grad_cosine = grad_logits * temperature
        grad_qk = grad_cosine / scale  # w.r.t. the raw q·kᵀ
        # through |q| and |k|: −(Σ_j g_ij·cos_ij)/|q_i|² · q_i (nothing where a norm was clamped)
        weighted = grad_cosine * cosine
        q_coef = -weighted.sum(-1, keepdim=True) / q_norm.clamp_min(EPS)**2 * (q_norm >= EPS)
        k_coef = -weighted.sum(-2, keepdim=True).transpose(-2, -1) / k_norm.clamp_min(EPS)**2 * (k_norm >= EPS)
        _matmul_into(grads['q'], k.transpose(-2, -1), grad_qk.transpose(-2, -1)).addcmul_(
            q.transpose(-2, -1), q_coef.transpose(-2, -1))
        _matmul_into(grads['k'], q.transpose(-2, -1), grad_qk).addcmul_(k.transpose(-2, -1),
                                                                         k_coef.transpose(-2, -1))
        return (grad_temperature, None, None, *buffers)


def _matmul_into(out, a, b):
    """a @ b written into the (strided) view `out`; returns `out`.

    Under autocast the product is computed in its dtype first (matmul's out= form is not autocast).
    """
    if torch.is_autocast_enabled(out.device.type):
        return out.copy_(a @ b)
    return torch.matmul(a, b, out=out)


def channel_attention(temperature, num_heads, **parts):
    """Transposed attention over channels: softmax(norm(q)·norm(k)ᵀ·τ)·v, per head.

    q, k, v come as keyword `parts` whose names say which of them each holds, in channel order:
    `qkv=t` (one projection's output, C channels each), `qv=t, k=u`, `q=t, kv=u`, or `q=, k=, v=`;
    each part is (B, n·C, H, W). The attention map is (C/heads × C/heads) per head, so memory grows
    linearly with the number of pixels. Returns (B, C, H, W) in channels_last format. The backward is
    written out: it returns one gradient per part, channels_last, written in place (autograd's would be
    channel-major, which the depthwise conv's backward then has to transpose, and split q/k/v would
    need a concatenation), and keeps only q, k, v (views) and the small maps.
    """
    if sorted(''.join(parts)) != ['k', 'q', 'v']:
        raise ValueError(f'channel_attention: the parts must name q, k and v once each, got {list(parts)}')
    return _ChannelAttention.apply(temperature, num_heads, tuple(parts), *parts.values())


def dconv_projection(in_channels, out_channels, bias=False, kernel_size=3):
    """(1×1 convolution, depthwise convolution after it): how Restormer projects q/k/v and GDFN's input.

    Returned as a pair so that each module keeps the release's attribute names (`qkv`, `qkv_dwconv`, ...);
    the two are created in this order, as in the release, so seeded initialisations are unchanged.
    """
    return (nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias),
            nn.Conv2d(out_channels, out_channels, kernel_size=kernel_size, padding=kernel_size // 2,
                      groups=out_channels, bias=bias))


class MDTA(nn.Module):
    """Multi-Dconv-head Transposed self-Attention."""

    def __init__(self, dim, num_heads, bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv, self.qkv_dwconv = dconv_projection(dim, dim * 3, bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        qkv = self.qkv_dwconv(pointwise(self.qkv, x))
        return pointwise(self.project_out, channel_attention(self.temperature, self.num_heads, qkv=qkv))


class CrossMDTA(nn.Module):
    """MDTA with queries from one feature map and keys/values from another (AdaIR's and MoCE-IR's cross attention).

    `kv_kernel_size` is the depthwise kernel on keys/values: 3 in AdaIR, 7 in MoCE-IR; queries always use 3×3.
    """

    def __init__(self, dim, num_heads, bias=False, kv_kernel_size=3):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q, self.q_dwconv = dconv_projection(dim, dim, bias)
        self.kv, self.kv_dwconv = dconv_projection(dim, dim * 2, bias, kv_kernel_size)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x, y):
        if x.shape != y.shape:
            raise ValueError(f'CrossMDTA: query and key/value maps differ in shape: {tuple(x.shape)} vs '
                             f'{tuple(y.shape)}')
        q = self.q_dwconv(pointwise(self.q, x))
        kv = self.kv_dwconv(pointwise(self.kv, y))
        return pointwise(self.project_out, channel_attention(self.temperature, self.num_heads, q=q, kv=kv))


class GDFN(nn.Module):
    """Gated-Dconv Feed-forward Network: GELU(a)·b after a depthwise 3×3, with hidden width int(dim·factor)."""

    def __init__(self, dim, ffn_expansion_factor=2.66, bias=False):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in, self.dwconv = dconv_projection(dim, hidden * 2, bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)
        self.hidden = hidden
        # Each half runs at a multiple of 16 channels (zero weights in the padding, so the values are
        # unchanged): hidden widths like 255 leave every pixel's row unaligned in the channels_last
        # layout, which makes the matrix products and GELU markedly slower.
        self.padded = -(-hidden // ALIGN) * ALIGN

    def forward(self, x):
        h = self.hidden
        # where the channels outnumber the pixels (the lowest levels: 1021 channels on 8×8), copying
        # the padded weights on every call costs more than the unaligned rows save (measured)
        padded = self.padded if x.shape[-2] * x.shape[-1] > h else h
        gate, value = pointwise_dwconv_halves(self.project_in, self.dwconv, x, padded)
        # as (B, H, W, C) views (the same memory): GELU on a 4-D channels_last tensor takes a path about
        # 2× slower than on a contiguous one (measured, forward; its backward ~15 %)
        gate, value = gate.permute(0, 2, 3, 1), value.permute(0, 2, 3, 1)
        if torch.is_grad_enabled() and gate.requires_grad:
            act = F.gelu(gate) * value
        else:  # inference: gate in place, so the two halves are the only wide buffers (the memory peak)
            act = torch.ops.aten.gelu_(gate).mul_(value)
        w_out = self.project_out.weight.flatten(1)
        if padded > h:
            w_out = torch.cat([w_out, w_out.new_zeros(w_out.shape[0], padded - h)], dim=1)
        out = F.linear(act, w_out, self.project_out.bias)
        return out.permute(0, 3, 1, 2)


class TransformerBlock(nn.Module):
    """Pre-norm Restormer block: x + MDTA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, dim, num_heads, ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias'):
        super().__init__()
        self.norm1 = layer_norm(dim, LayerNorm_type)
        self.attn = MDTA(dim, num_heads, bias)
        self.norm2 = layer_norm(dim, LayerNorm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def transformer_stack(num_blocks, dim, num_heads, ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias'):
    """`num_blocks` TransformerBlocks in a Sequential."""
    return nn.Sequential(*[
        TransformerBlock(dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type) for _ in range(num_blocks)
    ])


def add_restormer_encoder(net, make_level, dims, num_blocks, heads):
    """Give `net` Restormer's encoder under the releases' attribute names (their checkpoints' keys):
    encoder_level1-3 with down1_2, down2_3, down3_4 after them, then latent; `make_level(n, width, n_heads)`
    builds each level's blocks. Modules are created in the releases' order, so a seed gives their weights."""
    for level, name in enumerate(('encoder_level1', 'encoder_level2', 'encoder_level3', 'latent')):
        setattr(net, name, make_level(num_blocks[level], dims[level], heads[level]))
        if level < 3:
            setattr(net, f'down{level + 1}_{level + 2}', Downsample(dims[level]))


class Downsample(nn.Module):
    """Halve the resolution, double the channels: 3×3 conv to C/2, then PixelUnshuffle(2)."""

    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        return self.body(x)


class Upsample(nn.Module):
    """Double the resolution, halve the channels: 3×3 conv to 2C, then PixelShuffle(2)."""

    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body[1](conv3x3(self.body[0], x))


class OverlapPatchEmbed(nn.Module):
    """3×3 convolution from image channels to features (Restormer's overlapped patch embedding)."""

    def __init__(self, in_c=3, embed_dim=48, bias=False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x):
        return self.proj(x)


def pad_to_multiple(x, multiple):
    """Reflect-pad the bottom/right of a (B, C, H, W) tensor to multiples of `multiple`; returns (padded, (h, w))."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        # reflect needs pad < size; replicate covers tiny inputs (e.g. 3×3) where reflect cannot.
        mode = 'reflect' if pad_h < h and pad_w < w else 'replicate'
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, (h, w)
