"""Random walk of the class activation maps over the affinity graph (infer_aff, spec section 3).

The reference builds the dense HW x HW affinity matrix A = aff^beta (ones on the diagonal), normalises its
columns to T and squares T logt times, then multiplies the CAM vectors by T^(2^logt). `sparse_random_walk`
reaches the same result with 2^logt products of the CAM vectors with the sparse (radius-limited) T, which
never holds an HW x HW matrix. The dense path stays as the test oracle.
"""
import contextlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from tool.affinity import dense_affinity
from tool.pyutils import get_indices_of_pairs, pair_offsets


def _pair_indices(aff, size, radius):
    """Checked (from, to) indices for the affinity head's output `aff`, returned as (n_offsets, n_from)."""
    if aff.dim() == 3 and aff.shape[0] == 1:
        aff = aff[0]
    ind_from, ind_to = get_indices_of_pairs(radius, size)
    if aff.numel() != ind_to.numel() or aff.shape[-1] != ind_from.numel():
        raise ValueError(f'affinity of shape {tuple(aff.shape)} does not match a {size[0]}x{size[1]} feature '
                         f'grid with radius {radius} (expected (n_offsets, {ind_from.numel()}))')
    return aff, ind_from.to(aff.device), ind_to.view(aff.shape).to(aff.device)


def affinity_dense(aff, size, radius=5):
    """The reference's dense HW x HW affinity matrix (the aff net's to_dense=True output), for the oracle.

    `aff` (n_offsets, n_from) or (1, n_offsets, n_from) for the feature grid `size` = (h, w).
    """
    aff, _, _ = _pair_indices(aff, size, radius)
    return dense_affinity(aff.unsqueeze(0), size, radius)


def dense_transition(aff_dense, beta):
    """Reference transition matrix: A = aff^beta, each column divided by its sum."""
    a = aff_dense ** beta
    return a / a.sum(dim=0, keepdim=True)


def dense_random_walk(cam_vec, aff_dense, beta, logt, dtype=torch.float32):
    """Reference walk (test oracle): square T logt times, return cam_vec @ T^(2^logt), (C, HW)."""
    trans = dense_transition(aff_dense.to(dtype), beta)
    for _ in range(logt):
        trans = trans @ trans
    return cam_vec.to(device=trans.device, dtype=dtype) @ trans


def _walk_matrix(aff, size, beta, radius, dtype):
    """CSR matrix M = T^T = D^-1 A (A = aff^beta symmetric, D its column sums): v T = (M v^T)^T.

    Row i of A holds the diagonal and the pairs (i, i + o) and (i, i - o) for every offset o. They are laid
    out in a dense (HW, 2 * n_offsets + 1) table of slots sorted by column, so the CSR arrays follow without
    any sort; each slot receives at most one pair, so no entry has to be summed.
    """
    aff, ind_from, ind_to = _pair_indices(aff.to(dtype), size, radius)
    n, device = size[0] * size[1], aff.device
    flat = torch.tensor([dy * size[1] + dx for dy, dx in pair_offsets(radius)], device=device)
    flat = torch.cat([-flat, flat.new_zeros(1), flat])
    slots = torch.argsort(flat)  # slots[j]: which of the signed offsets the j-th column slot holds
    slot_of = torch.argsort(slots)
    n_off = len(flat) // 2
    values = torch.zeros(n, len(flat), dtype=dtype, device=device)
    present = torch.zeros(n, len(flat), dtype=torch.bool, device=device)
    pair_values = aff.t() ** beta  # (n_from, n_offsets)
    for rows, slot in ((ind_from.unsqueeze(1), slot_of[n_off + 1:]),  # (from, from + o)
                       (ind_to.t(), slot_of[:n_off])):  # (to, to - o)
        values[rows, slot] = pair_values
        present[rows, slot] = True
    values[:, slot_of[n_off]] = 1
    present[:, slot_of[n_off]] = True
    values /= values.sum(dim=1, keepdim=True)  # A is symmetric: its row sums are its column sums
    cols = torch.arange(n, device=device).unsqueeze(1) + flat[slots]
    crow = torch.cat([present.new_zeros(1, dtype=torch.long), present.sum(dim=1).cumsum(0)])
    with warnings.catch_warnings():  # torch calls all of sparse CSR "beta"; CSR @ dense is well established
        warnings.filterwarnings('ignore', message='Sparse CSR tensor support is in beta')
        return torch.sparse_csr_tensor(crow, cols[present], values[present], (n, n), check_invariants=True)


@contextlib.contextmanager
def _one_cpu_thread(device):
    """Run the block single-threaded on the CPU: its tensors are small (about 1e5 entries), so splitting each
    operation over threads costs more than it saves, and far more when the cores are busy with other work
    (measured: 2 threads on 2 shared cores were 4x slower than 1)."""
    threads = torch.get_num_threads()
    if device.type == 'cpu':
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sparse_random_walk(cam_vec, aff, size, beta, logt, radius=5, dtype=torch.float64):
    """cam_vec @ T^(2^logt) as 2^logt sparse products, without any dense HW x HW matrix.

    cam_vec (C, HW); aff the affinity head's output (n_offsets, n_from) or (1, n_offsets, n_from) for the grid
    `size` = (h, w). Runs on aff's device; returns (C, HW) in `dtype`.
    """
    with _one_cpu_thread(aff.device):
        step = _walk_matrix(aff, size, beta, radius, dtype)
        cam_vec = cam_vec.to(device=aff.device, dtype=dtype)
        # T has no negative entries, so all-zero rows (classes absent from the image) stay exactly zero:
        # walk only the others.
        active = cam_vec.ne(0).any(dim=1)
        x = cam_vec[active].t().contiguous()
        for _ in range(2 ** logt):
            x = step @ x
        cam_rw = torch.zeros_like(cam_vec)
        cam_rw[active] = x.t()
    return cam_rw


def propagate_cam(cam_full, aff, feat_size, beta, logt, method='sparse', radius=5):
    """infer_aff after the network: CAM stack -> random walk -> uint8 labels of the padded size.

    cam_full: (21, Hpad, Wpad) CAM stack (background first) already zero-padded to a multiple of 8, numpy or
    tensor; aff: the affinity head's output for the padded image, whose feature grid is `feat_size` = (h, w).
    method 'sparse' (float64 sparse walk) or 'dense' (the reference's float32 dense squaring).
    Returns a numpy uint8 (Hpad, Wpad) label map; the caller crops it to the original image size.
    """
    cam = torch.as_tensor(cam_full, dtype=torch.float32).to(aff.device)
    pooled = F.avg_pool2d(cam.unsqueeze(0), 8, 8)
    h, w = feat_size
    if tuple(pooled.shape[2:]) != (h, w):
        raise ValueError(f'CAM of size {tuple(cam.shape[1:])} pools to {tuple(pooled.shape[2:])}, '
                         f'not the feature grid {(h, w)}')
    cam_vec = pooled.reshape(cam.shape[0], h * w)
    if method == 'sparse':
        cam_rw = sparse_random_walk(cam_vec, aff, feat_size, beta, logt, radius)
    elif method == 'dense':
        cam_rw = dense_random_walk(cam_vec, affinity_dense(aff, feat_size, radius), beta, logt)
    else:
        raise ValueError(f"unknown random-walk method {method!r} (use 'sparse' or 'dense')")
    # channels-last makes the upsampling and the argmax over channels several times faster on the CPU
    cam_rw = cam_rw.reshape(1, -1, h, w).contiguous(memory_format=torch.channels_last)
    cam_rw = F.interpolate(cam_rw, size=tuple(cam.shape[1:]), mode='bilinear', align_corners=False)
    return np.uint8(torch.argmax(cam_rw[0], dim=0).cpu().numpy())
