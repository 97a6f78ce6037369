"""`vlu restore -opt <options or experiment dir> <input> <output>`: restore images with a trained model.

The restoration is `vlu_plugin.tools.restorer.Restorer` (the Python API): any registered model; with VLUNetModel
the degradation CLIP looks at each whole image once, its top degradations are printed and written to
`detections.csv`, and its vector conditions every tile. Images larger than `--tile` are restored in
overlapping tiles blended linearly, which bounds memory, with a progress bar over the tiles. Outputs keep
the input's file format, bit depth (16-bit stays 16-bit), grey/colour and alpha.
`--save-stages` writes what each unfolding stage produced (see vlu_plugin.tools.stages); for an image larger
than one tile this comes from one extra untiled pass on the image shrunk to fit the tile.
Unreadable inputs are reported and skipped; the exit status is then 1.
"""
import argparse
import csv
import io
import os
import os.path as osp
import sys

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
    import numpy as np
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
    from vlu_plugin.utils.errors import UserError
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


def peak_memory_note(device):
    """'; peak RSS N MiB' for the process on CPU ('; peak GPU memory N MiB' on CUDA), or '' if unknown."""
    if device.type == 'cuda':
        import torch
        return f'; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB'
    from vlu_plugin.utils.memory import current_peak_rss_mb
    peak = current_peak_rss_mb()
    return '' if peak is None else f'; peak RSS {peak:.0f} MiB'


def describe(probs, prompts):
    """'prompt p, prompt p, ...' for the top degradations."""
    if probs is None:
        return 'no degradation CLIP'
    import torch
    top = torch.topk(probs, min(TOP_K, probs.numel()))
    return ', '.join(f'{prompts[i]} {p:.2f}' for p, i in zip(top.values.tolist(), top.indices.tolist()))


def run(args):
    """Run `vlu restore`."""
    from vlu_plugin.tools.restorer import Restorer, inference_options
    from vlu_plugin.utils.atomic import atomic_write
    from vlu_plugin.utils.errors import UserError
    if args.tile and args.tile_overlap >= args.tile:
        raise UserError(f'--tile-overlap {args.tile_overlap} must be smaller than --tile {args.tile}')
    if osp.exists(args.output) and not osp.isdir(args.output):
        raise UserError(f'output {args.output}: exists and is not a folder')
    try:
        device = 'cpu' if args.cpu else None
        opt, weights = inference_options(args.opt, args.weights, args.clip, device == 'cpu',
                                         getattr(args, 'precision', None))
        # the inputs before the model: a wrong folder is reported at once
        inputs = list_inputs(args.input, args.output)
        restorer = Restorer(opt, weights=weights, tile=args.tile, tile_overlap=args.tile_overlap, device=device)
    except UserError:
        raise
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as error:
        raise UserError(error.args[0] if isinstance(error, KeyError) and error.args else str(error)) from error
    if args.save_stages and not hasattr(restorer.network, 'stages'):
        raise UserError('--save-stages needs a network with unfolding stages (VLUNet)')
    print(f'{type(restorer.network).__name__} from {restorer.weights} on {restorer.device}; '
          f'{len(inputs)} image(s) → {args.output}'
          + (f'; tiles {args.tile}/{args.tile_overlap}' if args.tile else ''))
    if any(osp.abspath(osp.join(args.output, rel)) == osp.abspath(path) for path, rel in inputs):
        raise UserError(f'{args.output} would overwrite the inputs; choose another output folder')
    rows, skipped = [], []
    prompts = restorer.prompts
    try:
        restore_all(restorer, inputs, args, rows, skipped)
    finally:  # also after a failed write: what was restored stays recorded
        if rows:
            try:
                atomic_write(osp.join(args.output, 'detections.csv'), _csv_text([['image', 'top', *prompts], *rows]))
            except OSError as error:
                print(f'vlu restore: warning: cannot write detections.csv: {error.strerror or error}',
                      file=sys.stderr)
    print(f'restored {len(inputs) - len(skipped)} image(s)'
          + (f', skipped {len(skipped)} unreadable: {skipped}' if skipped else '') + peak_memory_note(restorer.device))
    return 1 if skipped else 0


def _csv_text(rows):
    """CSV bytes of `rows`."""
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue().encode()


def restore_all(restorer, inputs, args, rows, skipped):
    """Restore each input into args.output, appending detections to `rows` and unreadable inputs to `skipped`."""
    from tqdm import tqdm

    from vlu_plugin.utils.atomic import atomic_write
    from vlu_plugin.utils.errors import UserError
    prompts = restorer.prompts
    for path, rel in tqdm(inputs, unit='img', dynamic_ncols=True):
        try:
            img, fmt = read_input(path)
        except (OSError, ValueError) as error:
            skipped.append(path)
            tqdm.write(f'skipped {path}: {error}')
            continue
        stage_folder = osp.join(args.output, 'stages', osp.splitext(rel)[0]) if args.save_stages else None
        with TileBar(rel) as bar:
            out, probs = restorer.restore_with_detection(img, bar.update_to, stage_folder)
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


class TileBar:
    """A second progress bar, over the tiles of one image; it appears with the first tile (small images have none)."""

    def __init__(self, name):
        self.name, self.bar = name, None

    def update_to(self, done, total):
        """The `progress(done, total)` callback of `Restorer.restore`."""
        from tqdm import tqdm
        if self.bar is None:
            self.bar = tqdm(total=total, desc=f'  {self.name}', unit='tile', position=1, leave=False,
                            dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
