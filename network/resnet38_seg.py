"""ResNet-38 segmentation net for the retraining on pseudo labels: 21-class logits at stride 8."""
import torch.nn.functional as F
from torch import nn

from network import DilatedConv2d, parameter_groups, resnet38d


class SegNet(resnet38d.Net):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc8_seg_conv1 = DilatedConv2d(self.out_channels, 512, 3, padding=12, dilation=12, bias=True)
        self.fc8_seg_conv2 = DilatedConv2d(512, 21, 3, padding=12, dilation=12, bias=True)
        for layer in (self.fc8_seg_conv1, self.fc8_seg_conv2):
            nn.init.xavier_uniform_(layer.weight)  # biases keep PyTorch's default init, as the seed
        self.not_training = []
        self.from_scratch_layers = [self.fc8_seg_conv1, self.fc8_seg_conv2]
        self.train()

    def forward(self, x):
        x = F.relu(self.fc8_seg_conv1(super().forward(x)))
        return self.fc8_seg_conv2(x)

    def get_parameter_groups(self):
        return parameter_groups(self)
