"""Per-image time of infer_aff's random walk: the reference's dense T^(2^logt) against the sparse walk.

    python bench/bench_rw.py                 # 500x375 image -> 504x376 padded -> 63x47 feature grid

Affinities and CAMs are synthetic but shaped like the real ones: the affinity comes from smooth features
with plateaus and edges (aff near 1 inside a region, small across), CAMs are smooth maps of a few present
classes with the background channel (1 - max)^alpha, zero-padded to a multiple of 8 like infer_aff does.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tool.pyutils import get_indices_of_pairs, pair_offsets  # noqa: E402
from tool.randomwalk import propagate_cam  # noqa: E402


def smooth_field(channels, size, gen, cells=(4, 3)):
    """Random field, smooth at the scale of `cells` blocks over the grid `size`, (channels, h, w)."""
    low = torch.randn(1, channels, cells[1], cells[0], generator=gen)
    return F.interpolate(low, size=size, mode='bilinear', align_corners=True)[0]


def synthetic_affinity(size, seed=0, radius=5, channels=16):
    """aff = exp(-mean_c |f_from - f_to|) (the aff net's head) on features with plateaus and edges,
    shape (n_offsets, n_from) for the feature grid `size` = (h, w)."""
    gen = torch.Generator().manual_seed(seed)
    feat = torch.tanh(3 * smooth_field(channels, size, gen)).reshape(channels, -1)
    ind_from, ind_to = get_indices_of_pairs(radius, size)
    to = feat[:, ind_to].reshape(channels, -1, ind_from.numel())
    return torch.exp(-(to - feat[:, ind_from].unsqueeze(1)).abs().mean(0))


def synthetic_cam(image_size, seed=0, n_present=3, alpha=16):
    """CAM stack (21, Hpad, Wpad) as infer_aff builds it for an image of `image_size` = (H, W)."""
    gen = torch.Generator().manual_seed(seed + 1)
    height, width = image_size
    classes = torch.randperm(20, generator=gen)[:n_present]
    cams = torch.relu(smooth_field(n_present, image_size, gen, cells=(5, 4)))
    cams = cams / (cams.amax(dim=(1, 2), keepdim=True) + 1e-5)
    full = torch.zeros(21, height, width)
    full[classes + 1] = cams
    full[0] = (1 - cams.amax(dim=0)) ** alpha
    pad = (0, -width % 8, 0, -height % 8)
    return F.pad(full, pad).numpy()


def timed(fn, repeats):
    """Median wall and process CPU seconds of `repeats` calls, and the last result."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), result


def memory_estimates(size, radius, n_channels):
    """Bytes held at the peak by each path (upper estimates from the tensor sizes, not measurements)."""
    n = size[0] * size[1]
    dense = 3 * n * n * 4  # float32 HW x HW: the affinity matrix, T and the product of a squaring
    slots = 2 * len(pair_offsets(radius)) + 1
    # float64 walk: the (HW, slots) table (value, column, presence), the CSR matrix (column, value) and
    # two (HW, C) iterates
    sparse = n * slots * (8 + 8 + 1) + n * slots * 16 + 2 * n * n_channels * 8
    return dense, sparse


def row(n_present, path, wall, cpu, memory):
    return f'{n_present:<9}{path:<47}{wall:>9.3f}{cpu:>8.2f}{memory / 2**20:>16.1f}'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--height', type=int, default=375, help='image height')
    parser.add_argument('--width', type=int, default=500, help='image width')
    parser.add_argument('--beta', type=float, default=8)
    parser.add_argument('--logt', type=int, default=8)
    parser.add_argument('--radius', type=int, default=5)
    parser.add_argument('--classes', type=int, nargs='+', default=[3, 20],
                        help='numbers of classes present in the CAMs, one comparison each (20 = worst case)')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs of the sparse path')
    parser.add_argument('--dense_repeats', type=int, default=1, help='timed runs of the dense path')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)

    image_size = (args.height, args.width)
    feat_size = (-(-args.height // 8), -(-args.width // 8))
    aff = synthetic_affinity(feat_size, args.seed, args.radius)
    small = (9, 12)  # warm-up of both paths (allocator, MKL, OpenMP threads) on a small grid
    for method in ('sparse', 'dense'):
        propagate_cam(synthetic_cam((72, 96), args.seed), synthetic_affinity(small, args.seed, args.radius),
                      small, args.beta, args.logt, method, args.radius)
    mem_dense, mem_sparse = memory_estimates(feat_size, args.radius, 21)

    print(f'image {args.height}x{args.width} -> padded {feat_size[0] * 8}x{feat_size[1] * 8}, '
          f'feature grid {feat_size[1]}x{feat_size[0]} (HW={feat_size[0] * feat_size[1]}), '
          f'beta {args.beta:g}, logt {args.logt} ({2 ** args.logt} steps), {torch.get_num_threads()} threads')
    print(f'{"classes":<9}{"path":<47}{"s/image":>9}{"CPU s":>8}{"peak MB (est.)":>16}')
    results = []
    for n_present in args.classes:
        cam_full = synthetic_cam(image_size, args.seed, n_present)

        def run(method):
            return propagate_cam(cam_full, aff, feat_size, args.beta, args.logt, method, args.radius)

        t_sparse, cpu_sparse, labels_sparse = timed(lambda: run('sparse'), args.repeats)
        t_dense, cpu_dense, labels_dense = timed(lambda: run('dense'), args.dense_repeats)
        n_diff = int(np.count_nonzero(labels_sparse != labels_dense))
        results.append((t_dense, t_sparse, n_diff))
        print(row(n_present, 'dense float32 (build HWxHW, square, multiply)', t_dense, cpu_dense, mem_dense))
        print(row(n_present, 'sparse float64 (CSR, 2^logt products)', t_sparse, cpu_sparse, mem_sparse))
        agreement = 'identical' if n_diff == 0 else f'different at {n_diff} of {labels_dense.size} pixels'
        print(f'{"":<9}speed-up {t_dense / t_sparse:.1f}x, memory ratio {mem_dense / mem_sparse:.1f}x, '
              f'argmax labels {agreement}')
    return results


if __name__ == '__main__':
    main()
