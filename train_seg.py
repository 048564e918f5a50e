"""Stage 5: retrain the ResNet-38 segmentation network (SegNet) on the random-walk pseudo labels.

    python train_seg.py --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params --image_dir VOC2012/JPEGImages --mask_dir rw

Images are --image_dir/<id>.jpg, pseudo labels --mask_dir/<id>.png (class indices 0..20, 255 ignored, the
size of their image; every label is checked before training starts). Augmentation as the seed: random
flip, rescale of the long side to 448..768 (image bicubic, label nearest), colour jitter, normalize, pad
(image 0, label 255) and random crop. Loss: cross-entropy over the valid pixels of the batch on the logits
bilinearly upsampled to the crop. Writes <session_name>.pth (state dict), <session_name>.log,
<session_name>.ckpt.pth (per epoch, for --resume) and TensorBoard events under <session_name>_tb.
"""
import argparse
import os

import torch.nn.functional as F
from tqdm import tqdm

import voc12.data
from tool import imutils
from tool.cli import check_training_args, import_network, positive_int, run_main
from tool.io import require_dir
from tool.train_loop import add_training_args, fit, seed_run
from tool.weights import load_initial_weights

IGNORE = voc12.data.IGNORE


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch_size', default=4, type=positive_int)
    parser.add_argument('--max_epoches', default=30, type=int)
    parser.add_argument('--network', default='network.resnet38_seg', type=str)
    parser.add_argument('--lr', default=0.001, type=float)
    parser.add_argument('--num_workers', default=8, type=int, help='DataLoader workers')
    parser.add_argument('--wt_dec', default=5e-4, type=float)
    parser.add_argument('--weights', default=None, type=str,
                        help='initial weights: .params (mxnet ImageNet ResNet-38) or a torch state dict '
                             '(default: none, train from the random initialisation)')
    parser.add_argument('--image_dir', required=True, type=str, help='folder of <id>.jpg images')
    parser.add_argument('--mask_dir', required=True, type=str, help='folder of <id>.png pseudo labels')
    parser.add_argument('--train_list', default='voc12/train_aug.txt', type=str)
    parser.add_argument('--session_name', default='resnet38_seg', type=str)
    parser.add_argument('--crop_size', default=448, type=int)
    parser.add_argument('--voc12_root', default='VOC2012', type=str, help='unused (as the seed): see --image_dir')
    parser.add_argument('--database', default='voc', choices=['voc'], help='dataset layout (only voc, as the seed)')
    parser.add_argument('--rescale', default=[448, 768], type=int, nargs=2, metavar=('MIN', 'MAX'),
                        help='random long side of the rescaled image and label (the seed: 448 768)')
    add_training_args(parser)
    return parser


class ImageTransform:
    """PIL image -> HWC float32: the seed's colour jitter, then normalize."""

    def __init__(self, normalize, color_jitter=(0.3, 0.3, 0.3, 0.1)):
        self.jitter = imutils.ColorJitter(*color_jitter)
        self.normalize = normalize

    def __call__(self, img):
        return self.normalize(self.jitter(img))


def build_dataset(args, model):
    return voc12.data.SegmentationDataset(args.train_list, args.image_dir, args.mask_dir, rescale=args.rescale,
                                          flip=True, cropsize=args.crop_size,
                                          img_transform=ImageTransform(model.normalize, args.color_jitter))


def check_labels(sizes, mask_dir):
    """Check every pseudo label (values 0..20 or 255, the size of its image; `sizes` {id: (height, width)})
    before training starts, so a bad file stops the run at once with its name rather than inside a
    DataLoader worker hours later (about 1 ms a label: 10 s for train_aug)."""
    for name, size in tqdm(sizes.items(), desc='checking pseudo labels', leave=False):
        voc12.data.load_checked_label(os.path.join(mask_dir, name + '.png'), size)


def batch_loss(model, micro, batch):
    """This micro-batch's share of the batch's cross-entropy: its sum over valid pixels divided by the
    number of valid (not 255) pixels of the whole batch, so the shares add up to the batch's mean."""
    _, img, mask = micro
    logits = F.interpolate(model(img).float(), mask.shape[-2:], mode='bilinear', align_corners=False)
    n_valid = max(int((batch[2] != IGNORE).sum()), 1)
    loss = F.cross_entropy(logits, mask, ignore_index=IGNORE, reduction='sum') / n_valid
    return loss, {'loss': loss.item()}


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_training_args(args)
    sizes = voc12.data.check_images(args.train_list, args.image_dir, 'images (--image_dir)')
    require_dir(args.mask_dir, 'pseudo labels (--mask_dir)')
    check_labels(sizes, args.mask_dir)
    print(f'{len(sizes)} images with checked pseudo labels from {args.mask_dir}')
    seed_run(args)
    model = import_network(args.network, 'SegNet', width=args.width, scratch=args.scratch)
    load_initial_weights(model, args.weights)
    dataset = build_dataset(args, model)
    fit(args, model, dataset, batch_loss)


if __name__ == '__main__':
    run_main(main)
