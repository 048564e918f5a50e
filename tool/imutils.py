"""Image transforms of the reference pipeline, a torchvision-free ColorJitter, and dense CRF inference.

Random choices of the crop/flip/resize transforms use Python's `random` module like the reference;
ColorJitter draws from torch's generator like torchvision does, so seeding both reproduces a run.
"""
import numbers
import random
from collections import namedtuple

import numpy as np
import torch
from PIL import Image, ImageEnhance

from tool.io import UserError

_PIL_ORDER = {0: Image.NEAREST, 1: Image.BILINEAR, 3: Image.BICUBIC}


# ----------------------------------------------------------------------------------------- resizing

def long_side_size(w, h, target_long):
    """(w, h) rescaled so that the longer side equals target_long (PIL size order)."""
    if w < h:
        return int(round(w * target_long / h)), target_long
    return target_long, int(round(h * target_long / w))


class RandomResizeLong:
    """Resize a PIL image so its long side is a uniform random integer in [min_long, max_long] (bicubic)."""

    def __init__(self, min_long, max_long):
        self.min_long = min_long
        self.max_long = max_long

    def __call__(self, img):
        target_long = random.randint(self.min_long, self.max_long)
        return img.resize(long_side_size(*img.size, target_long), resample=Image.BICUBIC)


class RandomResizeImageAndMask:
    """Joint RandomResizeLong for train_seg: PIL image bicubic, HxW uint8 mask nearest (same size)."""

    def __init__(self, min_long, max_long):
        self.min_long = min_long
        self.max_long = max_long

    def __call__(self, img, mask):
        target_long = random.randint(self.min_long, self.max_long)
        size = long_side_size(*img.size, target_long)
        img = img.resize(size, resample=Image.BICUBIC)
        mask = np.asarray(Image.fromarray(mask).resize(size, resample=Image.NEAREST))
        return img, mask


def pil_resize(img, size_hw, order):
    """Resize an HxW[xC] uint8 array to size_hw with PIL; order 0 nearest, 1 bilinear, 3 bicubic."""
    if tuple(size_hw) == img.shape[:2]:
        return img
    return np.asarray(Image.fromarray(img).resize((size_hw[1], size_hw[0]), _PIL_ORDER[order]))


def pil_rescale(img, scale, order):
    """Rescale an HxW[xC] uint8 array by `scale` (output size rounded) with PIL."""
    h, w = img.shape[:2]
    return pil_resize(img, (int(np.round(h * scale)), int(np.round(w * scale))), order)


class RescaleNearest:
    """Nearest-neighbour rescale of an HxW[xC] array by `scale` (OpenCV INTER_NEAREST index rule)."""

    def __init__(self, scale):
        self.scale = scale

    def __call__(self, arr):
        h, w = arr.shape[:2]
        rows = _nearest_index(h, int(round(h * self.scale)), self.scale)
        cols = _nearest_index(w, int(round(w * self.scale)), self.scale)
        return arr[rows][:, cols]


def _nearest_index(n_in, n_out, scale):
    return np.minimum(np.floor(np.arange(n_out) * (1.0 / scale)).astype(np.int64), n_in - 1)


# ------------------------------------------------------------------------------------ crop and flip

CropBox = namedtuple('CropBox', 'cont_top cont_left img_top img_left height width')


def _random_offsets(size, cropsize):
    """(container offset, image offset) along one axis: the crop window or the small image is placed at random."""
    space = size - cropsize
    if space > 0:
        return 0, random.randrange(space + 1)
    return random.randrange(-space + 1), 0


def random_crop_box(size_hw, cropsize):
    """Random cropsize x cropsize window for an image of size_hw (width drawn first, as the reference)."""
    h, w = size_hw
    cont_left, img_left = _random_offsets(w, cropsize)
    cont_top, img_top = _random_offsets(h, cropsize)
    return CropBox(cont_top, cont_left, img_top, img_left, min(cropsize, h), min(cropsize, w))


def center_crop_box(size_hw, cropsize):
    h, w = size_hw
    offsets = []
    for size in (h, w):
        space = size - cropsize
        offsets.append((0, int(round(space / 2))) if space > 0 else (int(round(-space / 2)), 0))
    (cont_top, img_top), (cont_left, img_left) = offsets
    return CropBox(cont_top, cont_left, img_top, img_left, min(cropsize, h), min(cropsize, w))


def crop_with_box(arr, box, cropsize, fill=0):
    """Cut `box` out of an HxW[xC] array into a cropsize x cropsize container filled with `fill`."""
    out = np.full((cropsize, cropsize) + arr.shape[2:], fill, dtype=arr.dtype)
    out[box.cont_top:box.cont_top + box.height, box.cont_left:box.cont_left + box.width] = \
        arr[box.img_top:box.img_top + box.height, box.img_left:box.img_left + box.width]
    return out


def pad_bottom_right(arr, size, fill):
    """Pad an HxW[xC] array with `fill` on the bottom and right up to at least size x size."""
    pad_h, pad_w = max(size - arr.shape[0], 0), max(size - arr.shape[1], 0)
    if not pad_h and not pad_w:
        return arr
    return np.pad(arr, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (arr.ndim - 2), constant_values=fill)


def random_crop(arrays, cropsize, fills):
    """Crop several same-size arrays with one random box, padding each with its fill (image 0, mask 255)."""
    box = random_crop_box(arrays[0].shape[:2], cropsize)
    return [crop_with_box(a, box, cropsize, f) for a, f in zip(arrays, fills)]


class RandomCrop:
    """Random cropsize x cropsize crop of an HxWxC array; zero padding where the array is smaller."""

    def __init__(self, cropsize):
        self.cropsize = cropsize

    def __call__(self, arr):
        return crop_with_box(arr, random_crop_box(arr.shape[:2], self.cropsize), self.cropsize)


class CenterCrop:
    def __init__(self, cropsize, default_value=0):
        self.cropsize = cropsize
        self.default_value = default_value

    def __call__(self, arr):
        return crop_with_box(arr, center_crop_box(arr.shape[:2], self.cropsize), self.cropsize,
                             self.default_value)


class RandomHorizontalFlip:
    """Flip an HxW[xC] array left-right with probability 1/2."""

    def __call__(self, arr):
        if random.getrandbits(1):
            arr = np.fliplr(arr).copy()
        return arr


def random_hflip(arrays):
    """Flip all arrays together (one coin for all), e.g. image and mask."""
    if random.getrandbits(1):
        return [np.fliplr(a).copy() for a in arrays]
    return list(arrays)


def HWC_to_CHW(img):
    return np.transpose(img, (2, 0, 1))


# ------------------------------------------------------------------------------------------ pooling

def avg_pool_blocks(arr, k):
    """Mean over k x k blocks of an HxW[xC] array; a partial block at the end counts zeros (skimage block_reduce)."""
    h, w = arr.shape[:2]
    ph, pw = -h % k, -w % k
    if ph or pw:
        arr = np.pad(arr, [(0, ph), (0, pw)] + [(0, 0)] * (arr.ndim - 2))
    hb, wb = arr.shape[0] // k, arr.shape[1] // k
    return arr.reshape((hb, k, wb, k) + arr.shape[2:]).mean(axis=(1, 3))


class AvgPool2d:
    def __init__(self, ksize):
        self.ksize = ksize

    def __call__(self, arr):
        return avg_pool_blocks(arr, self.ksize)


# ------------------------------------------------------------------------------------- colour jitter

def _jitter_range(value, name, center=1.0, bound=(0, float('inf')), clip_first_on_zero=True):
    """torchvision's ColorJitter argument rule: None when the range is the identity (then no RNG draw)."""
    if isinstance(value, numbers.Number):
        if value < 0:
            raise ValueError(f'{name}: a single number must be non negative')
        lo, hi = center - float(value), center + float(value)
        if clip_first_on_zero:
            lo = max(lo, 0.0)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        lo, hi = float(value[0]), float(value[1])
    else:
        raise TypeError(f'{name} should be a number or a (min, max) pair')
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ValueError(f'{name} values should be between {bound}, got {(lo, hi)}')
    return None if lo == hi == center else (lo, hi)


def adjust_brightness(img, factor):
    return ImageEnhance.Brightness(img).enhance(factor)


def adjust_contrast(img, factor):
    return ImageEnhance.Contrast(img).enhance(factor)


def adjust_saturation(img, factor):
    return ImageEnhance.Color(img).enhance(factor)


def adjust_hue(img, hue_factor):
    """Shift the uint8 H channel of the HSV image by int(hue_factor * 255), wrapping mod 256."""
    if img.mode in {'L', '1', 'I', 'F'}:
        return img
    h, s, v = img.convert('HSV').split()
    shifted = (np.asarray(h, dtype=np.int16) + int(hue_factor * 255)) % 256
    h = Image.fromarray(shifted.astype(np.uint8))
    return Image.merge('HSV', (h, s, v)).convert(img.mode)


_ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


class ColorJitter:
    """torchvision.transforms.ColorJitter on PIL images, without torchvision (same RNG use, same output)."""

    def __init__(self, brightness=0, contrast=0, saturation=0, hue=0):
        self.ranges = (_jitter_range(brightness, 'brightness'),
                       _jitter_range(contrast, 'contrast'),
                       _jitter_range(saturation, 'saturation'),
                       _jitter_range(hue, 'hue', center=0, bound=(-0.5, 0.5), clip_first_on_zero=False))

    def get_params(self):
        """(order of the four ops, factor per op or None), drawn from torch's generator."""
        order = torch.randperm(4).tolist()
        factors = [None if r is None else float(torch.empty(1).uniform_(r[0], r[1])) for r in self.ranges]
        return order, factors

    def __call__(self, img):
        order, factors = self.get_params()
        for i in order:
            if factors[i] is not None:
                img = _ADJUST[i](img, factors[i])
        return img


# ---------------------------------------------------------------------------------------- dense CRF

def _import_densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError:
        raise UserError('dense CRF needs pydensecrf: pip install pydensecrf2') from None
    return dcrf, unary_from_softmax


def crf_inference(img, probs, t=10, scale_factor=1, labels=21, gauss_sxy=3, gauss_compat=3,
                  bi_sxy=80, bi_srgb=13, bi_compat=10):
    """Fully connected CRF on an HxWx3 uint8 RGB image and (labels, H, W) probabilities.

    Returns the (labels, H, W) float32 marginals after `t` mean-field iterations. The defaults are the
    AffinityNet ones; infer_seg passes bi_sxy=83, bi_srgb=5, bi_compat=4.
    """
    dcrf, unary_from_softmax = _import_densecrf()
    h, w = img.shape[:2]
    d = dcrf.DenseCRF2D(w, h, labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=gauss_sxy / scale_factor, compat=gauss_compat)
    d.addPairwiseBilateral(sxy=bi_sxy / scale_factor, srgb=bi_srgb, rgbim=np.array(img, np.uint8, order='C'),
                           compat=bi_compat)
    q = d.inference(t)
    return np.array(q).reshape((labels, h, w))
