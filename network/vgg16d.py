"""DeepLab-LargeFOV style VGG-16 backbone (output stride 8), as the reference's vgg16d."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from network import freeze_pretrained, scaled
from tool.caffemodel import load_caffemodel
from tool.io import UserError

# (name, in channels, out channels, dilation) of the 3x3 convolutions; a 3x3 max-pool follows the last of
# stages 1-4: stride 2 after conv1-3, stride 1 after conv4. The reference defines pool5 / pool5a but its
# forward never applies them, so fc6 reads ReLU(conv5_3) directly.
CONVS = (('conv1_1', 3, 64, 1), ('conv1_2', 64, 64, 1),
         ('conv2_1', 64, 128, 1), ('conv2_2', 128, 128, 1),
         ('conv3_1', 128, 256, 1), ('conv3_2', 256, 256, 1), ('conv3_3', 256, 256, 1),
         ('conv4_1', 256, 512, 1), ('conv4_2', 512, 512, 1), ('conv4_3', 512, 512, 1),
         ('conv5_1', 512, 512, 2), ('conv5_2', 512, 512, 2), ('conv5_3', 512, 512, 2))
POOL_STRIDES = {'conv1_2': 2, 'conv2_2': 2, 'conv3_3': 2, 'conv4_3': 1}


class Normalize:
    """HWC uint8 RGB (array or PIL image) -> HWC float32 BGR minus the Caffe mean, not scaled."""

    def __init__(self, mean=(122.675, 116.669, 104.008)):
        self.mean = np.asarray(mean)  # R, G, B

    def __call__(self, img):
        img = np.asarray(img)[..., :3]
        return (img - self.mean)[..., ::-1].astype(np.float32)


class Net(nn.Module):
    """forward(x) -> conv5fc, the ReLU(fc7) feature (1024 channels times width) at stride 8."""

    def __init__(self, fc6_dilation=1, width=1.0):
        super().__init__()
        for name, cin, cout, dilation in CONVS:
            cin = cin if name == 'conv1_1' else scaled(cin, width)
            setattr(self, name, nn.Conv2d(cin, scaled(cout, width), 3, padding=dilation, dilation=dilation))
        for name, stride in POOL_STRIDES.items():
            setattr(self, 'pool' + name[4], nn.MaxPool2d(3, stride=stride, padding=1))
        c512, c1024 = scaled(512, width), scaled(1024, width)
        self.fc6 = nn.Conv2d(c512, c1024, 3, padding=fc6_dilation, dilation=fc6_dilation)
        self.drop6 = nn.Dropout2d(0.5)
        self.fc7 = nn.Conv2d(c1024, c1024, 1)

        self.out_channels = c1024
        self.feature_channels = {'conv4': c512, 'conv5': c512, 'conv5fc': c1024}
        self.not_training = [self.conv1_1, self.conv1_2, self.conv2_1, self.conv2_2]
        self.normalize = Normalize()

    def forward(self, x):
        return self.forward_as_dict(x)['conv5fc']

    def forward_as_dict(self, x):
        """conv4 = ReLU(conv4_3), conv5 = ReLU(conv5_3), conv5fc = ReLU(fc7)."""
        taps = {}
        for name, *_ in CONVS:
            x = F.relu(getattr(self, name)(x))
            if name in ('conv4_3', 'conv5_3'):
                taps[name[:5]] = x
            if name in POOL_STRIDES:
                x = getattr(self, 'pool' + name[4])(x)
        x = self.drop6(F.relu(self.fc6(x)))
        taps['conv5fc'] = F.relu(self.fc7(x))
        return taps

    def train(self, mode=True):
        super().train(mode)
        freeze_pretrained(self)
        return self


def caffe_shapes():
    """Torch weight shapes of the layers taken from the ImageNet caffemodel (the faithful, width-1 net)."""
    shapes = {name: (cout, cin, 3, 3) for name, cin, cout, _ in CONVS}
    shapes.update(fc6=(1024, 512, 3, 3), fc7=(1024, 1024, 1, 1))
    return shapes


def convert_caffe_to_torch(path):
    """State dict (torch tensors) of DeepLab's vgg16_20M.caffemodel; fc8 and other layers are dropped."""
    layers = load_caffemodel(path)
    state = {}
    for name, shape in caffe_shapes().items():
        blobs = layers.get(name)
        if blobs is None or len(blobs) != 2:
            raise UserError(f'{path}: layer {name} with weight and bias not found; '
                            'expected the DeepLab VGG-16 ImageNet weights vgg16_20M.caffemodel')
        weight, bias = (np.asarray(b, dtype=np.float32) for b in blobs)
        if weight.size != np.prod(shape) or bias.size != shape[0]:
            raise UserError(f'{path}: layer {name} has {weight.size} weights and {bias.size} biases, expected '
                            f'shape {shape}; expected the DeepLab VGG-16 ImageNet weights vgg16_20M.caffemodel')
        state[name + '.weight'] = torch.from_numpy(weight.reshape(shape).copy())
        state[name + '.bias'] = torch.from_numpy(bias.reshape(-1).copy())
    return state
