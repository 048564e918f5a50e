"""Scale-equivariant CAM training: the losses of SSENet (train_cls_ser) and SEAM (train_SEAM), the CAM
normalisations they use and the downscale of their second branch.

Notation: A is an (N, C, h, w) CAM tensor, y the (N, C) image label (for SEAM's 21 channels y~ = [1, y]).
Every loss takes `n`, the number of images its mean is over (default: the tensor's N). A micro-batch passes the
size of its whole batch, so the micro-batches' losses add up to the loss of the batch.
"""
import math

import torch
import torch.nn.functional as F

EPS = 1e-5
BRANCH_RATE = 0.3  # SSENet's branch_rate and SEAM's scale_factor


def downscale(x, rate=BRANCH_RATE, align_corners=False):
    """Bilinear resize of x (N, C, H, W) to floor(rate * H) x floor(rate * W).

    The originals call F.interpolate(x, scale_factor=rate) under PyTorch 0.4.1, which samples with the
    ratio of the input and output sizes (today: recompute_scale_factor=True); giving the size does the same.
    SSENet used align_corners False, SEAM True (where the factor does not matter at all)."""
    size = [int(math.floor(s * rate)) for s in x.shape[2:]]
    return F.interpolate(x, size, mode='bilinear', align_corners=align_corners)


def min_crop(rate=BRANCH_RATE, stride=8):
    """The smallest crop whose downscaled branch still holds one cell of the stride-`stride` output."""
    return math.ceil(stride / rate)


def class_logits(cam):
    """(N, C) class logits: the global average of the CAM logits."""
    return cam.mean(dim=(2, 3))


def multilabel_loss(logits, label, n=None):
    """Multilabel soft margin loss, mean over n images:
    -1/(n C) sum_i,c [y_ic log sigmoid(p_ic) + (1 - y_ic) log sigmoid(-p_ic)]."""
    return F.multilabel_soft_margin_loss(logits, label, reduction='sum') / (n or len(logits))


def peak_norm(cam):
    """g(A)_c = ReLU(ReLU(A_c) - 1e-5) / (max_xy ReLU(A_c) + 1e-5), per image and channel (SSENet's L_r
    operands; SEAM's PCM input)."""
    cam = F.relu(cam)
    return F.relu(cam - EPS) / (cam.flatten(2).max(dim=2)[0][..., None, None] + EPS)


def max_norm(cam):
    """SEAM's min-max normalisation, per image and channel: with P = ReLU(A),
    ReLU(P_c - min P_c - 1e-5) / (max P_c - min P_c + 1e-5)."""
    cam = F.relu(cam)
    flat = cam.flatten(2)
    low, high = flat.min(dim=2)[0][..., None, None], flat.max(dim=2)[0][..., None, None]
    return F.relu(cam - low - EPS) / (high - low + EPS)


def with_background(cam):
    """Channel 0 replaced by 1 - max over the foreground channels 1..C-1."""
    return torch.cat([1 - cam[:, 1:].max(dim=1, keepdim=True)[0], cam[:, 1:]], dim=1)


def max_onehot(cam):
    """Channel 0 kept; of the foreground channels only those equal to the per-pixel maximum (ties all kept)."""
    fg = cam[:, 1:]
    return torch.cat([cam[:, :1], torch.where(fg == fg.max(dim=1, keepdim=True)[0], fg, 0)], dim=1)


def scale_equivariance_mse(cam, cam_s, label, n=None, rate=BRANCH_RATE):
    """SSENet's L_r = mean over (n, C, h, w) of (g(A_s) y - g(D(A)) y)^2, where D = downscale by `rate`
    (align_corners False) to A_s's size; no detach, the gradient flows into both branches."""
    y = label[..., None, None]
    diff = peak_norm(cam_s) * y - peak_norm(downscale(cam, rate)) * y
    return diff.pow(2).sum() / ((n or len(cam)) * diff[0].numel())


def ssenet_loss(cam, cam_s, label, n=None, rate=BRANCH_RATE):
    """SSENet: L = 0.5 L_cls + 0.5 L_cls_s + L_r, L_cls / L_cls_s the multilabel loss of the GAP logits of
    the full (cam) and downscaled (cam_s) branch. Returns the terms {loss, loss_cls, loss_cls_s, loss_r}."""
    terms = {'loss_cls': multilabel_loss(class_logits(cam), label, n),
             'loss_cls_s': multilabel_loss(class_logits(cam_s), label, n),
             'loss_r': scale_equivariance_mse(cam, cam_s, label, n, rate)}
    return {'loss': (terms['loss_cls'] + terms['loss_cls_s']) / 2 + terms['loss_r'], **terms}


def adaptive_min_pooling_loss(cam, n=None):
    """SEAM's rvmin: with m = max over channels of cam (N, C, h, w) and k = floor(hw / 4),
    sum over images of the k smallest ReLU(m) / (k n). (SEAM: it moves the best background score.)"""
    k = cam.shape[2] * cam.shape[3] // 4
    lowest = torch.topk(cam.max(dim=1)[0].flatten(1), k, dim=1, largest=False)[0]
    return F.relu(lowest).sum() / (k * (n or len(cam)))


def equivariant_l1(c1, c2, n=None):
    """SEAM's ER: mean over (n, C-1, h, w) of |c1 - c2| over the foreground channels 1..C-1."""
    diff = (c1[:, 1:] - c2[:, 1:]).abs()
    return diff.sum() / ((n or len(c1)) * diff[0].numel())


def equivariant_cross(target, refined, n=None, top=0.2):
    """SEAM's ECR (one direction): with E = |target - refined| over all C h w entries of an image and
    k = int(C h w top), the mean over n images of the mean of E's k largest entries."""
    k = int(target[0].numel() * top)
    largest = torch.topk((target - refined).abs().flatten(1), k, dim=1)[0]
    return largest.sum() / (k * (n or len(target)))


def seam_loss(cam1, cam_rv1, cam2, cam_rv2, label, n=None, rate=BRANCH_RATE):
    """SEAM's loss for the full branch (cam1, cam_rv1: the network's (cam, cam_rv) for the crop) and the
    downscaled one (cam2, cam_rv2 for the crop downscaled by `rate`), all (N, 21, h, w), label (N, 20):

        L = (L_cls1 + L_cls2) / 2 + (rvmin1 + rvmin2) / 2 + L_er + L_ecr1 + L_ecr2
        L_clsi = multilabel loss of GAP(cami[:, 1:]);  rvmini = adaptive_min_pooling_loss((cam_rvi y~)[:, 1:])
        C1 = D(max_norm(cam1)) y~, C2 = max_norm(cam2) y~, R1 = D(max_norm(cam_rv1)) y~, R2 = max_norm(cam_rv2) y~
        L_er = equivariant_l1(C1, C2)
        L_ecr1 = equivariant_cross(max_onehot(with_background(C2)), R1), L_ecr2 likewise with C1 and R2,
            the targets detached
    with D = downscale by `rate` (align_corners True) and y~ = [1, y]. Returns the terms (loss, loss_cls,
    loss_er, loss_ecr, loss_cls1/2, loss_rvmin1/2, loss_ecr1/2).
    """
    y = torch.cat([torch.ones_like(label[:, :1]), label], dim=1)[..., None, None]
    terms = {'loss_cls1': multilabel_loss(class_logits(cam1[:, 1:]), label, n),
             'loss_cls2': multilabel_loss(class_logits(cam2[:, 1:]), label, n),
             'loss_rvmin1': adaptive_min_pooling_loss((cam_rv1 * y)[:, 1:], n),
             'loss_rvmin2': adaptive_min_pooling_loss((cam_rv2 * y)[:, 1:], n)}
    c1 = downscale(max_norm(cam1), rate, align_corners=True) * y
    r1 = downscale(max_norm(cam_rv1), rate, align_corners=True) * y
    c2, r2 = max_norm(cam2) * y, max_norm(cam_rv2) * y
    terms['loss_er'] = equivariant_l1(c1, c2, n)
    terms['loss_ecr1'] = equivariant_cross(max_onehot(with_background(c2)).detach(), r1, n)
    terms['loss_ecr2'] = equivariant_cross(max_onehot(with_background(c1)).detach(), r2, n)
    terms['loss_ecr'] = terms['loss_ecr1'] + terms['loss_ecr2']
    terms['loss_cls'] = (terms['loss_cls1'] + terms['loss_cls2']) / 2 + (terms['loss_rvmin1'] + terms['loss_rvmin2']) / 2
    return {'loss': terms['loss_cls'] + terms['loss_er'] + terms['loss_ecr'], **terms}
