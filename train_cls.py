"""Stage 1: train the classification network (image-level labels, multilabel soft margin loss).

    python3 train_cls.py --lr 0.1 --batch_size 16 --max_epoches 15 --crop_size 448 \
        --network network.resnet38_cls --voc12_root VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params \
        --wt_dec 5e-4

Writes <session_name>.pth (state dict), <session_name>.log, <session_name>.ckpt.pth (per epoch, for
--resume) and TensorBoard events under <session_name>_tb.
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import voc12.data
from tool import imutils
from tool.cli import NETWORK_STRIDE, check_training_args, import_network, positive_int, run_main
from tool.train_loop import add_training_args, autocast, fit, seed_run
from tool.weights import load_initial_weights


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch_size', default=16, type=positive_int)
    parser.add_argument('--max_epoches', default=15, type=int)
    parser.add_argument('--network', default='network.vgg16_cls', type=str)
    parser.add_argument('--lr', default=0.1, type=float)
    parser.add_argument('--num_workers', default=8, type=int, help='DataLoader workers')
    parser.add_argument('--wt_dec', default=5e-4, type=float)
    parser.add_argument('--weights', default=None, type=str,
                        help='initial weights: .params (mxnet), .caffemodel or a torch state dict '
                             '(default: none, train from the random initialisation)')
    parser.add_argument('--train_list', default='voc12/train_aug.txt', type=str)
    parser.add_argument('--val_list', default='voc12/val.txt', type=str,
                        help="list for the per-epoch validation loss ('' skips validation)")
    parser.add_argument('--session_name', default='vgg_cls', type=str)
    parser.add_argument('--crop_size', default=448, type=int)
    parser.add_argument('--voc12_root', required=True, type=str)
    parser.add_argument('--cls_labels', default=None,
                        help='image-level labels .npy (default: voc12/cls_labels.npy beside the code)')
    parser.add_argument('--resize_long', nargs=2, type=int, default=(256, 512), metavar=('MIN', 'MAX'),
                        help='random long side before the crop (the reference: 256 512, for ~500 px VOC images)')
    parser.add_argument('--val_crop', default=500, type=int, help='centre crop of the validation images')
    add_training_args(parser)
    return parser


class TrainTransform:
    """The reference augmentation: PIL image -> CHW float32 tensor.

    The flip runs after the colour jitter (the reference flips before it); both are per-pixel or
    flip-invariant, so the distribution of outputs is the same.
    """

    def __init__(self, normalize, crop_size, resize_long=(256, 512), color_jitter=(0.3, 0.3, 0.3, 0.1)):
        self.resize = imutils.RandomResizeLong(*resize_long)
        self.jitter = imutils.ColorJitter(*color_jitter)
        self.flip = imutils.RandomHorizontalFlip()
        self.normalize = normalize
        self.crop = imutils.RandomCrop(crop_size)

    def __call__(self, img):
        img = self.flip(np.asarray(self.jitter(self.resize(img))))
        return torch.from_numpy(np.ascontiguousarray(imutils.HWC_to_CHW(self.crop(self.normalize(img)))))


class ValTransform:
    def __init__(self, normalize, crop_size):
        self.normalize = normalize
        self.crop = imutils.CenterCrop(crop_size)

    def __call__(self, img):
        return torch.from_numpy(np.ascontiguousarray(imutils.HWC_to_CHW(self.crop(self.normalize(img)))))


def batch_loss(model, micro, batch):
    """This micro-batch's share of the batch's mean multilabel soft margin loss."""
    _, img, label = micro
    loss = F.multilabel_soft_margin_loss(model(img), label, reduction='sum') / len(batch[0])
    return loss, {'loss': loss.item()}


def make_validate(args, dataset, class_logits=None):
    """validate(model) -> {'loss': mean multilabel soft margin loss over every image of the list};
    `class_logits(model, img)` (default model(img)) for nets whose forward gives more than the logits."""
    loader = DataLoader(dataset, batch_size=args.micro_batch or args.batch_size, shuffle=False,
                        num_workers=args.num_workers)

    def validate(model):
        device = next(model.parameters()).device
        total = 0.0
        with torch.no_grad():
            for _, img, label in loader:
                with autocast(device, args.amp):
                    logits = class_logits(model, img.to(device)) if class_logits else model(img.to(device))
                total += F.multilabel_soft_margin_loss(logits.float(), label.to(device), reduction='sum').item()
        return {'loss': total / len(dataset)}
    return validate


def main(argv=None):
    train(build_parser().parse_args(argv))


def train_set_of(args, model):
    """The training set of the stage: the list's images through TrainTransform, with their labels."""
    return voc12.data.VOC12ClsDataset(args.train_list, voc12_root=args.voc12_root, cls_labels=args.cls_labels,
                                      transform=TrainTransform(model.normalize, args.crop_size, args.resize_long,
                                                               args.color_jitter))


def train(args, loss=batch_loss, class_logits=None, min_crop=NETWORK_STRIDE, make_train_set=train_set_of):
    """The stage for parsed args; train_cls_ser / train_SEAM / train_SB pass their loss, their validation logits,
    the crop their downscaled branch needs and (train_SB) `make_train_set(args, model)` for their own data."""
    check_training_args(args, min_crop)
    for list_path in filter(None, (args.train_list, args.val_list)):
        voc12.data.check_images(list_path, os.path.join(args.voc12_root, voc12.data.IMG_FOLDER_NAME))
    seed_run(args)
    model = import_network(args.network, width=args.width, scratch=args.scratch)
    load_initial_weights(model, args.weights)
    train_set = make_train_set(args, model)
    validate = None
    if args.val_list:
        val_set = voc12.data.VOC12ClsDataset(args.val_list, voc12_root=args.voc12_root, cls_labels=args.cls_labels,
                                             transform=ValTransform(model.normalize, args.val_crop))
        validate = make_validate(args, val_set, class_logits)
    fit(args, model, train_set, loss, validate=validate)


if __name__ == '__main__':
    run_main(main)
