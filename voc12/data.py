"""PASCAL VOC 2012 data layer of the reference: id lists, image-level labels, datasets, affinity labels."""
import os
import xml.etree.ElementTree as ET
from itertools import zip_longest

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tool import imutils
from tool.io import (
    UserError,
    check_image,
    load_dict_npy,
    load_image,
    load_label_png,
    require_dir,
    require_file,
    require_files,
)
from tool.metrics import check_labels
from tool.pyutils import pair_offsets

CAT_LIST = ['aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
            'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
            'tvmonitor']
CAT_NAME_TO_NUM = {name: i for i, name in enumerate(CAT_LIST)}
N_CLASSES = len(CAT_LIST)
IGNORE = 255

IMG_FOLDER_NAME = 'JPEGImages'
SB_MAP_FOLDER_NAME = 'sb_map'  # SBNet's boundary maps <id>.npy
ANNOT_FOLDER_NAME = 'Annotations'
VOC12_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CLS_LABELS = os.path.join(VOC12_DIR, 'cls_labels.npy')


# ------------------------------------------------------------------------------ lists and labels

def load_img_name_list(path):
    """Image ids of a list file: '/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png' or '<id>' lines."""
    require_file(path, 'image list')
    names = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            name = os.path.splitext(os.path.basename(fields[0]))[0]
            if len(fields) > 2 or not name:
                raise UserError(f'{path}:{lineno}: bad list entry {line.strip()!r} (expected "<id>" or '
                                '"/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png")')
            names.append(name)
    if not names:
        raise UserError(f'{path} lists no images (one id or "/JPEGImages/<id>.jpg ..." line per image)')
    return names


def load_cls_labels(path=None):
    """Image-level labels {id: float32[20]}; `path` None = voc12/cls_labels.npy beside this module, or a dict."""
    if isinstance(path, dict):
        return path
    path = DEFAULT_CLS_LABELS if path is None else path
    return load_dict_npy(path, str, 'image-level labels')


def load_image_label_list_from_npy(img_name_list, cls_labels=None):
    """float32[20] labels of the ids, in order; `cls_labels` is a path, a dict or None (the default file)."""
    labels = load_cls_labels(cls_labels)
    missing = [name for name in img_name_list if name not in labels]
    if missing:
        where = 'the given label dict' if isinstance(cls_labels, dict) else cls_labels or DEFAULT_CLS_LABELS
        raise UserError(f'{len(missing)} listed images have no image-level label in {where} '
                        f'(first: {missing[0]}); pass --cls_labels for this dataset')
    return [np.asarray(labels[name], dtype=np.float32) for name in img_name_list]


def load_image_label_from_xml(img_name, voc12_root):
    """Multi-hot float32[20] from the <object><name> entries of Annotations/<id>.xml."""
    path = require_file(os.path.join(voc12_root, ANNOT_FOLDER_NAME, img_name + '.xml'), 'annotation')
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise UserError(f'corrupt annotation {path}: {e} (re-extract the VOC archive)')
    label = np.zeros(N_CLASSES, np.float32)
    for element in root.iterfind('object/name'):
        name = (element.text or '').strip()
        if name not in CAT_NAME_TO_NUM:
            raise UserError(f'{path}: unknown class name {name!r} (expected one of the 20 VOC classes)')
        label[CAT_NAME_TO_NUM[name]] = 1.0
    return label


def get_img_path(img_name, voc12_root):
    return os.path.join(voc12_root, IMG_FOLDER_NAME, img_name + '.jpg')


def check_images(list_path, img_dir, folder_what='JPEGImages (under --voc12_root)'):
    """{id: (height, width)} of img_dir/<id>.jpg for the ids of a list file; a missing or corrupt image
    stops the run here, before a stage writes anything (a few ms an image)."""
    names = load_img_name_list(list_path)
    require_dir(img_dir, folder_what)
    paths = [os.path.join(img_dir, name + '.jpg') for name in names]
    require_files(paths, f'images of {list_path}', 'check the image folder and the list')
    return {name: check_image(path) for name, path in zip(names, paths)}


def check_crf_dicts(sizes, crf_dirs):
    """Read every CRF dict of the ids in `sizes` ({id: (height, width)}) from each folder of `crf_dirs`
    ({flag: folder}) and check its keys and sizes, so that a bad file stops train_aff before training."""
    for flag, folder in crf_dirs.items():
        require_files([os.path.join(folder, name + '.npy') for name in sizes], f'CRF dicts of {flag}',
                      'rerun infer_cls with --out_la_crf / --out_ha_crf for this list')
        for name, size_hw in sizes.items():
            load_score_stack(os.path.join(folder, name + '.npy'), size_hw)


def load_checked_label(path, size_hw):
    """Label PNG as HxW uint8, checked: values 0..20 or 255, same size as its image."""
    label = load_label_png(path)
    if label.shape != tuple(size_hw):
        raise UserError(f'{path}: label is {label.shape[1]}x{label.shape[0]} but its image is '
                        f'{size_hw[1]}x{size_hw[0]} (labels must have the size of their image)')
    check_labels(label, N_CLASSES + 1, path)
    return label


# ----------------------------------------------------------------------------- affinity labels

class ExtractAffinityLabelInRadius:
    """Affinity labels of all pixel pairs within `radius` (spec section 4) from an HxW label map.

    Returns float32 tensors bg_pos (both background), fg_pos (same foreground class, both valid) and
    neg (different classes, both valid), each (number of offsets, number of "from" pixels). The map's
    own size is used; `cropsize` (its side in the reference) is kept for the reference signature.
    """

    def __init__(self, cropsize, radius=5):
        self.cropsize = cropsize
        self.radius = radius
        self.search_dst = pair_offsets(radius)
        self.radius_floor = radius - 1

    def __call__(self, label):
        r = self.radius_floor
        h, w = label.shape
        crop_h, crop_w = h - r, w - 2 * r
        labels_from = label[:crop_h, r:r + crop_w].reshape(1, -1)
        labels_to = np.stack([label[dy:dy + crop_h, r + dx:r + dx + crop_w].reshape(-1)
                              for dy, dx in self.search_dst])
        valid = (labels_to < IGNORE) & (labels_from < IGNORE)
        pos = labels_to == labels_from
        bg_pos = pos & (labels_from == 0)
        fg_pos = pos & (labels_from != 0) & valid
        neg = ~pos & valid
        return tuple(torch.from_numpy(a.astype(np.float32)) for a in (bg_pos, fg_pos, neg))


def apply_transform_lists(img, label, joint_transforms, img_transforms, label_transforms):
    """The reference's step-wise augmentation. At each step the joint transform sees the image and the
    label channels concatenated (HxWx(3+C)), then the image and label transforms run separately."""
    for joint, img_t, label_t in zip_longest(joint_transforms or [], img_transforms or [],
                                             label_transforms or []):
        if joint:
            img_label = joint(np.concatenate((img, label), axis=-1))
            img, label = img_label[..., :3], img_label[..., 3:]
        if img_t:
            img = img_t(img)
        if label_t:
            label = label_t(label)
    return img, label


# ------------------------------------------------------------------------------------- datasets

class VOC12ImageDataset(Dataset):
    """(id, PIL RGB image or transform(image)) for the ids of a list file."""

    def __init__(self, img_name_list_path, voc12_root, transform=None):
        self.img_name_list = load_img_name_list(img_name_list_path)
        self.voc12_root = voc12_root
        self.transform = transform
        require_dir(os.path.join(voc12_root, IMG_FOLDER_NAME), 'JPEGImages (under --voc12_root)')

    def __len__(self):
        return len(self.img_name_list)

    def __getitem__(self, idx):
        name = self.img_name_list[idx]
        img = Image.fromarray(load_image(get_img_path(name, self.voc12_root)))
        if self.transform:
            img = self.transform(img)
        return name, img


class VOC12ClsDataset(VOC12ImageDataset):
    """(id, image, float32[20] label tensor)."""

    def __init__(self, img_name_list_path, voc12_root, transform=None, cls_labels=None):
        super().__init__(img_name_list_path, voc12_root, transform)
        self.label_list = load_image_label_list_from_npy(self.img_name_list, cls_labels)

    def __getitem__(self, idx):
        name, img = super().__getitem__(idx)
        return name, img, torch.from_numpy(self.label_list[idx])


def missing_sb_map(path):
    return UserError(f'SBNet boundary map not found: {path} (make the folder with make_sb_map.py or '
                     'point --sb_map_dir at it)')


def load_sb_map(path, size_hw):
    """SBNet's boundary map: float (21, H, W) for an image of size_hw, as in the .npy."""
    if not os.path.isfile(path):
        raise missing_sb_map(path)
    sb_map = np.load(path)
    if sb_map.shape != (N_CLASSES + 1,) + tuple(size_hw):
        raise UserError(f'{path}: boundary map of shape {sb_map.shape}, the image needs '
                        f'{(N_CLASSES + 1,) + tuple(size_hw)} (remake it with make_sb_map.py)')
    return sb_map


class VOC12ClsSBDataset(VOC12ClsDataset):
    """SBNet's training set: (id, image, label, boundary map), joint_transform(PIL image, (21, H, W) map) ->
    (image, map) tensors; with `edges` (a function of the transformed image) its result is appended, so the
    Canny map is computed in the loader workers."""

    def __init__(self, img_name_list_path, voc12_root, sb_map_dir, joint_transform, cls_labels=None, edges=None):
        super().__init__(img_name_list_path, voc12_root, cls_labels=cls_labels)
        self.sb_map_dir = sb_map_dir
        self.joint_transform = joint_transform
        self.edges = edges
        missing = next((p for p in map(self.sb_map_path, self.img_name_list) if not os.path.isfile(p)), None)
        if missing:
            raise missing_sb_map(missing)

    def sb_map_path(self, name):
        return os.path.join(self.sb_map_dir, name + '.npy')

    def __getitem__(self, idx):
        name, img, label = super().__getitem__(idx)
        img, sb_map = self.joint_transform(img, load_sb_map(self.sb_map_path(name), img.size[::-1]))
        item = (name, img, label, sb_map)
        return item + (self.edges(img),) if self.edges else item


def multiscale_flip(img, scales, inter_transform=None, unit=1):
    """[scale 0, scale 0 flipped, scale 1, ...] of a PIL image: bicubic resizes of its size rounded to
    `unit`, each passed through inter_transform and then flipped along the last axis (width of CHW)."""
    w, h = img.size
    rounded_w, rounded_h = int(round(w / unit) * unit), int(round(h / unit) * unit)
    out = []
    for s in scales:
        s_img = img.resize((round(rounded_w * s), round(rounded_h * s)), resample=Image.BICUBIC)
        if inter_transform:
            s_img = inter_transform(s_img)
        if isinstance(s_img, Image.Image):
            flipped = s_img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            flipped = np.flip(s_img, -1).copy()
        out += [s_img, flipped]
    return out


class VOC12ClsDatasetMSF(VOC12ClsDataset):
    """(id, multi-scale + flip list (see multiscale_flip), label) for infer_cls."""

    def __init__(self, img_name_list_path, voc12_root, scales, inter_transform=None, unit=1, cls_labels=None):
        super().__init__(img_name_list_path, voc12_root, transform=None, cls_labels=cls_labels)
        self.scales = scales
        self.unit = unit
        self.inter_transform = inter_transform

    def __getitem__(self, idx):
        name, img, label = super().__getitem__(idx)
        return name, multiscale_flip(img, self.scales, self.inter_transform, self.unit), label


def load_score_stack(path, size_hw):
    """A CRF dict {0: bg, k+1: class k} as (sorted keys uint8, HxWxK float32 stack)."""
    scores = load_dict_npy(path)
    keys = sorted(scores)
    if not keys or keys[0] != 0:
        raise UserError(f'{path} has no background score (key 0); expected a CRF dict written by '
                        'infer_cls --out_la_crf/--out_ha_crf')
    for k in keys:
        if np.shape(scores[k]) != tuple(size_hw):
            raise UserError(f'{path}: score map {k} is {np.shape(scores[k])} but the image is {tuple(size_hw)} '
                            '(rerun infer_cls for this image)')
    return np.array(keys, np.uint8), np.stack([scores[k] for k in keys], axis=-1).astype(np.float32)


class _AffinityLabelDataset(VOC12ImageDataset):
    """Images with the transform lists of apply_transform_lists and the radius-`radius` pair labels."""

    def __init__(self, img_name_list_path, cropsize, voc12_root, radius, joint_transform_list,
                 img_transform_list, label_transform_list):
        super().__init__(img_name_list_path, voc12_root)
        self.joint_transform_list = joint_transform_list
        self.img_transform_list = img_transform_list
        self.label_transform_list = label_transform_list
        self.extract_aff_lab_func = ExtractAffinityLabelInRadius(cropsize=cropsize // 8, radius=radius)

    def apply_transforms(self, img, label_like):
        return apply_transform_lists(img, label_like, self.joint_transform_list, self.img_transform_list,
                                     self.label_transform_list)


class VOC12AffDataset(_AffinityLabelDataset):
    """(image, (bg_pos, fg_pos, neg)) for train_aff, from the la and ha CRF dicts of infer_cls.

    The score stacks travel with the image through the joint transforms (crop, flip) and are pooled by the
    label transforms (8x8 mean). Then: confident foreground from la, confident background from ha, the
    rest and the crop padding (no score) ignored.
    """

    def __init__(self, img_name_list_path, label_la_dir, label_ha_dir, cropsize, voc12_root, radius=5,
                 joint_transform_list=None, img_transform_list=None, label_transform_list=None):
        super().__init__(img_name_list_path, cropsize, voc12_root, radius, joint_transform_list,
                         img_transform_list, label_transform_list)
        self.label_la_dir = label_la_dir
        self.label_ha_dir = label_ha_dir

    def __getitem__(self, idx):
        name, img = super().__getitem__(idx)
        size_hw = (img.size[1], img.size[0])
        la_keys, la = load_score_stack(os.path.join(self.label_la_dir, name + '.npy'), size_hw)
        ha_keys, ha = load_score_stack(os.path.join(self.label_ha_dir, name + '.npy'), size_hw)
        img, scores = self.apply_transforms(img, np.concatenate((la, ha), axis=-1))
        no_score = np.max(scores, axis=-1) < 1e-5
        label_la = la_keys[np.argmax(scores[..., :len(la_keys)], axis=-1)]
        label_ha = ha_keys[np.argmax(scores[..., len(la_keys):], axis=-1)]
        label = label_la.copy()
        label[label_la == 0] = IGNORE
        label[label_ha == 0] = 0
        label[no_score] = IGNORE  # mostly the padding of the crop
        return img, self.extract_aff_lab_func(label)


class VOC12AffGtDataset(_AffinityLabelDataset):
    """(image, (bg_pos, fg_pos, neg)) from ground-truth label PNGs in label_dir.

    The label channel travels through the joint transforms as label + 1, so that the zero padding of a
    crop becomes 255 (ignored). The label transforms must keep values exact (e.g. RescaleNearest(1/8)).
    """

    def __init__(self, img_name_list_path, label_dir, cropsize, voc12_root, radius=5,
                 joint_transform_list=None, img_transform_list=None, label_transform_list=None):
        super().__init__(img_name_list_path, cropsize, voc12_root, radius, joint_transform_list,
                         img_transform_list, label_transform_list)
        self.label_dir = label_dir

    def __getitem__(self, idx):
        name, img = super().__getitem__(idx)
        label = load_checked_label(os.path.join(self.label_dir, name + '.png'), (img.size[1], img.size[0]))
        shifted = label[..., None].astype(np.float32) + 1
        img, shifted = self.apply_transforms(img, shifted)
        shifted = shifted[..., 0]
        label = np.where(shifted < 0.5, IGNORE, shifted - 1).astype(np.uint8)
        return img, self.extract_aff_lab_func(label)


class SegmentationDataset(Dataset):
    """(id, CHW image, HxW int64 mask with 255 ignore) for train_seg.

    Steps: optional joint random flip, joint RandomResizeImageAndMask(*rescale) (image bicubic, mask
    nearest), img_transform on the PIL image (colour jitter, normalize), mask_transform, then a joint
    random crop to cropsize padding the image with 0 and the mask with 255.
    """

    def __init__(self, img_name_list_path, img_dir, label_dir, rescale=None, flip=False, cropsize=None,
                 img_transform=None, mask_transform=None):
        self.img_name_list = load_img_name_list(img_name_list_path)
        self.img_dir = require_dir(img_dir, 'images (--image_dir)')
        self.label_dir = require_dir(label_dir, 'pseudo labels (--mask_dir)')
        self.resize = imutils.RandomResizeImageAndMask(*rescale) if rescale else None
        self.flip = flip
        self.cropsize = cropsize
        self.img_transform = img_transform
        self.mask_transform = mask_transform

    def __len__(self):
        return len(self.img_name_list)

    def __getitem__(self, idx):
        name = self.img_name_list[idx]
        img = load_image(os.path.join(self.img_dir, name + '.jpg'))
        mask = load_checked_label(os.path.join(self.label_dir, name + '.png'), img.shape[:2])
        if self.flip:
            img, mask = imutils.random_hflip([img, mask])
        img = Image.fromarray(img)
        if self.resize:
            img, mask = self.resize(img, mask)
        if self.img_transform:
            img = self.img_transform(img)
        if self.mask_transform:
            mask = self.mask_transform(mask)
        img = np.asarray(img)
        if self.cropsize:  # the seed pads right/bottom first, so a small image sits top-left in the crop
            img = imutils.pad_bottom_right(img, self.cropsize, 0)
            mask = imutils.pad_bottom_right(mask, self.cropsize, IGNORE)
            img, mask = imutils.random_crop([img, mask], self.cropsize, (0, IGNORE))
        return name, np.ascontiguousarray(imutils.HWC_to_CHW(img)), mask.astype(np.int64)


class SegmentationDatasetMSF(Dataset):
    """(id, multi-scale + flip list) for infer_seg: images img_dir/<id>.jpg, see multiscale_flip."""

    def __init__(self, img_name_list_path, img_dir, scales, inter_transform, unit=1):
        self.img_name_list = load_img_name_list(img_name_list_path)
        self.img_dir = require_dir(img_dir, 'images (--image_dir)')
        self.scales = scales
        self.inter_transform = inter_transform
        self.unit = unit

    def __len__(self):
        return len(self.img_name_list)

    def __getitem__(self, idx):
        name = self.img_name_list[idx]
        img = Image.fromarray(load_image(os.path.join(self.img_dir, name + '.jpg')))
        return name, multiscale_flip(img, self.scales, self.inter_transform, self.unit)
