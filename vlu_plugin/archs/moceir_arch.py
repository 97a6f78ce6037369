"""MoCE-IR (Zamfir et al., CVPR 2025): a Restormer U-Net whose decoder routes features to mixtures of experts.

Each decoder block splits its normalised input into a shared path (`shared`: self-attention) and an
adapter path (`adapter`): a router (`routing`) looks at the adapter features and at a frequency
embedding of the bottleneck (`freq_embed`: a high-pass filter, pooled, an MLP) and sends each image
to its top-k of several low-rank experts; expert i works at rank dim/2^(E-1-i) and attends in the
Fourier domain over patches of 4·2^i pixels (`FourierPatchAttention`), gated by the shared path.
The two paths meet in a cross attention (`mixer`), then a GDFN. Encoder, latent and refinement are
plain Restormer blocks (with biases, FFN factor 2). This is the network the release's training
script builds (src/train.py + src/options.py): rank_type 'spread', one expert module each
(depth_type 'constant', stage_depth 1), no complexity bias; MoCE-IR is dim 48 (25,353,796
parameters), MoCE-IR-S dim 32 (11,477,752).

Routing noise: the release adds Gaussian noise (σ = 1/E) to the router's logits whether training or
not, so its test outputs vary from run to run; that is the default here too (`eval_routing_noise:
true`) so released checkpoints give the released numbers. `eval_routing_noise: false` routes by the
clean logits in eval mode (deterministic outputs); training always draws the noise, which the load
term of the routing loss needs. During training the routers' logits are kept in `routing_records`
for `MoCERoutingLoss` (vlu_plugin.losses), which `MoCEIRModel` applies.

Module names are readable here; `vlu_plugin.utils.checkpoints` maps the release's (`enc.i.0.layers`,
`dec.i.2.layers`, ...). Unselected experts get no gradient in a step, in the release as here: training
under DDP needs `find_unused_parameters: true` (the option files set it).
"""
from collections import namedtuple

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from vlu_plugin.archs.restormer_blocks import (GDFN, MDTA, CrossMDTA, Downsample, OverlapPatchEmbed, Upsample,
                                               channels_last, layer_norm, pad_to_multiple, pointwise,
                                               transformer_stack)

# What one router saw in a training forward; `complexity` is None unless the complexity bias is on.
RoutingRecord = namedtuple('RoutingRecord', 'logits noisy_logits noise_std top_k complexity')


class FourierPatchAttention(nn.Module):
    """Attention as a product in the Fourier domain of each p×p patch: norm(irfft(F(q)·F(k)))·v (FFTAttention).

    q and k are zero-padded to multiples of p; the product is a circular correlation-like mixing of
    each patch, computed in float32 whatever the input precision (as released).
    """

    def __init__(self, dim, patch_size):
        super().__init__()
        self.patch_size = patch_size
        self.q = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        self.q_dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.kv = nn.Conv2d(dim, dim * 2, kernel_size=1, bias=False)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, kernel_size=7, padding=3, groups=dim * 2)
        self.norm = layer_norm(dim, 'WithBias')
        self.proj_out = nn.Conv2d(dim, dim, kernel_size=1)

    def patches(self, x):
        """(B, C, H, W) → (B, C, H/p, p, W/p, p) after zero padding to multiples of p: FFT dims are 3 and 5."""
        p = self.patch_size
        x = F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))
        b, c, h, w = x.shape
        return x.reshape(b, c, h // p, p, w // p, p)

    def forward(self, x):
        h, w = x.shape[-2:]
        q = self.q_dwconv(pointwise(self.q, x))
        k, v = self.kv_dwconv(pointwise(self.kv, x)).chunk(2, dim=1)
        p = self.patch_size
        spectrum = torch.fft.rfft2(self.patches(q).float(), dim=(3, 5)) * torch.fft.rfft2(self.patches(k).float(),
                                                                                           dim=(3, 5))
        out = torch.fft.irfft2(spectrum, s=(p, p), dim=(3, 5))
        b, c, nh, _, nw, _ = out.shape
        out = out.reshape(b, c, nh * p, nw * p)[..., :h, :w]
        return pointwise(self.proj_out, self.norm(out) * v)


class ModulatedExpert(nn.Module):
    """x + up(attention(down(x)) · SiLU(gate(shared))): a low-rank expert modulated by the shared path (ModExpert)."""

    def __init__(self, dim, rank, patch_size):
        super().__init__()
        # [down, gate, up] in one list, as released
        self.proj = nn.ModuleList([nn.Conv2d(dim, rank, 1, bias=False), nn.Conv2d(dim, rank, 1, bias=False),
                                   nn.Conv2d(rank, dim, 1, bias=False)])
        self.body = FourierPatchAttention(rank, patch_size)

    def forward(self, x, shared):
        down, gate, up = self.proj
        return x + pointwise(up, self.body(pointwise(down, x)) * F.silu(pointwise(gate, shared)))


class Router(nn.Module):
    """Noisy top-k gating from pooled features plus the frequency embedding (the release's RoutingFunction)."""

    def __init__(self, dim, freq_dim, num_experts, top_k, complexity, with_complexity=False, eval_noise=True):
        super().__init__()
        self.gate = nn.Linear(dim, num_experts, bias=False)
        self.freq_gate = nn.Linear(freq_dim, num_experts, bias=False)
        # each expert's parameter count over the largest: a state-dict entry in the release, so kept here
        self.register_buffer('complexity', complexity / complexity.max())
        self.top_k = top_k
        self.noise_std = 1.0 / num_experts
        self.with_complexity = with_complexity
        self.eval_noise = eval_noise

    def forward(self, x, freq_emb):
        """(gates (B, E) with zeros outside each row's top-k, the top-k indices (B, k), a RoutingRecord or None)."""
        logits = self.gate(x.mean(dim=(-2, -1))) + self.freq_gate(freq_emb)
        noisy = logits
        if self.training or self.eval_noise:
            noisy = logits + torch.randn_like(logits) * self.noise_std
        top_values, top_indices = torch.topk(noisy.softmax(dim=-1), self.top_k, dim=-1)
        gates = torch.zeros_like(logits).scatter(1, top_indices, top_values)
        record = None
        if self.training:
            record = RoutingRecord(logits, noisy, self.noise_std, self.top_k,
                                   self.complexity if self.with_complexity else None)
        return gates, top_indices, record


class ExpertMixture(nn.Module):
    """The routed experts of one decoder block and their output projection (the release's AdapterLayer)."""

    def __init__(self, dim, freq_dim, num_experts=4, top_k=1, rank=2, rank_type='spread', with_complexity=False,
                 eval_routing_noise=True):
        super().__init__()
        if rank_type == 'spread':  # the release's training choice: ranks dim/8, dim/4, dim/2, dim for 4 experts
            ranks = [dim // 2**i for i in range(num_experts)][::-1]
        elif rank_type == 'constant':
            ranks = [rank] * num_experts
        else:
            raise ValueError(f"MoCEIR: rank_type must be 'spread' or 'constant', got {rank_type!r}")
        if min(ranks) < 2:  # a LayerNorm over one channel is constant: such an expert could never learn
            raise ValueError(f'MoCEIR: expert ranks {ranks} at width {dim}: each needs at least 2; use a larger dim '
                             '(16 or more for 4 experts) or fewer experts')
        self.experts = nn.ModuleList([ModulatedExpert(dim, r, patch_size=2**(i + 2)) for i, r in enumerate(ranks)])
        self.proj_out = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        complexity = torch.tensor([float(sum(p.numel() for p in e.parameters())) for e in self.experts])
        self.routing = Router(dim, freq_dim, num_experts, top_k, complexity, with_complexity, eval_routing_noise)

    def forward(self, x, freq_emb, shared):
        """Σ_k gate_k · expert_k(x, shared) over each image's chosen experts, then proj_out; and the RoutingRecord."""
        gates, top_indices, record = self.routing(x, freq_emb)
        out = torch.zeros_like(x)
        for index, expert in enumerate(self.experts):
            rows = (top_indices == index).any(dim=1).nonzero().squeeze(1)
            if rows.numel() == 0:  # no image chose this expert: it does not run (and gets no gradient)
                continue
            y = expert(x[rows], shared[rows]) * gates[rows, index].reshape(-1, 1, 1, 1)
            out = out.index_add(0, rows, y.to(out.dtype))
        return pointwise(self.proj_out, out), record


class MoCEDecoderBlock(nn.Module):
    """LN → shared self-attention ‖ routed experts → cross attention (+ input) → GDFN (+): the DecoderBlock."""

    def __init__(self, dim, num_heads, freq_dim, ffn_expansion_factor=2, bias=False, LayerNorm_type='WithBias',
                 **expert_options):
        super().__init__()
        self.norms = nn.ModuleList([layer_norm(dim, LayerNorm_type), layer_norm(dim, LayerNorm_type)])
        self.proj = nn.ModuleList([nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)])  # [shared, adapter] inputs
        self.shared = MDTA(dim, num_heads, bias)
        self.mixer = CrossMDTA(dim, num_heads, bias, kv_kernel_size=7)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)
        self.adapter = ExpertMixture(dim, freq_dim, **expert_options)

    def forward(self, x, freq_emb):
        """(output, RoutingRecord or None)."""
        normed = self.norms[0](x)
        shared = self.shared(pointwise(self.proj[0], normed))
        adapted, record = self.adapter(pointwise(self.proj[1], normed), freq_emb, shared)
        x = x + self.mixer(adapted, shared)
        return x + self.ffn(self.norms[1](x)), record


class FrequencyEmbedding(nn.Module):
    """A vector describing the bottleneck's high frequencies: Laplacian-initialised depthwise conv, GELU, pool, MLP.

    The release means to freeze the high-pass filter but does not (it sets an attribute, not
    requires_grad), so the filter trains, as it does here.
    """

    def __init__(self, dim):
        super().__init__()
        self.high_pass = nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False, groups=dim)
        laplacian = torch.full((3, 3), -1.0)
        laplacian[1, 1] = 8.0
        with torch.no_grad():
            self.high_pass.weight.copy_(laplacian.expand(dim, 1, 3, 3))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        return self.mlp(F.gelu(self.high_pass(x)).mean(dim=(-2, -1)))


@ARCH_REGISTRY.register()
class MoCEIR(nn.Module):
    """MoCE-IR; defaults are the release's MoCE-IR (dim 48: 25,353,796 parameters), dim 32 is MoCE-IR-S.

    `num_blocks` are the encoder levels and the latent, `num_dec_blocks` the decoder levels from the
    top (full resolution) down, `heads` per level from the top; `rank` is used with `rank_type:
    constant` only. `eval_routing_noise` (default true, as released): see the module docstring.
    `forward(lq)` accepts any H×W (reflect-padded to a multiple of 2^(levels-1), cropped back).
    """

    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8), num_dec_blocks=(2, 4, 4),
                 heads=(1, 2, 4, 8), num_refinement_blocks=4, ffn_expansion_factor=2, bias=False,
                 LayerNorm_type='WithBias', num_experts=4, top_k=1, rank=2, rank_type='spread', with_complexity=False,
                 eval_routing_noise=True):
        super().__init__()
        levels = len(num_blocks)
        if levels < 2 or len(heads) != levels or len(num_dec_blocks) != levels - 1:
            raise ValueError(f'MoCEIR: num_blocks ({num_blocks}) and heads ({heads}) need one entry per level and '
                             f'num_dec_blocks ({num_dec_blocks}) one fewer')
        if not 1 <= top_k <= num_experts:
            raise ValueError(f'MoCEIR: top_k must be in 1..num_experts ({num_experts}), got {top_k}')
        dims = [dim * 2**i for i in range(levels)]
        for width, n_heads in zip(dims, heads):
            if width % n_heads:
                raise ValueError(f'MoCEIR: a block of width {width} cannot split into {n_heads} heads')
        self.multiple = 2**(levels - 1)
        expert_options = dict(num_experts=num_experts, top_k=top_k, rank=rank, rank_type=rank_type,
                              with_complexity=with_complexity, eval_routing_noise=eval_routing_noise)

        def stack(n, width, n_heads):  # encoder, latent and refinement blocks carry biases, as released
            return transformer_stack(n, width, n_heads, ffn_expansion_factor, True, LayerNorm_type)

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.freq_embed = FrequencyEmbedding(dims[-1])
        self.encoder = nn.ModuleList([stack(num_blocks[i], dims[i], heads[i]) for i in range(levels - 1)])
        self.down = nn.ModuleList([Downsample(dims[i]) for i in range(levels - 1)])
        self.latent = stack(num_blocks[-1], dims[-1], heads[-1])
        # decoder.i runs from the bottom up: level levels-2-i, at width dims[levels-2-i]
        up_levels = list(range(levels - 2, -1, -1))
        self.up = nn.ModuleList([Upsample(dims[lv + 1]) for lv in up_levels])
        self.fuse = nn.ModuleList([nn.Conv2d(dims[lv + 1], dims[lv], 1, bias=bias) for lv in up_levels])
        self.decoder = nn.ModuleList([
            nn.ModuleList([MoCEDecoderBlock(dims[lv], heads[lv], dims[-1], ffn_expansion_factor, bias, LayerNorm_type,
                                            **expert_options) for _ in range(num_dec_blocks[lv])])
            for lv in up_levels])
        self.refinement = stack(num_refinement_blocks, dim, heads[0])
        self.output = nn.Conv2d(dim, out_channels, kernel_size=3, padding=1, bias=bias)
        self.routing_records = []

    def forward(self, lq):
        inp, (h, w) = pad_to_multiple(lq, self.multiple)
        feats = self.patch_embed(channels_last(inp))
        skips = []
        for blocks, down in zip(self.encoder, self.down):
            feats = blocks(feats)
            skips.append(feats)
            feats = down(feats)
        feats = self.latent(feats)
        freq_emb = self.freq_embed(feats)

        records = []
        for up, fuse, blocks in zip(self.up, self.fuse, self.decoder):
            feats = pointwise(fuse, torch.cat([up(feats), skips.pop()], dim=1))
            for block in blocks:
                feats, record = block(feats, freq_emb)
                if record is not None:
                    records.append(record)
        self.routing_records = records  # read by MoCERoutingLoss through MoCEIRModel; empty in eval mode
        out = self.refinement(feats)
        return (self.output(out) + inp)[..., :h, :w].contiguous()
