"""MoCE-IR's two extra training terms: the routers' balance loss and an L1 loss on Fourier coefficients."""
import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from vlu_plugin.losses.weighted import WeightedLoss


def squared_variation(values, eps=1e-8):
    """(std / mean)² of a 1-D tensor (unbiased std, as the release): 0 when all entries are equal."""
    return (values.std() / (values.mean() + eps))**2


def balance_terms(record):
    """(importance, load) terms of one router's RoutingRecord, as the release's RoutingFunction computes them.

    Importance: the variation of the summed clean softmax over the batch (each expert's share,
    optionally weighted by its relative size). Load: the variation of each expert's probability of
    being in an image's top-k under the noise, P(noise > k-th noisy logit − clean logit).
    """
    importance = record.logits.softmax(dim=-1).sum(dim=0)
    if record.complexity is not None:
        importance = importance * record.complexity
    threshold = torch.topk(record.noisy_logits, record.top_k, dim=-1).values[:, -1:]
    p_in = 1.0 - torch.special.ndtr((threshold - record.logits) / record.noise_std)
    return squared_variation(importance), squared_variation(p_in.mean(dim=0))


@LOSS_REGISTRY.register()
class MoCERoutingLoss(nn.Module):
    """loss_weight · mean over routers of ½·importance + ½·load variation (MoCE-IR trains with 0.01).

    Takes the network's `routing_records` (one per decoder block, from a training-mode forward).
    """

    def __init__(self, loss_weight=0.01):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, records):
        if not records:
            raise ValueError('MoCERoutingLoss: no routing records: the network must run in training mode first '
                             '(network_g of type MoCEIR)')
        total = sum(0.5 * imp + 0.5 * load for imp, load in map(balance_terms, records))
        return self.loss_weight * total / len(records)


@LOSS_REGISTRY.register()
class FFTLoss(WeightedLoss):
    """loss_weight · L1 between the real and imaginary parts of rfft2(pred) and rfft2(target) (MoCE-IR: 0.1)."""

    def forward(self, pred, target):
        pred_fft = torch.view_as_real(torch.fft.rfft2(pred.float()))
        target_fft = torch.view_as_real(torch.fft.rfft2(target.float()))
        return self.loss_weight * F.l1_loss(pred_fft, target_fft, reduction=self.reduction)
