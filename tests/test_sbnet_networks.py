"""network.resnet38_SEAM_BD (SBNet) and tool.boundary's Canny maps: keys, parameter groups and forward against the
original network (fixture sbnet_networks.npz, below), and independent property checks of the Canny maps."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from network import resnet38_SEAM_BD
from reference_weights import fill
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
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}  # the side branches scale with the width
    assert shapes['edge_layer.conv1.weight'] == (4, 8, 1, 1) and shapes['edge_layer.classifier.weight'] == (21, 16, 3, 3)
    assert shapes['edge_layer.rcab.body.3.conv_du.0.weight'] == (1, 16, 1, 1)


def test_new_layers_train_at_the_base_lr():
    with torch.device('meta'):
        net = resnet38_SEAM_BD.Net()
    names = {id(p): n for n, p in net.named_parameters()}
    groups = [[names[id(p)] for p in g] for g in net.get_parameter_groups()]
    assert 'fuse_canny_edge.weight' in groups[0] and 'edge_layer.rcab.body.3.conv_du.2.bias' in groups[1]
    assert groups[2] == ['fc8.weight', 'f8_3.weight', 'f8_4.weight', 'f9.weight'] and groups[3] == []


# sbnet_networks.npz, made by the ORIGINAL Carlisle-Liu/SBNet 2f16c8a network/resnet38_SEAM_BD.py on CPU (float64,
# eval, .cuda() shimmed, an empty tool/pyutils stand-in) filled with reference_weights.fill(net, 0): `keys` (the state
# dict's keys and shapes in order, JSON), `groups` (get_parameter_groups() by parameter name, JSON), seeded inputs
# x0 (1x3x24x32) and x1 (2x3x33x41, odd) with the faithful Canny inside forward, and cam<i>, cam_rv<i>, edge<i>.
@pytest.fixture(scope='module')
def original():
    return np.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'sbnet_networks.npz'))


@pytest.fixture(scope='module')
def filled():
    with torch.device('meta'):
        net = resnet38_SEAM_BD.Net()
    net = fill(net.to_empty(device='cpu'))
    return net.double().eval()


def test_keys_shapes_and_parameter_groups_equal_the_original(original, filled):
    ours = [[k, list(v.shape)] for k, v in filled.state_dict().items() if not k.endswith('num_batches_tracked')]
    assert ours == [kv for kv in json.loads(str(original['keys'])) if not kv[0].endswith('num_batches_tracked')]
    names = {id(p): n for n, p in filled.named_parameters()}
    groups = [[names[id(p)] for p in group] for group in filled.get_parameter_groups()]
    trainable = {n for n, p in filled.named_parameters() if p.requires_grad}
    assert groups == [[n for n in g if n in trainable] for g in json.loads(str(original['groups']))]


@pytest.mark.parametrize('i', [0, 1])
def test_forward_equals_the_original(original, filled, i):
    with torch.no_grad():
        outputs = filled(torch.from_numpy(original[f'x{i}']))
    for name, ours in zip(('cam', 'cam_rv', 'edge'), outputs):
        ref = original[f'{name}{i}']
        assert np.abs(ours.numpy() - ref).max() <= 1e-9 * np.abs(ref).max(), name
