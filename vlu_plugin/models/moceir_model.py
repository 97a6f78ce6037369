"""MoCEIRModel: MoCE-IR's training objective inside BasicSR.

L1 (`pixel_opt`) + the FFT loss (`fft_opt`, `FFTLoss`, weight 0.1; AllInOneModel's) + the routers' balance
loss (`routing_opt`, `MoCERoutingLoss`, weight 0.01), each optional. Testing is AllInOneModel's.
"""
from basicsr.losses import build_loss
from basicsr.utils.registry import MODEL_REGISTRY

from vlu_plugin.models.all_in_one_model import AllInOneModel


@MODEL_REGISTRY.register()
class MoCEIRModel(AllInOneModel):
    """AllInOneModel whose training step adds MoCE-IR's routing-balance loss."""

    def init_training_settings(self):
        routing_opt = self.opt['train'].get('routing_opt')
        self.cri_routing = build_loss(routing_opt).to(self.device) if routing_opt else None
        super().init_training_settings()

    def training_losses(self, current_iter):
        """AllInOneModel's losses (L1, FFT), then the balance loss on the routers' logits."""
        losses = super().training_losses(current_iter)
        if self.cri_routing:
            records = getattr(self.get_bare_model(self.net_g), 'routing_records', None)
            if records is None:
                raise TypeError(f'train.routing_opt needs a network that records its routing (MoCEIR), not '
                                f'{type(self.get_bare_model(self.net_g)).__name__}')
            losses['l_routing'] = self.cri_routing(records)
        return losses
