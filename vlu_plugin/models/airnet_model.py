"""AirNetModel: AirNet's two training phases inside BasicSR.

1. `train.encoder_warmup_iter` iterations of contrastive learning alone: the degradation encoder learns
   from two views (`lq`, `lq_key`: two crops of the same degraded image) with InfoNCE; the restorer
   gets no gradient.
2. Then restoration: `pixel_opt` (L1) on the query view plus `contrastive_opt` (InfoNCE, weight 0.1).
The optimizer is SRModel's: it leaves out the momentum key encoder (no gradient; MoCo updates it) and logs
each of its parameters as "will not be optimized", which is what happens to them.
The dataset supplies `lq_key` when its options set `key_view: true`. At test time only the query
path runs, with the encoder's BatchNorm in eval mode, as in the release.
"""
from collections import OrderedDict

from basicsr.losses import build_loss
from basicsr.utils.registry import MODEL_REGISTRY

from vlu_plugin.losses.contrastive_loss import InfoNCELoss
from vlu_plugin.models.all_in_one_model import AllInOneModel


@MODEL_REGISTRY.register()
class AirNetModel(AllInOneModel):
    """AirNet's encoder warm-up, then L1 + 0.1·InfoNCE, on BasicSR's training loop."""

    SPATIAL_VIEWS = AllInOneModel.SPATIAL_VIEWS + ('lq_key', )

    def init_training_settings(self):
        train_opt = self.opt['train']
        self.encoder_warmup_iter = int(train_opt.get('encoder_warmup_iter', 0))
        contrastive_opt = train_opt.get('contrastive_opt')
        self.cri_contrast = build_loss(contrastive_opt).to(self.device) if contrastive_opt else None
        self.cri_warmup = InfoNCELoss(loss_weight=1.0)  # the release's warm-up is plain cross-entropy
        super().init_training_settings()

    def feed_data(self, data):
        super().feed_data(data)
        self.lq_key = data['lq_key'].to(self.device) if 'lq_key' in data else None

    def in_warmup(self, current_iter):
        """Whether `current_iter` (1-based) belongs to the encoder-only contrastive phase."""
        return current_iter <= self.encoder_warmup_iter

    def training_losses(self, current_iter):
        """InfoNCE alone during the warm-up, then L1 on the query view + InfoNCE."""
        if self.lq_key is None:
            raise KeyError('AirNetModel needs a second view of each degraded image: set key_view: true in '
                           'datasets.train of the options')
        losses = OrderedDict()
        if self.in_warmup(current_iter):
            # the bare network: the restorer takes no part, so DDP's gradient bookkeeping is bypassed
            logits, labels = self.get_bare_model(self.net_g).contrastive(self.lq, self.lq_key)
            losses['l_contrast'] = self.cri_warmup(logits, labels)
        else:
            self.output, logits, labels = self.net_g(self.lq, self.lq_key)
            losses.update(self.compute_losses())
            if self.cri_contrast:
                losses['l_contrast'] = self.cri_contrast(logits, labels)
        return losses
