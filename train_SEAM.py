"""SEAM: train network.resnet38_SEAM (CAM + pixel correlation module) with its 0.3x-downscaled twin.

    python train_SEAM.py --voc12_root VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params \
        --session_name resnet38_SEAM

train_cls.py's stage (flags, augmentation, outputs) with SEAM's defaults (batch 8, 8 epochs, lr 0.01,
RandomResizeLong 448-768, no validation: --val_list gives the classification loss of channels 1..20) and loss
L_cls + L_er + L_ecr (tool/equivariance.seam_loss).
"""
from tool import equivariance
from tool.cli import run_main
import train_cls

LOGGED = ('loss', 'loss_cls', 'loss_er', 'loss_ecr')  # the original's log


def build_parser():
    parser = train_cls.build_parser()
    parser.description = __doc__
    parser.set_defaults(batch_size=8, max_epoches=8, network='network.resnet38_SEAM', lr=0.01,
                        session_name='resnet38_SEAM', resize_long=(448, 768), val_list='')
    return parser


def batch_loss(model, micro, batch):
    """This micro-batch's share of SEAM's loss over the batch, and its terms for the log."""
    _, img, label = micro
    cam1, cam_rv1 = model(img)
    cam2, cam_rv2 = model(equivariance.downscale(img, align_corners=True))
    terms = equivariance.seam_loss(cam1.float(), cam_rv1.float(), cam2.float(), cam_rv2.float(), label,
                                   n=len(batch[0]))
    return terms['loss'], {k: terms[k].item() for k in LOGGED}


def class_logits(model, img):
    return equivariance.class_logits(model(img)[0][:, 1:])


def main(argv=None):
    train_cls.train(build_parser().parse_args(argv), batch_loss, class_logits, equivariance.min_crop())


if __name__ == '__main__':
    run_main(main)
