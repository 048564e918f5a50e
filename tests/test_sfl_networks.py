"""network.refer_SEAM / deeplab_SEAM / edge_SEAM against the original SFL networks.

Fixtures made by the ORIGINAL code on CPU: /tmp/scratch_sfl/make_sfl_networks.py (wjlbnw/SegmentationFromLocalization
792e715 network/*.py unchanged, cv2 stubbed). sfl_networks.json: state dict keys and shapes in order (no BN counters)
of refer_SEAM.Net(19), deeplab_SEAM.Net(), edge_SEAM.DeepLabv3_plus(4, 1, 16), and torchvision resnet101's keys.
sfl_networks.npz: refer_SEAM.Net(3) filled with deterministic_state_dict, float64, eval, on a 1x3x40x40 input; the
segmenter with its backbone loaded by the original's loader from a torchvision-keyed file of deterministic weights,
conv1 and the decoder deterministic by their own keys, float64, eval, on 2x(3+1)x33x45.
"""
import json
import os

import numpy as np
import pytest
import torch

from network import deeplab_SEAM, edge_SEAM, refer_SEAM, resnet38_SEAM
from reference_weights import deterministic_state_dict
from tool.io import UserError

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')


@pytest.fixture(scope='module')
def meta():
    with open(os.path.join(FIXTURES, 'sfl_networks.json')) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def ref():
    return np.load(os.path.join(FIXTURES, 'sfl_networks.npz'))


def shapes(net):
    return [[k, list(v.shape)] for k, v in net.state_dict().items() if not k.endswith('num_batches_tracked')]


def load_deterministic(net, keys):
    sd = net.state_dict()
    det = deterministic_state_dict({k: sd[k].shape for k in keys})
    net.load_state_dict({k: torch.from_numpy(v) for k, v in det.items()}, strict=False)


def test_keys_and_shapes(meta):
    assert shapes(refer_SEAM.Net(19)) == meta['network.refer_SEAM']
    assert shapes(deeplab_SEAM.Net()) == meta['network.deeplab_SEAM']
    assert deeplab_SEAM.Net is resnet38_SEAM.Net
    assert shapes(edge_SEAM.DeepLabv3_plus(4, 1, 16)) == meta['network.edge_SEAM']


def test_refer_forward(ref):
    net = refer_SEAM.Net(3)
    load_deterministic(net, list(net.state_dict()))
    net = net.double().eval()
    with torch.no_grad():
        cam, cam_rv = net(torch.from_numpy(ref['refer_input']).double())
    np.testing.assert_allclose(cam.numpy(), ref['refer_cam'], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cam_rv.numpy(), ref['refer_cam_rv'], rtol=1e-4, atol=1e-5)


def write_torchvision_file(meta, path):
    state = deterministic_state_dict(dict(meta['torchvision_resnet101']))
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
    return state


def test_segmenter_loads_torchvision_keys_and_forward(meta, ref, tmp_path):
    path = str(tmp_path / 'resnet101.pth')
    state = write_torchvision_file(meta, path)
    torch.manual_seed(0)
    net = edge_SEAM.DeepLabv3_plus(4, 1, 16, pretrained=path)
    backbone = net.resnet_features.state_dict()
    for key, value in state.items():
        if key in ('conv1.weight', 'fc.weight', 'fc.bias'):
            continue
        np.testing.assert_array_equal(backbone[key].numpy(), value, err_msg=key)
    conv1 = backbone['conv1.weight']
    assert conv1.shape == (64, 4, 7, 7)
    # conv1 keeps the original's init N(0, sqrt(2 / (7 * 7 * 64))): std 0.0253
    assert abs(conv1.std().item() - (2 / (49 * 64)) ** 0.5) < 2e-3 and abs(conv1.mean().item()) < 2e-3
    own = [k for k in net.state_dict() if not k.startswith('resnet_features.') or k == 'resnet_features.conv1.weight']
    load_deterministic(net, own)
    net = net.double().eval()
    with torch.no_grad():
        out = net(torch.from_numpy(ref['edge_image']).double(), torch.from_numpy(ref['edge_map']).double())
    assert out.shape == (2, 1, 33, 45)
    np.testing.assert_allclose(out.numpy(), ref['edge_out'], rtol=1e-4, atol=1e-5)


def test_segmenter_rejects_wrong_weight_file(tmp_path):
    path = str(tmp_path / 'bad.pth')
    torch.save({'conv1.weight': torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(UserError, match='torchvision'):
        edge_SEAM.DeepLabv3_plus(4, 1, 16, pretrained=path)


def test_narrow_segmenter(meta, tmp_path):
    """width scales every channel of the segmenter (the demo's); width 1 is the original, and torchvision's
    weights only fit that one."""
    assert shapes(edge_SEAM.DeepLabv3_plus(4, 1, 16, width=1.0)) == meta['network.edge_SEAM']
    net = edge_SEAM.DeepLabv3_plus(4, 1, 16, width=0.125)
    narrow = dict(shapes(net))
    assert list(narrow) == [k for k, _ in meta['network.edge_SEAM']]
    assert narrow['resnet_features.conv1.weight'] == [8, 4, 7, 7]
    assert narrow['resnet_features.layer4.2.conv3.weight'] == [256, 64, 1, 1]
    assert narrow['aspp1.atrous_convolution.weight'][:2] == [32, 257] and narrow['conv2.weight'][:2] == [6, 32]
    assert narrow['last_conv.6.weight'] == [1, 32, 1, 1]
    with torch.no_grad():
        assert net.eval()(torch.zeros(2, 3, 33, 45), torch.zeros(2, 1, 33, 45)).shape == (2, 1, 33, 45)
    path = str(tmp_path / 'resnet101.pth')
    write_torchvision_file(meta, path)
    with pytest.raises(UserError, match='width 1'):
        edge_SEAM.DeepLabv3_plus(4, 1, 16, pretrained=path, width=0.125)
