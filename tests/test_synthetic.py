"""voc12.synthetic: VOC layout, label/XML/cls_labels agreement, determinism."""
import colorsys
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from voc12 import synthetic
from voc12.make_cls_labels import make_cls_labels

VOC_NAMES = ('aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person '
             'pottedplant sheep sofa train tvmonitor').split()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_lines(path):
    with open(path) as f:
        return f.read().split()


def read_ids(root, split):
    return read_lines(os.path.join(root, 'ImageSets', 'Segmentation', f'{split}.txt'))


def load_cls(root):
    return np.load(os.path.join(root, 'cls_labels.npy'), allow_pickle=True).item()


def label_png(root, folder, image_id):
    with Image.open(os.path.join(root, folder, f'{image_id}.png')) as img:
        assert img.mode == 'P'
        return np.array(img)


def xml_objects(root, image_id):
    tree = ET.parse(os.path.join(root, 'Annotations', f'{image_id}.xml')).getroot()
    return tree, tree.findall('object')


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('voc'))
    return synthetic.make_voc(root, n_train=8, n_val=4, seed=3)


def test_layout_and_splits(voc):
    train, val = read_ids(voc, 'train'), read_ids(voc, 'val')
    assert len(train) == 8 and len(val) == 4 and not set(train) & set(val)
    assert sorted(read_ids(voc, 'trainval')) == sorted(train + val)
    for image_id in train + val:
        assert len(image_id) == 11 and image_id[4] == '_' and image_id[:4].isdigit() and image_id[5:].isdigit()
        for rel in (f'JPEGImages/{image_id}.jpg', f'SegmentationClass/{image_id}.png',
                    f'SegmentationClassAug/{image_id}.png', f'Annotations/{image_id}.xml'):
            assert os.path.isfile(os.path.join(voc, rel)), rel
    for name, ids in (('train_aug', train), ('train', train), ('val', val)):
        lines = open(os.path.join(voc, 'lists', f'{name}.txt')).read().splitlines()
        assert lines == [f'/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png' for i in ids]
        assert [line.split()[0][-15:-4] for line in lines] == ids  # the reference's id slice


def test_masks_decode_to_classes_with_borders(voc):
    for image_id in read_ids(voc, 'trainval'):
        seg = label_png(voc, 'SegmentationClass', image_id)
        aug = label_png(voc, 'SegmentationClassAug', image_id)
        with Image.open(os.path.join(voc, 'JPEGImages', f'{image_id}.jpg')) as img:
            assert img.mode == 'RGB' and img.size == (64, 48) and seg.shape == aug.shape == (48, 64)
        assert set(np.unique(seg)) <= set(range(21)) | {255} and 255 in seg
        assert set(np.unique(aug)) <= set(range(21))
        # the border sits exactly where labels change; elsewhere both masks agree
        keep = seg != 255
        assert (seg[keep] == aug[keep]).all()
        changes = np.zeros_like(keep)
        changes[:, 1:] |= aug[:, 1:] != aug[:, :-1]
        changes[1:, :] |= aug[1:, :] != aug[:-1, :]
        assert not keep[changes].any()


def check_labels_agree(root, width, height):
    """cls_labels.npy, both mask folders and the XML name the same classes for every id."""
    cls = load_cls(root)
    ids = read_ids(root, 'trainval')
    assert sorted(cls) == sorted(ids)
    for image_id in ids:
        label = cls[image_id]
        assert label.dtype == np.float32 and label.shape == (20,) and label.sum() >= 1
        present = set(np.flatnonzero(label))
        for folder in ('SegmentationClass', 'SegmentationClassAug'):
            in_mask = set(np.unique(label_png(root, folder, image_id))) - {0, 255}
            assert {c - 1 for c in in_mask} == present, (folder, image_id)
        tree, objects = xml_objects(root, image_id)
        assert tree.findtext('filename') == f'{image_id}.jpg'
        assert (tree.findtext('size/width'), tree.findtext('size/height')) == (str(width), str(height))
        assert {VOC_NAMES.index(o.findtext('name')) for o in objects} == present
        for o in objects:
            box = [int(o.findtext(f'bndbox/{k}')) for k in ('xmin', 'ymin', 'xmax', 'ymax')]
            assert 1 <= box[0] <= box[2] <= width and 1 <= box[1] <= box[3] <= height
    return cls


def test_cls_labels_agree_with_masks_and_xml(voc):
    cls = check_labels_agree(voc, 64, 48)
    lists = [os.path.join(voc, 'lists', f'{name}.txt') for name in ('train_aug', 'val')]
    from_xml = make_cls_labels(voc, lists)  # the data helper's builder, reading only the XML
    assert sorted(from_xml) == sorted(cls) and all(np.array_equal(from_xml[i], cls[i]) for i in cls)


def test_demo_dataset(tmp_path):
    root = synthetic.make_demo(str(tmp_path), n_train=10, n_val=4, size=96, seed=2)
    assert len(read_ids(root, 'train')) == 10 and len(read_ids(root, 'val')) == 4
    cls = check_labels_agree(root, 96, 96)
    assert set(np.flatnonzero(sum(cls.values()))) <= set(synthetic.DEMO_CLASSES)
    assert len(synthetic.DEMO_CLASSES) == 6


def test_deterministic_from_seed(tmp_path):
    def snapshot(root):
        ids = read_ids(root, 'trainval')
        pngs = {i: open(os.path.join(root, 'SegmentationClass', f'{i}.png'), 'rb').read() for i in ids}
        return ids, pngs, load_cls(root)

    a = snapshot(synthetic.make_voc(str(tmp_path / 'a'), n_train=4, n_val=2, seed=7))
    b = snapshot(synthetic.make_voc(str(tmp_path / 'b'), n_train=4, n_val=2, seed=7))
    c = snapshot(synthetic.make_voc(str(tmp_path / 'c'), n_train=4, n_val=2, seed=8))
    assert a[0] == b[0] and a[1] == b[1]
    assert all(np.array_equal(a[2][i], b[2][i]) for i in a[0])
    assert a[0] != c[0] or a[1] != c[1]


def test_class_subset_and_size_range(tmp_path):
    root = synthetic.make_voc(str(tmp_path), n_train=6, n_val=2, size=((40, 60), (30, 50)), classes=[4, 14], seed=1)
    cls = load_cls(root)
    assert set(np.flatnonzero(sum(cls.values()))) <= {4, 14}
    for image_id in cls:
        w, h = Image.open(os.path.join(root, 'JPEGImages', f'{image_id}.jpg')).size
        assert 40 <= w <= 60 and 30 <= h <= 50
        assert label_png(root, 'SegmentationClass', image_id).shape == (h, w)
    with pytest.raises(ValueError):
        synthetic.make_voc(str(tmp_path / 'bad'), classes=[20])


def test_cli(tmp_path):
    subprocess.run([sys.executable, '-m', 'voc12.synthetic', '--root', str(tmp_path), '--n_train', '3',
                    '--n_val', '2', '--seed', '5'], check=True, cwd=REPO, capture_output=True)
    assert len(read_ids(str(tmp_path), 'train')) == 3 and len(load_cls(str(tmp_path))) == 5


@pytest.fixture(scope='module')
def hard(tmp_path_factory):
    return synthetic.make_demo(str(tmp_path_factory.mktemp('hard')), n_train=20, n_val=8, seed=4, preset='hard')


def test_hard_layout_labels_and_determinism(hard, tmp_path):
    assert len(read_ids(hard, 'train')) == 20 and len(read_ids(hard, 'val')) == 8
    cls = check_labels_agree(hard, 128, 128)
    assert set(np.flatnonzero(sum(cls.values()))) <= set(synthetic.DEMO_CLASSES)
    again = synthetic.make_demo(str(tmp_path / 'a'), n_train=20, n_val=8, seed=4, preset='hard')
    other = synthetic.make_demo(str(tmp_path / 'b'), n_train=20, n_val=8, seed=5, preset='hard')
    for folder, ext in (('JPEGImages', 'jpg'), ('SegmentationClass', 'png')):
        for i in read_ids(hard, 'trainval'):
            a, b = (open(os.path.join(r, folder, f'{i}.{ext}'), 'rb').read() for r in (hard, again))
            assert a == b
    assert read_ids(other, 'trainval') != read_ids(hard, 'trainval')
    with pytest.raises(synthetic.UserError, match='preset'):
        synthetic.make_demo(str(tmp_path / 'c'), preset='easy')


def hard_images(root):
    for i in read_ids(root, 'trainval'):
        image = np.asarray(Image.open(os.path.join(root, 'JPEGImages', f'{i}.jpg')), np.float32) / 255
        yield image, label_png(root, 'SegmentationClassAug', i)


def test_hard_features_are_present(hard):
    hue = {}  # class -> median colour of each object's saturated pixels
    touching = holed = thin = 0
    for image, label in hard_images(hard):
        touching += bool(np.concatenate([label[0], label[-1], label[:, 0], label[:, -1]]).any())
        mx, mn = image.max(2), image.min(2)
        saturated = (mx - mn) > 0.3 * mx  # the class colour, not the white pattern or the dull background
        for c in set(np.unique(label)) - {0}:
            mask = label == c
            hue.setdefault(c - 1, []).append(np.median(image[mask & saturated], 0))
            holed += bool((ndimage.binary_fill_holes(mask) & (label == 0)).sum() > 20)
            opened = ndimage.binary_opening(mask, np.ones((7, 7), bool))
            thin += bool((mask & ~opened).sum() > 0.4 * mask.sum())
    assert touching >= 0.3 * 28 and holed >= 2 and thin >= 2, (touching, holed, thin)

    def hue_of(k):
        return colorsys.rgb_to_hsv(*np.median(hue[synthetic.DEMO_CLASSES[k]], 0))[0]

    def distance(a, b):
        d = abs(hue_of(a) - hue_of(b)) % 1
        return min(d, 1 - d)
    # classes 0 and 1, 2 and 3 share a colour; other classes are a quarter of the hue circle apart
    assert distance(0, 1) < 0.05 and distance(2, 3) < 0.05, (distance(0, 1), distance(2, 3))
    assert min(distance(0, 2), distance(0, 4), distance(2, 5), distance(4, 5)) > 0.15


def test_demo_coco_masks_decode_with_pycocotools(tmp_path):
    """make_demo_coco: each annotation's RLE, decoded by pycocotools, is the object's drawn mask (area and bbox
    agree with it); the scenes are other draws than make_demo's; the data layer reads the set by its categories."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from tool.coco import COCOSegDataset, read_categories
    root = synthetic.make_demo_coco(str(tmp_path / 'coco'), n_images=5, size=64, seed=3)
    coco = COCO(os.path.join(root, 'annotations_trainval2017', 'annotations', 'instances_train2017.json'))
    names = read_lines(os.path.join(root, 'categories'))
    assert names == [VOC_NAMES[c] for c in synthetic.DEMO_CLASSES]
    assert sorted(c['name'] for c in coco.loadCats(coco.getCatIds())) == sorted(names + ['person'])
    voc = synthetic.make_demo(str(tmp_path / 'voc'), n_train=5, n_val=0, size=64, seed=3)
    for k, img_id in enumerate(sorted(coco.getImgIds())):
        info = coco.loadImgs(img_id)[0]
        with Image.open(os.path.join(root, 'train2017', info['file_name'])) as img:
            assert img.size == (info['width'], info['height'])
            coco_pixels = np.asarray(img)
        rng = np.random.default_rng([3, 1, k])
        _, label, objects = synthetic._demo_scene(rng, 64, synthetic.PRESETS['demo'], 2)
        h, w = label.shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        assert len(anns) == len(objects) > 0
        for ann, (c, drawn) in zip(anns, objects):
            decoded = mask_utils.decode(mask_utils.frPyObjects(ann['segmentation'], h, w))
            np.testing.assert_array_equal(decoded.astype(bool), drawn)
            assert np.array_equal(coco.annToMask(ann), decoded) and ann['area'] == drawn.sum()
            np.testing.assert_allclose(ann['bbox'], mask_utils.toBbox(mask_utils.encode(np.asfortranarray(decoded))))
            assert coco.loadCats(ann['category_id'])[0]['name'] == VOC_NAMES[c]
        voc_id = read_ids(voc, 'train')[k]
        with Image.open(os.path.join(voc, 'JPEGImages', f'{voc_id}.jpg')) as img:
            assert img.size != (w, h) or not np.array_equal(np.asarray(img), coco_pixels)
    ds = COCOSegDataset(root, 'train2017', read_categories(os.path.join(root, 'categories')))
    assert ds.num_classes == len(names) + 1 and len(ds) > 0
    _, label, seg = ds[0]
    assert label.tolist() == seg.reshape(seg.shape[0], -1).amax(1).tolist()
