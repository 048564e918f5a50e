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

`make_demo(root, ..., preset='demo' | 'hard')` writes the same layout for the demo's six classes (see the
demo scenes below; 'hard' is data of another design that the demo was not tuned on), and
`make_demo_coco(root, ...)` other scenes of that family in COCO layout with instance masks (SFL's segmenter).

CLI: `python -m voc12.synthetic --root DIR --n_train N --n_val M --seed S`.
"""
import argparse
import colorsys
import json
import os
import xml.etree.ElementTree as ET
from typing import Callable, NamedTuple

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from tool.io import UserError, atomic_save_image, atomic_save_npy, atomic_save_png
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


def _dull_colour(rng):
    """A random low-saturation colour (RGB 0..1)."""
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.35, 0.75)))


def _background(rng, h, w):
    """A low-saturation textured background: float32 HxWx3 in 0..255."""
    base = _dull_colour(rng)
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


def _bar(cy, cx, angle, length, half_width):
    """Corners (x, y) of a bar from (cy, cx) `length` both ways along `angle`, 2 * half_width thick."""
    d, n = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    centre = np.array([cx, cy])
    corners = ((1, 1), (1, -1), (-1, -1), (-1, 1))
    return [tuple(map(float, centre + a * length * d + b * half_width * n)) for a, b in corners]


def _shape_mask(rng, h, w, shape, cy, cx, ry, rx):
    """Boolean HxW mask of a shape centred at (cy, cx) with radii (ry, rx): an ellipse, rectangle or polygon; a
    ring (an ellipse with a hole); a bar (length max(ry, rx) each way) or a cross (arms ry and rx) 3-6 px thick
    at 128 px, rotated."""
    canvas = Image.new('L', (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == 'ellipse':
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    elif shape == 'rectangle':
        draw.rectangle([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    elif shape == 'ring':
        hole = rng.uniform(0.45, 0.7)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
        draw.ellipse([cx - hole * rx, cy - hole * ry, cx + hole * rx, cy + hole * ry], fill=0)
    elif shape in ('bar', 'cross'):
        half_width = rng.uniform(0.012, 0.024) * min(h, w)
        angle = rng.uniform(0, np.pi)
        arms = [(angle, max(ry, rx))] if shape == 'bar' else [(angle, ry), (angle + np.pi / 2, rx)]
        for a, length in arms:
            draw.polygon(_bar(cy, cx, a, length, half_width), fill=1)
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

# Six classes (cat, dog, cow, sheep, bus, car). An object is a plain body with a round part (a "head"), in
# the class colour patterned with white. Clutter blobs of the same colours lie around, so a plain patch of
# colour says little: the patterned part is what identifies an object. A classifier's CAMs are therefore
# strongest next to the part and fade over the rest of the body, incomplete as CAMs of real images are. Body
# and part share their colour, so a colour-driven dCRF and the affinities can carry the part's label over the
# body, as they do on real objects.
#
# Presets (make_demo's `preset`): 'demo' gives each class its own colour and a checkered part on the rim of a
# convex body, away from the image border. 'hard' (data the demo was not tuned on) has two pairs of classes
# sharing a colour (checkered vs striped part), thin bars and crosses and rings among the bodies, parts
# anywhere on the body, objects cut by the image border and occluded by each other and by background shapes,
# a striped background, clutter in thin shapes too, decoys (the parts' white pattern on a dull colour), a
# brightness ramp over the image and a wider range of object sizes.
DEMO_CLASSES = (7, 11, 9, 16, 5, 6)
_PART_WHITE = np.array([0.95, 0.95, 0.95])  # the part's other squares or stripes
PART_PATTERNS = ('checker', 'stripes')
THIN_SHAPES = ('bar', 'cross')
HARD_SHAPES = SHAPES + ('ring',) + THIN_SHAPES
HARD_COLOURS = (0, 0, 1, 1, 2, 3)  # colour of each hard class among 4 hues: classes 0 and 1, 2 and 3 share one
HARD_PATTERNS = ('checker', 'stripes', 'checker', 'stripes', 'checker', 'stripes')


class DemoStyle(NamedTuple):
    """How a make_demo preset draws its scenes."""
    max_objects: int      # objects per image: 1..max_objects
    n_distractors: int    # clutter shapes per image: 0..n_distractors
    part_scale: float     # part radius relative to the body's smaller radius
    radius: tuple         # range of the body radii, share of the image's smaller side
    centre: tuple         # range of the body centre, share of the height and of the width
    shapes: tuple         # body shapes (_shape_mask)
    min_share: float      # share of each body's and part's area that occlusion must leave visible
    n_occluders: int      # background shapes painted over the objects: 0..n_occluders
    look: Callable        # (rng, h, w, k) -> colour (RGB 0..1) and white pattern (HxW bool) of demo class k
    part: Callable        # (rng, h, w, body, cy, cx, ry, rx, part_scale) -> part centre and radius (py, px, pr)
    clutter: Callable     # (rng, image, n_distractors) paints the clutter onto the background
    light: bool           # a brightness ramp over the finished image


def _class_colour(rng, k, n=len(DEMO_CLASSES)):
    """Colour k of n: hues 360/n degrees apart, a little jitter."""
    return np.array(colorsys.hsv_to_rgb(k / n + rng.uniform(-0.02, 0.02), 0.7, 0.9))


def _part_pattern(rng, h, w, kind):
    """HxW bool, where a part is white: 5 px squares ('checker') or 5 px stripes of any direction ('stripes')."""
    if kind == 'checker':
        return _checker(h, w, 5, rng.uniform(0, 5)) > 0
    return _stripes(h, w, rng.uniform(0, np.pi), 10, rng.uniform(0, 2 * np.pi)) > 0


def _demo_look(rng, h, w, k):
    pattern = _part_pattern(rng, h, w, 'checker')
    return _class_colour(rng, k), pattern


def _hard_look(rng, h, w, k):
    pattern = _part_pattern(rng, h, w, HARD_PATTERNS[k])
    return _class_colour(rng, HARD_COLOURS[k], max(HARD_COLOURS) + 1), pattern


def _part_on_rim(rng, h, w, body, cy, cx, ry, rx, part_scale):
    """The part on the body's rim at a random angle, inside the image."""
    angle = rng.uniform(0, 2 * np.pi)
    pr = rng.uniform(0.8, 1.1) * part_scale * min(ry, rx)
    py = np.clip(cy + 0.9 * ry * np.sin(angle), pr, h - 1 - pr)
    px = np.clip(cx + 0.9 * rx * np.cos(angle), pr, w - 1 - pr)
    return py, px, pr


def _part_on_body(rng, h, w, body, cy, cx, ry, rx, part_scale):
    """The part centred on a random pixel of the body (on an arm of a cross, at the image border, ...)."""
    pr = max(0.045 * min(h, w), rng.uniform(0.8, 1.1) * part_scale * min(ry, rx))  # >= 5.8 px at 128 px
    points = np.argwhere(body)
    py, px = points[rng.integers(len(points))] if len(points) else (cy, cx)
    return float(py), float(px), pr


def _paint_part(image, body, part, colour, pattern, rng):
    """Paint `body` and `part` (HxW bool) in `colour`, the part white where `pattern` is."""
    _paint(image, body | (part & ~pattern), colour, rng)
    _paint(image, part & pattern, _PART_WHITE, rng)


def _clutter_mask(rng, h, w, shapes, scale):
    """A shape anywhere in the image, radii `scale` (a range) of the smaller side."""
    r = rng.uniform(*scale, 2) * min(h, w)
    return _shape_mask(rng, h, w, shapes[rng.integers(len(shapes))], rng.uniform(0, h), rng.uniform(0, w), *r)


def _demo_clutter(rng, image, n):
    """0..n plain shapes in the class colours: bodies without a part."""
    h, w = image.shape[:2]
    for _ in range(int(rng.integers(n + 1))):
        _paint(image, _clutter_mask(rng, h, w, SHAPES, (0.1, 0.22)),
               _class_colour(rng, int(rng.integers(len(DEMO_CLASSES)))), rng)


def _hard_clutter(rng, image, n):
    """Patchy stripes over the background, 0..n plain shapes in the class colours (thin ones too) and 1..2
    decoys: the parts' white pattern on a dull colour."""
    h, w = image.shape[:2]
    strength = rng.uniform(15, 40) * (1 + _smooth_noise(rng, h, w, cell=32))
    stripes = _stripes(h, w, rng.uniform(0, np.pi), rng.uniform(6, 12)) - 0.5
    image[:] = np.clip(image + (strength * stripes)[..., None], 0, 255)
    n_colours = max(HARD_COLOURS) + 1
    for _ in range(int(rng.integers(n + 1))):
        _paint(image, _clutter_mask(rng, h, w, HARD_SHAPES, (0.06, 0.2)),
               _class_colour(rng, int(rng.integers(n_colours)), n_colours), rng)
    for _ in range(int(rng.integers(1, 3))):
        decoy = _clutter_mask(rng, h, w, SHAPES, (0.05, 0.1))
        pattern = _part_pattern(rng, h, w, PART_PATTERNS[rng.integers(len(PART_PATTERNS))])
        _paint_part(image, np.zeros_like(decoy), decoy, _dull_colour(rng), pattern, rng)


def _occluders(rng, h, w, most):
    """0..most background shapes (bars too) that will lie over the objects; none drawn when most is 0."""
    if not most:
        return []
    return [_clutter_mask(rng, h, w, ('bar', 'ellipse', 'rectangle'), (0.05, 0.2))
            for _ in range(int(rng.integers(most + 1)))]


def _light(rng, image):
    """A brightness ramp across the image in a random direction (x0.6..x1.4 at the far corners)."""
    h, w = image.shape[:2]
    yy, xx = _grid(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    t = ((xx - w / 2) * np.cos(angle) + (yy - h / 2) * np.sin(angle)) / (max(h, w) / 2)
    image[:] = np.clip(image * (1 + rng.uniform(0.15, 0.3) * t)[..., None], 0, 255)


PRESETS = {
    'demo': DemoStyle(max_objects=2, n_distractors=2, part_scale=0.6, radius=(0.16, 0.3), centre=(0.15, 0.85),
                      shapes=SHAPES, min_share=0.6, n_occluders=0, look=_demo_look, part=_part_on_rim,
                      clutter=_demo_clutter, light=False),
    'hard': DemoStyle(max_objects=3, n_distractors=4, part_scale=0.4, radius=(0.1, 0.32), centre=(0.0, 1.0),
                      shapes=HARD_SHAPES, min_share=0.4, n_occluders=2, look=_hard_look, part=_part_on_body,
                      clutter=_hard_clutter, light=True),
}


def _demo_object(rng, h, w, style, k):
    """(body mask, part mask, colour, white pattern) of one object of demo class k."""
    ry, rx = rng.uniform(*style.radius, 2) * min(h, w)
    cy, cx = rng.uniform(*style.centre) * h, rng.uniform(*style.centre) * w
    body = _shape_mask(rng, h, w, style.shapes[rng.integers(len(style.shapes))], cy, cx, ry, rx)
    py, px, pr = style.part(rng, h, w, body, cy, cx, ry, rx, style.part_scale)
    part = _shape_mask(rng, h, w, 'ellipse', py, px, pr, pr)
    colour, pattern = style.look(rng, h, w, k)
    return body & ~part, part, colour, pattern


def _demo_scene(rng, size, style, border, tries=50):
    """A demo image (width and height drawn from `size`, see make_demo): background, clutter, 1..max_objects
    part-bearing objects that stay visible, occluders."""
    w, h = _draw_extent(rng, size), _draw_extent(rng, size)
    for _ in range(tries):
        n = int(rng.integers(1, style.max_objects + 1))
        picks = [int(rng.integers(len(DEMO_CLASSES))) for _ in range(n)]
        objects = [_demo_object(rng, h, w, style, k) for k in picks]
        # instance 2k+1 = body of object k, 2k+2 = its part; later objects occlude earlier ones, occluders all
        instances = np.zeros((h, w), np.int32)
        for k, (body, part, _, _) in enumerate(objects):
            instances[body] = 2 * k + 1
            instances[part] = 2 * k + 2
        occluders = _occluders(rng, h, w, style.n_occluders)
        for mask in occluders:
            instances[mask] = 0
        areas = [m.sum() for body, part, _, _ in objects for m in (body, part)]
        visible = np.bincount(instances.ravel(), minlength=2 * n + 1)[1:]
        if _visible_ok(instances, 2 * n, border) and (visible >= style.min_share * np.array(areas)).all():
            break
    else:
        raise ValueError(f'could not place visible demo objects in a {w}x{h} image; use a larger size')
    image = _background(rng, h, w)
    style.clutter(rng, image, style.n_distractors)
    label = np.zeros((h, w), np.uint8)
    visible_objects = []
    for k, (pick, (_, _, colour, pattern)) in enumerate(zip(picks, objects)):
        body_visible, part_visible = instances == 2 * k + 1, instances == 2 * k + 2
        _paint_part(image, body_visible, part_visible, colour, pattern, rng)
        c = DEMO_CLASSES[pick]
        label[body_visible | part_visible] = c + 1
        visible_objects.append((c, body_visible | part_visible))
    for mask in occluders:
        _paint(image, mask, _dull_colour(rng), rng, _stripes(h, w, rng.uniform(0, np.pi), rng.uniform(4, 9)), 0.3)
    if style.light:
        _light(rng, image)
    return image.round().astype(np.uint8), label, visible_objects


def make_demo(root, n_train=600, n_val=100, size=128, seed=0, preset='demo', max_objects=None, n_distractors=None,
              part_scale=None, border=2):
    """Write the demo dataset (classes DEMO_CLASSES) in VOC layout into `root`.

    size: square side, an int or an inclusive (lo, hi) range drawn per image (width and height each).
    preset: a key of PRESETS ('demo', or 'hard': data the demo was not tuned on).
    max_objects, n_distractors, part_scale (part radius relative to the body's smaller radius): None keeps
    the preset's.
    """
    style = _preset_style(preset, max_objects=max_objects, n_distractors=n_distractors, part_scale=part_scale)

    return _write_dataset(root, n_train, n_val, seed, lambda rng: _demo_scene(rng, size, style, border), border)


def _preset_style(preset, **given):
    """PRESETS[preset] with the `given` fields that are not None."""
    if preset not in PRESETS:
        raise UserError(f"make_demo: preset {preset!r} is unknown; use one of {', '.join(PRESETS)}")
    return PRESETS[preset]._replace(**{k: v for k, v in given.items() if v is not None})


# COCO's category ids of the demo classes' names (and person, which the SFL data layer always maps to channel 0)
COCO_IDS = {'person': 1, 'car': 3, 'bus': 6, 'cat': 17, 'dog': 18, 'sheep': 20, 'cow': 21}


def make_demo_coco(root, n_images=300, size=128, seed=0, preset='demo', data_type='train2017', border=2):
    """Write a COCO-layout set of demo scenes for SFL's segmenter into `root`: other instances of the same
    family (make_demo's scenes under another random stream of `seed`) with their pixel masks.

        root/<data_type>/<id:012d>.jpg
        root/annotations_trainval2017/annotations/instances_<data_type>.json   COCO's format: one annotation
            per visible object, its mask as uncompressed RLE (column-major run lengths, zeros first), iscrowd 0
        root/categories                          the demo classes' COCO names, one a line (--categories)
    """
    style = _preset_style(preset)
    names = [CAT_LIST[c] for c in DEMO_CLASSES]
    images, annotations = [], []
    for k in range(n_images):
        rng = np.random.default_rng([seed, 1, k])  # make_demo draws image k from [seed, k]
        image, _, objects = _demo_scene(rng, size, style, border)
        h, w = image.shape[:2]
        img_id = k + 1
        file_name = f'{img_id:012d}.jpg'
        atomic_save_image(os.path.join(root, data_type, file_name), Image.fromarray(image), quality=92)
        images.append({'id': img_id, 'file_name': file_name, 'height': h, 'width': w})
        for c, mask in objects:
            ys, xs = np.nonzero(mask)
            annotations.append({
                'id': len(annotations) + 1, 'image_id': img_id, 'category_id': COCO_IDS[CAT_LIST[c]], 'iscrowd': 0,
                'segmentation': {'size': [h, w], 'counts': _rle_counts(mask)}, 'area': float(mask.sum()),
                'bbox': [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]})
    categories = [{'id': COCO_IDS[name], 'name': name, 'supercategory': 'demo'} for name in ['person'] + names]
    doc = {'info': {'description': f'SFL demo scenes, seed {seed}'}, 'licenses': [], 'images': images,
           'annotations': annotations, 'categories': categories}
    _write_text(os.path.join(root, 'annotations_trainval2017', 'annotations', f'instances_{data_type}.json'),
                json.dumps(doc))
    _write_text(os.path.join(root, 'categories'), ''.join(f'{name}\n' for name in names))
    return root


def _rle_counts(mask):
    """COCO's uncompressed RLE counts of a boolean mask: run lengths in column-major order, starting with zeros."""
    flat = mask.T.ravel().astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate(([0], changes, [flat.size])))
    return ([0] if flat[0] else []) + runs.tolist()


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
