"""SBNet's losses (train_SB.py): SEAM's loss plus a boundary BCE on the edge branch and an edge-aware smoothness
loss on the CAM.

Notation as tool/equivariance: cam, cam_rv, edge are the network's (N, 21, H, W) outputs for the crop (branch 1)
and for the crop downscaled by 0.3 (branch 2); B the crop's (N, 21, H, W) boundary map (VOC2012/sb_map),
B_s = D(B) its bilinear downscale (align_corners True) to branch 2's size; y~ = [1, y] the (N, 21) label with
the background slot. Every loss takes `n`, the number of images its mean is over (default: the tensor's N), so
micro-batches passing their whole batch's size add up to the batch's loss.
"""
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from tool import equivariance

BOUNDARY_WEIGHT = 0.01
SMOOTH_WEIGHT = 1.0
EDGE_ALPHA = 10.0  # w = exp(-alpha B)
FIRST_ORDER_WEIGHT = 10.0
SECOND_ORDER_WEIGHT = 1.0
CHARBONNIER_EPS = 1e-3

SOBEL_X = ((-1., 0., 1.), (-2., 0., 2.), (-1., 0., 1.))
SOBEL_Y = ((-1., -2., -1.), (0., 0., 0.), (1., 2., 1.))
LAPLACIAN = ((-1., -1., -1.), (-1., 8., -1.), (-1., -1., -1.))


def with_background_slot(label):
    """y~ = [1, y] as (N, 21, 1, 1) for a (N, 20) label."""
    return torch.cat([torch.ones_like(label[:, :1]), label], dim=1)[..., None, None]


def _autocast_off(device):
    """Autocast off on `device` (the meta device of bench/bench_memory.py has no autocast to turn off)."""
    return nullcontext() if device.type == 'meta' else torch.autocast(device.type, enabled=False)


def _mean_over(x, n):
    """Sum of x over n images' worth of entries: sum(x) / (n * entries per image)."""
    return x.sum() / ((n or len(x)) * x[0].numel())


def boundary_bce(edge, boundary, label, n=None):
    """L_ct for one branch: BCE(sigmoid(E), B y~), the mean over (n, 21, H, W) of
    -[t log p + (1 - t) log(1 - p)] with p = sigmoid(E), t = B y~ (torch's BCE: each log clamped at -100).

    Computed in float32 (float64 inputs: float64) with autocast off (CUDA autocast refuses binary_cross_entropy)."""
    dtype = torch.promote_types(edge.dtype, torch.float32)
    with _autocast_off(edge.device):
        target = boundary.to(dtype) * with_background_slot(label.to(dtype))
        bce = F.binary_cross_entropy(torch.sigmoid(edge.to(dtype)), target, reduction='none')
    return _mean_over(bce, n)


def _depthwise(x, kernel):
    """Per-channel 3x3 correlation of x (N, C, H, W) with `kernel`, zero padding 1, in x's dtype (autocast off:
    the Charbonnier eps 1e-3 is below bf16's resolution of the responses)."""
    weight = torch.tensor(kernel, dtype=x.dtype, device=x.device).expand(x.shape[1], 1, 3, 3)
    with _autocast_off(x.device):
        return F.conv2d(x, weight, padding=1, groups=x.shape[1])


def charbonnier(s, eps=CHARBONNIER_EPS):
    """rho(s) = sqrt(s^2 + eps^2)."""
    return torch.sqrt(s * s + eps * eps)


def smoothness(prob, boundary, label, n=None):
    """S(P, B) = 10 mean[y~ (rho(|Gx P| w) + rho(|Gy P| w))] + 1 mean[y~ rho(|Lap P| w)], w = exp(-10 B),

    Gx, Gy the depthwise Sobel filters, Lap the 8-neighbour Laplacian (zero padding), rho the Charbonnier
    penalty, each mean over (n, 21, H, W); P = sigmoid(raw cam), B the boundary map of the same size."""
    weight = torch.exp(-EDGE_ALPHA * boundary)
    y = with_background_slot(label)
    first = charbonnier(_depthwise(prob, SOBEL_X).abs() * weight) + charbonnier(_depthwise(prob, SOBEL_Y).abs() * weight)
    second = charbonnier(_depthwise(prob, LAPLACIAN).abs() * weight)
    return FIRST_ORDER_WEIGHT * _mean_over(first * y, n) + SECOND_ORDER_WEIGHT * _mean_over(second * y, n)


def sbnet_loss(cam1, cam_rv1, edge1, cam2, cam_rv2, edge2, boundary, label, n=None, rate=equivariance.BRANCH_RATE):
    """SBNet's loss; boundary = B (N, 21, H, W) of the crop, label (N, 20):

        L = L_seam + L_ct + L_smooth
        L_seam = tool/equivariance.seam_loss(cam1, cam_rv1, cam2, cam_rv2, y)
        L_ct = 0.01 * 0.5 * [boundary_bce(E1, B) + boundary_bce(E2, B_s)]
        L_smooth = 1 * 0.5 * [smoothness(sigmoid(cam1), B) + smoothness(sigmoid(cam2), B_s)]
    with B_s = D(B), D the downscale by `rate` (align_corners True). Returns seam_loss's terms with loss_ct,
    loss_smooth and their branches (loss_ct1/2, loss_smooth1/2) added and `loss` the total.
    """
    terms = equivariance.seam_loss(cam1, cam_rv1, cam2, cam_rv2, label, n, rate)
    boundary_s = equivariance.downscale(boundary, rate, align_corners=True)
    terms['loss_ct1'] = boundary_bce(edge1, boundary, label, n)
    terms['loss_ct2'] = boundary_bce(edge2, boundary_s, label, n)
    terms['loss_smooth1'] = smoothness(torch.sigmoid(cam1), boundary, label, n)
    terms['loss_smooth2'] = smoothness(torch.sigmoid(cam2), boundary_s, label, n)
    terms['loss_ct'] = BOUNDARY_WEIGHT * 0.5 * (terms['loss_ct1'] + terms['loss_ct2'])
    terms['loss_smooth'] = SMOOTH_WEIGHT * 0.5 * (terms['loss_smooth1'] + terms['loss_smooth2'])
    terms['loss'] = terms['loss'] + terms['loss_ct'] + terms['loss_smooth']
    return terms
