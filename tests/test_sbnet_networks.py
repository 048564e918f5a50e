"""network.resnet38_SEAM_BD (SBNet) and tool.boundary's Canny maps: independent property checks.
(Equality with the original network was measured by /tmp/scratch_sbnet_net/compare_quick.py; no fixture yet.)"""
import cv2
import numpy as np
import torch

from network import resnet38_SEAM_BD
from tool.boundary import MEAN, STD, canny_maps, faithful_uint8


def test_faithful_cast_truncates_and_wraps():
    assert faithful_uint8(np.array([-2.5, -1.5, -0.7, 0.5, 2.6, -300.2])).tolist() == [254, 255, 0, 0, 2, 212]


def test_fixed_canny_is_cv2_canny_of_the_true_image_over_255():
    rgb = np.random.RandomState(0).randint(0, 256, (2, 20, 24, 3)).astype(np.uint8)
    x = torch.from_numpy(((rgb / 255. - MEAN) / STD).transpose(0, 3, 1, 2))
    maps = canny_maps(x, 'fixed').numpy()
    assert set(np.unique(maps)) <= {0.0, 1.0}
    for i in range(2):
        np.testing.assert_array_equal(maps[i, 0], cv2.Canny(rgb[i], 10, 100) / 255.)


def test_forward_shapes_precomputed_canny_and_width():
    torch.manual_seed(0)
    net = resnet38_SEAM_BD.Net(width=0.125, scratch=True).eval()
    x = torch.randn(2, 3, 33, 41)
    with torch.no_grad():
        out = net(x)
        again = net(x, canny=canny_maps(x, 'faithful'))
    assert [tuple(t.shape) for t in out] == [(2, 21, 33, 41)] * 3
    assert all(torch.equal(a, b) for a, b in zip(out, again))


def test_new_layers_train_at_the_base_lr():
    with torch.device('meta'):
        net = resnet38_SEAM_BD.Net()
    names = {id(p): n for n, p in net.named_parameters()}
    groups = [[names[id(p)] for p in g] for g in net.get_parameter_groups()]
    assert 'fuse_canny_edge.weight' in groups[0] and 'edge_layer.rcab.body.3.conv_du.2.bias' in groups[1]
    assert groups[2] == ['fc8.weight', 'f8_3.weight', 'f8_4.weight', 'f9.weight'] and groups[3] == []
