"""Restormer's building blocks (Zamir et al., CVPR 2022), one copy shared by VLU-Net and PromptIR.

Module and parameter names follow Restormer (`qkv`, `qkv_dwconv`, `project_out`, `temperature`, ...)
so the authors' checkpoints map onto them; the one difference, LayerNorm's weight living directly
on the module instead of in a `body` child, is mapped in `vlu_plugin.checkpoints`.
Tensors stay in (B, C, H, W) throughout: no to-3d/to-4d round trips.
"""
import torch
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) tensor; `bias=False` is Restormer's 'BiasFree' variant."""

    def __init__(self, dim, bias=True, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x):
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
        if self.bias is None:  # BiasFree scales without centring, as Restormer does.
            return x * torch.rsqrt(var + self.eps) * self.weight[:, None, None]
        return torch.addcmul(self.bias[:, None, None], (x - mean) * torch.rsqrt(var + self.eps),
                             self.weight[:, None, None])


def layer_norm(dim, layer_norm_type):
    """Restormer's LayerNorm by its option name: 'WithBias' or 'BiasFree'."""
    if layer_norm_type not in ('WithBias', 'BiasFree'):
        raise ValueError(f"LayerNorm_type must be 'WithBias' or 'BiasFree', got {layer_norm_type!r}")
    return ChannelLayerNorm(dim, bias=layer_norm_type == 'WithBias')


def channel_attention(q, k, v, temperature):
    """Transposed attention over channels: softmax(norm(q)·norm(k)ᵀ·τ)·v, per head.

    q, k, v are (B, heads, C/heads, HW); the attention map is (C/heads × C/heads), so memory grows
    linearly with the number of pixels.
    """
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = torch.softmax((q @ k.transpose(-2, -1)) * temperature, dim=-1)
    return attn @ v


def split_heads(x, num_heads):
    """(B, C, H, W) → (B, heads, C/heads, H·W), a view."""
    b, c, h, w = x.shape
    return x.reshape(b, num_heads, c // num_heads, h * w)


class MDTA(nn.Module):
    """Multi-Dconv-head Transposed self-Attention."""

    def __init__(self, dim, num_heads, bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        out = channel_attention(split_heads(q, self.num_heads), split_heads(k, self.num_heads),
                                split_heads(v, self.num_heads), self.temperature)
        return self.project_out(out.reshape(x.shape))


class GDFN(nn.Module):
    """Gated-Dconv Feed-forward Network: GELU(a)·b after a depthwise 3×3, with hidden width int(dim·factor)."""

    def __init__(self, dim, ffn_expansion_factor=2.66, bias=False):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


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
        return self.body(x)


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
