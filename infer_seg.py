"""Stage 6: segment images with the retrained SegNet (multi-scale + flip), with and without dense CRF.

    python infer_seg.py --weights resnet38_seg.pth --image_dir VOC2012/JPEGImages --output_crf seg_crf

Per image <id> of --infer_list (images --image_dir/<id>.jpg), the logits of every scale and its flip are
bilinearly upsampled to the image size and summed, times 0.1 (the mean of the seed's 10 inputs). Outputs
(VOC palette PNGs of class indices 0..20, written atomically):
  --output/<id>.png      argmax of the summed logits (the seed crashes here; we write to --output)
  --output_crf/<id>.png  argmax of the dense CRF (Gaussian sxy 3 compat 3, bilateral sxy 83 srgb 5
                         compat 4, 10 iterations) on the softmax of the summed logits
Images whose outputs all exist are skipped (--overwrite redoes them). The CRF runs in --num_workers
processes while the network works on the next image.
"""
import argparse
import functools
import os

import numpy as np
import torch

import voc12.data
from tool import imutils
from tool.cli import add_network_args, pick_device, run_main, scale_list
from tool.inference import CrfPool, load_model, msf_forward, pending_progress
from tool.io import UserError, atomic_save_png, check_output_dir, load_image

SCALES = (1.0, 0.5, 0.75, 1.25, 1.5)
CRF_PARAMS = {'t': 10, 'gauss_sxy': 3, 'gauss_compat': 3, 'bi_sxy': 83, 'bi_srgb': 5, 'bi_compat': 4}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', required=True, type=str, help='state dict written by train_seg.py')
    parser.add_argument('--image_dir', required=True, type=str, help='folder of <id>.jpg images')
    parser.add_argument('--network', default='network.resnet38_seg', type=str)
    parser.add_argument('--infer_list', default='voc12/val.txt', type=str)
    parser.add_argument('--num_workers', default=8, type=int,
                        help='dense-CRF worker processes (at most the CPU count; 0 runs the CRF in this process)')
    parser.add_argument('--database', default='voc', choices=['voc'], help='dataset layout (only voc, as the seed)')
    parser.add_argument('--output', default=None, type=str, help='folder for the argmax label PNGs')
    parser.add_argument('--output_crf', default=None, type=str, help='folder for the CRF-refined label PNGs')
    parser.add_argument('--scales', default=SCALES, type=scale_list,
                        help='comma-separated scales, each also flipped (default: the seed\'s 1,0.5,0.75,1.25,1.5)')
    add_network_args(parser)
    parser.add_argument('--overwrite', action='store_true', help='redo images whose outputs already exist')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none',
                        help='mixed-precision forward (fp16 needs CUDA)')
    return parser


def summed_logits(model, img, scales, device, amp='none'):
    """(21, H, W) logits of every scale and its flip at the image size, summed and divided by the number
    of inputs (the seed's 0.1 for its 5 scales)."""
    total = msf_forward(model, img, scales, model.normalize, device, amp=amp, sum_outputs=True)
    return total / (2 * len(scales))


def crf_labels(img, probs):
    """HxW uint8 argmax of the seed's dense CRF on (21, H, W) class probabilities."""
    return np.argmax(imutils.crf_inference(img, probs, labels=probs.shape[0], **CRF_PARAMS), 0).astype(np.uint8)


def main(argv=None):
    args = build_parser().parse_args(argv)
    out_dirs = [d for d in (args.output, args.output_crf) if d]
    if not out_dirs:
        raise UserError('nothing to write: give --output (argmax labels) and/or --output_crf (CRF-refined labels)')
    ids = list(voc12.data.check_images(args.infer_list, args.image_dir, 'images (--image_dir)'))
    device = pick_device(args.device)
    model = load_model(args.network, args.weights, device, args.width, cls='SegNet')
    for flag, folder in (('--output', args.output), ('--output_crf', args.output_crf)):
        if folder:
            check_output_dir(folder, flag)
    print(f'infer_seg on {device}: {len(ids)} images of {args.infer_list}, scales {args.scales} + flips')

    def out_path(folder, name):
        return os.path.join(folder, name + '.png')

    workers = min(args.num_workers, os.cpu_count() or 1) if args.output_crf else 0
    todo = pending_progress(ids, lambda name: [out_path(d, name) for d in out_dirs], args.overwrite, desc='infer_seg')
    with CrfPool(workers) as pool:
        for name in todo:
            img = load_image(os.path.join(args.image_dir, name + '.jpg'))
            logits = summed_logits(model, img, args.scales, device, args.amp)
            if args.output:
                atomic_save_png(out_path(args.output, name), logits.argmax(0).byte().cpu().numpy())
            if args.output_crf:
                probs = torch.softmax(logits, 0).cpu().numpy()
                pool.submit(name, crf_labels, (img, probs), functools.partial(atomic_save_png,
                                                                              out_path(args.output_crf, name)))


if __name__ == '__main__':
    run_main(main)
