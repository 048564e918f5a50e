"""Reading and atomically writing the pipeline's artefacts, with one-line errors for bad input."""
import codecs
import os
import pickle
import tempfile

import numpy as np
from numpy.lib import format as npformat
from PIL import Image

from tool.palette import PALETTE


class UserError(Exception):
    """A one-line error about bad input: names the file and the fix."""


def atomic_write(path, write):
    """Write via `write(tmp_path)` to a temp file in the target folder, then rename over `path`.

    A kill -9 before the rename leaves the hidden `.<name>.<random>.tmp`: it never ends in the output's
    extension, so no '*.npy' / '*.png' glob takes it for an output (`write` must not rely on the extension).
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=folder)
    except OSError as e:
        raise UserError(f'cannot write {path}: {e.strerror} (pick a writable output folder)')
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
    """Save a PIL image atomically (the format follows the file extension unless `format` is given)."""
    save_kwargs.setdefault('format', Image.registered_extensions()[os.path.splitext(path)[1].lower()])
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


def require_files(paths, what, hint):
    """One UserError for all missing files: how many, the first, and `hint` (the flags to check)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(f'{len(missing)} of {len(paths)} {what} not found, e.g. {missing[0]} ({hint})')


def check_output_dir(path, flag):
    """UserError unless the folder `path` can be created (or is there) and written, checked without creating
    anything: its nearest existing ancestor must be a folder this process may write (also as root: a
    read-only mount fails os.access)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f'{flag} {path}: {existing} is a file, not a folder; pick another output folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f'{flag} {path}: {existing} is not writable; pick a writable output folder')
    return path


class _Refused(pickle.UnpicklingError):
    pass


def _latin1_bytes(text, encoding):
    """What protocol-2 pickles call to make bytes (`_codecs.encode(str, 'latin1')`), and nothing else."""
    if encoding != 'latin1':
        raise _Refused(f'it encodes text as {encoding!r}, which a dict of arrays never does')
    return codecs.encode(text, 'latin1')


def _allowed_globals():
    """The callables np.save's pickle of a dict of arrays names, under the numpy 1.x and 2.x module names."""
    reconstruct, scalar = np.zeros(0).__reduce__()[0], np.float32(0).__reduce__()[0]
    allowed = {('numpy', 'ndarray'): np.ndarray, ('numpy', 'dtype'): np.dtype, ('_codecs', 'encode'): _latin1_bytes}
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed[module, '_reconstruct'] = reconstruct
        allowed[module, 'scalar'] = scalar
    return allowed


class _DictUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays, dtypes and scalars (and python builtins such as dict, int, str).

    np.load(allow_pickle=True) calls whatever the file names, so a crafted .npy could run code.
    """
    ALLOWED = _allowed_globals()

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _Refused(f'it pickles {module}.{name}, which a dict of arrays never holds')
        return self.ALLOWED[module, name]


def _unpickle_npy_object(path):
    """The object of a 0-d object array saved by np.save, via _DictUnpickler; None if the file holds an array."""
    with open(path, 'rb') as f:
        version = npformat.read_magic(f)
        read_header = {(1, 0): npformat.read_array_header_1_0, (2, 0): npformat.read_array_header_2_0}[version]
        shape, _, dtype = read_header(f)
        if shape != () or dtype != object:
            return None
        array = _DictUnpickler(f).load()
    return array.item() if isinstance(array, np.ndarray) and array.shape == () else None


def load_dict_npy(path, key_type=int, what='score dict'):
    """A pickled dict {key: array} saved with np.save, read without running code from the file.

    key_type int: the CAM / CRF dicts of the reference ({class: HxW array}, numpy integer keys become
    int); str: the image-level labels {id: float32[20]}."""
    require_file(path, what)
    try:
        obj = _unpickle_npy_object(path)
    except _Refused as e:
        raise UserError(f'refusing to load {what} {path}: {e} (delete it and rerun the stage that writes it)')
    except Exception as e:
        raise UserError(f'corrupt {what} {path}: {e.__class__.__name__} (delete it and rerun the stage that writes it)')
    keys = (int, np.integer) if key_type is int else key_type
    if not (isinstance(obj, dict) and all(isinstance(k, keys) for k in obj)
            and all(isinstance(v, np.ndarray) and v.dtype != object for v in obj.values())):
        raise UserError(f'{path} is not a {what} (expected np.save of a dict {{{key_type.__name__}: numeric array}}; '
                        'rerun the stage that writes it)')
    return {key_type(k): v for k, v in obj.items()}


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


def check_image(path):
    """(height, width) of an image file, after decoding all of it at 1/8 scale (a JPEG draft: fast, yet it
    reads every byte, so a truncated file fails here rather than in the middle of a run)."""
    require_file(path, 'image')
    try:
        with Image.open(path) as img:
            width, height = img.size
            img.draft('RGB', (max(width // 8, 1), max(height // 8, 1)))
            img.load()
    except Exception as e:
        raise UserError(f'corrupt image {path}: {e.__class__.__name__} (re-download or remove it from the list)')
    return height, width


def pending(ids, out_paths, overwrite=False):
    """The ids whose outputs are not all written yet (all ids with `overwrite`).

    `out_paths(id)` lists the output files of one id.
    """
    if overwrite:
        return list(ids)
    return [i for i in ids if not all(os.path.exists(p) for p in out_paths(i))]
