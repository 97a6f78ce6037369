"""Contrastive losses: InfoNCE on MoCo logits (AirNet's degradation-representation term)."""
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn


@LOSS_REGISTRY.register()
class InfoNCELoss(nn.Module):
    """InfoNCE: loss_weight · cross-entropy of (B, 1+K) logits against the positive's column (AirNet uses 0.1).

    The logits already carry the temperature (AirNet's MoCo divides by 0.07), so none is applied here.
    """

    def __init__(self, loss_weight=1.0, reduction='mean'):
        super().__init__()
        if reduction not in ('none', 'mean', 'sum'):
            raise ValueError(f"InfoNCELoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.loss_weight = loss_weight
        self.reduction = reduction

    def forward(self, logits, labels):
        return self.loss_weight * F.cross_entropy(logits, labels, reduction=self.reduction)
