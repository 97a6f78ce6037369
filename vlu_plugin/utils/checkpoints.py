"""Released checkpoints → state dicts of this package's networks, and safe loading.

`convert_official(arch_name, checkpoint)` takes what `torch.load` returns for an authors' release
(VLU-Net's, PromptIR's, AdaIR's and MoCE-IR's Lightning `.ckpt`, VLU-Net's `clip_tuned.pth`, AirNet's
`All.pth`) and returns a state dict that this package's network loads with `strict=True`. Each release's key layout
is described once, as data: the prefix that holds the network, the keys it has but never uses, and
the renames to this package's module names.
"""
import os
import pickle
import re

import torch

# Restormer keeps LayerNorm's weight in a `body` child; ours holds it directly.
_RESTORMER_RENAMES = ((r'(norm\d)\.body\.', r'\1.'), )

# MoCE-IR's release nests its levels in ModuleLists (enc.i = [blocks, downsample], dec.i = [upsample,
# fusion, blocks]) and wraps each expert in a one-module Sequential; its encoder blocks are Restormer
# blocks under other names (norms.0/mixer/norms.1 for norm1/attn/norm2). Applied in this order.
_ENCODER_BLOCK = r'^((?:encoder\.\d+|latent|refinement)\.\d+)\.'
_MOCEIR_RENAMES = (
    (r'^enc\.(\d+)\.0\.layers\.', r'encoder.\1.'),
    (r'^enc\.(\d+)\.1\.', r'down.\1.'),
    (r'^(latent|refinement)\.layers\.', r'\1.'),
    (r'^dec\.(\d+)\.0\.', r'up.\1.'),
    (r'^dec\.(\d+)\.1\.', r'fuse.\1.'),
    (r'^dec\.(\d+)\.2\.layers\.', r'decoder.\1.'),
    (_ENCODER_BLOCK + r'norms\.0\.body\.', r'\1.norm1.'),
    (_ENCODER_BLOCK + r'norms\.1\.body\.', r'\1.norm2.'),
    (_ENCODER_BLOCK + r'mixer\.', r'\1.attn.'),
    (r'\.(norms\.\d|norm)\.body\.', r'.\1.'),  # the decoder blocks' and the experts' LayerNorms
    (r'\.experts\.(\d+)\.0\.', r'.experts.\1.'),
    (r'\.routing\.gate\.2\.', '.routing.gate.'),  # (pool, rearrange, linear): only the linear holds weights
    (r'^freq_embed\.high_conv\.0\.conv\.', 'freq_embed.high_pass.'),
)

_LAYOUTS = {
    'VLUNet': {
        'prefix': 'net.',
        'unused': (r'^down1_2_i\.', ),  # created by the release, never called in its forward
        'renames': _RESTORMER_RENAMES + (
            (r'^(patch_embed|down2_3|down3_4|up4_3|up3_2|up2_1)_i\.', r'\1_y.'),
            (r'^(reduce_chan_level[23])_img\.', r'\1_y.'),
            (r'\.gradient_descent\.phit\.', '.gradient_descent.phi_t.'),
            (r'\.gradient_descent\.r$', '.gradient_descent.step_size'),
            (r'\.gradient_descent\.linear\.', '.gradient_descent.prompt_weights.'),
            (r'\.gradient_descent\.prompt_param$', '.gradient_descent.prompt_bank'),
            (r'\.denoiser\.blocks\.', '.proximal.'),
        ),
        # the release stores each prompt bank as (1, de_dim, C, S, S)
        'reshape': {r'\.prompt_bank$': lambda t: t.squeeze(0) if t.dim() == 5 else t},
    },
    'PromptIR': {
        'prefix': 'net.',
        'unused': (r'^chnl_reduce[123]\.', r'^reduce_noise_channel_[123]\.'),
        'renames': _RESTORMER_RENAMES,
    },
    'AdaIR': {  # Lightning .ckpt of c-yn/AdaIR (net/model.py, decoder=True)
        'prefix': 'net.',
        'unused': (r'^fre\d\.conv\.', r'^fre\d\.score_gen\.'),  # created in each AFLB, never called
        'renames': _RESTORMER_RENAMES + ((r'\.frequency_refine\.SpatialGate\.', '.frequency_refine.spatial_gate.'),
                                         (r'\.frequency_refine\.ChannelGate\.', '.frequency_refine.channel_gate.')),
    },
    'MoCEIR': {  # Lightning .ckpt of eduardzamfir/MoCE-IR (src/net/moce_ir.py)
        'prefix': 'net.',
        'unused': (),
        'renames': _MOCEIR_RENAMES,
    },
    'AirNet': {
        'prefix': '',
        'unused': (),
        'renames': (),
    },
    'DegradationCLIP': {
        # clip_tuned.pth holds {'learnable_params': ...}; the VLU-Net Lightning checkpoint holds the
        # same adapters under 'model_degradation.' next to the frozen CLIP, which is not ours to keep.
        'prefix': '',
        'keep': r'^(model_degradation\.)?ad_(image|text)Encoder\.adapter\.',
        'renames': ((r'^(model_degradation\.)?ad_imageEncoder\.adapter\.', 'image_adapter.'),
                    (r'^(model_degradation\.)?ad_textEncoder\.adapter\.', 'text_adapter.')),
    },
}


def _network_state_dict(checkpoint):
    """The state dict inside a checkpoint: Lightning's `state_dict`, BasicSR's `params`, or the dict itself."""
    if not isinstance(checkpoint, dict):
        raise TypeError(f'expected a checkpoint dict, got {type(checkpoint).__name__}')
    for key in ('state_dict', 'learnable_params', 'params_ema', 'params'):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def convert_official(arch_name, checkpoint):
    """Map a released checkpoint (as `torch.load` returns it) onto this package's `arch_name` network."""
    if arch_name not in _LAYOUTS:
        raise KeyError(f'no official layout known for {arch_name!r}; known: {sorted(_LAYOUTS)}')
    layout = _LAYOUTS[arch_name]
    state = _network_state_dict(checkpoint)
    prefix = layout['prefix']
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}
    if 'keep' in layout:
        state = {k: v for k, v in state.items() if re.search(layout['keep'], k)}
    converted = {}
    for key, value in state.items():
        if any(re.search(pattern, key) for pattern in layout.get('unused', ())):
            continue
        for pattern, replacement in layout['renames']:
            key = re.sub(pattern, replacement, key)
        for pattern, reshape in layout.get('reshape', {}).items():
            if re.search(pattern, key):
                value = reshape(value)
        converted[key] = value
    if not converted:
        raise ValueError(f'the checkpoint holds no {arch_name} weights (keys start with: '
                         f'{sorted({k.split(".")[0] for k in state})[:8]})')
    return converted


def _is_torch_file(path):
    """Whether `path` is shaped like a torch.save file: a zip archive, or a pickle (the legacy format)."""
    import zipfile
    with open(path, 'rb') as f:
        return f.read(1) == b'\x80' or zipfile.is_zipfile(f)


def load_error_reason(error):
    """The informative part of a torch.load error: for weights-only refusals the unpickler's own complaint,
    without torch's advice to turn weights_only off (which would run code from the file)."""
    text = str(error)
    if 'WeightsUnpickler error:' in text:
        text = text.split('WeightsUnpickler error:', 1)[1].split('Check the documentation', 1)[0]
        return f'{type(error).__name__}: {" ".join(text.split())}'
    return f'{type(error).__name__}: {(text.splitlines() or [""])[0]}'


def load_checkpoint(path, trust=False, map_location='cpu'):
    """Load a `.pth`/`.ckpt`/`.safetensors` file without running pickled code unless `trust` is set."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        try:
            return load_file(path, device=str(map_location))
        except Exception as error:  # SafetensorError names no file
            raise ValueError(f'{path}: not a readable safetensors file (truncated or corrupt?): {error}') from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        # weights_only refuses pickled globals with an UnpicklingError, but says the same of bytes that are no
        # pickle at all; a cut-short zip, a text or an empty file is damage that --trust would not cure
        if not (isinstance(error, pickle.UnpicklingError) and _is_torch_file(path)):
            raise ValueError(f'{path}: not a readable checkpoint (truncated, corrupt or not a PyTorch file): '
                             f'{load_error_reason(error)}') from None
        if not trust:
            raise RuntimeError(
                f'{path}: refusing to load: the file needs pickled Python objects beyond tensors '
                f'({load_error_reason(error)}). Loading it could run code. '
                'If you trust its source, pass --trust (or trust=True).') from error
        return torch.load(path, map_location=map_location, weights_only=False)


def save_checkpoint(obj, path):
    """Write a checkpoint atomically (temporary file, then rename); `.safetensors` takes a flat state dict."""
    from vlu_plugin.utils.atomic import atomic_path
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        if path.endswith('.safetensors'):
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in obj.items()}, tmp)
        else:
            torch.save(obj, tmp)
    return path


def network_keys(arch_name):
    """The state-dict keys of the full-size default `arch_name` network (built on the meta device: no memory)."""
    import vlu_plugin  # noqa: F401  (registers the archs)
    from basicsr.utils.registry import ARCH_REGISTRY
    try:
        with torch.device('meta'):
            return set(ARCH_REGISTRY.get(arch_name)().state_dict())
    except (RuntimeError, NotImplementedError):  # an __init__ that computes on its tensors: build it for real
        return set(ARCH_REGISTRY.get(arch_name)().state_dict())


def key_match(arch_name, state):
    """The fraction of `state`'s keys that `arch_name` has (1.0: every key has a place in the network).

    Networks built with other options (fewer blocks, another width) keep this at or near 1; a checkpoint of
    another network scores near 0.
    """
    own = network_keys(arch_name)
    return len(own & set(state)) / max(len(state), 1)


def guess_network(checkpoint, exclude=()):
    """(arch name, key match) of the known layout `checkpoint` fits best, or (None, 0.0)."""
    best = (None, 0.0)
    for arch_name in _LAYOUTS:
        if arch_name in exclude or arch_name == 'DegradationCLIP':  # adapters only: not a whole network
            continue
        try:
            score = key_match(arch_name, convert_official(arch_name, checkpoint))
        except Exception:  # a layout that does not apply to this checkpoint at all
            continue
        if score > best[1]:
            best = (arch_name, score)
    return best
