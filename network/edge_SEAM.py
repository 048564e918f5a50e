"""The SFL class-agnostic segmenter: DeepLabv3+ on a ResNet-101 (torchvision's keys) that takes an image and one
class's map (4 input channels) and returns that object's raw mask logit at the input's size.

Output stride 16: layer4 is a multi-grid unit (1, 2, 4) x dilation 2 (stride 8: layer3 dilation 2 too, grid
(1, 2, 1)). The map is also resized to layer4's grid and concatenated (2048 + 1 channels) before the ASPP.
`width` scales every channel count (the demo's narrow segmenter; 1 is the original network, keys and shapes).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from tool.io import UserError, require_file

TORCHVISION_RESNET101 = './network/resnet101-5d3b4d8f.pth'
# output stride: (layer strides, layer dilations, layer4 multi-grid, ASPP rates)
OUTPUT_STRIDES = {16: ((1, 2, 2, 1), (1, 1, 1, 2), (1, 2, 4), (1, 6, 12, 18)),
                  8: ((1, 2, 1, 1), (1, 1, 2, 2), (1, 2, 1), (1, 12, 24, 36))}


def he_normal_(conv):
    """The original's conv init: N(0, sqrt(2 / (k_h k_w out_channels)))."""
    n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    conv.weight.data.normal_(0, math.sqrt(2. / n))


def conv_bn_relu_init(module):
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            he_normal_(m)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def scaled(channels, width):
    return max(1, int(round(channels * width)))


def make_layer(inplanes, planes, dilations, stride):
    """Bottleneck blocks, the first with `stride` and a projection shortcut, block i with dilations[i]."""
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
    blocks = [Bottleneck(inplanes, planes, stride, dilations[0], downsample)]
    blocks += [Bottleneck(planes * 4, planes, 1, d) for d in dilations[1:]]
    return nn.Sequential(*blocks)


class ResNet101(nn.Module):
    """torchvision's resnet101 layout and keys (no fc); returns (layer4 features, layer1 features)."""

    def __init__(self, in_channels=3, os=16, width=1.0):
        super().__init__()
        strides, dilations, grid, _ = OUTPUT_STRIDES[os]
        planes = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        # Only the first block of layers 1-3 carries the layer's dilation (as the original's _make_layer).
        self.layer1 = make_layer(planes[0], planes[0], (dilations[0],) + (1,) * 2, strides[0])
        self.layer2 = make_layer(planes[0] * 4, planes[1], (dilations[1],) + (1,) * 3, strides[1])
        self.layer3 = make_layer(planes[1] * 4, planes[2], (dilations[2],) + (1,) * 22, strides[2])
        self.layer4 = make_layer(planes[2] * 4, planes[3], tuple(g * dilations[3] for g in grid), strides[3])
        self.out_channels, self.low_channels = planes[3] * 4, planes[0] * 4
        conv_bn_relu_init(self)

    def forward(self, x):
        low = self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x)))))
        return self.layer4(self.layer3(self.layer2(low))), low

    def load_torchvision(self, state_dict):
        """Load torchvision's ImageNet resnet101 state dict by key, except conv1 (its 3-channel weight does not
        fit; conv1 keeps its He-normal init as the original) and fc."""
        own = self.state_dict()
        wanted = [k for k in own if k != 'conv1.weight' and not k.endswith('num_batches_tracked')]
        missing = [k for k in wanted if k not in state_dict]
        if missing:
            raise UserError(f'ResNet-101 weights lack {len(missing)} torchvision keys (first: {missing[0]}); '
                            'pass torchvision\'s resnet101-5d3b4d8f.pth')
        self.load_state_dict({k: state_dict[k] for k in wanted}, strict=False)


class ASPPBranch(nn.Module):
    def __init__(self, inplanes, planes, rate):
        super().__init__()
        kernel, padding = (1, 0) if rate == 1 else (3, rate)
        self.atrous_convolution = nn.Conv2d(inplanes, planes, kernel, padding=padding, dilation=rate, bias=False)
        self.bn = nn.BatchNorm2d(planes)
        conv_bn_relu_init(self)

    def forward(self, x):
        return F.relu(self.bn(self.atrous_convolution(x)))


def _resize(x, size):
    return F.interpolate(x, size=size, mode='bilinear', align_corners=True)


class DeepLabv3_plus(nn.Module):
    """forward(image (N, 3, H, W), map (N, 1, H, W)) -> (N, n_classes, H, W) raw logits.

    pretrained: False, True (torchvision's file at TORCHVISION_RESNET101) or a path to it. The decoder keeps
    PyTorch's default init (the original never calls its own init there). width: see the module docstring."""

    def __init__(self, nInputChannels=4, n_classes=1, os=16, pretrained=False, freeze_bn=False, _print=False,
                 width=1.0):
        super().__init__()
        if os not in OUTPUT_STRIDES:
            raise UserError(f'output stride {os} is not supported (16 or 8)')
        if pretrained and width != 1:
            raise UserError(f"torchvision's ResNet-101 weights fit the segmenter of width 1, not {width}")
        self.resnet_features = ResNet101(nInputChannels, os, width)
        if pretrained:
            path = require_file(TORCHVISION_RESNET101 if pretrained is True else pretrained,
                                'torchvision resnet101 weights')
            self.resnet_features.load_torchvision(torch.load(path, map_location='cpu', weights_only=True))
        aspp_in = self.resnet_features.out_channels + 1
        rates = OUTPUT_STRIDES[os][3]
        mid, low = scaled(256, width), scaled(48, width)
        self.aspp1, self.aspp2, self.aspp3, self.aspp4 = (ASPPBranch(aspp_in, mid, r) for r in rates)
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(aspp_in, mid, 1, bias=False),
                                             nn.BatchNorm2d(mid), nn.ReLU())
        self.conv1 = nn.Conv2d(5 * mid, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(self.resnet_features.low_channels, low, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(low)
        self.last_conv = nn.Sequential(nn.Conv2d(mid + low, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                                       nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                                       nn.Conv2d(mid, n_classes, 1))
        if freeze_bn:  # as the original: once, so a later train() undoes it
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()

    def forward(self, image, refer_map):
        x, low = self.resnet_features(torch.cat((image, refer_map), dim=1))
        x = torch.cat((x, _resize(refer_map, x.shape[2:])), dim=1)
        branches = [self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x)]
        branches.append(_resize(self.global_avg_pool(x), x.shape[2:]))
        x = F.relu(self.bn1(self.conv1(torch.cat(branches, dim=1))))
        x = _resize(x, (math.ceil(image.shape[-2] / 4), math.ceil(image.shape[-1] / 4)))
        low = F.relu(self.bn2(self.conv2(low)))
        x = self.last_conv(torch.cat((x, low), dim=1))
        return _resize(x, image.shape[2:])
