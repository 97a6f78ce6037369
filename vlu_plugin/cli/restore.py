"""`vlu restore -opt <options or experiment dir> <input> <output>`: restore images with a trained model.

The model is built from the option file through BasicSR (`build_model`), so any registered model
works; with VLUNetModel the degradation CLIP looks at each whole image once, its top degradations
are printed and written to `detections.csv`, and its vector conditions every tile. Images larger
than `--tile` are restored in overlapping tiles blended linearly (vlu_plugin.tiling), which bounds
memory. Outputs keep the input's file format, bit depth (16-bit stays 16-bit), grey/colour and alpha.
`--save-stages` writes what each unfolding stage produced (see vlu_plugin.stages); for an image larger
than one tile this comes from one extra untiled pass on the image shrunk to fit the tile.
Unreadable inputs are reported and skipped; the exit status is then 1.
"""
import csv
import glob
import os
import os.path as osp
import re
import sys

import numpy as np
import torch

from vlu_plugin.errors import UserError
from vlu_plugin.utils.atomic import atomic_write

TOP_K = 3


def add_parser(subparsers):
    """Register `restore`."""
    p = subparsers.add_parser('restore', help='restore images with a trained model (tiled, with degradation report)')
    p.add_argument('-opt', required=True, help='a test/train option file, or an experiment folder (its '
                                               'options_resolved.yml and latest models/net_g_*.pth are used)')
    p.add_argument('input', help='an image file or a folder (searched recursively)')
    p.add_argument('output', help='output folder')
    p.add_argument('--clip', help='degradation CLIP weights (overrides path.pretrain_network_degradation_clip)')
    p.add_argument('--weights', help='network weights (overrides path.pretrain_network_g); .pth or .safetensors')
    p.add_argument('--tile', type=_count('--tile'), default=512,
                   help='tile size for large images; 0 restores whole images')
    p.add_argument('--tile-overlap', type=_count('--tile-overlap'), default=32)
    p.add_argument('--save-stages', action='store_true', help='save each unfolding stage and the prompt weights')
    p.add_argument('--cpu', action='store_true', help='run on the CPU even when CUDA is available')
    p.add_argument('--precision', choices=('fp32', 'bf16', 'fp16'),
                   help="inference under torch.autocast in this dtype (default: the options' val.precision, else fp32)")
    return 'restore'


def _count(flag):
    """An argparse type: a whole number >= 0, refused at parse time with the flag's name."""
    import argparse

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a whole number') from None
        if value < 0:
            raise argparse.ArgumentTypeError(f'{value} is negative')
        return value

    parse.__name__ = flag
    return parse


def resolve_options(opt_arg):
    """(option file, weights found beside it or None) for an option file or an experiment folder."""
    from vlu_plugin.options_check import run_option_file
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


def load_options(args):
    """BasicSR options for inference from `args`: parsed YAML, is_train False, no dist, weights resolved."""
    from vlu_plugin.options_check import load_option_file, validate_options
    path, found_weights = resolve_options(args.opt)
    opt = validate_options(load_option_file(path), path, 'restore')
    opt['is_train'], opt['dist'], opt['rank'], opt['world_size'] = False, False, 0, 1
    gpus = 0 if args.cpu or not torch.cuda.is_available() else torch.cuda.device_count()
    opt['num_gpu'] = gpus if opt.get('num_gpu', 'auto') == 'auto' else min(int(opt['num_gpu']), gpus)
    opt.setdefault('path', {})
    opt.setdefault('val', {})
    opt['val']['precision'] = getattr(args, 'precision', None) or opt['val'].get('precision')
    weights = args.weights or opt['path'].get('pretrain_network_g') or found_weights
    if weights is None:
        raise ValueError(f'{path}: no network weights: set path.pretrain_network_g, pass --weights, or give an '
                         'experiment folder with models/net_g_*.pth')
    weights = osp.expanduser(weights)
    # .safetensors is loaded here, after the build (BasicSR's loader reads .pth only)
    opt['path']['pretrain_network_g'] = None if weights.endswith('.safetensors') else weights
    if args.clip:
        opt['path']['pretrain_network_degradation_clip'] = osp.expanduser(args.clip)
    return opt, weights


def build(args, loaded=None):
    """The BasicSR model (eval mode) the options describe (`loaded`: load_options' result), weights loaded."""
    from basicsr.models import build_model

    from vlu_plugin.checkpoints import load_checkpoint
    opt, weights = loaded or load_options(args)
    model = build_model(opt)
    if weights.endswith('.safetensors'):
        model.get_bare_model(model.net_g).load_state_dict(load_checkpoint(weights), strict=True)
    model.net_g.eval()
    return model, weights


def read_input(path):
    """(float RGB HWC in [0, 1], how to write it back: (sample dtype, channel count, alpha or None))."""
    from basicsr.utils import imfrombytes

    from vlu_plugin.data.image_io import apply_orientation, decode_image, exif_orientation
    with open(path, 'rb') as f:
        content = f.read()
    img = decode_image(content, path)  # raises ValueError, naming the file, for undecodable bytes; upright
    raw = apply_orientation(imfrombytes(content, flag='unchanged'), exif_orientation(content))
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    alpha = raw[:, :, -1].copy() if channels in (2, 4) else None
    return img, (raw.dtype, channels, alpha)


def encode_like(rgb, fmt, ext):
    """Encode float RGB in [0, 1] as `ext` with the input's sample type, channel count and alpha."""
    import cv2
    dtype, channels, alpha = fmt
    img = np.ascontiguousarray(rgb[:, :, ::-1])
    if channels in (1, 2):
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if dtype == np.uint16:
        img = np.clip(np.round(img * 65535.), 0, 65535).astype(np.uint16)
    elif dtype == np.uint8:
        img = np.clip(np.round(img * 255.), 0, 255).astype(np.uint8)
    else:
        img = img.astype(np.float32)
    if alpha is not None:
        img = np.dstack([img, alpha.astype(img.dtype)])
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in ('.jpg', '.jpeg') else []
    try:
        ok, buf = cv2.imencode(ext, img, params)
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError(f'cannot encode a {img.dtype} image as {ext}')
    return buf.tobytes()


def list_inputs(src, output=None):
    """(input path, path relative to the output folder) for a file or every image under a folder.

    Files under `output` (an output folder inside the input folder) are left out: a re-run would restore
    its own outputs. Non-images are named on stdout, not silently passed over.
    """
    from vlu_plugin.data.image_io import is_image_file, list_images
    if osp.exists(src) and not osp.isdir(src) and not osp.isfile(src):
        raise UserError(f'input {src}: not a regular file or a folder')
    if osp.isfile(src):
        if not is_image_file(src):
            raise UserError(f'input {src}: not an image file (extension {osp.splitext(src)[1] or "none"})')
        return [(src, osp.basename(src))]
    if not osp.isdir(src):
        raise UserError(f'input {src}: no such file or folder')
    skipped = []
    inputs = [(osp.join(src, rel), rel) for rel in list_images(src, skipped)]
    if output is not None:
        inside = osp.relpath(osp.abspath(output), osp.abspath(src))
        if inside != '.' and not inside.startswith('..'):
            inputs = [(p, rel) for p, rel in inputs if not (rel + '/').startswith(inside.replace(os.sep, '/') + '/')]
            skipped = [rel for rel in skipped if not (rel + '/').startswith(inside.replace(os.sep, '/') + '/')]
            print(f'note: the output folder {output} is inside the input folder; its files are not inputs')
    if skipped:
        print(f'note: {len(skipped)} file(s) that are not images of a readable kind were passed over: '
              f'{", ".join(skipped[:5])}' + (' ...' if len(skipped) > 5 else ''))
    if not inputs:
        raise UserError(f'input {src}: no images in the folder')
    return inputs


def restore_one(model, img, tile, stage_folder=None):
    """Restore one float RGB image; returns (restored float RGB, class probabilities or None)."""
    from torch.nn import functional as F

    from vlu_plugin.precision import inference_autocast
    from vlu_plugin.stages import StageRecorder, save_stages
    lq = torch.from_numpy(img).permute(2, 0, 1)[None].to(model.device)
    with torch.no_grad(), inference_autocast(model):
        probs = model.degradation_probabilities(lq) if hasattr(model, 'degradation_probabilities') else None
        h, w = lq.shape[-2:]
        whole = not tile or max(h, w) <= tile['size']
        if stage_folder and whole:
            with StageRecorder(model.get_bare_model(model.net_g)) as recorder:
                out = run_network(model, lq)
            save_stages(recorder, stage_folder, (h, w))
        else:
            out = run_network(model, lq, None if whole else tile)
            if stage_folder:  # one extra untiled pass on the image shrunk to fit a tile
                small = F.interpolate(lq, scale_factor=tile['size'] / max(h, w), mode='area')
                with StageRecorder(model.get_bare_model(model.net_g)) as recorder:
                    run_network(model, small)
                save_stages(recorder, stage_folder, tuple(small.shape[-2:]))
    out = out[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()
    return out, (None if probs is None else probs[0].float().cpu())


def run_network(model, lq, tile=None):
    """The model's restoration of `lq` (its own conditioning when it has one), tiled when `tile` is given."""
    if hasattr(model, 'restore'):  # AllInOneModel and its subclasses
        return model.restore(model.net_g, lq, tile)
    from vlu_plugin.tiling import tiled_forward
    return tiled_forward(model.net_g, lq, tile['size'], tile['overlap']) if tile else model.net_g(lq)


def peak_memory_note(device):
    """'; peak RSS N MiB' for the process on CPU ('; peak GPU memory N MiB' on CUDA), or '' if unknown."""
    if device.type == 'cuda':
        return f'; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB'
    from vlu_plugin.benchmark import current_peak_rss_mb
    peak = current_peak_rss_mb()
    return '' if peak is None else f'; peak RSS {peak:.0f} MiB'


def describe(probs, prompts):
    """'prompt p, prompt p, ...' for the top degradations."""
    if probs is None:
        return 'no degradation CLIP'
    top = torch.topk(probs, min(TOP_K, probs.numel()))
    return ', '.join(f'{prompts[i]} {p:.2f}' for p, i in zip(top.values.tolist(), top.indices.tolist()))


def run(args):
    """Run `vlu restore`."""
    from tqdm import tqdm
    if args.tile and args.tile_overlap >= args.tile:
        raise UserError(f'--tile-overlap {args.tile_overlap} must be smaller than --tile {args.tile}')
    if osp.exists(args.output) and not osp.isdir(args.output):
        raise UserError(f'output {args.output}: exists and is not a folder')
    try:
        loaded = load_options(args)
        # the inputs before the model: a wrong folder is reported at once
        inputs = list_inputs(args.input, args.output)
        model, weights = build(args, loaded)
    except UserError:
        raise
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as error:
        raise UserError(error.args[0] if isinstance(error, KeyError) and error.args else str(error)) from error
    if args.save_stages and not hasattr(model.get_bare_model(model.net_g), 'stages'):
        raise UserError('--save-stages needs a network with unfolding stages (VLUNet)')
    clip = getattr(model, 'net_clip', None)
    prompts = list(clip.prompts) if clip is not None else []
    tile = {'size': args.tile, 'overlap': args.tile_overlap} if args.tile else None
    print(f'{type(model.get_bare_model(model.net_g)).__name__} from {weights} on {model.device}; '
          f'{len(inputs)} image(s) → {args.output}' + (f'; tiles {args.tile}/{args.tile_overlap}' if tile else ''))
    if any(osp.abspath(osp.join(args.output, rel)) == osp.abspath(path) for path, rel in inputs):
        raise UserError(f'{args.output} would overwrite the inputs; choose another output folder')
    rows, skipped = [], []
    try:
        restore_all(model, inputs, args, tile, prompts, rows, skipped)
    finally:  # also after a failed write: what was restored stays recorded
        if rows:
            try:
                atomic_write(osp.join(args.output, 'detections.csv'), _csv_text([['image', 'top', *prompts], *rows]))
            except OSError as error:
                print(f'vlu restore: warning: cannot write detections.csv: {error.strerror or error}',
                      file=sys.stderr)
    print(f'restored {len(inputs) - len(skipped)} image(s)'
          + (f', skipped {len(skipped)} unreadable: {skipped}' if skipped else '') + peak_memory_note(model.device))
    return 1 if skipped else 0


def _csv_text(rows):
    """CSV bytes of `rows`."""
    import io
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode()


def restore_all(model, inputs, args, tile, prompts, rows, skipped):
    """Restore each input into args.output, appending detections to `rows` and unreadable inputs to `skipped`."""
    from tqdm import tqdm
    for path, rel in tqdm(inputs, unit='img', dynamic_ncols=True):
        try:
            img, fmt = read_input(path)
        except (OSError, ValueError) as error:
            skipped.append(path)
            tqdm.write(f'skipped {path}: {error}')
            continue
        stage_folder = osp.join(args.output, 'stages', osp.splitext(rel)[0]) if args.save_stages else None
        out, probs = restore_one(model, img, tile, stage_folder)
        target = osp.join(args.output, rel)
        try:
            content = encode_like(out, fmt, osp.splitext(rel)[1].lower())
        except ValueError as error:  # e.g. an extension OpenCV reads but cannot write: keep the pixels as PNG
            target = osp.splitext(target)[0] + '.png'
            content = encode_like(out, fmt, '.png')
            tqdm.write(f'{rel}: {error}; written as {target}')
        try:
            atomic_write(target, content)
        except OSError as error:  # a full disk, a read-only folder: stop, naming the image
            raise UserError(f'cannot write {target} (restoring {path}): {error.strerror or error}; '
                            f'{len(rows) or "no"} earlier image(s) are restored'
                            + (' and listed in detections.csv' if rows else '')) from error
        tqdm.write(f'{rel}: {describe(probs, prompts)}')
        if probs is not None:
            rows.append([rel, prompts[int(probs.argmax())], *(f'{p:.4f}' for p in probs.tolist())])
