"""Pairwise affinities from a feature map on the radius-5 neighbourhood (the affinity nets' output, also
used by the random walk)."""
import functools

import torch

from tool.pyutils import get_indices_of_pairs, pair_offsets

RADIUS = 5


@functools.lru_cache(maxsize=32)
def pair_indices(size, device, radius=RADIUS):
    """(ind_from, ind_to) of tool.pyutils.get_indices_of_pairs, cached per feature size and device."""
    ind_from, ind_to = get_indices_of_pairs(radius, size)
    return ind_from.to(device), ind_to.to(device)


def pairwise_affinity(feat, radius=RADIUS):
    """aff[n, k, i] = exp(-mean_c |feat[n, c, from_i] - feat[n, c, from_i + offset_k]|): (N, offsets, from)."""
    n, c, h, w = feat.shape
    ind_from, ind_to = pair_indices((h, w), feat.device, radius)
    flat = feat.reshape(n, c, h * w)
    f_from = flat.index_select(2, ind_from).unsqueeze(2)
    f_to = flat.index_select(2, ind_to).view(n, c, len(pair_offsets(radius)), ind_from.numel())
    return torch.exp(-torch.mean(torch.abs(f_to - f_from), dim=1))


def dense_affinity(aff, size, radius=RADIUS):
    """The symmetric HW x HW matrix of one image's affinities (1, offsets, from), ones on the diagonal."""
    if aff.shape[0] != 1:
        raise ValueError(f'to_dense needs a batch of one image, got {aff.shape[0]}')
    h, w = size
    ind_from, ind_to = pair_indices((h, w), aff.device, radius)
    rows = ind_from.repeat(aff.shape[1])
    values = aff.reshape(-1)
    dense = torch.eye(h * w, dtype=aff.dtype, device=aff.device)
    dense.index_put_((rows, ind_to), values, accumulate=True)
    dense.index_put_((ind_to, rows), values, accumulate=True)
    return dense


def affinity_output(feat, to_dense=False, radius=RADIUS):
    """What the affinity nets' forward returns for their feature map."""
    aff = pairwise_affinity(feat, radius)
    return dense_affinity(aff, feat.shape[2:], radius) if to_dense else aff
