"""Stage 2 of SSENet (YudeWang/SSENet-pytorch infer_cls_ser.py): infer_cls.py with SSENet's CAMs.

    python3 infer_cls_ser.py --weights res38_cls_ser.pth --infer_list voc12/val.txt --voc12_root VOC2012 \
        --out_cam cam --out_crf crf --out_cam_pred cam_pred

The network (network.resnet38_cls_ser) returns its CAM logits already upsampled to the input size; each of the 8
passes (scales 1, 0.5, 1.5, 2 and their flips) is ReLU'd, resized to the image and label-masked; the sum is divided
per class by (max + 1e-5). --out_cam_pred uses a 0.2 background; --out_crf writes crf_4.0/ and crf_24.0/
(alphas 4 and 24). All other flags and outputs are infer_cls.py's.
"""
import torch.nn.functional as F

import infer_cls
from tool.cli import run_main

SSENET = infer_cls.Variant('infer_cls_ser', 'network.resnet38_cls_ser', 'voc12/val.txt', infer_cls.SCALES,
                           lambda model: lambda x: F.relu(model(x)), infer_cls.max_norm, 0.2, (4, 24))


def build_parser():
    return infer_cls.build_parser(SSENET, __doc__)


def main(argv=None):
    infer_cls.main(argv, SSENET, __doc__)


if __name__ == '__main__':
    run_main(main)
