"""SBNet's per-class boundary maps (`VOC2012/sb_map/<id>.npy`, float32 21 x H x W, channel c = boundary of
class c, channel 0 = background), which the original reads but ships no code to make.

Two sources:
- `pseudo_label_boundaries`: the boundaries of the pipeline's own first-stage pseudo labels (image-level
  supervision only). Channel c marks the pixels of class c that have a pixel of another label within
  Chebyshev distance `thickness` (a (2t+1) x (2t+1) square, i.e. t steps of 8-neighbours): the inner
  boundary of each class region, so an interface between two classes is marked t pixels deep on each
  side, each side in its own class's channel. The image border is not a boundary. Ignore pixels (255)
  belong to no channel and count as "another label": a class region ends where the ignore band starts.
- `sbd_boundaries`: SBD's semantic-boundary ground truth (GTcls.Boundaries, 20 sparse maps) - extra
  pixel-level supervision. SBD has no background boundary, so channel 0 is the union of the 20 class maps.
"""
import os

import numpy as np
from scipy import ndimage

from tool.io import UserError, atomic_save_npy, check_image, load_label_png
from tool.metrics import check_labels
from voc12.data import IGNORE, N_CLASSES, get_img_path, load_score_stack
from voc12.prepare_sbd import load_gtcls_field

N_CHANNELS = N_CLASSES + 1
SQUARE = np.ones((3, 3), bool)


def pseudo_label_boundaries(label, thickness=1):
    """float32 (21, H, W) inner boundaries of the class regions of an HxW label map (0..20, 255 ignored)."""
    label = np.asarray(label)
    boundaries = np.zeros((N_CHANNELS,) + label.shape, np.float32)
    for c in np.unique(label):
        if c == IGNORE:
            continue
        region = label == c
        # border_value 1: outside the image counts as the same class, so the image border is no boundary
        interior = ndimage.binary_erosion(region, SQUARE, iterations=thickness, border_value=1)
        boundaries[c] = region & ~interior
    return boundaries


def load_sbd_boundaries(path):
    """The 20 class boundary maps of an SBD cls/<id>.mat (struct GTcls, cell Boundaries of sparse HxW) as
    bool (20, H, W)."""
    cells = load_gtcls_field(path, 'Boundaries', 'boundary file')
    try:
        maps = np.stack([np.asarray(cell.toarray() if hasattr(cell, 'toarray') else cell) for cell in cells])
    except (TypeError, ValueError) as e:
        raise UserError(f'{path} is not an SBD boundary file: GTcls.Boundaries is no cell of 20 HxW maps '
                        f'({e.__class__.__name__}; re-extract the SBD archive)')
    if maps.shape[0] != N_CLASSES or maps.ndim != 3:
        raise UserError(f'{path}: GTcls.Boundaries holds {maps.shape[0]} maps of shape {maps.shape[1:]}, '
                        f'expected {N_CLASSES} HxW maps (re-extract the SBD archive)')
    return maps != 0


def sbd_boundaries(class_maps):
    """float32 (21, H, W) from SBD's (20, H, W) class boundaries: channel 0 = their union."""
    return np.concatenate([class_maps.any(0, keepdims=True), class_maps]).astype(np.float32)


def label_from_crf_dict(path, size_hw):
    """HxW uint8 labels of a CRF dict {0: bg, k+1: class k}: the key of the highest score."""
    keys, scores = load_score_stack(path, size_hw)
    return keys[np.argmax(scores, axis=-1)]


# where each input comes from: (file name pattern, what it is, the stage that writes it)
SOURCES = {
    'png': ('{}.png', 'label PNGs', 'write the pseudo labels first: infer_aff.py --out_rw DIR (random walk), or '
                                    'infer_SEAM.py / infer_cls.py --out_cam_pred DIR; pass that DIR as --label_dir'),
    'crf': ('{}.npy', 'CRF dicts', 'write them first with infer_SEAM.py --out_crf R (then --label_dir R_4.0) or '
                                   'infer_cls.py --out_la_crf DIR'),
    'sbd': ('cls/{}.mat', 'SBD boundary files', 'SBD (benchmark_RELEASE/dataset) covers 11,355 VOC images: check '
                                                '--sbd_root, or pass a --list of ids SBD has'),
}


def input_path(source, folder, name):
    return os.path.join(folder, SOURCES[source][0].format(name))


def make_one(name, source, folder, voc12_root, out_path, thickness):
    """Build and atomically write the boundary map of one image; its shape is checked against the image."""
    size_hw = check_image(get_img_path(name, voc12_root))
    path = input_path(source, folder, name)
    if source == 'sbd':
        boundaries = sbd_boundaries(load_sbd_boundaries(path))
    else:
        label = load_label_png(path) if source == 'png' else label_from_crf_dict(path, size_hw)
        check_labels(label, N_CHANNELS, path)
        boundaries = pseudo_label_boundaries(label, thickness)
    if boundaries.shape[1:] != tuple(size_hw):
        raise UserError(f'{path} is {boundaries.shape[2]}x{boundaries.shape[1]} but its image is '
                        f'{size_hw[1]}x{size_hw[0]} (rerun the stage that writes it for this image)')
    atomic_save_npy(out_path, boundaries)
    return name
