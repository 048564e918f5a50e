"""Segmentation from localization at the README's settings: peak memory of train_edge.py's joint loop and the
segmenter's images/s at inference (infer_and_envalue.py's forward).

    python bench/bench_sfl.py                 # measured on the GPU when there is one, else the memory ESTIMATE
    python bench/bench_sfl.py --estimate --crop 448 --speed_crop 320

Memory. Both networks stay resident for the whole loop with their gradients and optimiser state: the localiser
(network.refer_SEAM, K = 19 = person + 18 COCO categories, PolyOptimizer = SGD with one momentum buffer) and the
segmenter (network.edge_SEAM.DeepLabv3_plus, 4 input channels, Adam: two buffers), plus the segmenter's sample
buffer (tool/sfl.SegmenterBuffer, on the segmenter's device). The two steps run one after the other, so the
peak is that state plus the larger step's activations: the localiser step (--batch_size crops and their 0.5x
downscale, tool/sfl.localiser_loss) or the segmenter step (--edge_batch_size (image, CAM) pairs through two
forwards, O and O_rv, and the three Dice terms). With a GPU: torch.cuda.max_memory_allocated over two real
iterations (train_edge.localiser_step and segmenter_step). Without one: an ESTIMATE as bench/bench_memory.py
makes it (activations saved for backward counted on the meta device, plus twice the largest of them).

Speed. The segmenter's forward in eval mode under no_grad on (image, map) pairs at --speed_crop, at batch 1 and
--edge_batch_size, fp32 (and bf16 autocast on a GPU), after a warm-up; the rows give images/s and the ratio to
the first row, measured side by side in this run.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_memory import CARD_GIB, GIB, saved_bytes  # noqa: E402
from network.edge_SEAM import DeepLabv3_plus  # noqa: E402
from network.refer_SEAM import Net as ReferNet  # noqa: E402
from tool import sfl  # noqa: E402
from tool.equivariance import downscale  # noqa: E402
from tool.torchutils import PolyOptimizer, parameter_groups  # noqa: E402
from tool.train_loop import autocast  # noqa: E402
from train_edge import localiser_step, segmenter_step  # noqa: E402

K = 19  # person + the 18 categories of the original's coco_categories


def build_models(device, width=1.0, classes=K):
    with torch.device(device):
        refer = ReferNet(classes, **({'width': width} if width != 1 else {}))
        edge = DeepLabv3_plus(4, 1, 16)
    return refer.train(), edge.train()


def localiser_batch(n, crop, classes=K, device='cpu'):
    with torch.device(device):
        return torch.randn(n, 3, crop, crop), (torch.rand(n, classes) > 0.7).float()


def segmenter_batch(n, crop, device='cpu'):
    with torch.device(device):
        return (torch.randn(n, 3, crop, crop), torch.rand(n, 1, crop, crop), torch.rand(n, 1, crop, crop),
                (torch.rand(n, 1, crop, crop) > 0.5).float())


def localiser_forward(refer, img, label):
    cam1, cam_rv1 = refer(img)
    cam2, cam_rv2 = refer(downscale(img, sfl.LOCALISER_SCALE, align_corners=True))
    return sfl.localiser_loss(cam1, cam_rv1, cam2, cam_rv2, label)[0]['loss']


def segmenter_forward(edge, batch):
    img, refer, refer_rv, seg = batch
    return sfl.segmenter_loss(edge(img, refer), edge(img, refer_rv), seg)['edge_loss']


def _bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate(batch_size, edge_batch_size, crop, width=1.0, classes=K):
    """Estimated peak bytes of the joint loop and its parts (see the module docstring)."""
    refer, edge = build_models('meta', width, classes)
    state = {}
    for name, model, optimiser_buffers in (('localiser', refer, 1), ('segmenter', edge, 2)):
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        state[name] = _bytes(list(model.parameters()) + list(model.buffers())) + 4 * trainable * (1 + optimiser_buffers)
    state['sample buffer'] = _bytes(segmenter_batch(edge_batch_size, crop, 'meta'))
    steps = {}
    for name, model, run in (('localiser step', refer, lambda: localiser_forward(refer, *localiser_batch(
                                 batch_size, crop, classes, 'meta'))),
                             ('segmenter step', edge, lambda: segmenter_forward(edge, segmenter_batch(
                                 edge_batch_size, crop, 'meta')))):
        saved = saved_bytes(run, list(model.parameters()) + list(model.buffers()))
        steps[name] = sum(saved) + 2 * max(saved)
    return sum(state.values()) + max(steps.values()), dict(state, **steps)


def measure_cuda(batch_size, edge_batch_size, crop, steps=2):
    """Peak bytes allocated on the GPU over `steps` iterations of the joint loop (random data)."""
    device = torch.device('cuda')
    torch.cuda.empty_cache()
    refer, edge = build_models(device)
    ref_opt = PolyOptimizer(parameter_groups(refer, 1e-3, 5e-4), lr=1e-3, weight_decay=5e-4, max_step=10)
    edge_opt = torch.optim.Adam(edge.parameters(), lr=1e-4)
    buffer = sfl.SegmenterBuffer(edge_batch_size, (crop, crop), device)
    torch.cuda.reset_peak_memory_stats()
    try:
        for _ in range(steps):
            localiser_step(refer, ref_opt, *localiser_batch(batch_size, crop, device=device))
            segmenter_step(edge, edge_opt, (buffer.img, buffer.refer, buffer.refer_rv, buffer.seg), 'logits')
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    except torch.cuda.OutOfMemoryError:
        return None


def images_per_second(edge, n, crop, device, amp, reps):
    batch = segmenter_batch(n, crop, device)[:2]
    with torch.no_grad(), autocast(device, amp):
        edge(*batch)  # warm-up
        if device.type == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            edge(*batch)
        if device.type == 'cuda':
            torch.cuda.synchronize()
    return n * reps / (time.perf_counter() - start)


def speed_rows(edge_batch_size, crop, device, reps):
    """[(batch, amp, images/s)] of the segmenter's inference forward."""
    torch.manual_seed(0)
    with torch.device(device):
        edge = DeepLabv3_plus(4, 1, 16).eval()
    amps = ('none', 'bf16') if device.type == 'cuda' else ('none',)
    return [(n, amp, images_per_second(edge, n, crop, device, amp, reps))
            for amp in amps for n in dict.fromkeys((1, edge_batch_size))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch_size', type=int, default=2, help="train_edge.py's (the README's 2)")
    parser.add_argument('--edge_batch_size', type=int, default=4, help="train_edge.py's (the README's 4)")
    parser.add_argument('--crop', type=int, default=448, help='training crop (the README\'s 448)')
    parser.add_argument('--speed_crop', type=int, default=448, help='image side of the inference speed rows')
    parser.add_argument('--reps', type=int, default=3, help='timed forwards per speed row')
    parser.add_argument('--estimate', action='store_true', help='estimate the memory even when a GPU is there')
    parser.add_argument('--no_speed', action='store_true', help='memory only')
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available()
    print(f'train_edge.py joint loop: batch {args.batch_size}, edge batch {args.edge_batch_size}, crop {args.crop}, '
          f'K = {K}; "fits" = at most {CARD_GIB:g} GiB (an 11 GB card after context and slack).\n')
    if gpu and not args.estimate:
        peak = measure_cuda(args.batch_size, args.edge_batch_size, args.crop)
        text = 'OOM' if peak is None else f'{peak / GIB:.2f}'
        print(f'| peak GiB (measured on {torch.cuda.get_device_name()}) | fits 11 GB |\n|---:|---|')
        print(f"| {text} | {'no' if peak is None or peak > CARD_GIB * GIB else 'yes'} |")
    else:
        peak, parts = estimate(args.batch_size, args.edge_batch_size, args.crop)
        print('| part | GiB (ESTIMATE, no GPU measurement) |\n|---|---:|')
        for name, value in parts.items():
            print(f'| {name} | {value / GIB:.2f} |')
        print(f"| **peak** (states + the larger step) | **{peak / GIB:.2f}** (fits 11 GB: "
              f"{'yes' if peak <= CARD_GIB * GIB else 'no'}) |")
    if args.no_speed:
        return
    device = torch.device('cuda' if gpu else 'cpu')
    rows = speed_rows(args.edge_batch_size, args.speed_crop, device, args.reps)
    where = torch.cuda.get_device_name() if gpu else f'CPU, {torch.get_num_threads()} threads'
    print(f'\nsegmenter inference, {args.speed_crop} px (image, map) pairs, {where}:\n')
    print('| batch | amp | images/s | ratio to the first row |\n|---:|---|---:|---:|')
    for n, amp, speed in rows:
        print(f'| {n} | {amp} | {speed:.2f} | {speed / rows[0][2]:.2f} |')


if __name__ == '__main__':
    main()
