"""Contrastive losses: InfoNCE on MoCo logits (AirNet's degradation-representation term)."""
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY

from vlu_plugin.losses.weighted import WeightedLoss


@LOSS_REGISTRY.register()
class InfoNCELoss(WeightedLoss):
    """InfoNCE: loss_weight · cross-entropy of (B, 1+K) logits against the positive's column (AirNet uses 0.1).

    The logits already carry the temperature (AirNet's MoCo divides by 0.07), so none is applied here.
    """

    def forward(self, logits, labels):
        return self.loss_weight * F.cross_entropy(logits, labels, reduction=self.reduction)
