"""Every network against the original PSA code (jiwoon-ahn/psa, commit 9493e59): outputs, parameter groups and
frozen parameters.

Fixture tests/fixtures/psa_networks.npz (+ .json): the original network/resnet38_cls.py, resnet38_aff.py,
vgg16_cls.py, vgg16_aff.py (with their resnet38d.py / vgg16d.py and tool/pyutils.py) were run on the CPU
(`.cuda()` patched to a no-op), filled by tests/reference_weights.fill(net, seed=0), in eval mode, in float64 on
the stored (2, 3, 41, 75) input (odd sizes: a 6x10 map at stride 8); `to_dense` in float32 (the original builds
the dense matrix with float32 ones) on the first image. The json holds, per network, the parameter names of the
four get_parameter_groups lists, the parameters with requires_grad False after eval(), and the module names of
not_training / from_scratch_layers. The original has no resnet38_seg (tests/test_networks.py checks it).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from network import resnet38_aff, resnet38_cls, vgg16_aff, vgg16_cls
from reference_weights import fill

FIXTURE = Path(__file__).parent / 'fixtures' / 'psa_networks'
NETS = {'resnet38_cls': resnet38_cls.Net, 'resnet38_aff': resnet38_aff.Net,
        'vgg16_cls': vgg16_cls.Net, 'vgg16_aff': vgg16_aff.Net}


@pytest.fixture(scope='module')
def original():
    with open(FIXTURE.with_suffix('.json')) as f:
        names = json.load(f)
    return dict(np.load(FIXTURE.with_suffix('.npz'))), names


@pytest.fixture(scope='module', params=list(NETS))
def net(request):
    return request.param, fill(NETS[request.param](), seed=0).eval()


def assert_rel_close(ours, orig):
    ours = ours.detach().double().numpy()
    assert ours.shape == orig.shape
    err = np.abs(ours - orig).max() / np.abs(orig).max()
    assert err < 1e-4, f'relative max error {err:.3g}'


def test_outputs_equal_the_original(net, original):
    name, model = net
    outputs, _ = original
    x = torch.from_numpy(outputs['input'])
    model = model.double()
    with torch.no_grad():
        assert_rel_close(model(x), outputs[name + '/forward'])
        if name.endswith('cls'):
            assert_rel_close(model.forward_cam(x), outputs[name + '/forward_cam'])
        else:
            assert_rel_close(model(x[:1], to_dense=True), outputs[name + '/to_dense'])


def test_parameter_groups_and_frozen_parameters_equal_the_original(net, original):
    name, model = net
    expected = original[1][name]
    names = {id(p): n for n, p in model.named_parameters()}
    assert [[names[id(p)] for p in g] for g in model.get_parameter_groups()] == expected['groups']
    assert sorted(n for n, p in model.named_parameters() if not p.requires_grad) == expected['frozen']
    modules = dict(model.named_modules())
    assert [modules[n] for n in expected['not_training']] == list(model.not_training)
    assert [modules[n] for n in expected['from_scratch']] == list(model.from_scratch_layers)
