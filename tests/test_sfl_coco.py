"""tool/coco.py against the original COCO data layer's numbers (sfl_coco fixture) and on a COCO-layout set it writes."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip('pycocotools')
from tool.coco import COCOSegDataset, read_categories, resize_crop  # noqa: E402
from tool.io import UserError  # noqa: E402

FIXTURE = '/work/shared/fixtures/sfl_coco'
HERE = os.path.join(os.path.dirname(__file__), 'fixtures', 'sfl_coco')
ROOT = HERE if os.path.isdir(HERE) else FIXTURE


@pytest.fixture(scope='module')
def reference():
    return np.load(os.path.join(ROOT, 'data_layer.npz'))


@pytest.fixture(scope='module')
def dataset():
    return COCOSegDataset(ROOT, 'train2017', read_categories(os.path.join(ROOT, 'categories')))


def test_subset_and_index_map(dataset, reference):
    assert dataset.img_ids == reference['img_list'].tolist()
    assert sorted(dataset.index_map.items()) == sorted(map(tuple, reference['index_map'].tolist()))
    assert dataset.num_classes == int(reference['class_counter'])


def test_items_equal_original(dataset, reference):
    for idx, img_id in enumerate(dataset.img_ids):
        img, label, seg = dataset[idx]
        np.testing.assert_allclose(img.numpy(), reference[f'img_{img_id}'], atol=1e-6)
        np.testing.assert_array_equal(label.numpy(), reference[f'label_{img_id}'])
        np.testing.assert_array_equal(seg.numpy(), reference[f'seg_{img_id}'])


def test_ann_masks_equal_original(dataset, reference):
    for ann_id in reference['ann_table'][:, 0]:
        ann = dataset.coco.loadAnns(int(ann_id))[0]
        np.testing.assert_array_equal(dataset.coco.annToMask(ann), reference[f'annmask_{ann_id}'])


def test_labels_recomputed_after_crop():
    img = torch.zeros(3, 10, 10)
    seg = torch.zeros(2, 10, 10)
    seg[0, :, :] = 1
    seg[1, 0, 0] = 1   # only the top-left pixel: gone after any crop that leaves it out
    torch.manual_seed(0)
    crops = [resize_crop(img, seg, 4, 1.0)[1] for _ in range(20)]
    assert all(c.shape == (2, 4, 4) for c in crops)
    assert any(c[1].amax() == 0 for c in crops) and all(c[0].amin() == 1 for c in crops)


def _polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_tiny_coco(root):
    """Three images; cat 3 (car) and 18 (dog) selected, 1 person, 62 chair not selected."""
    os.makedirs(os.path.join(root, 'train2017'))
    os.makedirs(os.path.join(root, 'annotations_trainval2017', 'annotations'))
    rng = np.random.RandomState(0)
    images, anns = [], []
    specs = {7: [(3, (2, 2, 10, 10)), (3, (6, 6, 14, 14)), (1, (0, 0, 4, 19))],
             8: [(62, (1, 1, 9, 9))],
             9: [(18, (4, 4, 16, 12)), (62, (0, 0, 5, 5))]}
    for img_id, objs in specs.items():
        name = f'{img_id:012d}.png'
        Image.fromarray(rng.randint(0, 256, (20, 24, 3), dtype=np.uint8)).save(os.path.join(root, 'train2017', name))
        images.append({'id': img_id, 'file_name': name, 'height': 20, 'width': 24})
        for cat, box in objs:
            x0, y0, x1, y1 = box
            anns.append({'id': len(anns) + 1, 'image_id': img_id, 'category_id': cat, 'iscrowd': 0,
                         'segmentation': _polygon(*box), 'area': float((x1 - x0) * (y1 - y0)),
                         'bbox': [x0, y0, x1 - x0, y1 - y0]})
    cats = [{'id': 1, 'name': 'person', 'supercategory': 'person'},
            {'id': 3, 'name': 'car', 'supercategory': 'vehicle'},
            {'id': 18, 'name': 'dog', 'supercategory': 'animal'},
            {'id': 62, 'name': 'chair', 'supercategory': 'furniture'}]
    with open(os.path.join(root, 'annotations_trainval2017', 'annotations', 'instances_train2017.json'), 'w') as f:
        json.dump({'info': {}, 'licenses': [], 'images': images, 'annotations': anns, 'categories': cats}, f)
    with open(os.path.join(root, 'categories'), 'w') as f:
        f.write('car\ndog\n')


def test_tiny_written_set(tmp_path):
    write_tiny_coco(str(tmp_path))
    ds = COCOSegDataset(str(tmp_path), 'train2017', read_categories(str(tmp_path / 'categories')))
    assert ds.img_ids == [7, 9]
    img, label, seg = ds[0]
    assert img.shape == (3, 20, 24) and seg.shape == (3, 20, 24)
    assert label.tolist() == [1, 1, 0]
    assert seg.max() == 1  # the two overlapping cars are clipped to 1
    assert seg[1].sum() > 0 and seg[2].sum() == 0
    assert ds[1][1].tolist() == [0, 0, 1]
    aug = COCOSegDataset(str(tmp_path), 'train2017', ['car', 'dog'], crop_size=16, augment=True)
    img, label, seg = aug[0]
    assert img.shape == (3, 16, 16) and seg.shape == (3, 16, 16)
    assert label.tolist() == seg.reshape(3, -1).amax(1).tolist()


def test_unknown_category(tmp_path):
    write_tiny_coco(str(tmp_path))
    with pytest.raises(UserError, match='--categories'):
        COCOSegDataset(str(tmp_path), 'train2017', ['unicorn'])
