"""VGG-16 AffinityNet: the ResNet-38 affinity head with GroupNorm after each f8 projection."""
import torch
import torch.nn.functional as F
from torch import nn

from network import parameter_groups, vgg16d
from tool import affinity


class Net(vgg16d.Net):
    def __init__(self, **kwargs):
        super().__init__(fc6_dilation=4, **kwargs)
        fc = self.feature_channels
        self.f8_3 = nn.Conv2d(fc['conv4'], 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(fc['conv5'], 128, 1, bias=False)
        self.f8_5 = nn.Conv2d(fc['conv5fc'], 256, 1, bias=False)
        self.gn8_3 = nn.GroupNorm(8, 64)
        self.gn8_4 = nn.GroupNorm(16, 128)
        self.gn8_5 = nn.GroupNorm(32, 256)
        self.f9 = nn.Conv2d(448, 448, 1, bias=False)
        for layer in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(layer.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        # As the reference, the GroupNorm layers are not listed: they train at the pretrained lr.
        self.from_scratch_layers = [self.f8_3, self.f8_4, self.f8_5, self.f9]
        self.train()

    def forward_features(self, x):
        """(N, 448, h, w) affinity feature map at stride 8."""
        d = self.forward_as_dict(x)
        f = torch.cat([F.elu(self.gn8_3(self.f8_3(d['conv4']))), F.elu(self.gn8_4(self.f8_4(d['conv5']))),
                       F.elu(self.gn8_5(self.f8_5(d['conv5fc'])))], dim=1)
        return F.elu(self.f9(f))

    def forward(self, x, to_dense=False):
        """(N, 34, from pixels) affinities, or with to_dense (one image) the (hw, hw) affinity matrix."""
        return affinity.affinity_output(self.forward_features(x), to_dense)

    def get_parameter_groups(self):
        return parameter_groups(self)
