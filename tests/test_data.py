import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from tool import imutils
from tool.io import UserError, atomic_save_npy, atomic_save_png
from tool.pyutils import pair_offsets
from voc12 import data
from voc12.synthetic import make_voc

VOC12_DIR = os.path.dirname(data.__file__)


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    return make_voc(str(tmp_path_factory.mktemp('voc')), n_train=4, n_val=2, size=(64, 48), seed=1)


def _jpeg(root, name):
    return np.asarray(Image.open(os.path.join(root, 'JPEGImages', name + '.jpg')).convert('RGB'))


def _to_float(img):
    return np.asarray(img, dtype=np.float32)


# -------------------------------------------------------------------------------- lists and labels

def test_load_img_name_list_both_formats(tmp_path):
    path = tmp_path / 'list.txt'
    path.write_text('/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n'
                    '2008_000002\n\n  2010_001234  \n/some/where/2011_000003.jpg\n')
    assert data.load_img_name_list(str(path)) == ['2007_000032', '2008_000002', '2010_001234', '2011_000003']


def test_load_img_name_list_shipped_lists():
    counts = {name: len(data.load_img_name_list(os.path.join(VOC12_DIR, name + '.txt')))
              for name in ('train_aug', 'train', 'val')}
    assert counts == {'train_aug': 10582, 'train': 1464, 'val': 1449}
    first = data.load_img_name_list(os.path.join(VOC12_DIR, 'train_aug.txt'))[0]
    assert first == '2007_000032'


def test_load_img_name_list_errors(tmp_path):
    bad = tmp_path / 'bad.txt'
    bad.write_text('2007_000032\n/JPEGImages/a.jpg /b.png extra\n')
    with pytest.raises(UserError, match=r'bad\.txt:2'):
        data.load_img_name_list(str(bad))
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n')
    with pytest.raises(UserError, match='empty.txt'):
        data.load_img_name_list(str(empty))
    with pytest.raises(UserError, match='missing.txt'):
        data.load_img_name_list(str(tmp_path / 'missing.txt'))


def test_load_cls_labels_does_not_depend_on_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    labels = data.load_cls_labels()
    with open(os.path.join(VOC12_DIR, 'cls_labels.npy'), 'rb') as f:
        raw = np.load(f, allow_pickle=True).item()
    assert len(labels) == 12031 and labels.keys() == raw.keys()
    assert all(np.array_equal(labels[k], raw[k]) for k in raw)
    assert labels['2007_000032'].tolist() == [1.0] + [0.0] * 13 + [1.0] + [0.0] * 5  # aeroplane, person
    ids = (data.load_img_name_list(os.path.join(VOC12_DIR, 'train_aug.txt'))
           + data.load_img_name_list(os.path.join(VOC12_DIR, 'val.txt')))
    assert set(ids) == set(labels)


def test_load_cls_labels_dict_and_errors(tmp_path):
    d = {'a': np.ones(20, np.float32)}
    assert data.load_cls_labels(d) is d
    with pytest.raises(UserError, match='nope.npy'):
        data.load_cls_labels(str(tmp_path / 'nope.npy'))
    (tmp_path / 'junk.npy').write_bytes(b'junk')
    with pytest.raises(UserError, match='junk.npy'):
        data.load_cls_labels(str(tmp_path / 'junk.npy'))


def test_load_image_label_from_xml(voc, tmp_path):
    expected = np.load(os.path.join(voc, 'cls_labels.npy'), allow_pickle=True).item()
    for name in data.load_img_name_list(os.path.join(voc, 'lists', 'train_aug.txt')):
        np.testing.assert_array_equal(data.load_image_label_from_xml(name, voc), expected[name])
    os.makedirs(tmp_path / 'Annotations')
    (tmp_path / 'Annotations' / 'x.xml').write_text(
        '<annotation><owner><name>Somebody</name></owner>'
        '<object><name> dog </name><part><name>head</name></part></object>'
        '<object><name>person</name></object></annotation>')
    label = data.load_image_label_from_xml('x', str(tmp_path))
    assert np.nonzero(label)[0].tolist() == [data.CAT_LIST.index('dog'), data.CAT_LIST.index('person')]
    (tmp_path / 'Annotations' / 'y.xml').write_text('<annotation><object><name>unicorn</name></object></annotation>')
    with pytest.raises(UserError, match=r'y\.xml.*unicorn'):
        data.load_image_label_from_xml('y', str(tmp_path))


# -------------------------------------------------------------------------------- cls datasets

def test_cls_dataset(voc):
    labels_path = os.path.join(voc, 'cls_labels.npy')
    ds = data.VOC12ClsDataset(os.path.join(voc, 'lists', 'train_aug.txt'), voc, transform=_to_float,
                              cls_labels=labels_path)
    expected = np.load(labels_path, allow_pickle=True).item()
    assert len(ds) == 4
    for name, img, label in ds:
        np.testing.assert_array_equal(img, _jpeg(voc, name))
        assert label.dtype == torch.float32 and label.shape == (20,)
        np.testing.assert_array_equal(label.numpy(), expected[name])
    with pytest.raises(UserError, match='no image-level label'):
        data.VOC12ClsDataset(os.path.join(voc, 'lists', 'train_aug.txt'), voc)  # VOC labels, synthetic ids


def test_cls_dataset_msf_order_and_scales(voc):
    def inter(img):
        return imutils.HWC_to_CHW(np.asarray(img, np.float32))
    scales = (1.0, 0.5, 1.5)
    ds = data.VOC12ClsDatasetMSF(os.path.join(voc, 'lists', 'val.txt'), voc, scales=scales, inter_transform=inter,
                                 unit=8, cls_labels=os.path.join(voc, 'cls_labels.npy'))
    name, msf, label = ds[0]
    img = Image.fromarray(_jpeg(voc, name))
    assert len(msf) == 2 * len(scales) and label.shape == (20,)
    w, h = img.size
    for i, s in enumerate(scales):
        size = (round(round(w / 8) * 8 * s), round(round(h / 8) * 8 * s))
        expected = inter(img.resize(size, Image.BICUBIC))
        np.testing.assert_array_equal(msf[2 * i], expected)
        np.testing.assert_array_equal(msf[2 * i + 1], expected[..., ::-1])


def test_image_dataset_reports_corrupt_image(voc, tmp_path):
    root = tmp_path / 'voc'
    os.makedirs(root / 'JPEGImages')
    (root / 'JPEGImages' / '2007_000001.jpg').write_bytes(b'not a jpeg')
    (tmp_path / 'l.txt').write_text('2007_000001\n2007_000002\n')
    ds = data.VOC12ImageDataset(str(tmp_path / 'l.txt'), str(root))
    with pytest.raises(UserError, match='2007_000001.jpg'):
        ds[0]
    with pytest.raises(UserError, match='2007_000002.jpg'):
        ds[1]
    with pytest.raises(UserError, match='JPEGImages'):
        data.VOC12ImageDataset(str(tmp_path / 'l.txt'), str(tmp_path / 'nowhere'))


# -------------------------------------------------------------------------------- affinity labels

def _brute_force_affinity(label, radius):
    h, w = label.shape
    r = radius - 1
    froms = [(y, x) for y in range(h - r) for x in range(r, w - r)]
    offsets = [(0, dx) for dx in range(1, radius)] + [
        (dy, dx) for dy in range(1, radius) for dx in range(-r, radius) if dy * dy + dx * dx < radius * radius]
    out = np.zeros((3, len(offsets), len(froms)), np.float32)
    for k, (dy, dx) in enumerate(offsets):
        for n, (y, x) in enumerate(froms):
            a, b = label[y, x], label[y + dy, x + dx]
            valid = a != 255 and b != 255
            out[0, k, n] = a == b == 0
            out[1, k, n] = valid and a == b and a != 0
            out[2, k, n] = valid and a != b
    return out


@pytest.mark.parametrize('shape', [(12, 12), (10, 15)])
def test_extract_affinity_label_matches_brute_force(shape):
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([0, 0, 3, 7, 255], np.uint8), size=shape)
    got = data.ExtractAffinityLabelInRadius(cropsize=shape[0], radius=5)(label)
    assert len(pair_offsets(5)) == 34 and got[0].shape == (34, (shape[0] - 4) * (shape[1] - 8))
    assert all(t.dtype == torch.float32 for t in got)
    np.testing.assert_array_equal(np.stack([t.numpy() for t in got]), _brute_force_affinity(label, 5))


def _crf_dicts(rng, h, w, classes):
    """Hand-made la/ha dicts {0: bg, k+1: class k}, random per 8x8 block (plus noise) so labels vary."""
    def score():
        blocks = rng.random((-(-h // 8), -(-w // 8)))
        return (np.kron(blocks, np.ones((8, 8)))[:h, :w] + 0.01 * rng.random((h, w))).astype(np.float32)
    keys = [0] + [c + 1 for c in classes]
    return {k: score() for k in keys}, {k: score() for k in keys}


def _expected_aff_label(la, ha, crop):
    """Independent: centre crop with zero padding, 8x8 block means, then the spec's label rules."""
    keys = sorted(la)
    h, w = la[0].shape
    top, left = (crop - h) // 2, (crop - w) // 2

    def pooled(d):
        out = np.zeros((crop // 8, crop // 8, len(keys)))
        for i, k in enumerate(keys):
            padded = np.zeros((crop, crop))
            padded[top:top + h, left:left + w] = d[k]
            out[..., i] = padded.reshape(crop // 8, 8, crop // 8, 8).mean(axis=(1, 3))
        return out
    pla, pha = pooled(la), pooled(ha)
    label = np.zeros(pla.shape[:2], np.uint8)
    for y in range(label.shape[0]):
        for x in range(label.shape[1]):
            a, b = keys[int(np.argmax(pla[y, x]))], keys[int(np.argmax(pha[y, x]))]
            if max(pla[y, x].max(), pha[y, x].max()) < 1e-5:
                label[y, x] = 255
            elif b == 0:
                label[y, x] = 0
            elif a == 0:
                label[y, x] = 255
            else:
                label[y, x] = a
    return label


def test_aff_dataset_labels_match_independent_computation(voc, tmp_path):
    list_path = os.path.join(voc, 'lists', 'train_aug.txt')
    names = data.load_img_name_list(list_path)
    rng = np.random.default_rng(0)
    dicts = {}
    for name in names:
        dicts[name] = _crf_dicts(rng, 48, 64, classes=[2, 14])
        atomic_save_npy(str(tmp_path / 'la' / f'{name}.npy'), dicts[name][0])
        atomic_save_npy(str(tmp_path / 'ha' / f'{name}.npy'), dicts[name][1])
    crop = 64
    ds = data.VOC12AffDataset(list_path, str(tmp_path / 'la'), str(tmp_path / 'ha'), cropsize=crop, voc12_root=voc,
                              joint_transform_list=[None, imutils.CenterCrop(crop)],
                              img_transform_list=[_to_float, imutils.HWC_to_CHW],
                              label_transform_list=[None, imutils.AvgPool2d(8)])
    for idx, name in enumerate(names):
        img, aff = ds[idx]
        assert img.shape == (3, crop, crop)
        np.testing.assert_array_equal(img[:, 8:56], _jpeg(voc, name).transpose(2, 0, 1))
        assert (img[:, :8] == 0).all()
        label = _expected_aff_label(*dicts[name], crop)
        assert (label[0] == 255).all() and {0, 3, 15} <= set(np.unique(label))  # padding, bg, both classes
        np.testing.assert_array_equal(np.stack([t.numpy() for t in aff]), _brute_force_affinity(label, 5))


def test_aff_dataset_reference_transforms_batch(voc, tmp_path):
    list_path = os.path.join(voc, 'lists', 'val.txt')
    for name in data.load_img_name_list(list_path):
        la, ha = _crf_dicts(np.random.default_rng(1), 48, 64, classes=[5])
        atomic_save_npy(str(tmp_path / 'la' / f'{name}.npy'), la)
        atomic_save_npy(str(tmp_path / 'ha' / f'{name}.npy'), ha)
    ds = data.VOC12AffDataset(list_path, str(tmp_path / 'la'), str(tmp_path / 'ha'), cropsize=80, voc12_root=voc,
                              joint_transform_list=[None, None, imutils.RandomCrop(80), imutils.RandomHorizontalFlip()],
                              img_transform_list=[imutils.ColorJitter(0.3, 0.3, 0.3, 0.1), np.asarray,
                                                  _to_float, imutils.HWC_to_CHW],
                              label_transform_list=[None, None, None, imutils.AvgPool2d(8)])
    img, (bg, fg, neg) = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert img.shape == (2, 3, 80, 80) and bg.shape == fg.shape == neg.shape == (2, 34, (10 - 4) * (10 - 8))
    assert ((bg + fg + neg) <= 1).all()


def test_aff_dataset_bad_crf_dict(voc, tmp_path):
    list_path = os.path.join(voc, 'lists', 'val.txt')
    name = data.load_img_name_list(list_path)[0]
    ds = data.VOC12AffDataset(list_path, str(tmp_path / 'la'), str(tmp_path / 'ha'), cropsize=64, voc12_root=voc)
    with pytest.raises(UserError, match=f'{name}.npy'):
        ds[0]
    la, ha = _crf_dicts(np.random.default_rng(0), 40, 64, classes=[1])
    atomic_save_npy(str(tmp_path / 'la' / f'{name}.npy'), la)
    atomic_save_npy(str(tmp_path / 'ha' / f'{name}.npy'), ha)
    with pytest.raises(UserError, match=f'la.{name}.npy.*rerun infer_cls'):
        ds[0]


def test_aff_gt_dataset(voc):
    list_path = os.path.join(voc, 'lists', 'train_aug.txt')
    label_dir = os.path.join(voc, 'SegmentationClass')
    ds = data.VOC12AffGtDataset(list_path, label_dir, cropsize=64, voc12_root=voc,
                                joint_transform_list=[None, imutils.CenterCrop(64)],
                                img_transform_list=[_to_float, imutils.HWC_to_CHW],
                                label_transform_list=[None, imutils.RescaleNearest(1 / 8)])
    for idx, name in enumerate(data.load_img_name_list(list_path)):
        _, aff = ds[idx]
        gt = np.asarray(Image.open(os.path.join(label_dir, name + '.png')))
        padded = np.full((64, 64), 255, np.uint8)
        padded[8:56] = gt
        np.testing.assert_array_equal(np.stack([t.numpy() for t in aff]), _brute_force_affinity(padded[::8, ::8], 5))


# -------------------------------------------------------------------------------- segmentation datasets

def _expected_random_crop(seed, arr, crop, fill):
    """The reference's placement rule, drawn again: width offset first, then height."""
    random.seed(seed)
    h, w = arr.shape[:2]
    offsets = []
    for size in (w, h):
        space = size - crop
        offsets.append((0, random.randrange(space + 1)) if space > 0 else (random.randrange(-space + 1), 0))
    (cont_left, img_left), (cont_top, img_top) = offsets
    out = np.full((crop, crop) + arr.shape[2:], fill, arr.dtype)
    ch, cw = min(crop, h), min(crop, w)
    out[cont_top:cont_top + ch, cont_left:cont_left + cw] = arr[img_top:img_top + ch, img_left:img_left + cw]
    return out


def _pad_bottom_right(arr, size, fill):
    out = np.full((max(size, arr.shape[0]), max(size, arr.shape[1])) + arr.shape[2:], fill, arr.dtype)
    out[:arr.shape[0], :arr.shape[1]] = arr
    return out


def test_segmentation_dataset_crop_pads_image_0_and_mask_255(voc):
    """As the seed: pad right/bottom to the crop size first (image 0, mask 255), then a random crop."""
    list_path = os.path.join(voc, 'lists', 'train_aug.txt')
    mask_dir = os.path.join(voc, 'SegmentationClassAug')
    ds = data.SegmentationDataset(list_path, os.path.join(voc, 'JPEGImages'), mask_dir, cropsize=56,
                                  img_transform=_to_float)
    for seed in range(3):
        random.seed(seed)
        name, img, mask = ds[seed]
        jpeg = _jpeg(voc, name).astype(np.float32)
        gt = np.asarray(Image.open(os.path.join(mask_dir, name + '.png')))
        assert img.shape == (3, 56, 56) and img.flags['C_CONTIGUOUS'] and mask.dtype == np.int64
        expected_img = _expected_random_crop(seed, _pad_bottom_right(jpeg, 56, 0), 56, 0)
        np.testing.assert_array_equal(img, expected_img.transpose(2, 0, 1))
        np.testing.assert_array_equal(mask, _expected_random_crop(seed, _pad_bottom_right(gt, 56, 255), 56, 255))
        assert (mask[gt.shape[0]:] == 255).all()  # 48-pixel-high images: padding at the bottom only


def test_segmentation_dataset_full_augmentation(voc):
    list_path = os.path.join(voc, 'lists', 'train_aug.txt')
    mask_dir = os.path.join(voc, 'SegmentationClassAug')
    ds = data.SegmentationDataset(list_path, os.path.join(voc, 'JPEGImages'), mask_dir, rescale=(64, 96), flip=True,
                                  cropsize=80, img_transform=lambda im: _to_float(imutils.ColorJitter(0.3, 0.3, 0.3, 0.1)(im)))
    random.seed(0)
    torch.manual_seed(0)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    random.seed(0)
    torch.manual_seed(0)
    again = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    names, imgs, masks = batch
    assert imgs.shape == (2, 3, 80, 80) and masks.shape == (2, 80, 80) and masks.dtype == torch.int64
    assert torch.equal(imgs, again[1]) and torch.equal(masks, again[2])
    for name, mask in zip(names, masks):
        gt = np.asarray(Image.open(os.path.join(mask_dir, name + '.png')))
        assert set(np.unique(mask.numpy())) <= set(np.unique(gt)) | {255}
        assert (mask == 255).any()  # resized long side <= 96 leaves padding in an 80 crop of a 4:3 image


def test_segmentation_dataset_validates_labels(voc, tmp_path):
    name = data.load_img_name_list(os.path.join(voc, 'lists', 'val.txt'))[0]
    (tmp_path / 'l.txt').write_text(name + '\n')
    bad_values = np.zeros((48, 64), np.uint8)
    bad_values[3, 4] = 30
    atomic_save_png(str(tmp_path / 'values' / f'{name}.png'), bad_values)
    atomic_save_png(str(tmp_path / 'size' / f'{name}.png'), np.zeros((40, 64), np.uint8))
    img_dir = os.path.join(voc, 'JPEGImages')
    with pytest.raises(UserError, match=r'values.*\.png.*30'):
        data.SegmentationDataset(str(tmp_path / 'l.txt'), img_dir, str(tmp_path / 'values'))[0]
    with pytest.raises(UserError, match=r'size.*\.png.*64x40.*64x48'):
        data.SegmentationDataset(str(tmp_path / 'l.txt'), img_dir, str(tmp_path / 'size'))[0]
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(UserError, match=f'{name}.png'):
        data.SegmentationDataset(str(tmp_path / 'l.txt'), img_dir, str(tmp_path / 'empty'))[0]


def test_segmentation_dataset_msf(voc):
    scales = (1, 0.5, 0.75, 1.25, 1.5)
    ds = data.SegmentationDatasetMSF(os.path.join(voc, 'lists', 'val.txt'), os.path.join(voc, 'JPEGImages'), scales,
                                     inter_transform=lambda im: imutils.HWC_to_CHW(_to_float(im)))
    name, msf = ds[1]
    assert len(msf) == 10
    for i, s in enumerate(scales):
        assert msf[2 * i].shape == (3, round(48 * s), round(64 * s))
        np.testing.assert_array_equal(msf[2 * i + 1], msf[2 * i][..., ::-1])
    np.testing.assert_array_equal(msf[0], _jpeg(voc, name).transpose(2, 0, 1))

