"""AirNet (Li et al., CVPR 2022): all-in-one restoration guided by a contrastively learned degradation map.

Two parts, named as in the release so its `All.pth` loads strictly with no renames:
- `E` (contrastive degradation encoder): a small residual CNN trained with MoCo (momentum key encoder,
  a queue of negative keys, InfoNCE). Its first residual block's full-resolution output, the
  degradation map `inter`, is the only thing the restorer sees.
- `R` (degradation-guided restorer): groups of blocks whose convolutions are steered by `inter`,
  through modulated deformable convs (offsets and masks predicted from features + `inter`) and
  spatial feature transforms (x·γ(inter) + β(inter)).
Deformable convolution has torchvision's `deform_conv2d` semantics (same offset/mask layout as mmcv's
modulated_deform_conv2d); `deform_impl` picks the kernel (`archs/deform_conv.py`: the plugin's own, ~7–8×
faster on CPU, or torchvision's, the default on CUDA). All convolutions are stride 1 in the restorer, so
any H×W works unpadded.
"""
import math

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from vlu_plugin.archs.deform_conv import IMPLS, deform_conv2d
from vlu_plugin.archs.restormer_blocks import channels_last


def lrelu():
    """AirNet's activation everywhere: LeakyReLU with slope 0.1."""
    return nn.LeakyReLU(0.1, inplace=True)


def conv3x3(in_channels, out_channels, bias=True):
    """3×3 convolution that keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


# ---- contrastive degradation encoder ----------------------------------------------------------------

class EncoderResidualBlock(nn.Module):
    """conv-BN-LReLU-conv-BN plus a 1×1 conv-BN shortcut, then LReLU."""

    def __init__(self, in_channels, out_channels, stride=1):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            lrelu(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x):
        return F.leaky_relu(self.backbone(x) + self.shortcut(x), 0.1)


class DegradationEncoder(nn.Module):
    """Degradation map `E_pre(x)` at full resolution, and a pooled embedding projected by an MLP for InfoNCE."""

    def __init__(self, in_channels=3, dims=(64, 128, 256)):
        super().__init__()
        d0, d1, d2 = dims
        self.E_pre = EncoderResidualBlock(in_channels, d0)
        self.E = nn.Sequential(EncoderResidualBlock(d0, d1, stride=2), EncoderResidualBlock(d1, d2, stride=2),
                               nn.AdaptiveAvgPool2d(1))
        self.mlp = nn.Sequential(nn.Linear(d2, d2), lrelu(), nn.Linear(d2, d2))

    def forward(self, x):
        """Returns (projected embedding (B, dims[-1]), degradation map (B, dims[0], H, W))."""
        inter = self.E_pre(x)
        return self.mlp(self.E(inter).flatten(1)), inter


class MomentumContrast(nn.Module):
    """MoCo: query encoder, momentum key encoder and a ring-buffer queue of past keys as negatives.

    The queue is a ring buffer of `queue_size` keys. The release asserts `queue_size % batch == 0`;
    here any batch works: keys are written at the pointer with wrap-around (a batch larger than the
    queue keeps its last `queue_size` keys), which is the release's behaviour whenever it divides.
    """

    def __init__(self, in_channels=3, dims=(64, 128, 256), queue_size=1280, momentum=0.999, temperature=0.07):
        super().__init__()
        self.momentum = momentum
        self.temperature = temperature
        self.encoder_q = DegradationEncoder(in_channels, dims)
        self.encoder_k = DegradationEncoder(in_channels, dims)
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        self.encoder_k.requires_grad_(False)  # moved by momentum, never by gradients
        self.register_buffer('queue', F.normalize(torch.randn(dims[-1], queue_size), dim=0))
        self.register_buffer('queue_ptr', torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self):
        """Key encoder ← m·key encoder + (1 − m)·query encoder (parameters only; BN statistics are its own)."""
        for param_q, param_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            param_k.mul_(self.momentum).add_(param_q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys):
        """Write a batch of keys (B, D) over the oldest entries of the queue."""
        size = self.queue.shape[1]
        keys = keys[-size:]
        ptr = int(self.queue_ptr)
        index = (ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[:, index] = keys.t().to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + keys.shape[0]) % size

    def forward(self, x_query, x_key):
        """One MoCo step: returns (logits (B, 1+K), labels (B,) of zeros, degradation map of the query)."""
        q, inter = self.encoder_q(x_query)
        q = F.normalize(q, dim=1)
        with torch.no_grad():
            self.momentum_update()  # before encoding the keys, as MoCo does
            k = F.normalize(self.encoder_k(x_key)[0], dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        # A copy: the queue is overwritten in place below, and autograd keeps this operand for backward.
        negative = q @ self.queue.clone()
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # the positive is column 0
        self.enqueue(k)
        return logits, labels, inter


class ContrastiveDegradationEncoder(nn.Module):
    """AirNet's encoder part; a thin holder because the release keeps MoCo one level down (`E.E.*`)."""

    def __init__(self, in_channels=3, dims=(64, 128, 256), queue_size=1280, momentum=0.999, temperature=0.07):
        super().__init__()
        self.E = MomentumContrast(in_channels, dims, queue_size, momentum, temperature)

    def degradation_map(self, x):
        """The query encoder's full-resolution degradation map; the only encoder output the restorer uses."""
        return self.E.encoder_q.E_pre(x)

    def forward(self, x_query, x_key=None):
        """Training with a key view: (logits, labels, degradation map), updating key encoder and queue.

        Otherwise (eval, or no key view) only the degradation map of the query. Both views run channels_last
        (see AirNet.forward), whoever calls: the restorer's forward and the encoder-only warm-up alike.
        """
        x_query = channels_last(x_query)
        if self.training and x_key is not None:
            return self.E(x_query, channels_last(x_key))
        return self.degradation_map(x_query)


# ---- degradation-guided restorer ---------------------------------------------------------------------

class DegradationGuidedDeformConv(nn.Module):
    """Modulated deformable 3×3 conv (DCNv2) whose offsets and masks come from [features, degradation map]."""

    def __init__(self, channels, cond_channels, impl='auto'):
        super().__init__()
        self.impl = impl  # a plain attribute: checkpoints hold the same keys whichever kernel runs
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        bound = 1.0 / math.sqrt(channels * 9)
        nn.init.uniform_(self.weight, -bound, bound)
        # 27 = 18 offsets (dy, dx per tap) + 9 masks; zero init starts as a plain conv with mask 0.5.
        self.conv_offset_mask = nn.Conv2d(channels + cond_channels, 27, 3, padding=1, bias=True)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def forward(self, x, inter):
        offset_y, offset_x, mask = self.conv_offset_mask(torch.cat([x, inter], 1)).chunk(3, dim=1)
        # The release concatenates the first two chunks as the offsets, so keep that exact channel order.
        offset = torch.cat([offset_y, offset_x], 1)
        return deform_conv2d(x, offset, self.weight, padding=1, mask=torch.sigmoid(mask), impl=self.impl)


class SpatialFeatureTransform(nn.Module):
    """x·γ(inter) + β(inter), with γ and β two-layer 1×1 conv nets on the degradation map."""

    def __init__(self, channels, cond_channels):
        super().__init__()

        def branch():
            return nn.Sequential(nn.Conv2d(cond_channels, channels, 1, bias=False), lrelu(),
                                 nn.Conv2d(channels, channels, 1, bias=False))

        self.conv_gamma = branch()
        self.conv_beta = branch()

    def forward(self, x, inter):
        return x * self.conv_gamma(inter) + self.conv_beta(inter)


class DegradationGuidedModule(nn.Module):
    """x + deformable conv(x; inter) + SFT(x; inter)."""

    def __init__(self, channels, cond_channels):
        super().__init__()
        self.dcn = DegradationGuidedDeformConv(channels, cond_channels)
        self.sft = SpatialFeatureTransform(channels, cond_channels)

    def forward(self, x, inter):
        return x + (self.dcn(x, inter) + self.sft(x, inter))  # the release's summation order, bit for bit


class DegradationGuidedBlock(nn.Module):
    """Guided module, conv, guided module, conv (LReLU between), plus the input."""

    def __init__(self, channels, cond_channels):
        super().__init__()
        self.dgm1 = DegradationGuidedModule(channels, cond_channels)
        self.dgm2 = DegradationGuidedModule(channels, cond_channels)
        self.conv1 = conv3x3(channels, channels)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x, inter):
        out = F.leaky_relu(self.dgm1(x, inter), 0.1)
        out = F.leaky_relu(self.conv1(out), 0.1)
        out = F.leaky_relu(self.dgm2(out, inter), 0.1)
        return self.conv2(out) + x


def guided_residual(body, x, inter):
    """Run guided blocks `body[:-1]` and the closing conv `body[-1]`, plus a residual around all of them."""
    out = x
    for block in body[:-1]:
        out = block(out, inter)
    return body[-1](out) + x


class DegradationGuidedGroup(nn.Module):
    """`num_blocks` guided blocks and a 3×3 conv, with a residual around them."""

    def __init__(self, channels, cond_channels, num_blocks):
        super().__init__()
        self.body = nn.Sequential(*[DegradationGuidedBlock(channels, cond_channels) for _ in range(num_blocks)],
                                  conv3x3(channels, channels))

    def forward(self, x, inter):
        return guided_residual(self.body, x, inter)


class DegradationGuidedRestorer(nn.Module):
    """Head conv, `num_groups` guided groups and a conv with a long residual, tail conv (no image residual)."""

    def __init__(self, in_channels, out_channels, channels, cond_channels, num_groups, num_blocks):
        super().__init__()
        self.head = nn.Sequential(conv3x3(in_channels, channels))
        self.body = nn.Sequential(
            *[DegradationGuidedGroup(channels, cond_channels, num_blocks) for _ in range(num_groups)],
            conv3x3(channels, channels))
        self.tail = nn.Sequential(conv3x3(channels, out_channels))

    def forward(self, x, inter):
        return self.tail(guided_residual(self.body, self.head(x), inter))


@ARCH_REGISTRY.register()
class AirNet(nn.Module):
    """AirNet; defaults equal the release's All.pth (8,930,313 parameters, a queue of 1280 keys).

    `forward(x_query, x_key=None)`: in training mode with a key view (a second crop of the same degraded
    image) it returns (restored, logits, labels) and moves the key encoder and the queue; otherwise
    (eval mode, or no key view) it returns the restored image alone, using the query encoder only.
    `contrastive(x_query, x_key)` is the encoder-only step of the warm-up phase: (logits, labels).
    `encoder_dims[0]` is the degradation map's width; `queue_size` must match a checkpoint's (the
    release used batch·256: 1280 for All.pth, 768 for Denoise.pth, 256 for Derain/Dehaze.pth).
    `deform_impl`: 'auto' (torchvision's kernel on CUDA, the plugin's elsewhere), 'torch' or 'torchvision';
    it changes no parameter, so every checkpoint loads whichever is chosen.
    """

    def __init__(self, in_channels=3, out_channels=3, num_feat=64, num_groups=5, num_blocks=5,
                 encoder_dims=(64, 128, 256), queue_size=1280, momentum=0.999, temperature=0.07, deform_impl='auto'):
        super().__init__()
        if deform_impl not in IMPLS:
            raise ValueError(f'AirNet: network_g.deform_impl must be one of {", ".join(IMPLS)}, got {deform_impl!r}')
        if len(encoder_dims) != 3:
            raise ValueError(f'encoder_dims needs 3 widths (degradation map, middle, embedding), got {encoder_dims}')
        self.R = DegradationGuidedRestorer(in_channels, out_channels, num_feat, encoder_dims[0], num_groups,
                                           num_blocks)
        self.E = ContrastiveDegradationEncoder(in_channels, encoder_dims, queue_size, momentum, temperature)
        self.set_deform_impl(deform_impl)

    def set_deform_impl(self, impl):
        """Run every deformable convolution with `impl` ('auto', 'torch' or 'torchvision')."""
        for module in self.modules():
            if isinstance(module, DegradationGuidedDeformConv):
                module.impl = impl

    def contrastive(self, x_query, x_key):
        """The encoder's MoCo step alone (AirNet's warm-up): (logits, labels); needs training mode."""
        if not self.training:
            raise RuntimeError('AirNet.contrastive needs training mode: it updates the key encoder and the queue')
        logits, labels, _ = self.E(x_query, x_key)
        return logits, labels

    def forward(self, x_query, x_key=None):
        # channels_last: oneDNN's convolutions and the deformable kernel's channel rows run faster in it on
        # CPU (a training step 12-18 % faster at 8x32² and 2x64², 10 % at full size); the output is plain NCHW
        x_query = channels_last(x_query)  # for the restorer; the encoder converts its own inputs
        if self.training and x_key is not None:
            logits, labels, inter = self.E(x_query, x_key)
            return self.R(x_query, inter).contiguous(), logits, labels
        return self.R(x_query, self.E(x_query)).contiguous()
