"""VGG-16 classification net: image-level logits and class activation maps (CAMs)."""
import torch
import torch.nn.functional as F
from torch import nn

from network import parameter_groups, vgg16d


class Net(vgg16d.Net):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.drop7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(self.out_channels, 20, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        self.from_scratch_layers = [self.fc8]
        self.train()

    def forward(self, x):
        x = self.fc8(self.drop7(super().forward(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward_cam(self, x):
        """(N, 20, h, w) class activation maps at stride 8: sqrt(ReLU(fc8(features)))."""
        return torch.sqrt(F.relu(self.fc8(super().forward(x))))

    def get_parameter_groups(self):
        return parameter_groups(self)
