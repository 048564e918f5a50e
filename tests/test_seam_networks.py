"""network.resnet38_cls_ser (SSENet) and network.resnet38_SEAM against the original networks.

Fixtures, made by the ORIGINAL code on CPU (scratch folder outside the project, original files unchanged, an empty
tool/pyutils.py stand-in for SEAM's unused import): YudeWang/SSENet-pytorch 873c442 network/resnet38_cls_ser.py +
resnet38d.py and YudeWang/SEAM 3212261 network/resnet38_SEAM.py + resnet38d.py.
- seam_ssenet_state_dict_shapes.json, per network: `shapes` (state dict keys and shapes in order, without BatchNorm
  counters), `groups` (get_parameter_groups() by parameter name, called before train() as the scripts do) and
  `trainable_after_train` (parameters with requires_grad after model.train()).
- seam_ssenet_networks.npz: the original Net filled with tests/reference_weights.fill(net, 0), float64, eval mode,
  forward on seeded 1x3x40x40 (`square`) and 1x3x33x45 (`odd`) inputs (`<net>_<tag>_input`); outputs
  `<net>_<tag>_out0` (SSENet: the upsampled CAM; SEAM: cam) and `<net>_<tag>_out1` (SEAM: cam_rv), stored float32.
"""
import json
import os

import numpy as np
import pytest
import torch

from network import resnet38_SEAM, resnet38_cls_ser
from reference_weights import deterministic_state_dict
from tool.cli import import_network

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
NETS = {'network.resnet38_cls_ser': resnet38_cls_ser.Net, 'network.resnet38_SEAM': resnet38_SEAM.Net}


@pytest.fixture(scope='module')
def reference():
    with open(os.path.join(FIXTURES, 'seam_ssenet_state_dict_shapes.json')) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def filled(reference):
    """Both nets at full width, float64, eval, with the fixtures' weights (the backbone's drawn once)."""
    state = deterministic_state_dict(reference['network.resnet38_SEAM']['shapes'])
    nets = {}
    for name, cls in NETS.items():
        own = {k: state[k] for k in reference[name]['shapes'] if k != 'fc8.weight'}
        own.update(deterministic_state_dict({'fc8.weight': reference[name]['shapes']['fc8.weight']}))
        net = meta_net(name).to_empty(device='cpu')  # skips the random initialisation
        net.load_state_dict({k: torch.from_numpy(v) for k, v in own.items()})
        nets[name] = net.double().eval()
    return nets


def meta_net(name):
    with torch.device('meta'):
        return NETS[name]()


@pytest.mark.parametrize('name', sorted(NETS))
def test_keys_and_shapes_equal_the_original(name, reference):
    sd = meta_net(name).state_dict()
    ours = {k: list(v.shape) for k, v in sd.items() if not k.endswith('num_batches_tracked')}
    assert list(ours.items()) == list(reference[name]['shapes'].items())


@pytest.mark.parametrize('name', sorted(NETS))
def test_parameter_groups_by_name(name, reference):
    net = meta_net(name)
    names = {id(p): n for n, p in net.named_parameters()}
    ours = [[names[id(p)] for p in group] for group in net.get_parameter_groups()]
    trainable = set(reference[name]['trainable_after_train'])
    # The original built its groups before train() froze conv1a and b2*: those got no gradient there.
    assert ours == [[n for n in group if n in trainable] for group in reference[name]['groups']]
    assert {n for n, p in net.named_parameters() if p.requires_grad} == trainable


@pytest.mark.parametrize('name', sorted(NETS))
@pytest.mark.parametrize('tag', ['square', 'odd'])
def test_forward_equals_the_original(name, tag, filled):
    ref = np.load(os.path.join(FIXTURES, 'seam_ssenet_networks.npz'))
    prefix = f'{name.split(".")[1]}_{tag}'
    with torch.no_grad():
        out = filled[name](torch.from_numpy(ref[prefix + '_input']).double())
    out = out if isinstance(out, tuple) else (out,)
    assert len(out) == (2 if 'SEAM' in name else 1)
    for i, t in enumerate(out):
        expected = ref[f'{prefix}_out{i}']
        assert t.shape == expected.shape
        assert np.abs(t.numpy() - expected).max() / np.abs(expected).max() < 1e-4


def test_pcm_learns_from_detached_backbone_features():
    torch.manual_seed(0)
    net = resnet38_SEAM.Net(width=0.125)
    cam, cam_rv = net(torch.randn(2, 3, 40, 40))
    assert cam.shape == cam_rv.shape == (2, 21, 40, 40)
    cam_rv.sum().backward()
    with_grad = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == {'f8_3.weight', 'f8_4.weight', 'f9.weight'}  # the seeds are computed without gradient
    net.zero_grad(set_to_none=True)
    net(torch.randn(2, 3, 40, 40))[0].sum().backward()
    assert net.f9.weight.grad is None and net.fc8.weight.grad is not None and net.b5.conv_branch2a.weight.grad is not None


@pytest.mark.parametrize('name', sorted(NETS))
def test_width_and_scratch_variants(name):
    net = import_network(name, width=0.125, scratch=True)
    assert net.fc8.in_channels == 512 and all(p.requires_grad for n, p in net.named_parameters() if 'bn' not in n)
    out = net(torch.zeros(1, 3, 27, 35))
    assert all(t.shape[2:] == (27, 35) for t in (out if isinstance(out, tuple) else (out,)))
