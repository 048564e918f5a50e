"""The SFL VOC localiser: SEAM's 21-channel network with SEAM's keys (the released resnet38_SEAM.pth loads)."""
from network.resnet38_SEAM import Net  # noqa: F401
