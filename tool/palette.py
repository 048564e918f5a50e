"""PASCAL VOC colour palette (the standard bit-interleaved colormap) and label colouring."""
import numpy as np


def _voc_colormap(n=256):
    """Colour i spreads the bits of i over R, G, B, most significant bits first."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


VOC_COLORMAP = _voc_colormap()            # (256, 3) uint8
PALETTE = VOC_COLORMAP.ravel().tolist()   # 768 ints, for PIL's Image.putpalette


def colorize(label):
    """HxW class indices (0..255) -> HxWx3 uint8 RGB image in VOC colours."""
    return VOC_COLORMAP[np.asarray(label, dtype=np.uint8)]
