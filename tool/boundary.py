"""SBNet's Canny input to the boundary branch, computed on CPU with OpenCV (thresholds 10 and 100).

faithful: the original casts the *normalised* image tensor straight to uint8 (truncate toward zero, negatives wrap
mod 256) and feeds the {0, 255} map; fixed: de-normalise to the true uint8 RGB image, map scaled to {0, 1}.
"""
import cv2
import numpy as np
import torch

CANNY_MODES = ('faithful', 'fixed')
LOW, HIGH = 10, 100
MEAN = np.array((0.485, 0.456, 0.406))
STD = np.array((0.229, 0.224, 0.225))


def faithful_uint8(images):
    """(N, H, W, 3) float -> uint8 as numpy's float->uint8 cast on x86: truncate, then mod 256."""
    return (np.trunc(images).astype(np.int64) % 256).astype(np.uint8)


def denormalised_uint8(images):
    return np.clip(np.round((images * STD + MEAN) * 255), 0, 255).astype(np.uint8)


def canny_maps(x, mode='faithful'):
    """(N, 1, H, W) float32 tensor on x's device: Canny of each normalised image of the batch x (N, 3, H, W)."""
    if mode not in CANNY_MODES:
        raise ValueError(f'canny must be one of {CANNY_MODES}, got {mode!r}')
    images = x.detach().cpu().double().numpy().transpose(0, 2, 3, 1)
    images = faithful_uint8(images) if mode == 'faithful' else denormalised_uint8(images)
    scale = 1.0 if mode == 'faithful' else 1 / 255
    maps = np.stack([cv2.Canny(np.ascontiguousarray(im), LOW, HIGH) for im in images])[:, None]
    return torch.from_numpy((maps * scale).astype(np.float32)).to(x.device)
