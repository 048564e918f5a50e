"""Stage 4: random walk of the CAMs over AffinityNet's affinities -> pseudo-label PNGs.

    python3 infer_aff.py --infer_list voc12/train.txt --voc12_root VOC2012 --network network.resnet38_aff \
        --weights res38_aff.pth --cam_dir cam --out_rw rw
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import voc12.data
from tool.cli import add_network_args, pick_device, run_main
from tool.imutils import HWC_to_CHW
from tool.inference import load_model, pending_progress
from tool.io import UserError, atomic_save_png, check_output_dir, load_dict_npy, load_image, require_dir, require_files
from tool.randomwalk import propagate_cam

N_CLASSES = 20


def build_parser():
    parser = argparse.ArgumentParser(description='Random walk of the CAMs with AffinityNet (stage 4).')
    parser.add_argument('--weights', required=True, type=str, help='state dict saved by train_aff.py')
    parser.add_argument('--network', default='network.vgg16_aff', type=str)
    parser.add_argument('--infer_list', default='voc12/train.txt', type=str)
    parser.add_argument('--num_workers', default=8, type=int, help='processes loading images and CAM dicts')
    parser.add_argument('--cam_dir', required=True, type=str, help='CAM dicts of infer_cls --out_cam')
    parser.add_argument('--voc12_root', required=True, type=str)
    parser.add_argument('--alpha', default=16, type=int, help='background score (1 - max CAM) ** alpha')
    parser.add_argument('--bg_score', default=None, type=float,
                        help="constant background score instead of (1 - max CAM) ** alpha (SSENet's infer_aff: 0.2)")
    parser.add_argument('--cam_power', default=1.0, type=float,
                        help='sharpen the CAMs (CAM ** power) before the walk; 1 = the reference')
    parser.add_argument('--out_rw', required=True, type=str, help='folder for the label PNGs')
    parser.add_argument('--beta', default=8, type=int, help='affinity ** beta')
    parser.add_argument('--logt', default=8, type=int, help='the walk runs 2 ** logt steps')
    parser.add_argument('--rw', choices=['sparse', 'dense'], default='sparse',
                        help="'sparse': 2^logt radius-5 sparse products (default); "
                             "'dense': the reference's dense HW x HW squaring (slow, memory-hungry; the oracle)")
    parser.add_argument('--overwrite', action='store_true', help='redo images whose PNG exists')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    add_network_args(parser)
    return parser


def cam_stack(cam_dict, size_hw, alpha, path, power=1.0, bg_score=None):
    """(21, H, W) float32: channel k+1 = CAM of class k (with power != 1: clipped at 0, then ** power), channel 0 =
    (1 - max over classes) ** alpha, or the constant `bg_score` when given (the zero padding to a multiple of 8
    comes later, as in the references)."""
    cam = np.zeros((N_CLASSES + 1,) + tuple(size_hw), np.float32)
    for k, v in cam_dict.items():
        if not (isinstance(k, (int, np.integer)) and 0 <= k < N_CLASSES):
            raise UserError(f'{path}: key {k!r} is not a class index 0..19 (expected a CAM dict of infer_cls)')
        if np.shape(v) != tuple(size_hw):
            raise UserError(f'{path}: CAM of class {k} is {np.shape(v)} but the image is {tuple(size_hw)} '
                            '(rerun infer_cls for this image)')
        cam[k + 1] = v if power == 1 else np.maximum(v, 0, dtype=np.float32) ** power  # SEAM's CAMs dip below 0
    cam[0] = (1 - np.max(cam[1:], axis=0)) ** alpha if bg_score is None else bg_score
    return cam


def cam_path(cam_dir, name):
    return os.path.join(cam_dir, name + '.npy')


class WalkInputs(Dataset):
    """(CHW normalised image, (21, H, W) CAM stack, None) or (None, None, one-line error) per id."""

    def __init__(self, ids, voc12_root, cam_dir, normalize, alpha, power=1.0, bg_score=None):
        self.ids, self.voc12_root, self.cam_dir = ids, voc12_root, cam_dir
        self.normalize, self.alpha, self.power, self.bg_score = normalize, alpha, power, bg_score

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, idx):
        name = self.ids[idx]
        try:
            img = load_image(voc12.data.get_img_path(name, self.voc12_root))
            path = cam_path(self.cam_dir, name)
            cam = cam_stack(load_dict_npy(path), img.shape[:2], self.alpha, path, self.power, self.bg_score)
        except UserError as e:  # returned, not raised: a worker's exception would reach us as a traceback
            return None, None, str(e)
        return np.ascontiguousarray(HWC_to_CHW(self.normalize(img))), cam, None


def pad_to_multiple(x, multiple=8):
    """Zero-pad a tensor's last two axes on the right/bottom up to a multiple of `multiple`."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple))


def random_walk_labels(model, img, cam, beta, logt, method, device):
    """The reference's infer_aff for one image: (H, W) uint8 labels from a CHW image and its CAM stack."""
    h, w = img.shape[1:]
    x = pad_to_multiple(torch.as_tensor(img))[None].to(device)
    with torch.no_grad():
        aff = model(x)
        label = propagate_cam(pad_to_multiple(torch.as_tensor(cam)), aff, (x.shape[2] // 8, x.shape[3] // 8),
                              beta, logt, method)
    return label[:h, :w]


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    sizes = voc12.data.check_images(args.infer_list, os.path.join(args.voc12_root, voc12.data.IMG_FOLDER_NAME))
    require_dir(args.cam_dir, 'CAM dicts (--cam_dir)')
    require_files([cam_path(args.cam_dir, name) for name in sizes], f'CAM dicts of {args.infer_list}',
                  'rerun infer_cls --out_cam for this list, or check --cam_dir')

    def png_path(name):
        return os.path.join(args.out_rw, name + '.png')

    def check_cam(name):
        path = cam_path(args.cam_dir, name)
        cam_stack(load_dict_npy(path), sizes[name], args.alpha, path)

    model = load_model(args.network, args.weights, device, args.width)
    check_output_dir(args.out_rw, '--out_rw')
    bar = pending_progress(sizes, lambda name: [png_path(name)], args.overwrite, desc='random walk', check=check_cam)
    inputs = WalkInputs(list(bar.iterable), args.voc12_root, args.cam_dir, model.normalize, args.alpha,
                        args.cam_power, args.bg_score)
    loader = DataLoader(inputs, batch_size=None, num_workers=args.num_workers)
    for name, (img, cam, error) in zip(bar, loader):  # the loader yields the pending ids in order
        if error:
            raise UserError(error)
        label = random_walk_labels(model, img, cam, args.beta, args.logt, args.rw, device)
        atomic_save_png(png_path(name), label)
    print(f'random-walk labels in {args.out_rw}')


if __name__ == '__main__':
    run_main(main)
