"""SSENet's classification net (resnet38_cls_ser): PSA's ResNet-38 classifier whose forward returns the raw CAM
logits bilinearly upsampled to the input size; the training loop takes their global average as the class logits."""
import torch.nn.functional as F

from network import resnet38_cls


class Net(resnet38_cls.Net):
    def forward(self, x):
        """(N, 20, H, W) CAM logits (before ReLU) at the input's size."""
        cam = self.fc8(self.dropout7(self.forward_as_dict(x)['conv6']))
        return F.interpolate(cam, x.shape[2:], mode='bilinear', align_corners=False)
