"""Peak training memory per stage at the paper's settings (ResNet-38, crop 448), by micro-batch and precision.

    python bench/bench_memory.py            # measured with the CUDA allocator when a GPU is there
    python bench/bench_memory.py --estimate # the estimate, also on a GPU machine

With a GPU, each row is torch.cuda.max_memory_allocated over two optimiser steps of the stage's network,
loss and PolyOptimizer (tool.train_loop.accumulate_gradients, as the training scripts run it). Without
one, each row is an ESTIMATE: fp32 weights + gradients + SGD momentum (+ the bf16 weight copies autocast
keeps with --amp bf16) + the activations one forward saves for backward, counted with
torch.autograd.graph.saved_tensors_hooks (unique storages) on the meta device, i.e. at the real shape
without computing anything, + twice the largest saved tensor for the gradient buffers backward holds
while it passes the largest layer (a rough allowance). It leaves out allocator fragmentation, cuDNN
workspaces and the CUDA context, so a real card needs some headroom beyond it. Prints a markdown table.

train_SEAM and train_SB run the siamese pair of train_SEAM.py (the crop and its 0.3x downscale) with the real
losses (tool/equivariance.seam_loss; tool/sb_losses.sbnet_loss with a random 21-channel boundary map).
"""
import argparse
import gc
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tool import equivariance, sb_losses  # noqa: E402
from tool.affinity import pair_indices  # noqa: E402
from tool.cli import import_network  # noqa: E402
from tool.torchutils import PolyOptimizer, parameter_groups  # noqa: E402
from tool.train_loop import accumulate_gradients  # noqa: E402
from train_aff import affinity_loss  # noqa: E402

# stage: (network module, class, paper batch size)
STAGES = {'train_cls': ('network.resnet38_cls', 'Net', 16),
          'train_aff': ('network.resnet38_aff', 'Net', 8),
          'train_seg': ('network.resnet38_seg', 'SegNet', 4),
          'train_SEAM': ('network.resnet38_SEAM', 'Net', 8),
          'train_SB': ('network.resnet38_SEAM_BD', 'Net', 8)}
SIAMESE = ('train_SEAM', 'train_SB')  # the crop and its 0.3x downscale go through the network
SB_LOSS = 'tool/sb_losses.sbnet_loss (SEAM loss + boundary BCE + smoothness), the real one'
GIB = 2 ** 30
CARD_GIB = 10.0  # what an "11 GB" card (GTX 1080 Ti / RTX 2080 Ti, 11 GiB) leaves after context and slack


def build_model(stage, width, device='cpu'):
    module, cls, _ = STAGES[stage]
    with torch.device(device):
        model = import_network(module, cls, **({'width': width} if width != 1 else {}))
    return model.train()


def make_batch(stage, n, crop, device='cpu'):
    """Random inputs with the shapes the stage's DataLoader yields (labels where the loss needs them)."""
    g = crop // 8
    with torch.device(device):
        img = torch.randn(n, 3, crop, crop)
        if stage in ('train_cls', 'train_SEAM'):
            return [img, (torch.rand(n, 20) > 0.8).float()]
        if stage == 'train_SB':
            return [img, (torch.rand(n, 20) > 0.8).float(), (torch.rand(n, 21, crop, crop) > 0.9).float()]
        if stage == 'train_aff':
            n_from = pair_indices((g, g), torch.device('cpu'))[0].numel()
            kind = torch.randint(0, 4, (n, 34, n_from))
            return [img, [(kind == k).float() for k in range(3)]]
        return [img, torch.randint(0, 21, (n, crop, crop))]


def stage_loss(stage, model, micro, batch):
    """The stage's loss on `micro` as its share of the whole batch (as the training scripts compute it)."""
    img, label = micro[:2]
    share = img.shape[0] / batch[0].shape[0]
    if stage == 'train_cls':
        return F.multilabel_soft_margin_loss(model(img).float(), label) * share
    if stage == 'train_aff':
        return affinity_loss(model(img), label, [lab.sum() + 1e-5 for lab in batch[1]])[0]
    if stage in SIAMESE:
        return siamese_loss(model, micro, len(batch[0]))
    logits = F.interpolate(model(img), size=img.shape[2:], mode='bilinear', align_corners=False)
    return F.cross_entropy(logits.float(), label, ignore_index=255) * share


def siamese_loss(model, micro, n):
    """The loss of the crop and its 0.3x downscale: SEAM's (train_SEAM.py), or SBNet's with a boundary map."""
    img, label = micro[:2]
    small = equivariance.downscale(img, align_corners=True)
    if len(micro) == 2:
        outputs = [t.float() for t in model(img) + model(small)]
        return equivariance.seam_loss(*outputs, label, n=n)['loss']
    outputs = [t.float() for t in _forward_sb(model, img) + _forward_sb(model, small)]
    return sb_losses.sbnet_loss(*outputs, micro[2], label, n=n)['loss']


def _forward_sb(model, x):
    """SBNet's forward; on the meta device with a stand-in Canny map (OpenCV cannot run there), which holds
    the same bytes as the one the network computes from a real image."""
    canny = x.new_zeros(x.shape[0], 1, *x.shape[2:]) if x.is_meta else None
    return model(x, canny=canny)


def train_steps(stage, model, batch, micro, amp, device, steps=2):
    """`steps` optimiser steps as tool.train_loop runs them (two, so SGD's momentum buffers exist)."""
    optimizer = PolyOptimizer(parameter_groups(model, 1e-3, 5e-4), lr=1e-3, weight_decay=5e-4, max_step=10)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(model, batch, lambda m, mi, b: (stage_loss(stage, m, mi, b), {}), micro, device, amp)
        optimizer.step()
    return optimizer


def measure_cuda(stage, batch_size, micro, amp, crop, width):
    """Peak bytes allocated on the GPU during two training steps."""
    device = torch.device('cuda')
    gc.collect()
    torch.cuda.empty_cache()
    model = build_model(stage, width).to(device)
    batch = make_batch(stage, batch_size, crop)
    torch.cuda.reset_peak_memory_stats()
    try:
        optimizer = train_steps(stage, model, batch, micro, amp, device)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        del optimizer
    except torch.cuda.OutOfMemoryError:
        peak = None
    del model, batch
    return peak


def saved_bytes(run, exclude):
    """Sizes in bytes of the unique storages that run() saves for backward, the storages of `exclude` left out."""
    own = {t.untyped_storage()._cdata for t in exclude}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in own:
            saved[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return list(saved.values())


def saved_activation_bytes(stage, model, micro_size, crop, amp):
    """Sizes of the activations one forward + loss of a micro-batch saves, counted on the meta device.

    bf16 emulates autocast by running the whole forward in bf16 (the losses cast to fp32 themselves);
    the bf16 weight copies autocast also keeps are counted separately in `estimate`.
    """
    batch = make_batch(stage, micro_size, crop, 'meta')
    if amp == 'bf16':
        model = model.to(torch.bfloat16)
        batch[0] = batch[0].to(torch.bfloat16)
    return saved_bytes(lambda: stage_loss(stage, model, batch, batch),
                       list(model.parameters()) + list(model.buffers()))


def estimate(stage, batch_size, micro, amp, crop, width):
    """Estimated peak bytes (see the module docstring) and its parts."""
    model = build_model(stage, width, 'meta')
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    micro_size = micro or batch_size
    saved = saved_activation_bytes(stage, model, micro_size, crop, amp)
    parts = {'weights': weights, 'grads': 4 * trainable, 'momentum': 4 * trainable,
             'bf16 copies': 2 * trainable if amp == 'bf16' else 0,
             'inputs': sum(t.numel() * t.element_size() for t in _flat(make_batch(stage, micro_size, crop, 'meta'))),
             'activations': sum(saved),
             'backward buffers': 2 * max(saved)}
    return sum(parts.values()), parts


def _flat(batch):
    for item in batch:
        yield from (_flat(item) if isinstance(item, list) else [item])


def micro_sizes(batch_size, requested):
    """The requested micro-batch sizes that split this batch (0 = the whole batch), largest first."""
    return sorted({m for m in requested if m == 0 or m < batch_size}, key=lambda m: -(m or batch_size))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--stages', default=','.join(STAGES), help='comma-separated subset of ' + ', '.join(STAGES))
    parser.add_argument('--micro', default='0,4,2,1', help='micro-batch sizes (0 = the whole batch)')
    parser.add_argument('--amp', default='none,bf16', help='precisions: none, bf16, fp16 (fp16 on a GPU only)')
    parser.add_argument('--crop', type=int, default=448)
    parser.add_argument('--width', type=float, default=1.0, help='backbone width (1 = ResNet-38 as in the paper)')
    parser.add_argument('--estimate', action='store_true', help='estimate even when a GPU is available')
    args = parser.parse_args(argv)
    measured = torch.cuda.is_available() and not args.estimate
    if measured:
        print(f'Peak training memory, measured (torch.cuda.max_memory_allocated, two steps) on '
              f'{torch.cuda.get_device_name()}, torch {torch.__version__}.')
    else:
        print('Peak training memory, ESTIMATE (no GPU measurement): fp32 weights + grads + SGD momentum '
              '(+ bf16 weight copies) + activations saved for backward (counted on the meta device at the real '
              'shape) + 2x the largest saved tensor (backward buffers). Not counted: allocator fragmentation, '
              'cuDNN workspaces, CUDA context.')
    print(f'ResNet-38 (width {args.width:g}), crop {args.crop}; "fits" = at most {CARD_GIB:g} GiB '
          '(an 11 GB card after context and slack).')
    stages = args.stages.split(',')
    if 'train_SB' in stages:
        print(f'train_SB loss: {SB_LOSS}.')
    print()
    header = '| stage | batch | micro-batch | amp | peak GiB | fits 11 GB |'
    if not measured:
        header += ' activations GiB | weights+grads+momentum GiB |'
    print(header)
    print('|' + '---|' * (header.count('|') - 1))
    for stage in stages:
        batch_size = STAGES[stage][2]
        for amp in args.amp.split(','):
            for micro in micro_sizes(batch_size, [int(m) for m in args.micro.split(',')]):
                row = f'| {stage} | {batch_size} | {micro or batch_size} | {amp} |'
                if measured:
                    peak = measure_cuda(stage, batch_size, micro, amp, args.crop, args.width)
                    cells = ['OOM', 'no'] if peak is None else [f'{peak / GIB:.2f}', _fits(peak)]
                else:
                    peak, parts = estimate(stage, batch_size, micro, amp, args.crop, args.width)
                    state = parts['weights'] + parts['grads'] + parts['momentum']
                    cells = [f'{peak / GIB:.2f}', _fits(peak), f"{parts['activations'] / GIB:.2f}",
                             f'{state / GIB:.2f}']
                print(row + ''.join(f' {c} |' for c in cells), flush=True)


def _fits(peak):
    return 'yes' if peak <= CARD_GIB * GIB else 'no'


if __name__ == '__main__':
    main()
