"""SBNet's network (Carlisle-Liu/SBNet resnet38_SEAM_BD): SEAM plus a semantic boundary branch on the backbone
taps conv1/conv3/conv5/conv6 of SBNet (ours: b2_in, b4_in, conv5, b7_in), fused with a Canny map of the input.
State dict keys as the original (edge_layer.*, fuse_canny_edge.weight). New layers keep PyTorch's default init
and train at the base lr (not in from_scratch_layers), as the original. `width` scales the side branches' 32
channels with the backbone's (the demo's narrow network: at 32 channels, the full-resolution 3x3 convolutions of
the 128-channel RCAB cost 5x the whole width-0.125 backbone)."""
import torch
import torch.nn.functional as F
from torch import nn

from network import resnet38_SEAM, scaled
from tool.boundary import CANNY_MODES, canny_maps

MID = 32
EDGE_TAPS = {'conv1': 'b2_in', 'conv3': 'b4_in', 'conv5': 'conv5', 'conv6': 'b7_in'}


class CA(nn.Module):
    """The original's channel attention with its sigmoid commented out: x + MLP(GAP(x)), an additive bias."""

    def __init__(self, channels, reduction):
        super().__init__()
        self.conv_du = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(),
                                     nn.Conv2d(channels // reduction, channels, 1))

    def forward(self, x):
        return x + self.conv_du(F.adaptive_avg_pool2d(x, 1))


class RCAB(nn.Module):
    def __init__(self, channels, reduction=16):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1), CA(channels, reduction))

    def forward(self, x):
        return self.body(x) + x


class EdgeModule(nn.Module):
    """Side branches (1x1 -> ReLU -> 3x3 -> ReLU) on four taps, upsampled to the first, RCAB, 21-ch classifier."""

    def __init__(self, in_channels, mid=MID):
        super().__init__()
        for name in EDGE_TAPS:
            setattr(self, name, nn.Conv2d(in_channels[name], mid, 1))
        for name in EDGE_TAPS:
            setattr(self, 'conv8_' + name[-1], nn.Conv2d(mid, mid, 3, padding=1))
        self.classifier = nn.Conv2d(mid * 4, 21, 3, padding=1)
        self.rcab = RCAB(mid * 4)

    def forward(self, taps):
        size = taps['conv1'].shape[2:]
        sides = [F.relu(getattr(self, 'conv8_' + n[-1])(F.relu(getattr(self, n)(taps[n])))) for n in EDGE_TAPS]
        sides = [F.interpolate(s, size, mode='bilinear', align_corners=True) for s in sides]
        return self.classifier(self.rcab(torch.cat(sides, dim=1)))


class Net(resnet38_SEAM.Net):
    def __init__(self, canny='faithful', width=1.0, **kwargs):
        super().__init__(width=width, **kwargs)
        if canny not in CANNY_MODES:
            raise ValueError(f'canny must be one of {CANNY_MODES}, got {canny!r}')
        self.canny = canny
        self.fuse_canny_edge = nn.Conv2d(42, 21, 1, bias=False)
        fc = self.feature_channels
        self.edge_layer = EdgeModule({n: fc[t] for n, t in EDGE_TAPS.items()}, scaled(MID, width))

    def forward(self, x, canny=None):
        """(cam, cam_rv, edge), each (N, 21, H, W). canny: a precomputed (N, 1, H, W) tool.boundary.canny_maps."""
        d = self.forward_as_dict(x, extra_taps=True)
        cam, cam_rv = self.cams(x, d)
        edge = self.edge_layer({n: d[t] for n, t in EDGE_TAPS.items()})
        if canny is None:
            canny = canny_maps(x, self.canny)
        canny = canny.to(edge.dtype).expand(-1, 21, -1, -1)
        return cam, cam_rv, self.fuse_canny_edge(torch.cat([edge, canny], dim=1))
