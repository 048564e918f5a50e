"""ResNet-38 classification net: image-level logits and class activation maps (CAMs)."""
import torch.nn.functional as F
from torch import nn

from network import parameter_groups, resnet38d


class Net(resnet38d.Net):
    classes = 20  # fc8's output channels (SEAM's subclass adds a background channel)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dropout7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(self.out_channels, self.classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        self.not_training = self.pretrained_layers([self.conv1a, self.b2, self.b2_1, self.b2_2])
        self.from_scratch_layers = [self.fc8]
        self.train()

    def forward(self, x):
        x = self.dropout7(super().forward(x))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc8(x).flatten(1)

    def forward_cam(self, x):
        """(N, 20, h, w) class activation maps at stride 8 (no dropout)."""
        return F.relu(F.conv2d(super().forward(x), self.fc8.weight))

    def get_parameter_groups(self):
        return parameter_groups(self)
