"""Stage 3: train AffinityNet on the confident regions of the la/ha CRF dicts of infer_cls.

    python3 train_aff.py --lr 0.1 --batch_size 8 --max_epoches 8 --crop_size 448 --voc12_root VOC2012 \
        --network network.resnet38_aff --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params --wt_dec 5e-4 \
        --la_crf_dir crf_la --ha_crf_dir crf_ha
"""
import argparse
import os

import numpy as np
import torch

import voc12.data
from tool import imutils
from tool.cli import check_training_args, import_network, positive_int, run_main
from tool.io import require_dir
from tool.train_loop import add_training_args, fit, seed_run
from tool.weights import load_initial_weights

EPS = 1e-5
MIN_CROP = 72  # radius-5 pairs need a feature grid of at least 9x9


def build_parser():
    parser = argparse.ArgumentParser(description='Train AffinityNet (stage 3) on the la/ha CRF dicts.')
    parser.add_argument('--batch_size', default=8, type=positive_int)
    parser.add_argument('--max_epoches', default=8, type=int)
    parser.add_argument('--network', default='network.vgg16_aff', type=str)
    parser.add_argument('--lr', default=0.1, type=float)
    parser.add_argument('--num_workers', default=8, type=int)
    parser.add_argument('--wt_dec', default=5e-4, type=float)
    parser.add_argument('--train_list', default='voc12/train_aug.txt', type=str)
    parser.add_argument('--val_list', default='voc12/val.txt', type=str, help='unused (as the reference)')
    parser.add_argument('--session_name', default='vgg_aff', type=str)
    parser.add_argument('--crop_size', default=448, type=int)
    parser.add_argument('--weights', default=None, type=str,
                        help='initial weights: .params (mxnet), .caffemodel or a torch state dict (the reference '
                             'requires it; default here: none, train from the random initialisation)')
    parser.add_argument('--voc12_root', required=True, type=str)
    parser.add_argument('--la_crf_dir', required=True, type=str, help='low-alpha CRF dicts of infer_cls')
    parser.add_argument('--ha_crf_dir', required=True, type=str, help='high-alpha CRF dicts of infer_cls')
    add_training_args(parser)
    return parser


def build_dataset(args, model):
    """The reference's augmentation: colour jitter, joint random crop and flip, 8x8 pooling of the scores."""
    return voc12.data.VOC12AffDataset(
        args.train_list, label_la_dir=args.la_crf_dir, label_ha_dir=args.ha_crf_dir,
        voc12_root=args.voc12_root, cropsize=args.crop_size, radius=5,
        joint_transform_list=[None, None, imutils.RandomCrop(args.crop_size), imutils.RandomHorizontalFlip()],
        img_transform_list=[imutils.ColorJitter(*args.color_jitter),
                            np.asarray, model.normalize, imutils.HWC_to_CHW],
        label_transform_list=[None, None, None, imutils.AvgPool2d(8)])


def affinity_loss(aff, labels, counts):
    """bg/4 + fg/4 + neg/2 of the spec; sums over `aff`'s images, normalised by the given pair counts.

    aff: (N, offsets, from) affinities; labels: (bg_pos, fg_pos, neg) of the same shape; counts: the
    three pair counts (+1e-5 as the reference). Returns (loss, bg_loss, fg_loss, neg_loss).
    """
    aff = aff.float()  # log(1 + 1e-5 - aff) is meaningless in reduced precision
    bg, fg, neg = labels
    bg_count, fg_count, neg_count = counts
    bg_loss = torch.sum(-bg * torch.log(aff + EPS)) / bg_count
    fg_loss = torch.sum(-fg * torch.log(aff + EPS)) / fg_count
    neg_loss = torch.sum(-neg * torch.log(1. + EPS - aff)) / neg_count
    return bg_loss / 4 + fg_loss / 4 + neg_loss / 2, bg_loss, fg_loss, neg_loss


def batch_loss(model, micro, batch):
    """The micro-batch's share of the whole batch's loss: its sums over the whole batch's pair counts."""
    img, labels = micro
    counts = [float(label.sum()) + EPS for label in batch[1]]
    loss, bg_loss, fg_loss, neg_loss = affinity_loss(model(img), labels, counts)
    logs = {'loss': loss.item(), 'bg_loss': bg_loss.item(), 'fg_loss': fg_loss.item(), 'neg_loss': neg_loss.item()}
    logs.update({name: float(label.sum()) for name, label in zip(('bg_cnt', 'fg_cnt', 'neg_cnt'), labels)})
    return loss, logs


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_training_args(args, min_crop=MIN_CROP)
    crf_dirs = {'--la_crf_dir': args.la_crf_dir, '--ha_crf_dir': args.ha_crf_dir}
    for flag, folder in crf_dirs.items():
        require_dir(folder, f'CRF dicts ({flag})')
    sizes = voc12.data.check_images(args.train_list, os.path.join(args.voc12_root, voc12.data.IMG_FOLDER_NAME))
    voc12.data.check_crf_dicts(sizes, crf_dirs)
    seed_run(args)
    model = import_network(args.network, width=args.width, scratch=args.scratch)
    load_initial_weights(model, args.weights)
    fit(args, model, build_dataset(args, model), batch_loss)


if __name__ == '__main__':
    run_main(main)
