"""Wide ResNet-38 backbone (Wu et al., "Wider or Deeper"), output stride 8, as the reference's resnet38d."""
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from network import freeze_pretrained, scaled
from tool.io import UserError
from tool.mxnet_params import load_mxnet_params


class ResBlock(nn.Module):
    """Pre-activation residual block of two 3x3 convolutions."""

    def __init__(self, in_channels, mid_channels, out_channels, stride=1, first_dilation=None, dilation=1):
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        if first_dilation is None:
            first_dilation = dilation
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, mid_channels, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x, get_x_bn_relu=False):
        x_bn_relu = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(x_bn_relu)
        branch = self.conv_branch2a(x_bn_relu)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch)))
        out = shortcut + branch
        return (out, x_bn_relu) if get_x_bn_relu else out


class ResBlock_bot(nn.Module):
    """Pre-activation bottleneck block (1x1, 3x3, 1x1) with Dropout2d before the last two convolutions."""

    def __init__(self, in_channels, out_channels, stride=1, dilation=1, dropout=0.):
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_channels // 4, out_channels // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x, get_x_bn_relu=False):
        x_bn_relu = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(x_bn_relu)
        branch = self.conv_branch2a(x_bn_relu)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        out = shortcut + branch
        return (out, x_bn_relu) if get_x_bn_relu else out


class Normalize:
    """HWC uint8 RGB (array or PIL image) -> HWC float32: /255, ImageNet mean and std."""

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.mean = np.asarray(mean)
        self.std = np.asarray(std)

    def __call__(self, img):
        img = np.asarray(img)[..., :3]
        return ((img / 255. - self.mean) / self.std).astype(np.float32)


BLOCKS = ('b2', 'b2_1', 'b2_2', 'b3', 'b3_1', 'b3_2', 'b4', 'b4_1', 'b4_2', 'b4_3', 'b4_4', 'b4_5',
          'b5', 'b5_1', 'b5_2', 'b6', 'b7')
# forward_as_dict keys that are the BN-ReLU input of a block: the reference's conv4/conv5, plus the taps
# later variants (SBNet) read: the inputs of b2, b3, b4 and b7.
BLOCK_TAPS = {'b2': 'b2_in', 'b3': 'b3_in', 'b4': 'b4_in', 'b5': 'conv4', 'b6': 'conv5', 'b7': 'b7_in'}
REFERENCE_TAPS = ('conv4', 'conv5', 'conv6')


class Net(nn.Module):
    """forward(x) -> conv6, the 4096-channel (times width) ReLU(bn7) feature at stride 8.

    `Net()` is the reference network. `width` scales every channel count; `scratch=True` prepares it for
    training from random weights (the demo): He-initialised convs with the last conv of every residual
    branch at zero, so activations neither vanish nor explode through the frozen (identity) BatchNorms,
    and no frozen layers (`not_training` keeps pretrained layers; there are none).
    """

    def __init__(self, width=1.0, scratch=False):
        super().__init__()
        self.scratch = scratch
        c = {n: scaled(n, width) for n in (64, 128, 256, 512, 1024, 2048, 4096)}
        self.conv1a = nn.Conv2d(3, c[64], 3, padding=1, bias=False)

        self.b2 = ResBlock(c[64], c[128], c[128], stride=2)
        self.b2_1 = ResBlock(c[128], c[128], c[128])
        self.b2_2 = ResBlock(c[128], c[128], c[128])

        self.b3 = ResBlock(c[128], c[256], c[256], stride=2)
        self.b3_1 = ResBlock(c[256], c[256], c[256])
        self.b3_2 = ResBlock(c[256], c[256], c[256])

        self.b4 = ResBlock(c[256], c[512], c[512], stride=2)
        self.b4_1 = ResBlock(c[512], c[512], c[512])
        self.b4_2 = ResBlock(c[512], c[512], c[512])
        self.b4_3 = ResBlock(c[512], c[512], c[512])
        self.b4_4 = ResBlock(c[512], c[512], c[512])
        self.b4_5 = ResBlock(c[512], c[512], c[512])

        self.b5 = ResBlock(c[512], c[512], c[1024], stride=1, first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(c[1024], c[512], c[1024], dilation=2)
        self.b5_2 = ResBlock(c[1024], c[512], c[1024], dilation=2)

        self.b6 = ResBlock_bot(c[1024], c[2048], stride=1, dilation=4, dropout=0.3)
        self.b7 = ResBlock_bot(c[2048], c[4096], dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(c[4096])

        self.out_channels = c[4096]
        self.feature_channels = {'b2_in': c[64], 'b3_in': c[128], 'b4_in': c[256], 'conv4': c[512],
                                 'conv5': c[1024], 'b7_in': c[2048], 'conv6': c[4096]}
        self.not_training = self.pretrained_layers([self.conv1a])
        self.normalize = Normalize()
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.register_load_state_dict_pre_hook(_keep_missing_bn_counter)
        if scratch:
            self._init_for_scratch()

    def _init_for_scratch(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_in', nonlinearity='relu')
        for m in self.modules():
            if isinstance(m, (ResBlock, ResBlock_bot)):
                nn.init.zeros_(m.conv_branch2b2.weight if isinstance(m, ResBlock_bot) else m.conv_branch2b1.weight)

    def pretrained_layers(self, layers):
        """The layers a task net keeps frozen: the given ones, none when trained from scratch."""
        return [] if self.scratch else layers

    def forward(self, x):
        return self.forward_as_dict(x)['conv6']

    def forward_as_dict(self, x, extra_taps=False):
        """conv4, conv5, conv6 as the reference; with extra_taps also b2_in, b3_in, b4_in, b7_in."""
        taps = {}
        x = self.conv1a(x)
        for name in BLOCKS:
            tap = BLOCK_TAPS.get(name)
            if tap in REFERENCE_TAPS or (tap and extra_taps):
                x, taps[tap] = getattr(self, name)(x, get_x_bn_relu=True)
            else:
                x = getattr(self, name)(x)
        taps['conv6'] = F.relu(self.bn7(x))
        return taps

    def train(self, mode=True):
        super().train(mode)
        freeze_pretrained(self)
        return self


def _keep_missing_bn_counter(bn, state_dict, prefix, *_):
    """Reference weights predate BatchNorm's num_batches_tracked: when a state dict has the layer's
    running stats but no counter, keep the module's own counter instead of reporting a missing key."""
    key = prefix + 'num_batches_tracked'
    if prefix + 'running_mean' in state_dict and key not in state_dict:
        state_dict[key] = bn.num_batches_tracked


# 'res2a' / 'bn2a': first block of stage 2 (torch b2); 'res2b1': the next one (b2_1).
_BLOCK_TOKEN = re.compile(r'(res|bn)(\d)[a-z](\d*)')
_BN_PARAMS = {'gamma': 'weight', 'beta': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def rename_mxnet_key(name):
    """Torch state-dict key of an mxnet ResNet-38 parameter name, or None for the dropped ImageNet
    classifier. 'arg:res2b1_branch2a_weight' -> 'b2_1.conv_branch2a.weight',
    'aux:bn4a_branch1_moving_var' -> 'b4.bn_branch1.running_var', 'aux:bn7_moving_mean' -> 'bn7.running_mean'."""
    toks = name.split(':')[-1].split('_')
    head, last = toks[0], toks[-1]
    if head == 'conv1a':
        return 'conv1a.weight'
    if head == 'linear1000':
        return None
    block = _BLOCK_TOKEN.fullmatch(head)
    if block and len(toks) > 1 and toks[1].startswith('branch'):
        kind, stage, index = block.groups()
        torch_block = f'b{stage}_{index}' if index else f'b{stage}'
        if kind == 'res':
            return f'{torch_block}.conv_{toks[1]}.weight'
        if last in _BN_PARAMS:
            return f'{torch_block}.bn_{toks[1]}.{_BN_PARAMS[last]}'
    elif head == 'bn7' and last in _BN_PARAMS:
        return f'bn7.{_BN_PARAMS[last]}'
    raise ValueError(f'unexpected mxnet parameter name {name!r}')


def convert_mxnet_to_torch(path):
    """State dict (torch tensors) of the ImageNet file ilsvrc-cls_rna-a1_cls1000_ep-0001.params."""
    state = {}
    for name, array in load_mxnet_params(path).items():
        try:
            key = rename_mxnet_key(name)
        except ValueError as e:
            raise UserError(f'{path}: {e}; expected the ResNet-38 ImageNet weights '
                            'ilsvrc-cls_rna-a1_cls1000_ep-0001.params')
        if key is not None:
            state[key] = torch.from_numpy(np.array(array))
    return state
