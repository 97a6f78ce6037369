"""DegradationCLIP: VLU-Net's degradation-aware CLIP, an open_clip backbone plus two small adapters.

An image adapter on the image embedding and a text adapter on the embeddings of a fixed list of
prompts ("image with noise", "image with haze", ...), one prompt per degradation label. Their dot
products (no normalisation, no temperature, as in the release) classify the degradation, and the
adapted image embedding is the vector VLU-Net's D-GDMs consume.

Nothing is ever downloaded: `pretrained` is an open_clip tag that must already be in the user's
cache, a local checkpoint file, or None (random weights, for tests and the embedded demo).
Images go in as BasicSR gives them, (B, 3, H, W) in [0, 1]; the CLIP preprocessing happens inside.
"""
import os

import open_clip
import torch
import torch.nn.functional as F
from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from vlu_plugin.data.tasks import PROMPTS as TASK_PROMPTS

# The release's prompts in its 5-task label order (noise σ15/25/50, haze, rain, blur, low light): the task table's
RELEASE_PROMPTS = tuple(TASK_PROMPTS)

ADAPTER_PREFIXES = ('image_adapter.', 'text_adapter.')
BACKBONE_PREFIX = 'backbone.'
PROMPT_TOKENS_KEY = 'prompt_tokens'


def adapter(width):
    """The release's adapter: (Linear, LayerNorm, GELU) twice, then Linear, LayerNorm, all `width` wide."""
    return nn.Sequential(
        nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(),
        nn.Linear(width, width), nn.LayerNorm(width), nn.GELU(),
        nn.Linear(width, width), nn.LayerNorm(width))


def cached_pretrained_file(model_name, tag, cache_dir=None):
    """The local file of open_clip's `tag` for `model_name` if it is already cached, else None; never downloads."""
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if cfg.get('file'):
        return cfg['file'] if os.path.isfile(cfg['file']) else None
    hub = cfg.get('hf_hub', '')
    if hub:
        from huggingface_hub import try_to_load_from_cache  # reads the cache only, no network
        repo_id, filename = os.path.split(hub)
        filename = filename or HF_WEIGHTS_NAME
        # the same order open_clip tries: a safetensors twin first
        names = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
        if filename.endswith(('.bin', '.pth')) and filename != HF_WEIGHTS_NAME:
            names.append(filename[:-4] + '.safetensors')
        for name in names + [filename]:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = cfg.get('url', '')
    if url:
        path = os.path.join(cache_dir or os.path.expanduser('~/.cache/clip'), os.path.basename(url))
        if os.path.isfile(path):
            return path
    return None


def build_backbone(clip_model, pretrained, clip_config, cache_dir):
    """An open_clip CLIP, its tokenizer and its preprocessing config, from cached or local weights only."""
    if clip_config is not None:
        model = open_clip.CLIP(**clip_config)
        if pretrained is not None:
            path = os.path.expanduser(str(pretrained))
            if not os.path.isfile(path):
                raise FileNotFoundError(f'DegradationCLIP: with clip_config, pretrained must be a local checkpoint '
                                        f'file of that config or ~ (random weights); {pretrained!r} is not a file')
            open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
        tokenizer = open_clip.get_tokenizer('', context_length=model.context_length)
        return model, tokenizer, {}

    if open_clip.get_model_config(clip_model) is None:
        raise ValueError(f'DegradationCLIP: unknown open_clip model {clip_model!r}; '
                         f'built-in: {open_clip.list_models()}')
    # base tower weights of timm/HF towers would download; the CLIP weights below are the only ones we load
    kwargs = dict(pretrained_image=False, pretrained_text=False)
    pretrained_cfg = {}
    if pretrained is None:
        path = None
    elif os.path.isfile(os.path.expanduser(str(pretrained))):
        path = os.path.expanduser(str(pretrained))
    else:
        tag = str(pretrained)
        pretrained_cfg = open_clip.get_pretrained_cfg(clip_model, tag)
        if not pretrained_cfg:
            raise ValueError(f'DegradationCLIP: pretrained={tag!r} is neither an existing file nor an open_clip tag '
                             f'of {clip_model} (tags: {open_clip.list_pretrained_tags_by_model(clip_model)})')
        path = cached_pretrained_file(clip_model, tag, cache_dir)
        if path is None:
            raise FileNotFoundError(
                f'DegradationCLIP: the open_clip weights {clip_model}/{tag} are not in the local cache '
                f'({cache_dir or "Hugging Face / ~/.cache/clip"}) and this package never downloads. Download them '
                f'once elsewhere (open_clip.create_model({clip_model!r}, pretrained={tag!r})) and either copy the '
                'cache here or pass the checkpoint file itself: pretrained: /path/to/open_clip_model.safetensors')
        kwargs['force_quick_gelu'] = bool(pretrained_cfg.get('quick_gelu', False))
        kwargs['force_preprocess_cfg'] = {k: pretrained_cfg[k] for k in ('mean', 'std') if k in pretrained_cfg}
    model = open_clip.create_model(clip_model, pretrained=path, **kwargs)
    tokenizer = open_clip.get_tokenizer(clip_model)
    return model, tokenizer, open_clip.get_model_preprocess_cfg(model)


@ARCH_REGISTRY.register()
class DegradationCLIP(nn.Module):
    """Degradation-aware CLIP: open_clip backbone (frozen by default) + image/text adapters + prompts.

    Args:
        prompts: one text per degradation label, in label order (default: the release's seven).
        clip_model: open_clip model name, used when `clip_config` is not given.
        pretrained: an open_clip tag already in the cache, a local checkpoint file, or None (random init).
        clip_config: an inline open_clip config {embed_dim, vision_cfg, text_cfg}; replaces `clip_model`.
        train_backbone: let the backbone learn too (only sensible with random weights, e.g. the demo).
        num_classes: if given, must equal the number of prompts (catches label/prompt mismatches).
        cache_dir: open_clip/Hugging Face cache directory to look in (default: theirs).
        image_mean, image_std: override the normalisation (default: the weights' own, else OpenAI's).
    """

    def __init__(self, prompts=None, clip_model='ViT-B-32', pretrained='laion2b_s34b_b79k', clip_config=None,
                 train_backbone=False, num_classes=None, cache_dir=None, image_mean=None, image_std=None):
        super().__init__()
        prompts = list(RELEASE_PROMPTS if prompts is None else prompts)
        if not prompts or not all(isinstance(p, str) and p for p in prompts):
            raise ValueError(f'DegradationCLIP: prompts must be a non-empty list of strings, got {prompts!r}')
        if num_classes is not None and num_classes != len(prompts):
            raise ValueError(f'DegradationCLIP: num_classes={num_classes} but {len(prompts)} prompts were given '
                             f'({prompts}); give exactly one prompt per degradation label, in label order')
        self.prompts = prompts
        self.train_backbone = bool(train_backbone)
        self.backbone_pretrained = pretrained is not None
        if pretrained is None:
            get_root_logger().warning('DegradationCLIP: pretrained is ~, the CLIP backbone has random weights; '
                                      'its weights are saved with the adapters.')

        self.backbone, tokenizer, preprocess_cfg = build_backbone(clip_model, pretrained, clip_config, cache_dir)
        self.backbone.requires_grad_(self.train_backbone)
        for name in ('logit_scale', 'logit_bias'):  # the release's logits use neither; DDP rejects unused params
            if isinstance(getattr(self.backbone, name, None), nn.Parameter):
                getattr(self.backbone, name).requires_grad_(False)
        self.embed_dim = int(self.backbone.text_projection.shape[1])
        self.image_adapter = adapter(self.embed_dim)
        self.text_adapter = adapter(self.embed_dim)

        size = self.backbone.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        mean = image_mean or preprocess_cfg.get('mean') or OPENAI_DATASET_MEAN
        std = image_std or preprocess_cfg.get('std') or OPENAI_DATASET_STD
        # derived from the options, so not part of any checkpoint
        self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(PROMPT_TOKENS_KEY, tokenizer(prompts), persistent=False)
        self._tokenizer = tokenizer
        self._frozen_text_features = None  # the frozen backbone's prompt embeddings never change: computed once
        # ...unless new weights are loaded
        self.register_load_state_dict_post_hook(lambda module, keys: setattr(module, '_frozen_text_features', None))
        if not self.train_backbone:
            self.backbone.eval()

    @property
    def num_classes(self):
        """The number of degradation labels (= prompts)."""
        return len(self.prompts)

    def train(self, mode=True):
        """Switch train/eval mode, keeping a frozen backbone in eval mode."""
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self

    # ---- inference -------------------------------------------------------------------------------------
    def preprocess(self, images):
        """CLIP's input from (B, 3, H, W) images in [0, 1]: shorter side resized (bicubic), centre crop, normalised."""
        th, tw = self.image_size
        h, w = images.shape[-2:]
        # torchvision's Resize(shorter side) rounding, in integers
        size = (th, max(tw, w * th // h)) if h * tw <= w * th else (max(th, h * tw // w), tw)
        if size != (h, w):
            # clamp: the release resizes 8-bit PIL images, which cannot overshoot [0, 1]
            images = F.interpolate(images, size=size, mode='bicubic', align_corners=False, antialias=True).clamp(0, 1)
        top, left = int(round((size[0] - th) / 2.0)), int(round((size[1] - tw) / 2.0))
        images = images[..., top:top + th, left:left + tw]
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def embed(self, images):
        """The adapted image embedding (B, D): the degradation vector VLU-Net consumes."""
        with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
            features = self.backbone.encode_image(self.preprocess(images))
        return self.image_adapter(features)

    def _backbone_text_features(self):
        if self.train_backbone:
            return self.backbone.encode_text(self.prompt_tokens)
        cached = self._frozen_text_features
        if cached is None or cached.device != self.prompt_tokens.device:
            with torch.no_grad():
                cached = self.backbone.encode_text(self.prompt_tokens)
            self._frozen_text_features = cached
        return cached

    def text_embeddings(self):
        """The adapted prompt embeddings (n_prompts, D)."""
        return self.text_adapter(self._backbone_text_features())

    def logits(self, images):
        """Image–prompt scores (B, n_prompts): adapted image · adapted text, no normalisation or temperature."""
        return self.embed(images) @ self.text_embeddings().t()

    def classify(self, images):
        """Probabilities over the degradation labels (B, n_prompts)."""
        return torch.softmax(self.logits(images), dim=1)

    def forward(self, images):
        """The logits (B, n_prompts), so the module trains like any classifier."""
        return self.logits(images)

    def check_labels(self, labels, where=''):
        """Raise a clear error when a degradation label has no prompt (label order/count mismatch)."""
        if labels is None or not labels.numel():
            return
        outside = labels[(labels < 0) | (labels >= self.num_classes)]
        if outside.numel():
            raise ValueError(f'DegradationCLIP: degradation label {int(outside[0])} out of range for '
                             f'{self.num_classes} prompts {self.prompts}{where}; the dataset\'s labels and the '
                             'CLIP\'s prompts must list the same degradations in the same order')

    def decode_prompt(self, tokens):
        """The text of one row of prompt tokens (for error messages)."""
        special = {0, self._tokenizer.sot_token_id, self._tokenizer.eot_token_id}
        return self._tokenizer.decode([int(t) for t in tokens if int(t) not in special]).strip()

    # ---- what is saved ---------------------------------------------------------------------------------
    def backbone_is_learnable(self):
        """Whether the backbone's weights belong in the checkpoint (trained, or random and so not reproducible)."""
        return self.train_backbone or not self.backbone_pretrained

    def learnable_state_dict(self):
        """What a checkpoint must hold: both adapters, the prompt tokens, and the backbone when learnable.

        With a pretrained frozen backbone this is a few MB (the backbone comes back from `pretrained`);
        with random or trained backbone weights it holds them too, so embeddings are reproducible.
        """
        state = {k: v for k, v in self.state_dict().items() if k.startswith(ADAPTER_PREFIXES)}
        if self.backbone_is_learnable():
            state.update({k: v for k, v in self.state_dict().items() if k.startswith(BACKBONE_PREFIX)})
        state[PROMPT_TOKENS_KEY] = self.prompt_tokens
        return {k: v.detach().cpu() for k, v in state.items()}

    def load_learnable(self, state_dict):
        """Load `learnable_state_dict()` output or converted release adapters: adapters strictly, backbone if present.

        `prompt_tokens`, when present, must equal this module's: a checkpoint trained with other
        prompts (or another order) would assign labels to the wrong degradations.
        """
        state = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state_dict.items()}
        unknown = sorted(k for k in state if not k.startswith(ADAPTER_PREFIXES + (BACKBONE_PREFIX, PROMPT_TOKENS_KEY)))
        if unknown:
            raise KeyError(f'DegradationCLIP: unexpected keys in the checkpoint: {unknown[:8]}')
        tokens = state.pop(PROMPT_TOKENS_KEY, None)
        if tokens is not None and (tokens.shape != self.prompt_tokens.shape
                                   or not torch.equal(tokens.cpu(), self.prompt_tokens.cpu())):
            trained = [self.decode_prompt(t) for t in tokens] if tokens.dim() == 2 else tuple(tokens.shape)
            raise ValueError(f'DegradationCLIP: the checkpoint was trained with the prompts {trained}, the options '
                             f'give {self.prompts}; use the same prompts in the same order')
        own = {k: v for k, v in self.state_dict().items() if k.startswith(ADAPTER_PREFIXES)}
        missing = sorted(set(own) - set(state))
        if missing:
            raise KeyError(f'DegradationCLIP: the checkpoint lacks adapter weights: {missing[:8]}')
        for key in own:
            if state[key].shape != own[key].shape:
                raise ValueError(f'DegradationCLIP: {key} has shape {tuple(state[key].shape)} in the checkpoint but '
                                 f'{tuple(own[key].shape)} here: the adapters are as wide as the CLIP embedding '
                                 f'({self.embed_dim}); use the clip_model/clip_config the checkpoint was trained with')
        backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        if backbone:
            self.backbone.load_state_dict(backbone, strict=True)
            self._frozen_text_features = None  # the hook above sits on this module, not on the backbone
        elif not self.backbone_pretrained:
            get_root_logger().warning('DegradationCLIP: the checkpoint has no backbone weights but this backbone is '
                                      'random; its adapters were trained on another backbone and will not match.')
        self.load_state_dict({k: v for k, v in state.items() if k.startswith(ADAPTER_PREFIXES)}, strict=False)
        return self
