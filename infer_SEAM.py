"""Stage 2 of SEAM (YudeWang/SEAM infer_SEAM.py): infer_cls.py with SEAM's PCM-refined CAMs.

    python3 infer_SEAM.py --weights res38_SEAM.pth --infer_list voc12/train.txt --voc12_root VOC2012 \
        --out_cam cam --out_crf crf

The CAMs are the PCM output (cam_rv, classes 1..20 of network.resnet38_SEAM) of the 8 passes (scales 0.5, 1, 1.5, 2
and their flips), resized to the image and label-masked, summed, negatives set to 0, then min-max normalised per
class (see seam_norm). --out_cam_pred uses a 0.26 background (--out_cam_pred_alpha); --out_crf writes crf_4.0/ and
crf_24.0/ (alphas 4 and 24). All other flags and outputs are infer_cls.py's.
"""
import torch

import infer_cls
from tool.cli import run_main


def seam_norm(cam):
    """(cam - min - 1e-5) / (max - min + 1e-5) per class after clipping negatives, where values below min + 1e-5
    are first set to 0: those pixels end at -(min + 1e-5) / (max - min + 1e-5) <= 0, and a class absent from the
    label (all 0) at -1, as in the reference."""
    cam = cam.clamp(min=0)
    cam_min = cam.amin(dim=(1, 2), keepdim=True)
    cam_max = cam.amax(dim=(1, 2), keepdim=True)
    cam = torch.where(cam < cam_min + 1e-5, torch.zeros_like(cam), cam)
    return (cam - cam_min - 1e-5) / (cam_max - cam_min + 1e-5)


SEAM = infer_cls.Variant('infer_SEAM', 'network.resnet38_SEAM', 'voc12/train.txt', (0.5, 1.0, 1.5, 2.0),
                         lambda model: lambda x: model(x)[1][:, 1:], seam_norm, 0.26, (4, 24))


def build_parser():
    return infer_cls.build_parser(SEAM, __doc__)


def main(argv=None):
    infer_cls.main(argv, SEAM, __doc__)


if __name__ == '__main__':
    run_main(main)
