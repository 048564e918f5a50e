"""Segmentation from localization (SFL): the losses of the joint loop of train_edge.py.

The COCO localiser is SEAM with K classes and no background channel, trained with its second branch at
scale 0.5; each (image, present class) pair of its max-normed full-size maps feeds a buffer of `edge_batch`
samples for the class-agnostic segmenter, trained with three Dice terms.
"""
import torch

from tool.equivariance import (adaptive_min_pooling_loss, class_logits, downscale, equivariant_cross, max_norm,
                               multilabel_loss)

LOCALISER_SCALE = 0.5


def max_onehot_all(cam):
    """Of all channels only the per-pixel maximum kept (ties all kept): SEAM's max_onehot with no background slot."""
    return torch.where(cam == cam.max(dim=1, keepdim=True)[0], cam, 0)


def localiser_loss(cam1, cam_rv1, cam2, cam_rv2, label, rate=LOCALISER_SCALE):
    """SEAM's loss on all K channels (N, K, h, w), label (N, K):

        L = (L_cls1 + L_cls2) / 2 + (rvmin(cam_rv1 y) + rvmin(cam_rv2 y)) / 2 + L_er + L_ecr1 + L_ecr2
        C1 = D(max_norm(cam1)) y, R1 = D(max_norm(cam_rv1)) y, C2 = max_norm(cam2) y, R2 = max_norm(cam_rv2) y
        L_er = mean |C1 - C2|;  L_ecr1 = top-20% mean of |max_onehot(C2) - R1| (target detached), L_ecr2 likewise
    with D the downscale by `rate` (align_corners True). Returns the terms and, as refer_map / refer_rv_map, the
    detached max_norm(cam1) / max_norm(cam_rv1) that the segmenter buffer receives.
    """
    y = label[..., None, None]
    terms = {'loss_cls1': multilabel_loss(class_logits(cam1), label),
             'loss_cls2': multilabel_loss(class_logits(cam2), label),
             'loss_rvmin1': adaptive_min_pooling_loss(cam_rv1 * y),
             'loss_rvmin2': adaptive_min_pooling_loss(cam_rv2 * y)}
    refer_map, refer_rv_map = max_norm(cam1), max_norm(cam_rv1)
    c1 = downscale(refer_map, rate, align_corners=True) * y
    r1 = downscale(refer_rv_map, rate, align_corners=True) * y
    c2, r2 = max_norm(cam2) * y, max_norm(cam_rv2) * y
    terms['loss_er'] = (c1 - c2).abs().mean()
    terms['loss_ecr1'] = equivariant_cross(max_onehot_all(c2).detach(), r1)
    terms['loss_ecr2'] = equivariant_cross(max_onehot_all(c1).detach(), r2)
    terms['loss_ecr'] = terms['loss_ecr1'] + terms['loss_ecr2']
    terms['loss_cls'] = (terms['loss_cls1'] + terms['loss_cls2']) / 2 + (terms['loss_rvmin1'] + terms['loss_rvmin2']) / 2
    terms['loss'] = terms['loss_cls'] + terms['loss_er'] + terms['loss_ecr']
    return terms, refer_map.detach(), refer_rv_map.detach()


def dice_loss(x, target, smooth=1.0):
    """1 - mean over samples of (2 sum(x t) + smooth) / (sum x + sum t + smooth), sums over each sample's pixels."""
    x, target = x.flatten(1), target.flatten(1)
    dice = (2 * (x * target).sum(1) + smooth) / (x.sum(1) + target.sum(1) + smooth)
    return 1 - dice.mean()


def segmenter_loss(out, out_rv, seg, dice_on='logits'):
    """Dice(O, G) + Dice(O_rv, G) + Dice(O, O_rv), the last with gradients into both outputs.

    dice_on='logits' is the original (the segmenter's sigmoid is commented out, so Dice sees raw logits and is
    unbounded); 'sigmoid' applies the sigmoid first."""
    if dice_on == 'sigmoid':
        out, out_rv = torch.sigmoid(out), torch.sigmoid(out_rv)
    terms = {'edge_loss1': dice_loss(out, seg), 'edge_loss_rv': dice_loss(out_rv, seg),
             'edge_loss_ds': dice_loss(out, out_rv)}
    terms['edge_loss'] = terms['edge_loss1'] + terms['edge_loss_rv'] + terms['edge_loss_ds']
    return terms


class SegmenterBuffer:
    """The original's fixed buffer of `size` (image, map, rv map, mask) samples.

    push() writes into the next slot; when the buffer is full it returns the batch (copies) and restarts at
    slot 0, overwriting slot by slot, so the stale samples of earlier batches stay in the higher slots.
    """

    def __init__(self, size, crop_hw, device=None):
        with torch.device(device or 'cpu'):  # the segmenter's device: its batches go straight into it
            self.img = torch.zeros((size, 3) + tuple(crop_hw))
            self.refer = torch.zeros((size, 1) + tuple(crop_hw))
            self.refer_rv = torch.zeros((size, 1) + tuple(crop_hw))
            self.seg = torch.zeros((size, 1) + tuple(crop_hw))
        self.count = 0

    def push(self, img, refer, refer_rv, seg):
        slot = self.count
        self.img[slot].copy_(img)
        self.refer[slot, 0].copy_(refer)
        self.refer_rv[slot, 0].copy_(refer_rv)
        self.seg[slot, 0].copy_(seg)
        self.count += 1
        if self.count < len(self.img):
            return None
        self.count = 0
        return self.img.clone(), self.refer.clone(), self.refer_rv.clone(), self.seg.clone()


def present_pairs(label):
    """(image, class) pairs with label 1, image-major then class order (the order the buffer is filled in)."""
    return [(b, c) for b in range(label.shape[0]) for c in range(label.shape[1]) if label[b, c] == 1]


def fill_buffer(buffer, img, refer_map, refer_rv_map, seg, label):
    """Push every present (image, class) pair; the batches that filled the buffer, in order."""
    batches = []
    for b, c in present_pairs(label):
        batch = buffer.push(img[b], refer_map[b, c], refer_rv_map[b, c], seg[b, c])
        if batch is not None:
            batches.append(batch)
    return batches
