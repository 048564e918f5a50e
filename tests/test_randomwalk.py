"""Random walk of infer_aff: the sparse walk against the reference's dense T^(2^logt) (spec sections 3, 4)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.bench_rw import main as bench_main, synthetic_affinity, synthetic_cam
from tool.randomwalk import (affinity_dense, dense_random_walk, dense_transition, propagate_cam,
                             sparse_random_walk)

BETA, LOGT = 8, 8


def spec_offsets():
    """Section 4 written out: (0, 1..4), then dy 1..4, dx -4..4 with dx^2 + dy^2 < 25."""
    offsets = [(0, 1), (0, 2), (0, 3), (0, 4)]
    for dy in range(1, 5):
        for dx in range(-4, 5):
            if dx * dx + dy * dy < 25:
                offsets.append((dy, dx))
    return offsets


def pair_value(p, q):
    """A value in [0.3, 0.9) that changes from pair to pair, so a misplaced entry shows."""
    return 0.3 + 0.6 * ((7 * p + 3 * q) % 101) / 101


def test_transition_matches_matrix_built_with_loops():
    h, w = 7, 10
    offsets = spec_offsets()
    assert len(offsets) == 34
    from_pixels = [(y, x) for y in range(h - 4) for x in range(4, w - 4)]
    aff = torch.tensor([[pair_value(y * w + x, (y + dy) * w + x + dx) for y, x in from_pixels]
                        for dy, dx in offsets], dtype=torch.float64)
    expected = np.eye(h * w)
    for dy, dx in offsets:
        for y, x in from_pixels:
            p, q = y * w + x, (y + dy) * w + x + dx
            assert expected[p, q] == 0  # every pair appears once and never as its own reverse
            expected[p, q] = expected[q, p] = pair_value(p, q) ** BETA
    expected /= expected.sum(axis=0, keepdims=True)

    dense = affinity_dense(aff, (h, w))
    assert torch.equal(dense, dense.t())
    np.testing.assert_allclose(dense_transition(dense, BETA).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize('size', [(9, 12), (15, 20)])
def test_sparse_walk_equals_dense_float64(size):
    aff = synthetic_affinity(size, seed=1)
    cam_vec = torch.rand(21, size[0] * size[1], generator=torch.Generator().manual_seed(2),
                         dtype=torch.float64)
    cam_vec[5:] = 0  # absent classes
    expected = dense_random_walk(cam_vec, affinity_dense(aff, size), BETA, LOGT, dtype=torch.float64)
    result = sparse_random_walk(cam_vec, aff.unsqueeze(0), size, BETA, LOGT)
    assert result.shape == (21, size[0] * size[1]) and result.dtype == torch.float64
    assert torch.equal(result[5:], torch.zeros_like(result[5:]))
    assert (result - expected).abs().max() <= 1e-9 * expected.abs().max()


@pytest.mark.parametrize('logt', [0, 3])
def test_sparse_walk_short_walks(logt):
    size = (9, 12)
    aff = synthetic_affinity(size, seed=3)
    cam_vec = torch.rand(4, size[0] * size[1], dtype=torch.float64)
    trans = dense_transition(affinity_dense(aff, size).double(), BETA)
    expected = cam_vec @ torch.linalg.matrix_power(trans, 2 ** logt)
    result = sparse_random_walk(cam_vec, aff, size, BETA, logt)
    assert (result - expected).abs().max() <= 1e-12 * expected.abs().max()


@pytest.mark.parametrize('size', [(9, 12), (15, 20)])
def test_sparse_argmax_equals_dense_float32_reference(size):
    aff = synthetic_affinity(size, seed=4)
    cam_vec = torch.rand(21, size[0] * size[1], generator=torch.Generator().manual_seed(5))
    cam_vec[4:] = 0
    dense = dense_random_walk(cam_vec, affinity_dense(aff, size), BETA, LOGT)
    assert dense.dtype == torch.float32
    sparse = sparse_random_walk(cam_vec, aff, size, BETA, LOGT)
    assert torch.equal(sparse.argmax(0), dense.argmax(0))


def reference_labels(cam_full, aff, size):
    """infer_aff's steps after the network, written out in the reference's order and layout."""
    cam = F.avg_pool2d(torch.from_numpy(cam_full).unsqueeze(0), 8, 8)
    trans = dense_transition(affinity_dense(aff, size), BETA)
    for _ in range(LOGT):
        trans = trans @ trans
    cam_rw = (cam.view(21, -1) @ trans).view(1, 21, *size)
    cam_rw = F.interpolate(cam_rw, size=cam_full.shape[1:], mode='bilinear', align_corners=False)
    return np.uint8(torch.max(cam_rw, 1)[1][0].numpy())


@pytest.mark.parametrize('image_size', [(75, 100), (120, 157)])
def test_propagate_cam_labels_equal_reference(image_size):
    cam_full = synthetic_cam(image_size, seed=6)
    size = (cam_full.shape[1] // 8, cam_full.shape[2] // 8)
    aff = synthetic_affinity(size, seed=7)
    expected = reference_labels(cam_full, aff, size)
    present = np.flatnonzero(cam_full.reshape(21, -1).any(axis=1))
    assert len(np.unique(expected)) > 1 and set(np.unique(expected)) <= set(present)
    for method in ('sparse', 'dense'):
        labels = propagate_cam(cam_full, aff, size, BETA, LOGT, method=method)
        assert labels.dtype == np.uint8 and labels.shape == cam_full.shape[1:]
        np.testing.assert_array_equal(labels, expected)


def test_bad_inputs_raise():
    cam_full = synthetic_cam((72, 96))
    aff = synthetic_affinity((9, 12))
    with pytest.raises(ValueError, match='feature grid'):
        propagate_cam(cam_full, aff, (10, 12), BETA, LOGT)
    with pytest.raises(ValueError, match='does not match'):
        sparse_random_walk(torch.rand(21, 120), aff, (10, 12), BETA, LOGT)
    with pytest.raises(ValueError, match='method'):
        propagate_cam(cam_full, aff, (9, 12), BETA, LOGT, method='power')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_sparse_walk_on_cuda_matches_cpu():
    size = (15, 20)
    aff = synthetic_affinity(size, seed=8)
    cam_vec = torch.rand(21, size[0] * size[1], dtype=torch.float64)
    expected = sparse_random_walk(cam_vec, aff, size, BETA, LOGT)
    result = sparse_random_walk(cam_vec, aff.cuda(), size, BETA, LOGT)
    assert result.is_cuda
    assert (result.cpu() - expected).abs().max() <= 1e-9 * expected.abs().max()


def test_bench_runs_and_agrees(capsys):
    results = bench_main(['--height', '100', '--width', '90', '--classes', '2', '20', '--repeats', '1'])
    assert [n_diff for _, _, n_diff in results] == [0, 0]
    assert 'speed-up' in capsys.readouterr().out
