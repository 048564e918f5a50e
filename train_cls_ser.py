"""SSENet: train the classification network with its 0.3x-downscaled twin and the scale-equivariance loss.

    python train_cls_ser.py --voc12_root VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params \
        --session_name resnet38_cls_ser

train_cls.py's stage (flags, augmentation, validation loss, outputs) with SSENet's defaults (batch 16, 15 epochs,
lr 0.01, RandomResizeLong 448-768, seed 1) and loss 0.5 L_cls + 0.5 L_cls_s + L_r (tool/equivariance.ssenet_loss).
"""
from tool import equivariance
from tool.cli import run_main
import train_cls


def build_parser():
    parser = train_cls.build_parser()
    parser.description = __doc__
    parser.set_defaults(batch_size=16, max_epoches=15, network='network.resnet38_cls_ser', lr=0.01,
                        session_name='resnet38_cls_ser', resize_long=(448, 768), seed=1)
    return parser


def batch_loss(model, micro, batch):
    """This micro-batch's share of SSENet's loss over the batch, and its terms for the log."""
    _, img, label = micro
    cam, cam_s = model(img), model(equivariance.downscale(img))
    terms = equivariance.ssenet_loss(cam.float(), cam_s.float(), label, n=len(batch[0]))
    return terms['loss'], {k: v.item() for k, v in terms.items()}


def class_logits(model, img):
    return equivariance.class_logits(model(img))


def main(argv=None):
    train_cls.train(build_parser().parse_args(argv), batch_loss, class_logits, equivariance.min_crop())


if __name__ == '__main__':
    run_main(main)
