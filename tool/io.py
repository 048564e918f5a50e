"""Reading and atomically writing the pipeline's artefacts, with one-line errors for bad input."""
import os
import tempfile

import numpy as np
from PIL import Image

from tool.palette import PALETTE


class UserError(Exception):
    """A one-line error about bad input: names the file and the fix."""


def atomic_write(path, write):
    """Write via `write(tmp_path)` to a temp file in the target folder, then rename over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix='.tmp_', suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save_npy(path, obj):
    """np.save of an array or a dict (pickled, as the reference writes CAM and CRF dicts)."""
    def write(tmp):
        with open(tmp, 'wb') as f:
            np.save(f, obj, allow_pickle=True)
    atomic_write(path, write)


def atomic_save_png(path, label, palette=True):
    """Save an HxW uint8 label map; with `palette` as a VOC-coloured 'P' image (still class indices)."""
    img = Image.fromarray(np.asarray(label, dtype=np.uint8), mode='L')
    if palette:
        img = img.convert('P')
        img.putpalette(PALETTE)
    atomic_write(path, lambda tmp: img.save(tmp, format='PNG'))


def atomic_save_image(path, image, **save_kwargs):
    """Save a PIL image atomically (the format follows the file extension)."""
    atomic_write(path, lambda tmp: image.save(tmp, **save_kwargs))


def atomic_torch_save(path, obj):
    import torch
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def require_file(path, what):
    if not os.path.isfile(path):
        raise UserError(f'{what} not found: {path} (check the path or the flag that points to it)')
    return path


def require_dir(path, what):
    if not os.path.isdir(path):
        raise UserError(f'{what} folder not found: {path} (check the path or the flag that points to it)')
    return path


def load_dict_npy(path):
    """A pickled dict {int: HxW array} saved with np.save (CAM / CRF dicts of the reference)."""
    require_file(path, 'score dict')
    try:
        data = np.load(path, allow_pickle=True)
        scores = data.item() if data.dtype == object else None
    except Exception as e:
        raise UserError(f'corrupt score dict {path}: {e.__class__.__name__} (delete it and rerun the stage that writes it)')
    if not isinstance(scores, dict):
        raise UserError(f'{path} is not a dict of score maps (expected np.save of {{class: HxW array}})')
    return scores


def load_label_png(path):
    """Class indices of a label PNG ('P' palette or 'L'), as HxW uint8."""
    require_file(path, 'label PNG')
    try:
        with Image.open(path) as img:
            if img.mode not in ('P', 'L', 'I', 'I;16'):
                raise UserError(f'{path} is a {img.mode} image, not a label map of class indices '
                                '(save labels as single-channel or palette PNGs)')
            label = np.array(img)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f'corrupt label PNG {path}: {e.__class__.__name__} (re-create or remove it)')
    if label.max(initial=0) > 255:
        raise UserError(f'{path} holds values above 255; labels must be 0..20 or 255')
    return label.astype(np.uint8, copy=False)


def load_image(path):
    """An RGB image as HxWx3 uint8."""
    require_file(path, 'image')
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert('RGB'))
    except Exception as e:
        raise UserError(f'corrupt image {path}: {e.__class__.__name__} (re-download or remove it from the list)')


def pending(ids, out_paths, overwrite=False):
    """The ids whose outputs are not all written yet (all ids with `overwrite`).

    `out_paths(id)` lists the output files of one id.
    """
    if overwrite:
        return list(ids)
    return [i for i in ids if not all(os.path.exists(p) for p in out_paths(i))]
