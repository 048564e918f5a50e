"""Benchmark: evaluation.evaluate() against just decoding the same PNGs.

    python bench/bench_eval.py [--n 1449] [--workers W] [--repeats 5]

Writes `--n` prediction/GT pairs of 500x375 VOC-palette PNGs (irregular object blobs, GT with 5-pixel 255
borders, predictions with shifted boundaries and some wrong classes) into a temporary folder, then times
in one run, best of `--repeats`:
  decode: Image.open + np.asarray of every prediction and GT PNG, nothing else, both in one process and in
          a pool of W workers with evaluate()'s chunking;
  eval:   evaluation.evaluate(type='png') with workers=W and with workers=0 (in-process).
The ratio eval / decode compares like with like (same worker count); the target is <= 1.5 for W workers.
Wall and CPU time (this process plus its pool workers) are both shown: on a shared machine the CPU time
is the steadier measure.
"""
import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from multiprocessing import Pool

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluation  # noqa: E402
from tool.io import atomic_save_png  # noqa: E402

H, W = 375, 500


def _smooth_noise(rng, cell):
    small = rng.uniform(-1, 1, (H // cell + 2, W // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(small, mode='F').resize((W, H), Image.BILINEAR))


def _objects(rng):
    """1-4 objects: (class, centre y, centre x, radius y, radius x)."""
    return [(int(rng.integers(1, 21)), rng.uniform(0, H), rng.uniform(0, W), rng.uniform(30, 160),
             rng.uniform(30, 200)) for _ in range(rng.integers(1, 5))]


def _paint(rng, objects, shift):
    """Objects painted back to front, with boundaries wobbled by smooth noise (and shifted by `shift`)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    label = np.zeros((H, W), np.uint8)
    for c, cy, cx, ry, rx in objects:
        dy, dx = rng.normal(0, shift, 2)
        inside = ((yy - cy - dy) / ry) ** 2 + ((xx - cx - dx) / rx) ** 2 + 0.5 * _smooth_noise(rng, 25) < 1
        label[inside] = c
    return label


def make_pair(seed):
    rng = np.random.default_rng(seed)
    objects = _objects(rng)
    gt = _paint(rng, objects, shift=0)
    border = ndimage.grey_dilation(gt, size=5) != ndimage.grey_erosion(gt, size=5)
    gt[border] = 255
    guessed = [(int(rng.integers(1, 21)) if rng.random() < 0.2 else c, *rest) for c, *rest in objects]
    if rng.random() < 0.3:
        guessed += _objects(rng)[:1]  # a false positive
    return gt, _paint(rng, guessed, shift=8)


def _write_pair(job):
    seed, pred_path, gt_path = job
    gt, pred = make_pair(seed)
    atomic_save_png(gt_path, gt)
    atomic_save_png(pred_path, pred)


def _decode_chunk(paths):
    total = 0
    for path in paths:
        total += np.asarray(Image.open(path)).shape[0]
    return total


def decode_all(ids, pred_dir, gt_dir, workers):
    """Decode every prediction and GT PNG with the pool and chunking evaluate() uses."""
    chunks = [[p for i in chunk for p in (os.path.join(pred_dir, f'{i}.png'), os.path.join(gt_dir, f'{i}.png'))]
              for chunk in evaluation.split_ids(ids, workers)]
    if workers <= 1:
        return sum(map(_decode_chunk, chunks))
    with Pool(min(workers, len(chunks))) as pool:
        return sum(pool.imap_unordered(_decode_chunk, chunks))


def mean_kib(folder):
    return np.mean([os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)]) / 1024


def cpu_seconds():
    """User + system CPU time of this process and its finished children (the pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn):
    """(wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--n', type=int, default=1449, help='image pairs (VOC val has 1,449)')
    parser.add_argument('--workers', type=int, default=evaluation.default_workers())
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pred_dir, gt_dir = os.path.join(tmp, 'pred'), os.path.join(tmp, 'gt')
        ids = [f'2007_{k:06d}' for k in range(args.n)]
        start = time.perf_counter()
        with Pool(max(1, args.workers)) as pool:
            pool.map(_write_pair, [(k, os.path.join(pred_dir, f'{i}.png'), os.path.join(gt_dir, f'{i}.png'))
                                   for k, i in enumerate(ids)], chunksize=16)
        print(f'wrote {args.n} pairs of {W}x{H} palette PNGs in {time.perf_counter() - start:.1f} s '
              f'(mean size: GT {mean_kib(gt_dir):.1f} KiB, prediction {mean_kib(pred_dir):.1f} KiB)')

        runs = {
            f'decode, {args.workers} workers': lambda: decode_all(ids, pred_dir, gt_dir, args.workers),
            f'evaluate, {args.workers} workers': lambda: evaluation.evaluate(ids, pred_dir, gt_dir,
                                                                             workers=args.workers),
            'decode, 1 process': lambda: decode_all(ids, pred_dir, gt_dir, 0),
            'evaluate, 1 process': lambda: evaluation.evaluate(ids, pred_dir, gt_dir, workers=0),
        }
        decode_all(ids, pred_dir, gt_dir, args.workers)  # warm the page cache
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn))

    print(f'{"":28} {"wall best":>10} {"median":>8} {"CPU best":>10} {"median":>8}   '
          f'(seconds, {args.repeats} repeats, {2 * args.n} PNGs)')
    for name, values in times.items():
        wall, cpu = zip(*values)
        print(f'{name:28} {min(wall):10.3f} {statistics.median(wall):8.3f} {min(cpu):10.3f} '
              f'{statistics.median(cpu):8.3f}')
    for label in (f'{args.workers} workers', '1 process'):
        evaluate_times, decode_times = times[f'evaluate, {label}'], times[f'decode, {label}']
        for k, clock in enumerate(('wall', 'CPU')):
            ratio = min(t[k] for t in evaluate_times) / min(t[k] for t in decode_times)
            verdict = 'OK' if ratio <= 1.5 else 'ABOVE TARGET'
            print(f'ratio evaluate / decode-only, {label}, {clock} (best): {ratio:.2f}  (target <= 1.5: {verdict})')

if __name__ == '__main__':
    main()
