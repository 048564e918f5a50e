import colorsys
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tool import imutils
from tool.io import UserError
from tool.palette import PALETTE, VOC_COLORMAP, colorize


def _rgb(h=40, w=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _unique(h, w, c=1):
    """Array whose values identify their position (all > 0, so zero padding is distinguishable)."""
    return (np.arange(h * w * c, dtype=np.float32) + 1).reshape(h, w, c)


# ------------------------------------------------------------------------------------------- crops

@pytest.mark.parametrize('h,w', [(30, 40), (12, 9), (20, 8), (16, 16)])
def test_random_crop_is_a_window_or_a_padded_copy(h, w):
    crop = 16
    arr = _unique(h, w, 2)
    seen = set()
    for seed in range(60):
        random.seed(seed)
        out = imutils.RandomCrop(crop)(arr)
        assert out.shape == (crop, crop, 2) and out.dtype == arr.dtype
        ys, xs = np.nonzero(out[..., 0])
        top, left = ys.min(), xs.min()
        ch, cw = min(crop, h), min(crop, w)
        block = out[top:top + ch, left:left + cw]
        # where the block comes from in the image
        src = np.argwhere(arr[..., 0] == block[0, 0, 0])[0]
        np.testing.assert_array_equal(block, arr[src[0]:src[0] + ch, src[1]:src[1] + cw])
        assert (out != 0).sum() == block.size  # everything else is zero padding
        assert 0 <= top <= max(0, crop - h) and 0 <= left <= max(0, crop - w)
        assert 0 <= src[0] <= max(0, h - crop) and 0 <= src[1] <= max(0, w - crop)
        seen.add((top, left, src[0], src[1]))
    n_places = (abs(h - crop) + 1) * (abs(w - crop) + 1)
    assert len(seen) >= min(n_places, 10)  # the placement is random


def test_random_crop_draws_width_offset_first():
    random.seed(3)
    expected_left, expected_top = random.randrange(40 - 16 + 1), random.randrange(30 - 16 + 1)
    random.seed(3)
    arr = _unique(30, 40)
    out = imutils.RandomCrop(16)(arr)
    np.testing.assert_array_equal(out, arr[expected_top:expected_top + 16, expected_left:expected_left + 16])


def test_random_crop_of_image_and_mask_shares_the_box_and_pads_mask_with_255():
    img = _unique(10, 20, 3)
    mask = np.arange(200, dtype=np.uint8).reshape(10, 20) % 21
    for seed in range(10):
        random.seed(seed)
        out_img, out_mask = imutils.random_crop([img, mask], 16, (0, 255))
        rows = np.nonzero(out_img[:, 0, 0])[0]
        assert (out_mask[:rows.min()] == 255).all() and (out_mask[rows.max() + 1:] == 255).all()
        src = np.argwhere(img[..., 0] == out_img[rows.min(), 0, 0])[0]
        np.testing.assert_array_equal(out_mask[rows.min():rows.max() + 1], mask[:, src[1]:src[1] + 16])


def test_random_crop_box_crops_scores_like_the_image():
    img = _unique(30, 25, 3)
    scores = img[..., :2] * 0.5
    for seed in range(5):
        random.seed(seed)
        box = imutils.random_crop_box((30, 25), 16)
        np.testing.assert_array_equal(imutils.crop_with_box(scores, box, 16),
                                      imutils.crop_with_box(img, box, 16)[..., :2] * 0.5)
        np.testing.assert_array_equal(imutils.crop_with_box(img, box, 16)[:, :box.width],
                                      img[box.img_top:box.img_top + 16, :][:, box.img_left:box.img_left + box.width])


@pytest.mark.parametrize('h,w,crop', [(30, 41, 16), (9, 12, 16), (20, 5, 16)])
def test_center_crop_matches_explicit_slicing(h, w, crop):
    arr = _unique(h, w, 3)
    out = imutils.CenterCrop(crop, default_value=-1)(arr)
    expected = np.full((crop, crop, 3), -1, np.float32)
    # reference placement: offsets round((size - crop) / 2) on the bigger side
    top_src, left_src = max(0, round((h - crop) / 2)), max(0, round((w - crop) / 2))
    top_dst, left_dst = max(0, round((crop - h) / 2)), max(0, round((crop - w) / 2))
    ch, cw = min(h, crop), min(w, crop)
    expected[top_dst:top_dst + ch, left_dst:left_dst + cw] = arr[top_src:top_src + ch, left_src:left_src + cw]
    np.testing.assert_array_equal(out, expected)


def test_center_crop_on_2d_label():
    label = np.arange(100, dtype=np.uint8).reshape(10, 10)
    out = imutils.CenterCrop(12, default_value=255)(label)
    assert out.dtype == np.uint8 and (out[0] == 255).all() and (out[:, -1] == 255).all()
    np.testing.assert_array_equal(out[1:11, 1:11], label)


def test_flip_and_joint_flip():
    img, mask = _unique(5, 7, 3), np.arange(35).reshape(5, 7)
    flips = 0
    for seed in range(20):
        random.seed(seed)
        out_img, out_mask = imutils.random_hflip([img, mask])
        flipped = not np.array_equal(out_mask, mask)
        flips += flipped
        np.testing.assert_array_equal(out_mask, mask[:, ::-1] if flipped else mask)
        np.testing.assert_array_equal(out_img, img[:, ::-1] if flipped else img)
        random.seed(seed)
        np.testing.assert_array_equal(imutils.RandomHorizontalFlip()(img), out_img)
    assert 0 < flips < 20


def test_hwc_to_chw():
    arr = _unique(4, 5, 3)
    out = imutils.HWC_to_CHW(arr)
    assert out.shape == (3, 4, 5) and out[2, 3, 1] == arr[3, 1, 2]


# --------------------------------------------------------------------------------------- pooling

@pytest.mark.parametrize('h,w', [(16, 24), (13, 21)])
def test_avg_pool_blocks_matches_loop(h, w):
    arr = np.random.default_rng(0).random((h, w, 3)).astype(np.float32)
    out = imutils.AvgPool2d(8)(arr)
    hb, wb = -(-h // 8), -(-w // 8)
    expected = np.zeros((hb, wb, 3))
    for i in range(hb):
        for j in range(wb):
            # skimage block_reduce semantics: a partial block is padded with zeros, the mean counts them
            expected[i, j] = arr[8 * i:8 * i + 8, 8 * j:8 * j + 8].sum(axis=(0, 1)) / 64
    assert out.shape == (hb, wb, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_rescale_nearest_eighth():
    arr = _unique(448, 448)[..., 0]
    np.testing.assert_array_equal(imutils.RescaleNearest(1 / 8)(arr), arr[::8, ::8])


# --------------------------------------------------------------------------------------- resizing

def test_random_resize_long():
    img = Image.fromarray(_rgb(30, 50))
    sizes = set()
    for seed in range(30):
        random.seed(seed)
        out = imutils.RandomResizeLong(20, 40)(img)
        random.seed(seed)
        target = random.randint(20, 40)
        assert out.size == (target, int(round(30 * target / 50)))
        np.testing.assert_array_equal(np.asarray(out), np.asarray(img.resize(out.size, Image.BICUBIC)))
        sizes.add(out.size)
    assert len(sizes) > 5
    tall = imutils.RandomResizeLong(25, 25)(Image.fromarray(_rgb(50, 30)))
    assert tall.size == (15, 25)


def test_random_resize_image_and_mask():
    img = Image.fromarray(_rgb(30, 40))
    mask = (np.arange(1200).reshape(30, 40) // 37 % 21).astype(np.uint8)
    random.seed(0)
    out_img, out_mask = imutils.RandomResizeImageAndMask(60, 80)(img, mask)
    assert out_mask.shape == (out_img.size[1], out_img.size[0]) and max(out_img.size) >= 60
    assert set(np.unique(out_mask)) <= set(np.unique(mask))  # nearest: no new values
    np.testing.assert_array_equal(out_mask, np.asarray(Image.fromarray(mask).resize(out_img.size, Image.NEAREST)))


def test_pil_rescale():
    arr = _rgb(30, 41)
    out = imutils.pil_rescale(arr, 0.5, 3)
    assert out.shape == (15, 20, 3)  # round(20.5) == 20 (numpy rounds half to even)
    np.testing.assert_array_equal(out, np.asarray(Image.fromarray(arr).resize((20, 15), Image.BICUBIC)))
    label = (np.arange(30 * 41).reshape(30, 41) % 21).astype(np.uint8)
    assert set(np.unique(imutils.pil_rescale(label, 2, 0))) <= set(np.unique(label))


# ---------------------------------------------------------------------------------- colour jitter

def _blend(degenerate, img, factor):
    """PIL Image.blend in float32, truncated and clipped to uint8."""
    t = degenerate.astype(np.float32) + np.float32(factor) * (img.astype(np.float32) - degenerate.astype(np.float32))
    return np.clip(t, 0, 255).astype(np.uint8)


def _gray(x):
    """ITU-R 601 luma as PIL's 'L' conversion computes it (fixed point)."""
    x = x.astype(np.int64)
    return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16


def _brightness(x, f):
    return _blend(np.zeros_like(x), x, f)


def _saturation(x, f):
    return _blend(np.repeat(_gray(x)[..., None], 3, axis=2), x, f)


def _contrast(x, f):
    return _blend(np.full_like(x, int(_gray(x).mean() + 0.5)), x, f)


@pytest.mark.parametrize('factor', [0.7, 0.95, 1.0, 1.23])
def test_brightness_contrast_saturation_match_per_pixel_formulas(factor):
    x = _rgb()
    img = Image.fromarray(x)
    np.testing.assert_array_equal(np.asarray(imutils.adjust_brightness(img, factor)), _brightness(x, factor))
    np.testing.assert_array_equal(np.asarray(imutils.adjust_saturation(img, factor)), _saturation(x, factor))
    np.testing.assert_array_equal(np.asarray(imutils.adjust_contrast(img, factor)), _contrast(x, factor))


@pytest.mark.parametrize('hue', [0.07, -0.1, 0.5])
def test_hue_shift_matches_hsv_formula(hue):
    x = _rgb(30, 40, seed=3)
    out = np.asarray(imutils.adjust_hue(Image.fromarray(x), hue)).astype(int)
    shift = int(hue * 255)
    err = np.zeros(x.shape[:2])
    for i, j in np.ndindex(*x.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(x[i, j] / 255.0))
        # PIL stores H and S as truncated uint8; the hue shift wraps around 256
        h8, s8 = (int(h * 255) + shift) % 256, int(s * 255)
        expected = np.round(np.array(colorsys.hsv_to_rgb(h8 / 255.0, s8 / 255.0, v)) * 255)
        err[i, j] = np.abs(out[i, j] - expected).max()
    # PIL's float32 hue arithmetic lands one H level off on rare pixels
    assert (err <= 1).mean() > 0.99 and err.max() <= 6


def test_hue_shift_wraps_modulo_256():
    # a pure red pixel has H = 0; a negative shift wraps to the top of the hue circle (magenta side)
    x = np.zeros((1, 1, 3), np.uint8)
    x[..., 0] = 255
    out = np.asarray(imutils.adjust_hue(Image.fromarray(x), -0.1))[0, 0]
    assert out[0] == 255 and out[2] > 0 and out[1] == 0


def _expected_jitter(x, seed, b, c, s, h):
    """Draw torchvision's parameters independently and apply the per-pixel formulas."""
    torch.manual_seed(seed)
    order = torch.randperm(4).tolist()
    bf = float(torch.empty(1).uniform_(max(0, 1 - b), 1 + b))
    cf = float(torch.empty(1).uniform_(max(0, 1 - c), 1 + c))
    sf = float(torch.empty(1).uniform_(max(0, 1 - s), 1 + s))
    hf = float(torch.empty(1).uniform_(-h, h))
    for i in order:
        if i == 0:
            x = _brightness(x, bf)
        elif i == 1:
            x = _contrast(x, cf)
        elif i == 2:
            x = _saturation(x, sf)
        else:
            x = np.asarray(imutils.adjust_hue(Image.fromarray(x), hf))
    return x


@pytest.mark.parametrize('seed', [0, 1, 7])
def test_color_jitter_reproduces_torchvision_parameter_draws(seed):
    x = _rgb(seed=seed)
    jitter = imutils.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    torch.manual_seed(seed)
    out = np.asarray(jitter(Image.fromarray(x)))
    np.testing.assert_array_equal(out, _expected_jitter(x, seed, 0.3, 0.3, 0.3, 0.1))
    torch.manual_seed(seed)
    np.testing.assert_array_equal(np.asarray(jitter(Image.fromarray(x))), out)


def test_color_jitter_zero_ranges_draw_nothing():
    jitter = imutils.ColorJitter(brightness=0, contrast=0.3)
    assert jitter.ranges == (None, (0.7, 1.3), None, None)
    torch.manual_seed(5)
    jitter(Image.fromarray(_rgb()))
    after = torch.rand(1)
    torch.manual_seed(5)
    torch.randperm(4)
    torch.empty(1).uniform_(0.7, 1.3)
    assert torch.equal(after, torch.rand(1))


def test_color_jitter_rejects_bad_ranges():
    with pytest.raises(ValueError):
        imutils.ColorJitter(brightness=-0.1)
    with pytest.raises(ValueError):
        imutils.ColorJitter(hue=0.6)
    assert imutils.ColorJitter(brightness=(0.5, 1.5)).ranges[0] == (0.5, 1.5)


# -------------------------------------------------------------------------------------- dense CRF

def _blocky_scene(h=24, w=32, n_labels=3, seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), np.int64)
    label[:, w // 2:] = 1
    label[h // 2:, : w // 3] = 2
    img = (np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]])[label] + rng.integers(-20, 20, (h, w, 3)))
    return np.clip(img, 0, 255).astype(np.uint8), label


def test_crf_inference_returns_marginals():
    img, _ = _blocky_scene()
    probs = np.random.default_rng(1).random((3, 24, 32)).astype(np.float32)
    probs /= probs.sum(0, keepdims=True)
    q = imutils.crf_inference(img, probs, labels=3)
    assert q.shape == (3, 24, 32) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1, atol=1e-4)
    assert (q >= 0).all()


def test_crf_inference_keeps_a_confident_argmax():
    img, label = _blocky_scene()
    probs = np.full((3, 24, 32), 0.01, np.float32)
    np.put_along_axis(probs, label[None], 0.98, axis=0)
    q = imutils.crf_inference(img, probs, labels=3)
    np.testing.assert_array_equal(q.argmax(0), label)


def test_crf_inference_passes_the_seg_parameters():
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax
    img, _ = _blocky_scene()
    probs = np.random.default_rng(2).dirichlet(np.ones(3), size=(24, 32)).transpose(2, 0, 1).astype(np.float32)
    d = dcrf.DenseCRF2D(32, 24, 3)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=83, srgb=5, rgbim=img.copy(), compat=4)
    expected = np.array(d.inference(10)).reshape(3, 24, 32)
    q = imutils.crf_inference(img, probs, labels=3, bi_sxy=83, bi_srgb=5, bi_compat=4)
    np.testing.assert_array_equal(q, expected)
    assert not np.array_equal(imutils.crf_inference(img, probs, labels=3), expected)


def test_crf_inference_without_pydensecrf_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pydensecrf.densecrf', None)
    with pytest.raises(UserError, match='pip install pydensecrf2'):
        imutils.crf_inference(*_blocky_scene()[:1], np.ones((3, 24, 32), np.float32) / 3, labels=3)


# ---------------------------------------------------------------------------------------- palette

def test_voc_palette():
    assert len(PALETTE) == 768
    assert VOC_COLORMAP[0].tolist() == [0, 0, 0]
    assert VOC_COLORMAP[1].tolist() == [128, 0, 0]       # aeroplane
    assert VOC_COLORMAP[15].tolist() == [192, 128, 128]  # person
    assert VOC_COLORMAP[20].tolist() == [0, 64, 128]     # tvmonitor
    assert VOC_COLORMAP[255].tolist() == [224, 224, 192]  # ignore / border
    label = np.array([[0, 15], [255, 1]], np.uint8)
    np.testing.assert_array_equal(colorize(label)[0, 1], [192, 128, 128])
    assert colorize(label).shape == (2, 2, 3)
