"""What the plugin's losses share with BasicSR's: the `loss_weight` and `reduction` options, checked in one place."""
from torch import nn

REDUCTIONS = ('none', 'mean', 'sum')


class WeightedLoss(nn.Module):
    """A loss scaled by `loss_weight` and reduced by `reduction` ('none', 'mean' or 'sum'), like BasicSR's losses."""

    def __init__(self, loss_weight=1.0, reduction='mean'):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.loss_weight = loss_weight
        self.reduction = reduction
