"""SBNet ("SB step"): train network.resnet38_SEAM_BD (SEAM + semantic boundary branch) with its 0.3x twin.

    python train_SB.py --voc12_root VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params \
        --session_name resnet38_SB

train_SEAM.py's stage with SBNet's defaults (batch 8, 100 epochs, lr 0.01, crop 448, RandomResizeLong 448-768,
seed 100000, a state dict <session_name>_<epoch>.pth after every epoch) and loss L_seam + L_ct + L_smooth
(tool/sb_losses.sbnet_loss). Reads the boundary maps <sb_map_dir>/<id>.npy (make_sb_map.py), resized (bicubic
spline, edge mode, as skimage), flipped and cropped with the image. The Canny maps the network fuses are
computed in the loader workers (--canny faithful: the original's uint8 cast of the normalised input; fixed:
of the true image).
"""
import os
import random

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

import train_cls
import voc12.data
from tool import equivariance, imutils, sb_losses
from tool.boundary import canny_maps
from tool.cli import run_main

LOGGED = ('loss', 'loss_cls', 'loss_er', 'loss_ecr', 'loss_ct', 'loss_smooth')  # the original's log


def build_parser():
    parser = train_cls.build_parser()
    parser.description = __doc__
    parser.add_argument('--sb_map_dir', default=None,
                        help=f'boundary maps <id>.npy (default <voc12_root>/{voc12.data.SB_MAP_FOLDER_NAME})')
    parser.add_argument('--canny', choices=['faithful', 'fixed'], default='faithful',
                        help="Canny map of the edge branch: 'faithful' the original's (of the normalised image "
                             "cast to uint8, 0/255), 'fixed' of the de-normalised image, 0/1")
    parser.set_defaults(batch_size=8, max_epoches=100, network='network.resnet38_SEAM_BD', lr=0.01,
                        session_name='resnet38_SEAM', resize_long=(448, 768), val_list='', seed=100000,
                        save_every_epoch=True)
    return parser


def resize_sb_map(sb_map, size_hw):
    """skimage.transform.resize(sb_map, (C,) + size_hw, order=3, mode='edge') (the original's call, skimage >= 0.19)
    with scipy: where an axis shrinks, a Gaussian of sigma (in / out - 1) / 2 first (its anti-aliasing), then the
    cubic spline zoom on the pixel grid, clipped to the input's range."""
    factors = np.divide(sb_map.shape[1:], size_hw)
    arr = sb_map
    if np.any(factors > 1):
        arr = ndimage.gaussian_filter(arr, (0,) + tuple(np.maximum(0, (factors - 1) / 2)), mode='nearest')
    out = ndimage.zoom(arr, (1,) + tuple(1 / factors), order=3, mode='nearest', grid_mode=True)
    return np.clip(out, sb_map.min(), sb_map.max())


class SBTrainTransform(train_cls.TrainTransform):
    """TrainTransform of the image and its (21, H, W) boundary map together: one resize (image bicubic, map
    resize_sb_map), one flip and one crop (zero padding) for both; the colour jitter and normalisation touch
    the image only. (image CHW float32 tensor, map float32 tensor)."""

    def __call__(self, img, sb_map):
        target_long = random.randint(self.resize.min_long, self.resize.max_long)
        size = imutils.long_side_size(*img.size, target_long)
        img = img.resize(size, resample=Image.BICUBIC)
        sb_map = resize_sb_map(sb_map, size[::-1]).astype(np.float32).transpose(1, 2, 0)
        img, sb_map = imutils.random_hflip([np.asarray(self.jitter(img)), sb_map])
        img, sb_map = imutils.random_crop([self.normalize(img), sb_map], self.crop.cropsize, (0, 0))
        return tuple(torch.from_numpy(np.ascontiguousarray(imutils.HWC_to_CHW(a))) for a in (img, sb_map))


def canny_of(img, mode):
    """The network's (1, H, W) Canny input for a CHW normalised image tensor (the boundary branch's fusion input)."""
    return canny_maps(img[None], mode)[0]


def branch_cannies(mode):
    """edges(img) -> (Canny of the crop, Canny of its 0.3x downscale): the two forwards' inputs."""
    def edges(img):
        small = equivariance.downscale(img[None], align_corners=True)[0]
        return canny_of(img, mode), canny_of(small, mode)
    return edges


def make_train_set(args, model):
    sb_map_dir = args.sb_map_dir or os.path.join(args.voc12_root, voc12.data.SB_MAP_FOLDER_NAME)
    transform = SBTrainTransform(model.normalize, args.crop_size, args.resize_long, args.color_jitter)
    return voc12.data.VOC12ClsSBDataset(args.train_list, args.voc12_root, sb_map_dir, transform,
                                        cls_labels=args.cls_labels, edges=branch_cannies(args.canny))


def batch_loss(model, micro, batch):
    """This micro-batch's share of SBNet's loss over the batch, and its terms for the log."""
    _, img, label, sb_map, (canny1, canny2) = micro
    cam1, cam_rv1, edge1 = model(img, canny=canny1)
    cam2, cam_rv2, edge2 = model(equivariance.downscale(img, align_corners=True), canny=canny2)
    outputs = (t.float() for t in (cam1, cam_rv1, edge1, cam2, cam_rv2, edge2))
    terms = sb_losses.sbnet_loss(*outputs, sb_map, label, n=len(batch[0]))
    return terms['loss'], {k: terms[k].item() for k in LOGGED}


def main(argv=None):
    args = build_parser().parse_args(argv)

    def class_logits(model, img):
        canny = torch.stack([canny_of(i, args.canny) for i in img.cpu()]).to(img.device)
        return equivariance.class_logits(model(img, canny=canny)[0][:, 1:])
    train_cls.train(args, batch_loss, class_logits, equivariance.min_crop(), make_train_set)


if __name__ == '__main__':
    run_main(main)
