"""Stage 2: class activation maps (multi-scale + flip) and their dense-CRF refinements.

    python3 infer_cls.py --infer_list voc12/train_aug.txt --voc12_root VOC2012 --network network.resnet38_cls \
        --weights res38_cls.pth --out_cam cam --out_la_crf crf_la --out_ha_crf crf_ha

Per image <id> (only the outputs asked for):
  --out_cam/<id>.npy       {class k: HxW float32 in [0, 1]} for the classes of the image-level label
  --out_cam_pred/<id>.png  argmax of [--out_cam_pred_alpha (0.2) background, CAMs] (VOC palette PNG of class indices)
  --out_la_crf/<id>.npy    {0: background, k+1: class k} dCRF marginals, background (1 - max CAM)^low_alpha
  --out_ha_crf/<id>.npy    the same with high_alpha
  --out_crf R              both CRF outputs as R_<low_alpha>.0/ and R_<high_alpha>.0/ (SSENet / SEAM layout)
infer_cls_ser.py (SSENet) and infer_SEAM.py (SEAM) are this stage with their codebase's CAMs and defaults.
Images whose outputs all exist are skipped (--overwrite redoes them). The dCRF runs in --num_workers
processes while the network works on the next image.
"""
import argparse
import functools
import os
from typing import Callable, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

import voc12.data
from tool import imutils
from tool.cli import add_network_args, pick_device, run_main, scale_list
from tool.inference import CrfPool, load_model, msf_forward, pending_progress
from tool.io import UserError, atomic_save_npy, atomic_save_png, check_output_dir, load_image

SCALES = (1.0, 0.5, 1.5, 2.0)
CAM_PRED_BG = 0.2
OUTPUTS = {'out_cam': '.npy', 'out_cam_pred': '.png', 'out_la_crf': '.npy', 'out_ha_crf': '.npy'}


def max_norm(cam):
    """Each class map divided by (its max + 1e-5)."""
    return cam / (cam.amax(dim=(1, 2), keepdim=True) + 1e-5)


class Variant(NamedTuple):
    """What a codebase's CAM stage changes; infer_cls_ser.py (SSENet) and infer_SEAM.py (SEAM) pass their own."""
    script: str
    network: str
    infer_list: str
    scales: tuple
    cam_forward: Callable  # model -> (function of a normalised N x 3 x h x w batch -> N x 20 x h' x w' maps)
    normalize: Callable  # (20, H, W) label-masked multi-scale sum -> normalised CAMs
    cam_pred_bg: float
    crf_alphas: tuple  # (--low_alpha, --high_alpha) defaults


PSA = Variant('infer_cls', 'network.vgg16_cls', 'voc12/train.txt', SCALES, lambda model: model.forward_cam,
              max_norm, CAM_PRED_BG, (4, 32))


def build_parser(variant=PSA, description=__doc__):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', required=True, type=str, help='state dict written by the training stage')
    parser.add_argument('--network', default=variant.network, type=str)
    parser.add_argument('--infer_list', default=variant.infer_list, type=str)
    parser.add_argument('--num_workers', default=8, type=int,
                        help='dense-CRF worker processes (at most the CPU count; 0 runs the CRF in this process)')
    parser.add_argument('--voc12_root', required=True, type=str)
    parser.add_argument('--low_alpha', default=variant.crf_alphas[0], type=int,
                        help='background power of --out_la_crf')
    parser.add_argument('--high_alpha', default=variant.crf_alphas[1], type=int,
                        help='background power of --out_ha_crf')
    parser.add_argument('--out_cam', default=None, type=str)
    parser.add_argument('--out_la_crf', default=None, type=str)
    parser.add_argument('--out_ha_crf', default=None, type=str)
    parser.add_argument('--out_crf', default=None, type=str,
                        help="both CRF outputs in the descendants' layout: <out_crf>_<low_alpha>.0 and "
                             "<out_crf>_<high_alpha>.0 (instead of --out_la_crf / --out_ha_crf)")
    parser.add_argument('--out_cam_pred', default=None, type=str)
    parser.add_argument('--out_cam_pred_alpha', default=variant.cam_pred_bg, type=float,
                        help='constant background score of --out_cam_pred')
    parser.add_argument('--cls_labels', default=None,
                        help='image-level labels .npy (default: voc12/cls_labels.npy beside the code)')
    add_network_args(parser)
    parser.add_argument('--overwrite', action='store_true', help='redo images whose outputs already exist')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--scales', default=variant.scales, type=scale_list,
                        help='comma-separated scales, each also flipped (default: the reference\'s %s)'
                             % ','.join('%g' % s for s in variant.scales))
    parser.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none',
                        help='mixed-precision forward (fp16 needs CUDA)')
    return parser


def normalized_cam(model, img, label, device, amp='none', scales=SCALES, variant=PSA):
    """(20, H, W) float32: the label-masked sum of the multi-scale + flip CAMs, normalised by the variant
    (PSA: each class divided by (its max + 1e-5))."""
    label = torch.from_numpy(label).to(device).view(-1, 1, 1)
    cam = msf_forward(variant.cam_forward(model), img, scales, model.normalize, device, amp=amp, sum_outputs=True)
    return variant.normalize(cam * label).cpu().numpy()


def cam_pred(norm_cam, bg_score=CAM_PRED_BG):
    """HxW class indices: argmax over a constant background score and the 20 CAMs."""
    bg = np.full((1,) + norm_cam.shape[1:], bg_score, norm_cam.dtype)
    return np.argmax(np.concatenate((bg, norm_cam)), 0).astype(np.uint8)


def crf_with_alpha(img, cam_dict, alpha):
    """{0: background, k+1: class k} dCRF marginals of the stack [(1 - max_k cam_k)^alpha, cams].

    Without any present class there is nothing to refine: the whole image is background (the
    reference crashes here)."""
    if not cam_dict:
        return {0: np.ones(img.shape[:2], np.float32)}
    v = np.array(list(cam_dict.values()))
    bg = np.power(1 - np.max(v, axis=0, keepdims=True), alpha)
    scores = np.concatenate((bg, v), axis=0)
    crf = imutils.crf_inference(img, scores, labels=scores.shape[0])
    out = {0: crf[0]}
    for i, key in enumerate(cam_dict):
        out[key + 1] = crf[i + 1]
    return out


def crf_folders(args):
    """--out_crf as its two folders <out_crf>_%.1f of the alphas (SSENet/SEAM layout) in --out_la_crf/--out_ha_crf."""
    if args.out_crf is None:
        return
    if args.out_la_crf or args.out_ha_crf:
        raise UserError('--out_crf names both CRF folders: give it or --out_la_crf/--out_ha_crf, not both')
    args.out_la_crf = args.out_crf + '_%.1f' % args.low_alpha
    args.out_ha_crf = args.out_crf + '_%.1f' % args.high_alpha


def main(argv=None, variant=PSA, description=__doc__):
    args = build_parser(variant, description).parse_args(argv)
    crf_folders(args)
    out_dirs = {flag: getattr(args, flag) for flag in OUTPUTS if getattr(args, flag)}
    if not out_dirs:
        raise UserError('nothing to write: give at least one of --out_cam, --out_cam_pred, --out_crf, --out_la_crf, '
                        '--out_ha_crf')
    ids = list(voc12.data.check_images(args.infer_list, os.path.join(args.voc12_root, voc12.data.IMG_FOLDER_NAME)))
    labels = dict(zip(ids, voc12.data.load_image_label_list_from_npy(ids, args.cls_labels)))
    device = pick_device(args.device)
    model = load_model(args.network, args.weights, device, args.width)
    for flag, folder in out_dirs.items():
        check_output_dir(folder, '--' + flag)
    print(f'{variant.script} on {device}: {len(ids)} images of {args.infer_list}')

    def out_path(flag, name):
        return os.path.join(out_dirs[flag], name + OUTPUTS[flag])

    crf_alphas = {flag: alpha for flag, alpha in (('out_la_crf', args.low_alpha), ('out_ha_crf', args.high_alpha))
                  if flag in out_dirs}
    todo = pending_progress(ids, lambda name: [out_path(flag, name) for flag in out_dirs], args.overwrite,
                            desc=variant.script)
    workers = min(args.num_workers, os.cpu_count() or 1) if crf_alphas and todo.total else 0
    with CrfPool(workers) as pool:
        for name in todo:
            img = load_image(voc12.data.get_img_path(name, args.voc12_root))
            norm_cam = normalized_cam(model, img, labels[name], device, args.amp, args.scales, variant)
            cam_dict = {k: norm_cam[k] for k in range(len(norm_cam)) if labels[name][k] > 1e-5}
            if not cam_dict:
                tqdm.write(f'warning: {name} has no class in its image-level label; its CAM dict is empty and its '
                           'CRF dicts are all background')
            if 'out_cam' in out_dirs:
                atomic_save_npy(out_path('out_cam', name), cam_dict)
            if 'out_cam_pred' in out_dirs:
                atomic_save_png(out_path('out_cam_pred', name), cam_pred(norm_cam, args.out_cam_pred_alpha))
            for flag, alpha in crf_alphas.items():
                pool.submit(name, crf_with_alpha, (img, cam_dict, alpha),
                            functools.partial(atomic_save_npy, out_path(flag, name)))


if __name__ == '__main__':
    run_main(main)
