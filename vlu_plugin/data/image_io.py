"""Image IO shared by the data modules: any image file or LMDB value to float32 RGB in [0, 1], and LMDB writing."""
import os
import os.path as osp
import shutil

import cv2
import numpy as np
from basicsr.utils import imfrombytes
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pnm')


def is_image_file(name):
    """Whether `name` has an image extension (case-insensitive)."""
    return osp.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(root, skipped=None):
    """Relative POSIX paths of every image under `root`, recursively, sorted; hidden folders skipped.

    Only regular files (or links to them) count: opening a named pipe or a device would block forever.
    Files passed over for their extension or kind are appended to `skipped` when it is a list.
    """
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
        rel = osp.relpath(folder, root)
        for name in files:
            if name.startswith('.'):
                continue
            relative = name if rel == '.' else f'{rel}/{name}'.replace(os.sep, '/')
            if is_image_file(name) and osp.isfile(osp.join(folder, name)):
                found.append(relative)
            elif skipped is not None:
                skipped.append(relative)
    return sorted(found)


_EXIF_ORIENTATION = 0x0112
# EXIF orientation → (transpose first, then rotate 90° counter-clockwise k times, then flip left-right)
_ORIENT = {2: (False, 0, True), 3: (False, 2, False), 4: (False, 2, True), 5: (True, 0, False),
           6: (False, 3, False), 7: (True, 2, False), 8: (False, 1, False)}


def exif_orientation(content):
    """The EXIF orientation (1-8) of JPEG/TIFF/WebP bytes, 1 when there is none (PIL reads the header only)."""
    if not (content[:2] == b'\xff\xd8' or content[:4] in (b'II*\0', b'MM\0*') or content[8:12] == b'WEBP'):
        return 1
    import io

    from PIL import Image
    try:
        with Image.open(io.BytesIO(content)) as im:
            value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # an undecodable header: decoding reports it
        return 1
    return value if value in _ORIENT else 1


def apply_orientation(img, orientation):
    """`img` (H, W[, C]) turned upright for its EXIF `orientation`, as image viewers show it."""
    if orientation not in _ORIENT:
        return img
    transpose, turns, flip = _ORIENT[orientation]
    if transpose:
        img = np.swapaxes(img, 0, 1)
    img = np.rot90(img, turns)
    if flip:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


def decode_image(content, name):
    """Decode image bytes to float32 RGB HWC in [0, 1]; grey, alpha, 16-bit and palette inputs are converted."""
    if content is None:
        raise FileNotFoundError(f'no image {name}')
    try:
        # 'unchanged' keeps 16-bit depth and channel count so both are converted here, not truncated by OpenCV
        img = imfrombytes(content, flag='unchanged')
    except cv2.error:
        img = None
    if img is None:
        raise ValueError(f'unreadable image {name}: not a decodable image file (corrupt, truncated or not an image)')
    # 'unchanged' also skips the EXIF orientation OpenCV's colour read applies: a portrait would lie on its side
    img = apply_orientation(img, exif_orientation(content))
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.
    elif img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.
    elif img.dtype.kind == 'f':
        if not np.isfinite(img).all():  # np.clip keeps NaN, which would reach the loss
            raise ValueError(f'unreadable image {name}: it holds NaN or infinite pixel values')
        img = np.clip(img.astype(np.float32), 0, 1)
    else:
        raise ValueError(f'unreadable image {name}: unsupported pixel type {img.dtype}')
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels in (1, 2):  # grey (+ alpha): replicate the grey, drop the alpha as OpenCV's colour read does
        img = np.repeat(img[:, :, :1], 3, axis=2)
    elif channels == 4:
        img = img[:, :, :3]
    elif channels != 3:
        raise ValueError(f'unreadable image {name}: {channels} channels')
    return np.ascontiguousarray(img[:, :, ::-1])  # OpenCV decodes BGR


def read_image(path):
    """Read an image file as float32 RGB HWC in [0, 1], with errors that name the file."""
    if osp.exists(path) and not osp.isfile(path):  # a pipe or device would block the read
        raise ValueError(f'unreadable image {path}: not a regular file')
    try:
        with open(path, 'rb') as f:
            content = f.read()
    except OSError as err:
        raise FileNotFoundError(f'cannot read image {path}: {err.strerror or err}') from None
    return decode_image(content, path)


def encode_png(img_rgb):
    """PNG bytes (compression 1, BasicSR's LMDB level) of a float RGB image in [0, 1] or a uint8 RGB image."""
    if img_rgb.dtype != np.uint8:
        img_rgb = np.clip(np.round(img_rgb * 255.), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(img_rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError('PNG encoding failed')
    return buf.tobytes()


def check_lmdb_keys(keys, paths):
    """Raise if an LMDB key is not ASCII, holds a dot (paths_from_lmdb cuts at the first dot) or repeats."""
    seen = {}
    for key, path in zip(keys, paths):
        if not key.isascii() or '.' in key:
            raise ValueError(f'{path}: LMDB key {key!r} must be ASCII without dots '
                             '(BasicSR reads keys up to the first dot); rename the file')
        if key in seen:
            raise ValueError(f'{path} and {seen[key]} give the same LMDB key {key!r}')
        seen[key] = path


def _raw_size(path):
    """An upper bound on the PNG size of the image at `path`: 4 channels of 16 bits (PIL reads the header only)."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            return im.width * im.height * 8
    except Exception:  # a format PIL cannot size: bound it by a generous compression ratio
        return 50 * osp.getsize(path)


_UNCHANGED = '; {} was not written or changed'


def write_lmdb(data_root, rel_paths, keys, lmdb_path, overwrite=False):
    """Write images to a BasicSR LMDB atomically: built beside `lmdb_path`, renamed into place when complete."""
    lmdb_path = osp.abspath(lmdb_path)
    if not lmdb_path.endswith('.lmdb'):
        raise ValueError(f'{lmdb_path}: an LMDB folder name must end with .lmdb (BasicSR checks it)')
    if osp.exists(lmdb_path) and not overwrite:
        raise FileExistsError(f'{lmdb_path} exists; remove it or pass --overwrite')
    if not rel_paths:
        raise ValueError(f'no images to write to {lmdb_path}')
    check_lmdb_keys(keys, rel_paths)
    for rel in rel_paths:
        if not cv2.haveImageReader(osp.join(data_root, rel)):
            raise ValueError(f'unreadable image {osp.join(data_root, rel)}: not a decodable image file'
                             f'{_UNCHANGED.format(lmdb_path)}')
    # explicit map_size: BasicSR's estimate from the first image overflows on small or uneven sets
    map_size = sum(_raw_size(osp.join(data_root, p)) for p in rel_paths) + 8192 * len(rel_paths) + (64 << 20)
    parent, name = osp.split(lmdb_path)
    os.makedirs(parent, exist_ok=True)
    tmp = osp.join(parent, f'.{name[:-5]}.partial-{os.getpid()}.lmdb')
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            make_lmdb_from_imgs(data_root, tmp, rel_paths, keys, map_size=map_size)
        except Exception:
            # BasicSR fails on an image it cannot decode (a cut-short PNG passes the header check above)
            # with an AttributeError that names no file: find the file and name it
            bad = next((rel for rel in rel_paths
                        if cv2.imread(osp.join(data_root, rel), cv2.IMREAD_UNCHANGED) is None), None)
            if bad is None:
                raise
            raise ValueError(f'unreadable image {osp.join(data_root, bad)}: not a decodable image file (corrupt, '
                             f'truncated or not an image){_UNCHANGED.format(lmdb_path)}') from None
        if osp.exists(lmdb_path):
            shutil.rmtree(lmdb_path)
        os.rename(tmp, lmdb_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return lmdb_path
