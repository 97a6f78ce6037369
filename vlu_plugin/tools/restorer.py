"""`Restorer`: restore images with a trained model from Python, as `vlu restore` does (after RealESRGANer).

    from vlu_plugin.tools.restorer import Restorer
    restorer = Restorer('experiments/VLUNet_5task', tile=512)      # or an option file, or an option dict
    restored = restorer.restore(image)                               # H×W×3 RGB, uint8 or float in [0, 1]
    restored, probabilities = restorer.restore_with_detection(image)  # and the CLIP's degradation probabilities

The model is built from the options through BasicSR (`build_model`), so any registered model works; with
VLUNetModel the degradation CLIP looks at each whole image once and its vector conditions every tile.
Images larger than `tile` are restored in overlapping tiles blended linearly (vlu_plugin.utils.tiling), which
bounds memory; `progress(done, total)` is called after each tile.
"""
import glob
import os.path as osp
import re

import numpy as np
import torch

from vlu_plugin.utils.errors import UserError


def resolve_options(opt_arg):
    """(option file, weights found beside it or None) for an option file or an experiment folder."""
    from vlu_plugin.utils.options_check import run_option_file
    if not osp.isdir(opt_arg):
        return opt_arg, None
    path = run_option_file(opt_arg)  # the run's resolved copy: the verbatim one's `!include`s point elsewhere
    if path is None:
        raise UserError(f'-opt {opt_arg}: no option file in the experiment folder (options_resolved.yml or *.yml)')
    models = glob.glob(osp.join(opt_arg, 'models', 'net_g_*.pth'))
    latest = [m for m in models if m.endswith('net_g_latest.pth')]
    numbered = [m for m in models if re.search(r'net_g_(\d+)\.pth$', m)]
    numbered.sort(key=lambda m: int(re.search(r'net_g_(\d+)\.pth$', m).group(1)))
    weights = latest[0] if latest else (numbered[-1] if numbered else None)
    return path, weights


def inference_options(source, weights=None, clip=None, cpu=False, precision=None):
    """(BasicSR options for inference, weights file) from an option file, an experiment folder or an option dict.

    is_train False, no distribution, the GPUs there are (none with `cpu`); `weights` and `clip` override
    path.pretrain_network_g and path.pretrain_network_degradation_clip; `precision` sets val.precision.
    """
    from vlu_plugin.utils.options_check import load_option_file, validate_options
    if isinstance(source, dict):
        path, found_weights, opt = '<options>', None, dict(source)
    else:
        path, found_weights = resolve_options(str(source))
        opt = load_option_file(path)
    opt = validate_options(opt, path, 'restore')
    opt['is_train'], opt['dist'], opt['rank'], opt['world_size'] = False, False, 0, 1
    gpus = 0 if cpu or not torch.cuda.is_available() else torch.cuda.device_count()
    opt['num_gpu'] = gpus if opt.get('num_gpu', 'auto') == 'auto' else min(int(opt['num_gpu']), gpus)
    opt['path'] = dict(opt.get('path') or {})
    opt['val'] = dict(opt.get('val') or {})
    opt['val']['precision'] = precision or opt['val'].get('precision')
    weights = weights or opt['path'].get('pretrain_network_g') or found_weights
    if weights is None:
        raise ValueError(f'{path}: no network weights: set path.pretrain_network_g, pass --weights, or give an '
                         'experiment folder with models/net_g_*.pth')
    weights = osp.expanduser(weights)
    # .safetensors is loaded after the build (BasicSR's loader reads .pth only)
    opt['path']['pretrain_network_g'] = None if weights.endswith('.safetensors') else weights
    if clip:
        opt['path']['pretrain_network_degradation_clip'] = osp.expanduser(clip)
    return opt, weights


def build_inference_model(opt, weights):
    """The BasicSR model (eval mode) the options describe, with `weights` loaded."""
    from basicsr.models import build_model

    from vlu_plugin.utils.checkpoints import load_checkpoint
    model = build_model(opt)
    if weights.endswith('.safetensors'):
        model.get_bare_model(model.net_g).load_state_dict(load_checkpoint(weights), strict=True)
    model.net_g.eval()
    return model


def run_network(model, lq, tile=None, progress=None):
    """The model's restoration of `lq` (its own conditioning when it has one), tiled when `tile` is given."""
    if hasattr(model, 'restore'):  # AllInOneModel and its subclasses
        return model.restore(model.net_g, lq, tile, progress=progress)
    from vlu_plugin.utils.tiling import tiled_forward
    if not tile:
        return model.net_g(lq)
    return tiled_forward(model.net_g, lq, tile['size'], tile['overlap'], progress=progress)


def restore_image(model, img, tile, stage_folder=None, progress=None):
    """Restore one float RGB H×W×3 image in [0, 1]; returns (restored float RGB, class probabilities or None).

    `stage_folder`: also save what each unfolding stage produced (vlu_plugin.tools.stages); for an image larger than
    one tile this comes from one extra untiled pass on the image shrunk to fit the tile.
    """
    from torch.nn import functional as F

    from vlu_plugin.utils.precision import inference_autocast
    from vlu_plugin.tools.stages import StageRecorder, save_stages
    lq = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None].to(model.device)
    with torch.no_grad(), inference_autocast(model):
        probs = model.degradation_probabilities(lq) if hasattr(model, 'degradation_probabilities') else None
        h, w = lq.shape[-2:]
        whole = not tile or max(h, w) <= tile['size']
        if stage_folder and whole:
            with StageRecorder(model.get_bare_model(model.net_g)) as recorder:
                out = run_network(model, lq)
            save_stages(recorder, stage_folder, (h, w))
        else:
            out = run_network(model, lq, None if whole else tile, progress)
            if stage_folder:  # one extra untiled pass on the image shrunk to fit a tile
                small = F.interpolate(lq, scale_factor=tile['size'] / max(h, w), mode='area')
                with StageRecorder(model.get_bare_model(model.net_g)) as recorder:
                    run_network(model, small)
                save_stages(recorder, stage_folder, tuple(small.shape[-2:]))
    out = out[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()
    return out, (None if probs is None else probs[0].float().cpu())


class Restorer:
    """A trained model ready to restore images: from an option file, an experiment folder or an option dict.

    `tile` (0: whole images) and `tile_overlap` bound memory on large images; `device='cpu'` keeps a CUDA
    machine's GPU free; `precision` is 'fp32', 'bf16' or 'fp16' (torch.autocast); `weights` and `clip`
    override the options' network and degradation-CLIP files.
    """

    def __init__(self, source, weights=None, clip=None, tile=512, tile_overlap=32, device=None, precision=None):
        if tile and tile_overlap >= tile:
            raise UserError(f'tile overlap {tile_overlap} must be smaller than the tile size {tile}')
        opt, self.weights = inference_options(source, weights, clip, cpu=device == 'cpu', precision=precision)
        self.model = build_inference_model(opt, self.weights)
        self.tile, self.tile_overlap = tile, tile_overlap
        clip_net = getattr(self.model, 'net_clip', None)
        self.prompts = list(clip_net.prompts) if clip_net is not None else []

    @property
    def device(self):
        """Where the model runs."""
        return self.model.device

    @property
    def network(self):
        """The bare restoration network (no DDP/DataParallel wrapper)."""
        return self.model.get_bare_model(self.model.net_g)

    def restore_with_detection(self, image, progress=None, stage_folder=None):
        """(restored image, degradation probabilities over `self.prompts` as a tensor, or None without a CLIP).

        `image`: H×W×3 RGB, uint8 (0-255) or float in [0, 1]; the result has the same dtype kind (uint8 stays
        uint8, floats come back float32). `progress(done, total)` is called after each tile.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f'expected an H×W×3 RGB image, got shape {image.shape}')
        as_uint8 = image.dtype == np.uint8
        img = image.astype(np.float32) / 255. if as_uint8 else image.astype(np.float32)
        tile = {'size': self.tile, 'overlap': self.tile_overlap} if self.tile else None
        out, probs = restore_image(self.model, img, tile, stage_folder, progress)
        if as_uint8:
            out = np.clip(np.round(out * 255.), 0, 255).astype(np.uint8)
        return out, probs

    def restore(self, image, progress=None):
        """The restored image (same size and dtype kind as `image`; see `restore_with_detection`)."""
        return self.restore_with_detection(image, progress)[0]

    def detect(self, image):
        """{prompt: probability} of the degradation CLIP on the whole image ({} without a CLIP)."""
        if not self.prompts:
            return {}
        image = np.asarray(image)
        img = image.astype(np.float32) / 255. if image.dtype == np.uint8 else image.astype(np.float32)
        lq = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(self.device)
        from vlu_plugin.utils.precision import inference_autocast
        with torch.no_grad(), inference_autocast(self.model):
            probs = self.model.degradation_probabilities(lq)[0].float().cpu()
        return dict(zip(self.prompts, probs.tolist()))
