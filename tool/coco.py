"""COCO instances on pycocotools for the segmentation-from-localization segmenter.

Layout (as the original): <cocoRoot>/annotations_trainval2017/annotations/instances_<dataType>.json and
<cocoRoot>/<dataType>/<file_name>. Channel 0 is always person; the categories named in the --categories file
follow in file order. An image is kept iff it holds an instance of one of those (non-person) categories.
"""
import contextlib
import io
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tool.imutils import ColorJitter
from tool.io import UserError, require_file

PERSON_ID = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def annotation_path(coco_root, data_type):
    return os.path.join(coco_root, 'annotations_trainval2017', 'annotations', f'instances_{data_type}.json')


def read_categories(path):
    """Category names, one per line (blank lines ignored)."""
    with open(require_file(path, '--categories file')) as f:
        names = [line.strip() for line in f]
    return [name for name in names if name]


def load_coco(coco_root, data_type):
    from pycocotools.coco import COCO
    path = require_file(annotation_path(coco_root, data_type), f'COCO annotations for --dataType {data_type}')
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(path)


def class_index_map(coco, categories):
    """{COCO category id: channel}: person -> 0, then the named categories -> 1..len(categories)."""
    id_of_name = {cat['name']: cat['id'] for cat in coco.loadCats(coco.getCatIds())}
    unknown = [name for name in categories if name not in id_of_name]
    if unknown:
        raise UserError(f'--categories: {unknown} are not COCO category names of this annotation file')
    index_map = {PERSON_ID: 0}
    for channel, name in enumerate(categories, start=1):
        index_map[id_of_name[name]] = channel
    return index_map


def select_images(coco, index_map):
    """Image ids (annotation-file order) holding at least one instance of a non-person selected category."""
    kept = []
    for img_id in coco.getImgIds():
        cats = {ann['category_id'] for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id))}
        if any(cat != PERSON_ID and cat in index_map for cat in cats):
            kept.append(img_id)
    return kept


def union_masks(coco, img_id, index_map, hw):
    """(K, H, W) float32: per channel the union of its instance masks (crowd included), clipped to [0, 1]."""
    seg = np.zeros((len(index_map),) + tuple(hw), np.float32)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
        if ann['category_id'] in index_map:
            seg[index_map[ann['category_id']]] += coco.annToMask(ann)
    return np.clip(seg, 0, 1)


def labels_from_masks(seg):
    """Image-level labels of a (K, H, W) mask stack: 1 where the class mask is non-empty."""
    return seg.reshape(seg.shape[0], -1).amax(dim=1)


def normalize_image(img):
    """PIL RGB -> (3, H, W) float32 tensor: /255 then ImageNet mean/std."""
    arr = torch.from_numpy(np.asarray(img, np.float32) / 255.).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (arr - mean) / std


def resize_crop(img, seg, crop_size, scale):
    """Resize image (bilinear) and masks (nearest) by `scale`, then a random crop_size crop.

    As torchvision's RandomCrop(pad_if_needed=True): a side shorter than crop_size is zero-padded by
    (crop_size - side) on both ends before the crop.
    """
    h, w = int(img.shape[1] * scale), int(img.shape[2] * scale)
    img = F.interpolate(img[None], size=(h, w), mode='bilinear', align_corners=False)[0]
    seg = F.interpolate(seg[None], size=(h, w), mode='nearest')[0]
    stack = torch.cat((img, seg))
    pad_w, pad_h = max(crop_size - w, 0), max(crop_size - h, 0)
    stack = F.pad(stack, (pad_w, pad_w, pad_h, pad_h))
    top = int(torch.randint(0, stack.shape[1] - crop_size + 1, size=(1,)))
    left = int(torch.randint(0, stack.shape[2] - crop_size + 1, size=(1,)))
    stack = stack[:, top:top + crop_size, left:left + crop_size]
    return stack[:3], stack[3:]


class COCOSegDataset(torch.utils.data.Dataset):
    """(image (3,H,W), labels (K,), union masks (K,H,W)) of the kept COCO images.

    augment: colour jitter 0.3/0.3/0.3/0.1, horizontal flip, resize by a scale and random crop_size crop;
    the scale is drawn from U(max_scale, max_scale) as the original (always 1.3) unless fix_scale_bug, then
    from U(min_scale, max_scale). Labels are recomputed from the masks after the crop.
    """

    def __init__(self, coco_root, data_type, categories, crop_size=None, augment=False, min_scale=0.7,
                 max_scale=1.3, fix_scale_bug=False):
        self.coco = load_coco(coco_root, data_type)
        self.image_dir = os.path.join(coco_root, data_type)
        self.index_map = class_index_map(self.coco, categories)
        self.img_ids = select_images(self.coco, self.index_map)
        if not self.img_ids:
            raise UserError(f'--cocoRoot {coco_root}: no image of {data_type} holds one of the categories {categories}')
        self.crop_size = crop_size
        self.augment = augment
        self.scale_range = (min_scale if fix_scale_bug else max_scale, max_scale)
        self.jitter = ColorJitter(0.3, 0.3, 0.3, 0.1)

    @property
    def num_classes(self):
        return len(self.index_map)

    def __len__(self):
        return len(self.img_ids)

    def __getitem__(self, idx):
        img_id = self.img_ids[idx]
        info = self.coco.loadImgs(img_id)[0]
        img = Image.open(require_file(os.path.join(self.image_dir, info['file_name']), 'COCO image')).convert('RGB')
        seg = torch.from_numpy(union_masks(self.coco, img_id, self.index_map, (img.height, img.width)))
        if self.augment:
            img = self.jitter(img)
        img = normalize_image(img)
        if self.augment:
            if torch.rand(1) < 0.5:  # torchvision's RandomHorizontalFlip draw
                img, seg = img.flip(-1), seg.flip(-1)
            img, seg = resize_crop(img, seg, self.crop_size, random.uniform(*self.scale_range))
        return img, labels_from_masks(seg), seg
