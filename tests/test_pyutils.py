"""Pair indices of the radius-5 neighbourhood against a brute-force reading of the spec."""
import torch

from tool.pyutils import AverageMeter, get_indices_of_pairs, pair_offsets


def brute_force_pairs(radius, h, w):
    offsets = [(0, dx) for dx in range(1, radius)] + [
        (dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius) if dx * dx + dy * dy < radius ** 2]
    froms = [y * w + x for y in range(0, h - radius + 1) for x in range(radius - 1, w - radius + 1)]
    tos = [(f // w + dy) * w + (f % w + dx) for dy, dx in offsets for f in froms]
    return offsets, froms, tos


def test_pairs_match_brute_force():
    for h, w in [(56, 56), (7, 11), (5, 9), (10, 20)]:
        offsets, froms, tos = brute_force_pairs(5, h, w)
        ind_from, ind_to = get_indices_of_pairs(5, (h, w))
        assert pair_offsets(5) == offsets and len(offsets) == 34
        assert ind_from.tolist() == froms
        assert ind_to.tolist() == tos


def test_grid_too_small_has_no_pairs():
    for size in [(4, 20), (10, 8), (2, 2)]:
        ind_from, ind_to = get_indices_of_pairs(5, size)
        assert ind_from.numel() == 0 and ind_to.numel() == 0 and ind_to.dtype == torch.long


def test_average_meter():
    meter = AverageMeter('loss')
    meter.add({'loss': 1.0})
    meter.add({'loss': 3.0})
    assert meter.pop('loss') == 2.0 and meter.get('loss') == 0.0
