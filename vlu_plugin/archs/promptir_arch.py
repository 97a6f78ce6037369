"""PromptIR (Potlapalli et al., NeurIPS 2023): a Restormer U-Net with learned prompts in its decoder.

At three decoder levels a prompt block pools the features, turns them into softmax weights over a
small bank of learned prompts, and returns the weighted prompt resized to the feature map; the
features and the prompt are concatenated, mixed by one Transformer block (`noise_level*`) and
reduced back by a 1×1 conv (`reduce_noise_level*`). Module names follow the release so its
checkpoints map onto this network (`vlu_plugin.utils.checkpoints.convert_official('PromptIR', ...)`).

The release's `decoder=False` path cannot run (its latent has the wrong width), so the decoder
prompts are the only behaviour here. The six 1×1 convs the release creates but never calls
(`chnl_reduce1..3`, `reduce_noise_channel_1..3`) are left out: the converter drops them, and every
parameter of this network receives a gradient, so DDP needs no `find_unused_parameters`.
"""
import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from vlu_plugin.archs.restormer_blocks import (OverlapPatchEmbed, TransformerBlock, Upsample, add_restormer_encoder,
                                               pad_to_multiple, transformer_stack)

# The release's prompt widths at dim=48; other widths scale them (see `default_prompt_dims`).
RELEASE_DIM = 48
RELEASE_PROMPT_DIMS = (64, 128, 320)


def default_prompt_dims(dim):
    """Prompt channels for levels 1..3: the release's (64, 128, 320)·dim/48, rounded to a multiple of 8.

    At dim=48 this is exactly the release; multiples of 8 keep the concatenated widths divisible by
    the usual head counts (dim=16 gives (24, 40, 104)).
    """
    return tuple(max(8, 8 * round(c * dim / RELEASE_DIM / 8)) for c in RELEASE_PROMPT_DIMS)


class PromptBlock(nn.Module):
    """Feature-conditioned prompt: softmax(Linear(GAP(x))) mixes a learned bank, resized to x, then a 3×3 conv."""

    def __init__(self, prompt_dim, prompt_len, prompt_size, lin_dim):
        super().__init__()
        # (1, len, C, S, S) as released; U[0,1) init as released.
        self.prompt_param = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.linear_layer = nn.Linear(lin_dim, prompt_len)
        self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, kernel_size=3, padding=1, bias=False)

    def forward(self, x):
        weights = torch.softmax(self.linear_layer(x.mean(dim=(-2, -1))), dim=1)  # (B, len)
        _, prompt_len, channels, height, width = self.prompt_param.shape
        # One (B, len) × (len, C·S·S) product instead of copying the bank for every sample.
        prompt = (weights @ self.prompt_param.reshape(prompt_len, -1)).reshape(-1, channels, height, width)
        if (height, width) != tuple(x.shape[-2:]):
            prompt = F.interpolate(prompt, size=x.shape[-2:], mode='bilinear', align_corners=False)
        return self.conv3x3(prompt)


@ARCH_REGISTRY.register()
class PromptIR(nn.Module):
    """PromptIR with decoder prompts; defaults equal the release (35,376,967 parameters without its dead convs).

    `prompt_dims=None` scales the release's prompt widths with `dim` (`default_prompt_dims`);
    `prompt_sizes` are the prompt banks' spatial sizes at levels 1..3 (the feature sizes of a 128×128
    training patch); every prompt-mixing block uses `heads[2]` heads, as released.
    `forward(lq)` accepts any H×W (reflect-padded to a multiple of 8, cropped back).
    """

    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4,
                 heads=(1, 2, 4, 8), ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias',
                 prompt_dims=None, prompt_sizes=(64, 32, 16), prompt_len=5):
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f'num_blocks and heads need 4 entries (one per level), got {num_blocks} and {heads}')
        if len(prompt_sizes) != 3 or (prompt_dims is not None and len(prompt_dims) != 3):
            raise ValueError(f'prompt_dims and prompt_sizes need 3 entries (levels 1..3), got {prompt_dims} and '
                             f'{prompt_sizes}')
        p1, p2, p3 = default_prompt_dims(dim) if prompt_dims is None else prompt_dims
        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8
        for width, n_heads in ((d1, heads[0]), (d2, heads[1]), (d3, heads[2]), (d4, heads[3]),
                               (d2 + p1, heads[2]), (d3 + p2, heads[2]), (d4 + p3, heads[2])):
            if width % n_heads:
                raise ValueError(f'PromptIR: a block of width {width} cannot split into {n_heads} heads; '
                                 'change dim, heads or prompt_dims')

        def stack(n, width, n_heads):
            return transformer_stack(n, width, n_heads, ffn_expansion_factor, bias, LayerNorm_type)

        def mixer(width):
            return TransformerBlock(width, heads[2], ffn_expansion_factor, bias, LayerNorm_type)

        self.patch_embed = OverlapPatchEmbed(inp_channels, d1)
        self.prompt1 = PromptBlock(p1, prompt_len, prompt_sizes[0], lin_dim=d2)
        self.prompt2 = PromptBlock(p2, prompt_len, prompt_sizes[1], lin_dim=d3)
        self.prompt3 = PromptBlock(p3, prompt_len, prompt_sizes[2], lin_dim=d4)

        add_restormer_encoder(self, stack, (d1, d2, d3, d4), num_blocks, heads)

        # The latent is mixed with its prompt and reduced to d3 (not d4) before upsampling, as released.
        self.noise_level3 = mixer(d4 + p3)
        self.reduce_noise_level3 = nn.Conv2d(d4 + p3, d3, kernel_size=1, bias=bias)
        self.up4_3 = Upsample(d3)
        self.reduce_chan_level3 = nn.Conv2d(d2 + d3, d3, kernel_size=1, bias=bias)
        self.decoder_level3 = stack(num_blocks[2], d3, heads[2])

        self.noise_level2 = mixer(d3 + p2)
        self.reduce_noise_level2 = nn.Conv2d(d3 + p2, d3, kernel_size=1, bias=bias)
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, kernel_size=1, bias=bias)
        self.decoder_level2 = stack(num_blocks[1], d2, heads[1])

        self.noise_level1 = mixer(d2 + p1)
        self.reduce_noise_level1 = nn.Conv2d(d2 + p1, d2, kernel_size=1, bias=bias)
        self.up2_1 = Upsample(d2)  # no channel reduction at level 1: the decoder runs at 2·dim
        self.decoder_level1 = stack(num_blocks[0], d2, heads[0])
        self.refinement = stack(num_refinement_blocks, d2, heads[0])
        self.output = nn.Conv2d(d2, out_channels, kernel_size=3, padding=1, bias=bias)

    @staticmethod
    def with_prompt(x, prompt_block, mixer, reduce):
        """Concatenate x with its prompt, mix them with one Transformer block, reduce the channels."""
        return reduce(mixer(torch.cat([x, prompt_block(x)], 1)))

    def forward(self, lq):
        inp, (h, w) = pad_to_multiple(lq, 8)

        enc1 = self.encoder_level1(self.patch_embed(inp))
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))
        latent = self.with_prompt(latent, self.prompt3, self.noise_level3, self.reduce_noise_level3)

        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1)))
        dec3 = self.with_prompt(dec3, self.prompt2, self.noise_level2, self.reduce_noise_level2)
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1)))
        dec2 = self.with_prompt(dec2, self.prompt1, self.noise_level1, self.reduce_noise_level1)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
        out = self.refinement(dec1)

        return (self.output(out) + inp)[..., :h, :w]
