"""SBNet's inference (Carlisle-Liu/SBNet infer_SB.py): infer_SEAM.py with network.resnet38_SEAM_BD.

    python infer_SB.py --weights resnet38_SB.pth --infer_list voc12/train.txt --voc12_root VOC2012 \
        --out_cam cam --out_crf crf

The CAMs are SEAM's: the PCM output (cam_rv, classes 1..20) of the 8 passes (scales 0.5, 1, 1.5, 2 and their
flips), min-max normalised per class (infer_SEAM.seam_norm); the boundary branch's output is discarded (its
Canny map is still computed, as the original's forward does). --out_cam_pred uses a 0.26 background; --out_crf
writes crf_4.0/ and crf_24.0/. All other flags and outputs are infer_cls.py's.
"""
import infer_cls
import infer_SEAM
from tool.cli import run_main

SBNET = infer_SEAM.SEAM._replace(script='infer_SB', network='network.resnet38_SEAM_BD')


def build_parser():
    return infer_cls.build_parser(SBNET, __doc__)


def main(argv=None):
    infer_cls.main(argv, SBNET, __doc__)


if __name__ == '__main__':
    run_main(main)
