"""VLU-Net: proximal gradient descent unrolled on features at four levels (CVPR 2025).

The observation model is y = Φx + n. Each unfolding stage takes one step of proximal gradient descent,

    x ← prox( x − ρ · Φᵀ(Φ(x, prompt) − y) ),

where Φ is a cross-attention keyed by a degradation prompt, Φᵀ a self-attention, ρ a learned step size
and prox a stack of Restormer blocks. The prompt is a mixture of a learned prompt bank whose weights
come from the degradation-aware CLIP's image embedding, so the CLIP chooses the gradient-descent
transform for each image. Two feature streams run through the U-shape: x (the estimate) and y (the
observation's features), so no stage compresses back to three channels.
"""
import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from vlu_plugin.archs.restormer_blocks import (MDTA, Downsample, OverlapPatchEmbed, Upsample, channel_attention,
                                               channels_last, dconv_projection, pad_to_multiple, pointwise,
                                               transformer_stack)


class PromptCrossAttention(nn.Module):
    """Φ(x, prompt): transposed attention with queries and values from x and keys from the prompt."""

    def __init__(self, dim, num_heads, prompt_dim, bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qv, self.qv_dwconv = dconv_projection(dim, dim * 2, bias)
        self.k, self.k_dwconv = dconv_projection(prompt_dim, dim, bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x, prompt):
        qv = self.qv_dwconv(pointwise(self.qv, x))
        k = self.k_dwconv(pointwise(self.k, prompt))
        return pointwise(self.project_out, channel_attention(self.temperature, self.num_heads, qv=qv, k=k))


class GradientDescentModule(nn.Module):
    """D-GDM: one degradation-guided gradient step x ← x − ρ·Φᵀ(Φ(x, prompt) − y).

    The prompt bank holds `de_dim` learned prompts of `(dim // 10) · stage` channels on a
    `(96 // stage)²` grid; the CLIP vector picks their mixture through softmax(Linear(v)).
    """

    def __init__(self, de_dim, dim, stage, clip_dim=512, num_heads=2):
        super().__init__()
        prompt_dim = dim // 10 * stage
        self.phi = PromptCrossAttention(dim, num_heads, prompt_dim)
        self.phi_t = MDTA(dim, num_heads)
        self.step_size = nn.Parameter(torch.ones(1))  # ρ
        self.prompt_weights = nn.Linear(clip_dim, de_dim)
        self.prompt_bank = nn.Parameter(torch.rand(de_dim, prompt_dim, 96 // stage, 96 // stage))

    def mixture_weights(self, degradation_vector, batch_size):
        """Softmax weights (B, de_dim) over the prompt bank; uniform when there is no degradation vector."""
        if degradation_vector is None:
            de_dim = self.prompt_bank.shape[0]
            return self.prompt_bank.new_full((batch_size, de_dim), 1.0 / de_dim)
        return torch.softmax(self.prompt_weights(degradation_vector), dim=1)

    def prompt(self, weights, size):
        """The weighted sum of the bank, one prompt per sample, resized bilinearly to the feature size."""
        de_dim, channels, height, width = self.prompt_bank.shape
        # One (B, D) × (D, C·H·W) product instead of copying the bank for every sample.
        mixed = (weights @ self.prompt_bank.reshape(de_dim, -1)).reshape(-1, channels, height, width)
        mixed = channels_last(mixed)  # the layout of the features it meets (see VLUNet.forward)
        if (height, width) != tuple(size):
            mixed = F.interpolate(mixed, size=size, mode='bilinear', align_corners=False)
        return mixed

    def forward(self, x, y, degradation_vector):
        prompt = self.prompt(self.mixture_weights(degradation_vector, x.shape[0]), x.shape[-2:])
        residual = self.phi(x, prompt) - y
        return x - self.step_size * self.phi_t(residual)


class UnfoldingStage(nn.Module):
    """One unfolded PGD iteration: the D-GDM gradient step, then the proximal Restormer stack."""

    def __init__(self, de_dim, stage, num_blocks, dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type,
                 clip_dim):
        super().__init__()
        self.gradient_descent = GradientDescentModule(de_dim, dim, stage, clip_dim)
        self.proximal = transformer_stack(num_blocks, dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type)

    def forward(self, x, y, degradation_vector):
        return self.proximal(self.gradient_descent(x, y, degradation_vector))


@ARCH_REGISTRY.register()
class VLUNet(nn.Module):
    """VLU-Net: hierarchical feature unfolding guided by a degradation-aware CLIP vector.

    Defaults equal the public release (35,342,660 parameters: the release's 35,353,028 minus its
    never-used `down1_2_i`). `forward(lq, degradation_vector)` accepts any H×W; a missing vector
    (`None`) mixes the prompt bank uniformly, so the network also runs without a CLIP.
    """

    def __init__(self, de_dim=7, inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8),
                 num_refinement_blocks=4, heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False,
                 LayerNorm_type='WithBias', clip_dim=512):
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f'num_blocks and heads need 4 entries (one per level), got {num_blocks} and {heads}')
        if dim < 10:
            raise ValueError(f'dim must be at least 10: the prompts have (dim // 10) · stage channels; got dim={dim}')
        self.clip_dim = clip_dim

        def stage(level_dim, index, blocks, n_heads):
            return UnfoldingStage(de_dim, index, blocks, level_dim, n_heads, ffn_expansion_factor, bias,
                                  LayerNorm_type, clip_dim)

        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8
        self.patch_embed = OverlapPatchEmbed(inp_channels, d1)
        self.patch_embed_y = OverlapPatchEmbed(inp_channels, d1)

        self.encoder_level1 = stage(d1, 1, num_blocks[0], heads[0])
        self.down1_2 = Downsample(d1)  # the release also uses it for the y stream; kept for its checkpoints
        self.encoder_level2 = stage(d2, 2, num_blocks[1], heads[1])
        self.down2_3 = Downsample(d2)
        self.down2_3_y = Downsample(d2)
        self.encoder_level3 = stage(d3, 3, num_blocks[2], heads[2])
        self.down3_4 = Downsample(d3)
        self.down3_4_y = Downsample(d3)
        self.latent = stage(d4, 4, num_blocks[3], heads[3])

        self.up4_3 = Upsample(d4)
        self.up4_3_y = Upsample(d4)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, kernel_size=1, bias=bias)
        self.reduce_chan_level3_y = nn.Conv2d(d4, d3, kernel_size=1, bias=bias)
        self.decoder_level3 = stage(d3, 3, num_blocks[2], heads[2])
        self.up3_2 = Upsample(d3)
        self.up3_2_y = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, kernel_size=1, bias=bias)
        self.reduce_chan_level2_y = nn.Conv2d(d3, d2, kernel_size=1, bias=bias)
        self.decoder_level2 = stage(d2, 2, num_blocks[1], heads[1])
        self.up2_1 = Upsample(d2)  # no channel reduction at level 1: the decoder runs at 2·dim
        self.up2_1_y = Upsample(d2)
        self.decoder_level1 = stage(d2, 1, num_blocks[0], heads[0])
        self.refinement = stage(d2, 1, num_refinement_blocks, heads[0])
        self.output = nn.Conv2d(d2, out_channels, kernel_size=3, padding=1, bias=bias)

    def stages(self):
        """The eight unfolding stages in the order the forward runs them, by name."""
        names = ('encoder_level1', 'encoder_level2', 'encoder_level3', 'latent', 'decoder_level3', 'decoder_level2',
                 'decoder_level1', 'refinement')
        return [(name, getattr(self, name)) for name in names]

    def check_degradation_vector(self, lq, degradation_vector):
        """Raise a clear error when the degradation vector is not (B, clip_dim) for a (B, C, H, W) input."""
        if degradation_vector is None:
            return
        expected = (lq.shape[0], self.clip_dim)
        if degradation_vector.dim() != 2 or tuple(degradation_vector.shape) != expected:
            raise ValueError(f'VLUNet: degradation_vector must have shape {expected} (batch, clip_dim), got '
                             f'{tuple(degradation_vector.shape)}; set network_g.clip_dim to the CLIP embedding width')

    def forward(self, lq, degradation_vector=None):
        self.check_degradation_vector(lq, degradation_vector)
        v = degradation_vector
        inp, (h, w) = pad_to_multiple(lq, 8)
        inp = channels_last(inp)  # from here on: every block runs fastest in it (see restormer_blocks)

        # `del`: maps are dropped as soon as they are dead, which lowers the inference peak on large
        # tiles (at 512×512 every full-resolution map is 48–96 MiB); training keeps what autograd needs.
        x1, y1 = self.patch_embed(inp), self.patch_embed_y(inp)
        enc1 = self.encoder_level1(x1, y1, v)
        del x1
        y2 = self.down1_2(y1)
        enc2 = self.encoder_level2(self.down1_2(enc1), y2, v)
        y3 = self.down2_3_y(y2)
        enc3 = self.encoder_level3(self.down2_3(enc2), y3, v)
        y4 = self.down3_4_y(y3)
        latent = self.latent(self.down3_4(enc3), y4, v)

        dec3_y = pointwise(self.reduce_chan_level3_y, torch.cat([self.up4_3_y(y4), y3], 1))
        dec3 = pointwise(self.reduce_chan_level3, torch.cat([self.up4_3(latent), enc3], 1))
        del y4, latent, y3, enc3
        dec3 = self.decoder_level3(dec3, dec3_y, v)
        dec2_y = pointwise(self.reduce_chan_level2_y, torch.cat([self.up3_2_y(dec3_y), y2], 1))
        dec2 = pointwise(self.reduce_chan_level2, torch.cat([self.up3_2(dec3), enc2], 1))
        del dec3_y, dec3, y2, enc2
        dec2 = self.decoder_level2(dec2, dec2_y, v)
        dec1_y = torch.cat([self.up2_1_y(dec2_y), y1], 1)
        dec1 = torch.cat([self.up2_1(dec2), enc1], 1)
        del dec2_y, y1, dec2, enc1
        dec1 = self.decoder_level1(dec1, dec1_y, v)
        out = self.refinement(dec1, dec1_y, v)

        return (self.output(out) + inp)[..., :h, :w].contiguous()
