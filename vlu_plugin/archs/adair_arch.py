"""AdaIR (Cui et al., ICLR 2025): a Restormer U-Net whose decoder mines and modulates frequencies of the input.

At the latent and the two lower decoder levels an adaptive frequency learning block (AFLB,
`FrequencyLearningBlock`) embeds the input image at the level's resolution, splits it into low and
high frequencies with a mask whose size the features choose (`frequency_split`), lets each band
attend to the decoder features (`CrossMDTA`), recombines the bands (FMoM, `FrequencyModulation`:
each band gated by the other) and adds the result to the features with learned per-channel weights.
This is the release's `decoder=True` network (net/model.py), the one its training script builds.

Module names follow the release so its checkpoints map onto this network
(`vlu_plugin.utils.checkpoints.convert_official('AdaIR', ...)`); the FMoM gates are `spatial_gate` and
`channel_gate` here (the release's `SpatialGate`/`ChannelGate`). Two modules of each AFLB that the
release creates but never calls (`conv`, `score_gen`: 18,738 parameters at full size) are left out
and dropped by the converter, so the release's 28,784,824 parameters are 28,766,086 here.
The release's mask sizes are integer truncations, so no gradient reaches `rate_conv`, in the release
as here: training under DDP needs `find_unused_parameters: true` (the option files set it). Below 128
pixels per side at a level (every 128-px training patch) the mask is empty: the low band is zero and
the queries of its attention (`channel_cross_h.q*`, its temperature) get no gradient either, as released.
"""
import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from vlu_plugin.archs.restormer_blocks import (CrossMDTA, OverlapPatchEmbed, Upsample, add_restormer_encoder,
                                               channels_last, pad_to_multiple, pointwise, transformer_stack)

# The release's frequency mask: a centred box of half-size (h // 128 · r_h, w // 128 · r_w), truncated to integers.
MASK_DIVISOR = 128


class SpatialGate(nn.Module):
    """Sigmoid map from a 7×7 conv over the channel-wise max and mean (FMoM's gate for the low band)."""

    def __init__(self):
        super().__init__()
        self.spatial = nn.Conv2d(2, 1, kernel_size=7, padding=3, bias=False)

    def forward(self, x):
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial(pooled))


class ChannelGate(nn.Module):
    """Sigmoid of one bottleneck MLP applied to global average and max pooling (FMoM's gate for the high band)."""

    def __init__(self, dim):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(dim, dim // 16, 1, bias=False), nn.ReLU(),
                                 nn.Conv2d(dim // 16, dim, 1, bias=False))

    def forward(self, x):
        avg = self.mlp(x.mean(dim=(-2, -1), keepdim=True))
        return torch.sigmoid(avg + self.mlp(x.amax(dim=(-2, -1), keepdim=True)))


class FrequencyModulation(nn.Module):
    """FMoM: the low band gated by a spatial map of the high band, the high band by channel weights of the low."""

    def __init__(self, dim):
        super().__init__()
        self.spatial_gate = SpatialGate()
        self.channel_gate = ChannelGate(dim)
        self.proj = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, low, high):
        return self.proj(low * self.spatial_gate(high) + high * self.channel_gate(low))


class FrequencyLearningBlock(nn.Module):
    """AFLB: the image's low/high frequency bands attend to the features `y`; returns y·para2 + attended·para1."""

    def __init__(self, dim, num_heads, bias=False, in_dim=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, dim, kernel_size=3, padding=1, bias=False)
        self.rate_conv = nn.Sequential(nn.Conv2d(dim, dim // 8, 1, bias=False), nn.GELU(),
                                       nn.Conv2d(dim // 8, 2, 1, bias=False))
        # para1 starts at zero: each block begins as the identity on the decoder features, as released
        self.para1 = nn.Parameter(torch.zeros(dim, 1, 1))
        self.para2 = nn.Parameter(torch.ones(dim, 1, 1))
        # the release's names: `_l` attends the high band, `_h` the low one
        self.channel_cross_l = CrossMDTA(dim, num_heads, bias)
        self.channel_cross_h = CrossMDTA(dim, num_heads, bias)
        self.channel_cross_agg = CrossMDTA(dim, num_heads, bias)
        self.frequency_refine = FrequencyModulation(dim)

    def frequency_split(self, img):
        """(high, low): magnitudes of the embedded image outside / inside a centred box of its spectrum.

        The box's half-sizes are (h // 128 · r_h, w // 128 · r_w) truncated to integers, with rates
        r = sigmoid(rate_conv(mean of the embedding)) per sample, as released; below 128 pixels per
        side the box is empty and the whole embedding is the high band.
        """
        x = self.conv1(img)
        b, _, h, w = x.shape
        rates = torch.sigmoid(self.rate_conv(x.mean(dim=(-2, -1), keepdim=True))).reshape(b, 2)
        half_h = (h // MASK_DIVISOR * rates[:, 0]).int()
        half_w = (w // MASK_DIVISOR * rates[:, 1]).int()
        if not bool((half_h > 0).any() and (half_w > 0).any()):
            return x.abs(), torch.zeros_like(x)
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_rows = (rows >= h // 2 - half_h[:, None]) & (rows < h // 2 + half_h[:, None])
        in_cols = (cols >= w // 2 - half_w[:, None]) & (cols < w // 2 + half_w[:, None])
        box = (in_rows[:, :, None] & in_cols[:, None, :]).to(x.dtype)
        # The box is centred on the shifted spectrum; unshifting the box instead of the spectrum is the same product.
        box = torch.roll(box, shifts=(-(h // 2), -(w // 2)), dims=(1, 2))[:, None]
        low = torch.fft.ifft2(torch.fft.fft2(x.float(), norm='forward') * box, norm='forward')
        return (x - low).abs().to(x.dtype), low.abs().to(x.dtype)  # the bands sum to x: one inverse FFT is enough

    def forward(self, img, y):
        img = F.interpolate(img, size=y.shape[-2:], mode='bilinear', align_corners=False)
        high, low = self.frequency_split(img)
        high = self.channel_cross_l(high, y)
        low = self.channel_cross_h(low, y)
        out = self.channel_cross_agg(y, self.frequency_refine(low, high))
        return out * self.para1 + y * self.para2


@ARCH_REGISTRY.register()
class AdaIR(nn.Module):
    """AdaIR with its frequency blocks in the decoder; defaults equal the release (28,766,086 parameters, see above).

    Every frequency block uses `heads[2]` heads, as released. `forward(lq)` accepts any H×W
    (reflect-padded to a multiple of 8, cropped back).
    """

    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4,
                 heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias'):
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f'AdaIR: num_blocks and heads need 4 entries (one per level), got {num_blocks} and '
                             f'{heads}')
        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8
        for width, n_heads in ((d1, heads[0]), (d2, heads[1]), (d3, heads[2]), (d4, heads[3]), (d2, heads[2])):
            if width % n_heads:
                raise ValueError(f'AdaIR: a block of width {width} cannot split into {n_heads} heads; change dim or '
                                 'heads')
        if d2 < 16:
            raise ValueError(f'AdaIR: dim must be at least 8 (the frequency gates reduce 2·dim channels by 16), '
                             f'got {dim}')

        def stack(n, width, n_heads):
            return transformer_stack(n, width, n_heads, ffn_expansion_factor, bias, LayerNorm_type)

        self.patch_embed = OverlapPatchEmbed(inp_channels, d1)
        self.fre1 = FrequencyLearningBlock(d4, heads[2], bias, in_dim=inp_channels)
        self.fre2 = FrequencyLearningBlock(d3, heads[2], bias, in_dim=inp_channels)
        self.fre3 = FrequencyLearningBlock(d2, heads[2], bias, in_dim=inp_channels)

        add_restormer_encoder(self, stack, (d1, d2, d3, d4), num_blocks, heads)

        self.up4_3 = Upsample(d4)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, kernel_size=1, bias=bias)
        self.decoder_level3 = stack(num_blocks[2], d3, heads[2])
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, kernel_size=1, bias=bias)
        self.decoder_level2 = stack(num_blocks[1], d2, heads[1])
        self.up2_1 = Upsample(d2)  # no channel reduction at level 1: the decoder runs at 2·dim
        self.decoder_level1 = stack(num_blocks[0], d2, heads[0])
        self.refinement = stack(num_refinement_blocks, d2, heads[0])
        self.output = nn.Conv2d(d2, out_channels, kernel_size=3, padding=1, bias=bias)

    def forward(self, lq):
        inp, (h, w) = pad_to_multiple(lq, 8)
        x = channels_last(inp)

        enc1 = self.encoder_level1(self.patch_embed(x))
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.fre1(inp, self.latent(self.down3_4(enc3)))

        dec3 = self.decoder_level3(pointwise(self.reduce_chan_level3, torch.cat([self.up4_3(latent), enc3], 1)))
        dec3 = self.fre2(inp, dec3)
        dec2 = self.decoder_level2(pointwise(self.reduce_chan_level2, torch.cat([self.up3_2(dec3), enc2], 1)))
        dec2 = self.fre3(inp, dec2)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
        out = self.refinement(dec1)

        return (self.output(out) + inp)[..., :h, :w].contiguous()
