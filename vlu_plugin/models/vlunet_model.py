"""VLUNetModel: VLU-Net restoration conditioned on a frozen degradation-aware CLIP.

The CLIP is built from the `degradation_clip` option block and loads its trained weights from
`path.pretrain_network_degradation_clip` (a `net_clip_<iter>.pth` from DegradationCLIPModel, or the
release's `clip_tuned.pth` / Lightning checkpoint). It is never trained here, never saved in
`net_g`'s checkpoints, has no optimizer and is not DDP-wrapped. Without the block there is no
degradation vector and VLU-Net mixes its prompts uniformly.

`degradation_vector: image` (default) feeds VLU-Net the CLIP's adapted image embedding, as the paper;
in training the CLIP embeds the sample's `lq_context` when the data gives one (`context_size`): a patch
much smaller than the CLIP's input tells it little (the demo CLIP reads the degradation type of 32-px
patches right 38 % of the time, of 128-px ones 92 %), and it sees whole images at test time;
`true_label` feeds the CLIP's adapted text embedding of each image's ground-truth prompt instead (an
ablation: perfect degradation guidance; it needs `deg_label` in training and testing data).

Two BasicSR rules fix the option names. The block is not a `network_*` key: resume rewrites
`path.pretrain_network_<x>` for every top-level `network_<x>` to a file this model never writes. The
path key does contain `pretrain_network`: BasicSR creates a directory for every other `path.*` entry
(`make_exp_dirs`), so `path.pretrain_degradation_clip: clip.pth` would fail (or make a folder named
clip.pth); with no `network_degradation_clip` block, resume leaves this key alone, and `~` expands.
"""
import torch
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from vlu_plugin.models.all_in_one_model import AllInOneModel
from vlu_plugin.models.base import build_network
from vlu_plugin.models.degradation_clip_model import load_degradation_clip


@MODEL_REGISTRY.register()
class VLUNetModel(AllInOneModel):
    """AllInOneModel whose network takes `(lq, degradation_vector)` from a frozen DegradationCLIP."""

    CLIP_PATH_KEY = 'pretrain_network_degradation_clip'
    VECTORS = ('image', 'true_label')
    PER_SAMPLE = AllInOneModel.PER_SAMPLE + ('lq_context', )  # the CLIP sees the whole context in every phase

    def __init__(self, opt):
        self.vector_source = opt.get('degradation_vector') or 'image'
        if self.vector_source not in self.VECTORS:
            raise ValueError(f'VLUNetModel: degradation_vector must be one of {self.VECTORS}, '
                             f'not {self.vector_source!r}')
        super().__init__(opt)
        self.net_clip = self.build_degradation_clip(opt)
        if self.vector_source == 'true_label' and self.net_clip is None:
            raise ValueError('VLUNetModel: degradation_vector: true_label needs the degradation_clip block '
                             '(its text embeddings are the vectors)')

    def build_degradation_clip(self, opt):
        """The frozen, trained DegradationCLIP the options describe, or None without a `degradation_clip` block."""
        clip_opt = opt.get('degradation_clip')
        if clip_opt is None:
            get_root_logger().info('VLUNetModel: no degradation_clip block; VLU-Net mixes its prompts uniformly')
            return None
        path = opt['path'].get(self.CLIP_PATH_KEY)
        if path is None:
            raise ValueError(f'VLUNetModel: degradation_clip needs path.{self.CLIP_PATH_KEY} (a net_clip_<iter>.pth '
                             'from DegradationCLIPModel or a converted release file): untrained adapters would feed '
                             'VLU-Net noise. Remove the degradation_clip block to run without a CLIP.')
        net_clip = build_network(clip_opt)
        load_degradation_clip(net_clip, path)
        net_clip = net_clip.to(self.device).eval()
        net_clip.requires_grad_(False)
        clip_dim = getattr(self.get_bare_model(self.net_g), 'clip_dim', None)
        if clip_dim is not None and clip_dim != net_clip.embed_dim:
            raise ValueError(f'VLUNetModel: network_g.clip_dim is {clip_dim} but the degradation CLIP embeds in '
                             f'{net_clip.embed_dim} dimensions; set network_g.clip_dim: {net_clip.embed_dim}')
        return net_clip

    def variant(self):
        """'uniform prompts' without a CLIP, 'true-label vector' with `degradation_vector: true_label`."""
        if self.net_clip is None:
            return 'uniform prompts'
        return 'true-label vector' if self.vector_source == 'true_label' else None

    def feed_data(self, data):
        """AllInOneModel's feed_data with the optional `lq_context`, and a clear error for labels the CLIP lacks."""
        super().feed_data(data)
        self.lq_context = data['lq_context'].to(self.device) if 'lq_context' in data else None
        if self.net_clip is not None and self.deg_label is not None:
            self.net_clip.check_labels(self.deg_label, where=f' (batch {self.batch_paths})')

    def training_losses(self, current_iter):
        """AllInOneModel's, with the degradation vector of the context the patches were cut from, if given."""
        if self.lq_context is None:
            return super().training_losses(current_iter)
        self.output = self.net_g(self.lq, *self.condition(self.lq_context))
        return self.compute_losses()

    def condition(self, lq):
        """`(degradation_vector,)`: the frozen CLIP's adapted image embedding (B, D), or `(None,)` without a CLIP."""
        if self.net_clip is None:
            return (None, )
        with torch.no_grad():
            if self.vector_source == 'true_label':
                if getattr(self, 'deg_label', None) is None or len(self.deg_label) != len(lq):
                    raise ValueError('VLUNetModel: degradation_vector: true_label needs deg_label for every image; '
                                     f'this batch has none ({self.batch_paths})')
                return (self.net_clip.text_embeddings()[self.deg_label.long()], )
            return (self.net_clip.embed(lq), )

    def degradation_probabilities(self, lq):
        """The CLIP's probabilities over its prompts (B, n), or None without a CLIP."""
        if self.net_clip is None:
            return None
        with torch.no_grad():
            return self.net_clip.classify(lq)
