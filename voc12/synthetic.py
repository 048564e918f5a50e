"""Synthetic data in PASCAL VOC 2012 layout, deterministic from a seed (for the tests and the demo).

`make_voc(root, ...)` writes, for ids that look like VOC ids (`2007_000032`):

    root/JPEGImages/<id>.jpg                 RGB image
    root/SegmentationClass/<id>.png          palette PNG, classes 0..20, 255 on object borders (like VOC)
    root/SegmentationClassAug/<id>.png       the same labels without the borders (like SBD)
    root/Annotations/<id>.xml                VOC XML, one <object> per visible object
    root/ImageSets/Segmentation/{train,val,trainval}.txt   bare ids
    root/lists/{train_aug,train,val}.txt     '/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png' lines
    root/cls_labels.npy                      pickled dict id -> float32[20] multi-hot (as voc12/cls_labels.npy)

Every object is a shape (ellipse, rectangle or polygon) filled with a class-specific colour and stripe
texture, on a textured background, so a small network can learn the classes. The image-level labels, the
XML and the masks agree: a class is labelled iff it has pixels in the mask.

CLI: `python -m voc12.synthetic --root DIR --n_train N --n_val M --seed S`.
"""
import argparse
import colorsys
import os
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from tool.io import atomic_save_image, atomic_save_npy, atomic_save_png
from voc12.data import CAT_LIST, N_CLASSES

SHAPES = ('ellipse', 'rectangle', 'polygon')
MIN_VISIBLE = 12  # pixels of an object that must survive occlusion and the 255 border


# ---------------------------------------------------------------- painting

def _grid(h, w):
    return np.mgrid[0:h, 0:w].astype(np.float32)


def _stripes(h, w, angle, period, phase=0.0):
    """A {0,1} stripe pattern: float32 HxW."""
    yy, xx = _grid(h, w)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    return (np.sin(2 * np.pi * t / period + phase) > 0).astype(np.float32)


def _smooth_noise(rng, h, w, cell):
    """Noise in [-1, 1] that varies over about `cell` pixels (a bilinearly upsampled random grid)."""
    small = rng.uniform(-1, 1, (max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode='F').resize((w, h), Image.BILINEAR))


def _background(rng, h, w):
    """A low-saturation textured background: float32 HxWx3 in 0..255."""
    base = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.75)))
    shade = 45 * _smooth_noise(rng, h, w, cell=8)[..., None] + 20 * _smooth_noise(rng, h, w, cell=3)[..., None]
    return np.clip(255 * base + shade + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.float32)


def _checker(h, w, period, phase):
    yy, xx = _grid(h, w)
    return (((yy + phase) // period + (xx + phase) // period) % 2).astype(np.float32)


def _class_look(c):
    """Colour (RGB 0..1) and stripe (angle, period) of class c: distinct hues, distinct stripe directions."""
    colour = np.array(colorsys.hsv_to_rgb(c / N_CLASSES, 0.85, 0.95))
    angle = np.pi * ((7 * c) % N_CLASSES) / N_CLASSES
    period = 4.0 + 2 * (c % 3)
    return colour, angle, period


def _paint(image, mask, colour, rng, texture=None, contrast=0.45):
    """Fill `mask` of `image` (HxWx3 float) with `colour`, darkened where `texture` (HxW in 0..1) is 1."""
    shade = np.ones((int(mask.sum()), 1)) if texture is None else 1 - contrast * texture[mask][:, None]
    fill = 255 * colour * rng.uniform(0.8, 1.1) * shade
    image[mask] = np.clip(fill + rng.normal(0, 5, fill.shape), 0, 255)


def _shape_mask(rng, h, w, shape, cy, cx, ry, rx):
    """Boolean HxW mask of an ellipse, rectangle or polygon centred at (cy, cx) with radii (ry, rx)."""
    canvas = Image.new('L', (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == 'ellipse':
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    elif shape == 'rectangle':
        draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    else:
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radius = rng.uniform(0.6, 1.0, n)
        draw.polygon([(float(cx + rx * r * np.cos(a)), float(cy + ry * r * np.sin(a)))
                      for a, r in zip(angles, radius)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _border(label, width):
    """Pixels within `width` of a change of label (VOC's 255 'void' outline)."""
    size = 2 * width + 1
    return ndimage.maximum_filter(label, size) != ndimage.minimum_filter(label, size)


# ---------------------------------------------------------------- scenes

def _visible_ok(instances, n, border):
    """True when every instance 1..n keeps at least MIN_VISIBLE pixels off the border."""
    interior = np.where(_border(instances, border), 0, instances)
    counts = np.bincount(interior.ravel(), minlength=n + 1)
    return bool((counts[1:n + 1] >= MIN_VISIBLE).all())


def _place_objects(rng, h, w, classes, max_objects, border, tries=50):
    """Random objects [(class, shape mask)] that all stay visible; at least one object."""
    for _ in range(tries):
        n = int(rng.integers(1, max_objects + 1))
        instances = np.zeros((h, w), np.int32)
        objects = []
        for k in range(1, n + 1):
            ry, rx = rng.uniform(0.15, 0.35, 2) * min(h, w)
            cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
            mask = _shape_mask(rng, h, w, SHAPES[rng.integers(len(SHAPES))], cy, cx, ry, rx)
            instances[mask] = k
            objects.append(int(rng.choice(classes)))
        if _visible_ok(instances, n, border):
            return [(c, instances == k) for k, c in enumerate(objects, 1)]
    raise ValueError(f'could not place visible objects in a {w}x{h} image; use a larger size')


def _scene(rng, h, w, classes, max_objects, border):
    """(image uint8 HxWx3, label uint8 HxW without borders, objects [(class, visible mask)])."""
    image = _background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    objects = _place_objects(rng, h, w, classes, max_objects, border)
    for c, mask in objects:
        colour, angle, period = _class_look(c)
        _paint(image, mask, colour, rng, _stripes(h, w, angle, period, rng.uniform(0, 2 * np.pi)))
        label[mask] = c + 1
    return image.round().astype(np.uint8), label, objects


# ---------------------------------------------------------------- demo scenes

# Six classes (cat, dog, cow, sheep, bus, car), each with its own colour. An object is a plain body with a
# round part (a "head") at its rim, in the class colour checkered with white. Clutter blobs of the same
# colours lie around, so a plain patch of colour says little: the checkered part is what identifies an
# object. A classifier's CAMs are therefore strongest next to the part and fade over the rest of the body,
# incomplete as CAMs of real images are. Body and part share their colour, so a colour-driven dCRF and
# the affinities can carry the part's label over the body, as they do on real objects.
DEMO_CLASSES = (7, 11, 9, 16, 5, 6)
_PART_WHITE = np.array([0.95, 0.95, 0.95])  # the part's other squares


def _class_colour(rng, k):
    """Colour of demo class k (index into DEMO_CLASSES): hues 60 degrees apart, a little jitter."""
    return np.array(colorsys.hsv_to_rgb(k / len(DEMO_CLASSES) + rng.uniform(-0.02, 0.02), 0.7, 0.9))


def _demo_object(rng, h, w, k, part_scale):
    """(body mask, part mask, painter) of one demo object; the painter fills an image."""
    ry, rx = rng.uniform(0.16, 0.3, 2) * min(h, w)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    body = _shape_mask(rng, h, w, SHAPES[rng.integers(len(SHAPES))], cy, cx, ry, rx)
    angle = rng.uniform(0, 2 * np.pi)
    pr = rng.uniform(0.8, 1.1) * part_scale * min(ry, rx)
    py = np.clip(cy + 0.9 * ry * np.sin(angle), pr, h - 1 - pr)  # the part stays inside the image
    px = np.clip(cx + 0.9 * rx * np.cos(angle), pr, w - 1 - pr)
    part = _shape_mask(rng, h, w, 'ellipse', py, px, pr, pr)
    checker = _checker(h, w, 5, rng.uniform(0, 5)) > 0
    colour = _class_colour(rng, k)

    def paint(image, body_visible, part_visible):
        _paint(image, body_visible | (part_visible & ~checker), colour, rng)
        _paint(image, part_visible & checker, _PART_WHITE, rng)
    return body & ~part, part, paint


def _distractor(rng, image):
    """Background clutter that looks like a body without a part: plain, in one of the class colours."""
    h, w = image.shape[:2]
    r = rng.uniform(0.1, 0.22, 2) * min(h, w)
    mask = _shape_mask(rng, h, w, SHAPES[rng.integers(len(SHAPES))], rng.uniform(0, h), rng.uniform(0, w), *r)
    _paint(image, mask, _class_colour(rng, int(rng.integers(len(DEMO_CLASSES)))), rng)


def _demo_scene(rng, h, w, max_objects, n_distractors, part_scale, border, tries=50):
    """A demo image: textured background, clutter, 1..max_objects part-bearing objects that stay visible."""
    for _ in range(tries):
        n = int(rng.integers(1, max_objects + 1))
        picks = [int(rng.integers(len(DEMO_CLASSES))) for _ in range(n)]
        objects = [_demo_object(rng, h, w, k, part_scale) for k in picks]
        # instance 2k+1 = body of object k, 2k+2 = its part; later objects occlude earlier ones
        instances = np.zeros((h, w), np.int32)
        for k, (body, part, _) in enumerate(objects):
            instances[body] = 2 * k + 1
            instances[part] = 2 * k + 2
        areas = [m.sum() for body, part, _ in objects for m in (body, part)]
        visible = np.bincount(instances.ravel(), minlength=2 * n + 1)[1:]
        if _visible_ok(instances, 2 * n, border) and (visible >= 0.6 * np.array(areas)).all():
            break
    else:
        raise ValueError(f'could not place visible demo objects in a {w}x{h} image; use a larger size')
    image = _background(rng, h, w)
    for _ in range(int(rng.integers(n_distractors + 1))):
        _distractor(rng, image)
    label = np.zeros((h, w), np.uint8)
    visible_objects = []
    for k, (pick, (_, _, paint)) in enumerate(zip(picks, objects)):
        body_visible, part_visible = instances == 2 * k + 1, instances == 2 * k + 2
        paint(image, body_visible, part_visible)
        c = DEMO_CLASSES[pick]
        label[body_visible | part_visible] = c + 1
        visible_objects.append((c, body_visible | part_visible))
    return image.round().astype(np.uint8), label, visible_objects


def make_demo(root, n_train=600, n_val=100, size=128, seed=0, max_objects=2, n_distractors=2, part_scale=0.6,
              border=2):
    """Write the demo dataset (classes DEMO_CLASSES) in VOC layout into `root`.

    size: square side, an int or an inclusive (lo, hi) range drawn per image (width and height each).
    part_scale: part radius relative to the body's smaller radius.
    """
    def scene(rng):
        w, h = _draw_extent(rng, size), _draw_extent(rng, size)
        return _demo_scene(rng, h, w, max_objects, n_distractors, part_scale, border)
    return _write_dataset(root, n_train, n_val, seed, scene, border)


# ---------------------------------------------------------------- writing

def _annotation_xml(image_id, w, h, objects):
    root = ET.Element('annotation')
    ET.SubElement(root, 'folder').text = 'VOC2012'
    ET.SubElement(root, 'filename').text = f'{image_id}.jpg'
    ET.SubElement(ET.SubElement(root, 'source'), 'database').text = 'synthetic'
    size = ET.SubElement(root, 'size')
    for tag, value in (('width', w), ('height', h), ('depth', 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, 'segmented').text = '1'
    for c, mask in objects:
        ys, xs = np.nonzero(mask)
        obj = ET.SubElement(root, 'object')
        ET.SubElement(obj, 'name').text = CAT_LIST[c]
        ET.SubElement(obj, 'pose').text = 'Unspecified'
        touches_edge = ys.min() == 0 or xs.min() == 0 or ys.max() == h - 1 or xs.max() == w - 1
        ET.SubElement(obj, 'truncated').text = str(int(touches_edge))
        ET.SubElement(obj, 'difficult').text = '0'
        box = ET.SubElement(obj, 'bndbox')
        for tag, value in (('xmin', xs.min()), ('ymin', ys.min()), ('xmax', xs.max()), ('ymax', ys.max())):
            ET.SubElement(box, tag).text = str(int(value) + 1)  # VOC boxes are 1-based
    ET.indent(root)
    return ET.tostring(root, encoding='unicode') + '\n'


def _write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def _write_sample(root, image_id, image, label, objects, border):
    h, w = label.shape
    atomic_save_image(os.path.join(root, 'JPEGImages', f'{image_id}.jpg'), Image.fromarray(image), quality=92)
    atomic_save_png(os.path.join(root, 'SegmentationClassAug', f'{image_id}.png'), label)
    atomic_save_png(os.path.join(root, 'SegmentationClass', f'{image_id}.png'),
                    np.where(_border(label, border), 255, label).astype(np.uint8))
    _write_text(os.path.join(root, 'Annotations', f'{image_id}.xml'), _annotation_xml(image_id, w, h, objects))


def _write_splits(root, train_ids, val_ids):
    def bare(ids):
        return ''.join(f'{i}\n' for i in ids)

    def listed(ids):
        return ''.join(f'/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n' for i in ids)

    seg = os.path.join(root, 'ImageSets', 'Segmentation')
    _write_text(os.path.join(seg, 'train.txt'), bare(train_ids))
    _write_text(os.path.join(seg, 'val.txt'), bare(val_ids))
    _write_text(os.path.join(seg, 'trainval.txt'), bare(sorted(train_ids + val_ids)))
    _write_text(os.path.join(root, 'lists', 'train_aug.txt'), listed(train_ids))
    _write_text(os.path.join(root, 'lists', 'train.txt'), listed(train_ids))
    _write_text(os.path.join(root, 'lists', 'val.txt'), listed(val_ids))


def multi_hot(classes):
    """float32[20] with ones at the given class indices (0..19)."""
    label = np.zeros(N_CLASSES, np.float32)
    label[list(classes)] = 1
    return label


def _voc_ids(rng, n):
    """n distinct sorted ids like '2007_000032'."""
    ids = set()
    while len(ids) < n:
        ids.add(f'{2007 + int(rng.integers(5))}_{int(rng.integers(1, 10000)):06d}')
    return sorted(ids)


def _class_list(classes):
    """None -> all 20 classes; an int k -> classes 0..k-1; else a sequence of class indices 0..19."""
    if classes is None:
        return list(range(N_CLASSES))
    if isinstance(classes, (int, np.integer)):
        classes = range(classes)
    classes = sorted(set(int(c) for c in classes))
    if not classes or classes[0] < 0 or classes[-1] >= N_CLASSES:
        raise ValueError(f'classes must be indices in 0..{N_CLASSES - 1}, got {classes}')
    return classes


def _draw_extent(rng, extent):
    """An int, or a uniform int from an inclusive (lo, hi) range."""
    if isinstance(extent, (tuple, list)):
        return int(rng.integers(extent[0], extent[1] + 1))
    return int(extent)


def _write_dataset(root, n_train, n_val, seed, scene, border):
    """Draw n_train + n_val scenes with `scene(rng) -> (image, label, objects)` and write the VOC layout."""
    rng = np.random.default_rng(seed)
    ids = _voc_ids(rng, n_train + n_val)
    order = rng.permutation(len(ids))
    train_ids = sorted(ids[i] for i in order[:n_train])
    val_ids = sorted(ids[i] for i in order[n_train:])
    cls_labels = {}
    for k, image_id in enumerate(ids):
        image, label, objects = scene(np.random.default_rng([seed, k]))
        _write_sample(root, image_id, image, label, objects, border)
        cls_labels[image_id] = multi_hot(c for c, _ in objects)
    _write_splits(root, train_ids, val_ids)
    atomic_save_npy(os.path.join(root, 'cls_labels.npy'), cls_labels)
    return root


def make_voc(root, n_train=8, n_val=4, size=(64, 48), classes=None, seed=0, max_objects=3, border=1):
    """Write a synthetic VOC-layout dataset into `root` (see the module docstring); returns `root`.

    size: (width, height); each may be an int or an inclusive (lo, hi) range drawn per image.
    classes: None (all 20), an int k (classes 0..k-1) or a sequence of class indices 0..19.
    max_objects: objects per image are 1..max_objects.  border: width of the 255 outline in
    SegmentationClass. Same arguments -> byte-identical label PNGs and identical cls_labels.npy.
    """
    classes = _class_list(classes)

    def scene(rng):
        w, h = _draw_extent(rng, size[0]), _draw_extent(rng, size[1])
        return _scene(rng, h, w, classes, max_objects, border)
    return _write_dataset(root, n_train, n_val, seed, scene, border)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Write a synthetic PASCAL VOC-layout dataset.')
    parser.add_argument('--root', required=True, help='output folder')
    parser.add_argument('--n_train', type=int, default=8)
    parser.add_argument('--n_val', type=int, default=4)
    parser.add_argument('--width', type=int, default=64)
    parser.add_argument('--height', type=int, default=48)
    parser.add_argument('--n_classes', type=int, default=N_CLASSES, help='use classes 0..n_classes-1')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    make_voc(args.root, args.n_train, args.n_val, (args.width, args.height), args.n_classes, args.seed)
    print(f'wrote {args.n_train} train + {args.n_val} val images to {args.root}')


if __name__ == '__main__':
    main()
