"""SEAM's network (resnet38_SEAM): PSA's ResNet-38 classifier with a 21-channel head (channel 0 is the background
slot) and the pixel correlation module (PCM), which refines the CAM with the affinities of low-level features."""
import torch
import torch.nn.functional as F
from torch import nn

from network import resnet38_cls
from tool.equivariance import max_onehot, peak_norm, with_background


class Net(resnet38_cls.Net):
    classes = 21

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        fc = self.feature_channels
        self.f8_3 = nn.Conv2d(fc['conv4'], 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(fc['conv5'], 128, 1, bias=False)
        self.f9 = nn.Conv2d(64 + 128 + 3, 192, 1, bias=False)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.from_scratch_layers = [self.f8_3, self.f8_4, self.f9, self.fc8]

    def forward(self, x):
        """(cam, cam_rv): the raw 21-channel CAM logits and their PCM refinement, both (N, 21, H, W) at the
        input's size (bilinear, align_corners True)."""
        return self.cams(x, self.forward_as_dict(x))

    def cams(self, x, d):
        """forward's (cam, cam_rv) of the input x from its backbone features d (forward_as_dict)."""
        cam = self.fc8(self.dropout7(d['conv6']))
        with torch.no_grad():
            seeds = self.pcm_seeds(cam)
        # The PCM learns from its own features: the backbone's are detached.
        f = torch.cat([F.interpolate(x, cam.shape[2:], mode='bilinear', align_corners=True),
                       F.relu(self.f8_3(d['conv4'].detach())), F.relu(self.f8_4(d['conv5'].detach()))], dim=1)
        return tuple(F.interpolate(t, x.shape[2:], mode='bilinear', align_corners=True)
                     for t in (cam, self.pcm(seeds, f)))

    def pcm_seeds(self, cam):
        """The PCM's input: peak-normed CAM, background slot 1 - max foreground, only the top foreground kept."""
        return max_onehot(with_background(peak_norm(cam)))

    def pcm(self, cam, f):
        """cam (N, C, h, w) times the column-normalised affinities ReLU(F_i . F_j) of the L2-normalised f9(f)."""
        n, c, h, w = cam.shape
        f = self.f9(f).flatten(2)
        f = f / (f.norm(dim=1, keepdim=True) + 1e-5)
        aff = F.relu(f.transpose(1, 2) @ f)
        aff = aff / (aff.sum(dim=1, keepdim=True) + 1e-5)
        return (cam.flatten(2) @ aff).view(n, c, h, w)
