"""tool.weights: load_weights (torch state dicts, mxnet .params, caffemodels), its fit checks, the converter CLI.

The .params and .caffemodel files are synthetic, written with the test writers of test_mxnet_params.py (checked
byte for byte against real mxnet files) and test_caffemodel.py (checked against the protobuf package).
"""
import hashlib
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from network import resnet38_cls, resnet38d, vgg16d
from test_caffemodel import blob, net, v1_layer
from test_mxnet_params import write_mxnet_params
from tool.io import UserError
from tool.weights import load_weights, main

REPO = Path(__file__).resolve().parents[1]


class Small(nn.Module):
    def __init__(self, channels=4):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Conv2d(channels, 2, 1, bias=False)


class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(5, 3)


def randomized(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
    return model


def assert_state_equal(model, state):
    own = model.state_dict()
    for key, value in state.items():
        assert torch.equal(own[key], torch.as_tensor(value)), key


# ---- torch state dicts -----------------------------------------------------------------------------------------

@pytest.mark.parametrize('as_checkpoint', [False, True])
def test_state_dict_round_trip(as_checkpoint, tmp_path):
    source = randomized(Small())
    path = tmp_path / 'small.pth'
    state = source.state_dict()
    torch.save({'model': state, 'epoch': 3} if as_checkpoint else state, path)
    target = Small()
    summary = load_weights(target, path)
    assert_state_equal(target, state)
    assert (summary['matched'], summary['missing'], summary['unexpected']) == (len(state), 0, 0)


def test_partial_weights_load_with_a_summary(tmp_path):
    source = randomized(Small())
    state = {k: v for k, v in source.state_dict().items() if not k.startswith('head.')}
    state['fc8.weight'] = torch.zeros(20, 4, 1, 1)
    del state['bn.num_batches_tracked']  # as in the reference's files: not reported missing
    path = tmp_path / 'partial.pth'
    torch.save(state, path)
    target = Small()
    head_before = target.head.weight.clone()
    summary = load_weights(target, path)
    assert summary['matched'] == len(state) - 1
    assert summary['missing_keys'] == ['head.weight'] and summary['missing'] == 1
    assert summary['unexpected_keys'] == ['fc8.weight'] and summary['unexpected'] == 1
    assert torch.equal(target.head.weight, head_before)
    assert_state_equal(target, {k: v for k, v in state.items() if k != 'fc8.weight'})


def test_weights_of_another_network_are_a_clear_error(tmp_path):
    path = tmp_path / 'other.pth'
    torch.save(Other().state_dict(), path)
    with pytest.raises(UserError) as err:
        load_weights(Small(), path)
    message = str(err.value)
    assert f'weights {path} do not fit network {__name__}' in message
    assert 'encoder.weight' in message and 'conv.weight' in message
    assert 'pass weights trained for this network' in message and '\n' not in message


def test_shape_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / 'wide.pth'
    torch.save(Small(channels=6).state_dict(), path)
    target = Small()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(UserError, match=re.escape('conv.weight (6, 3, 3, 3) vs (4, 3, 3, 3)')):
        load_weights(target, path)
    assert_state_equal(target, before)  # nothing loaded


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(UserError, match=re.escape(str(tmp_path / 'nope.pth'))):
        load_weights(Small(), tmp_path / 'nope.pth')
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a torch file')
    with pytest.raises(UserError, match='cannot read weights .*garbage.pth'):
        load_weights(Small(), garbage)
    a_list = tmp_path / 'list.pth'
    torch.save([torch.ones(2)], a_list)
    with pytest.raises(UserError, match='not a state dict'):
        load_weights(Small(), a_list)


# ---- mxnet .params into ResNet-38 ----------------------------------------------------------------------------

MX_BN = {'weight': ('arg', 'gamma'), 'bias': ('arg', 'beta'), 'running_mean': ('aux', 'moving_mean'),
         'running_var': ('aux', 'moving_var')}


def mxnet_name(torch_key):
    """The name mxnet's ResNet-38 gives a torch key, written from the naming in the spec (the inverse of the
    converter): 'b4_5.bn_branch2a.running_var' -> 'aux:bn4b5_branch2a_moving_var'."""
    parts = torch_key.split('.')
    if parts[0] == 'conv1a':
        return 'arg:conv1a_weight'
    if parts[0] == 'bn7':
        kind, suffix = MX_BN[parts[1]]
        return f'{kind}:bn7_{suffix}'
    stage, _, index = parts[0][1:].partition('_')
    block = f'{stage}b{index}' if index else f'{stage}a'
    layer, branch = parts[1].split('_', 1)
    if layer == 'conv':
        return f'arg:res{block}_{branch}_weight'
    kind, suffix = MX_BN[parts[2]]
    return f'{kind}:bn{block}_{branch}_{suffix}'


def test_mxnet_names_follow_the_spec_examples():
    assert mxnet_name('b2.conv_branch2a.weight') == 'arg:res2a_branch2a_weight'
    assert mxnet_name('b2.bn_branch2a.weight') == 'arg:bn2a_branch2a_gamma'
    assert mxnet_name('b4_5.bn_branch2b1.running_var') == 'aux:bn4b5_branch2b1_moving_var'
    assert mxnet_name('b2_1.conv_branch1.weight') == 'arg:res2b1_branch1_weight'
    assert mxnet_name('bn7.bias') == 'arg:bn7_beta'


def synthetic_resnet38_params(path, width=0.125):
    """A .params file (V2 records, args then auxs as mxnet saves them) for resnet38d.Net(width), plus the
    ImageNet classifier the converter drops. Returns the expected torch state (without BN counters)."""
    expected = {k: v for k, v in randomized(resnet38d.Net(width=width), seed=1).state_dict().items()
                if not k.endswith('num_batches_tracked')}
    named = {mxnet_name(k): v.numpy() for k, v in expected.items()}
    rng = np.random.default_rng(0)
    named['arg:linear1000_weight'] = rng.standard_normal((10, expected['bn7.weight'].numel())).astype(np.float32)
    named['arg:linear1000_bias'] = np.zeros(10, np.float32)
    ordered = OrderedDict(sorted(named.items(), key=lambda item: item[0].startswith('aux:')))
    write_mxnet_params(path, ordered, 'v2')
    return expected


def test_synthetic_mxnet_resnet38_loads_every_backbone_key(tmp_path):
    path = tmp_path / 'ilsvrc-cls_rna-a1_cls1000_ep-0001.params'
    expected = synthetic_resnet38_params(path)
    model = resnet38d.Net(width=0.125)
    summary = load_weights(model, path)
    assert summary['matched'] == len(expected)
    assert (summary['missing'], summary['unexpected']) == (0, 0)
    assert_state_equal(model, expected)


def test_imagenet_params_into_a_task_network_leave_only_the_new_head_missing(tmp_path):
    path = tmp_path / 'imagenet.params'
    expected = synthetic_resnet38_params(path)
    model = resnet38_cls.Net(width=0.125)
    summary = load_weights(model, path)
    assert summary['matched'] == len(expected) and summary['unexpected'] == 0
    assert summary['missing_keys'] == ['fc8.weight']
    assert_state_equal(model, expected)


def test_params_of_another_width_are_a_shape_error(tmp_path):
    path = tmp_path / 'narrow.params'
    synthetic_resnet38_params(path, width=0.0625)
    with pytest.raises(UserError, match='do not fit network network.resnet38d: .* have other shapes'):
        load_weights(resnet38d.Net(width=0.125), path)


# ---- caffemodel into VGG-16 ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_synthetic_caffemodel_loads_into_vgg16(tmp_path):
    """A full-size DeepLab-style file (old `layers` form, 4-D legacy blob shapes, 20M floats): ~80 MB."""
    rng = np.random.default_rng(0)
    layers, expected = [v1_layer('data', 5, [])], {}
    for name, shape in vgg16d.caffe_shapes().items():
        weight = rng.standard_normal(shape, dtype=np.float32)
        bias = rng.standard_normal(shape[0], dtype=np.float32)
        expected.update({f'{name}.weight': weight, f'{name}.bias': bias})
        layers.append(v1_layer(name, 4, [blob(weight, legacy=True), blob(bias.reshape(1, 1, 1, -1), legacy=True)]))
    layers.append(v1_layer('fc8_voc12', 4, [blob(np.ones((21, 1024, 1, 1), np.float32), legacy=True)]))
    path = tmp_path / 'vgg16_20M.caffemodel'
    path.write_bytes(net('VGG16', *layers))
    model = vgg16d.Net()
    summary = load_weights(model, path)
    assert (summary['matched'], summary['missing'], summary['unexpected']) == (len(expected), 0, 0)
    assert_state_equal(model, expected)


# ---- the converter CLI ---------------------------------------------------------------------------------------

def test_cli_converts_once_and_prints_sha256(tmp_path):
    source = tmp_path / 'imagenet.params'
    expected = synthetic_resnet38_params(source)
    out = tmp_path / 'sub' / 'res38_imagenet.pth'
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, '-m', 'tool.weights', str(source), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    hashes = dict(re.findall(r'sha256 (input|output): +([0-9a-f]{64})  ', done.stdout))
    assert hashes == {'input': hashlib.sha256(source.read_bytes()).hexdigest(),
                      'output': hashlib.sha256(out.read_bytes()).hexdigest()}
    state = torch.load(out, map_location='cpu', weights_only=True)
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left behind


def test_cli_refuses_other_inputs(tmp_path):
    pth = tmp_path / 'model.pth'
    torch.save(Small().state_dict(), pth)
    with pytest.raises(UserError, match='can only convert .params'):
        main([str(pth), str(tmp_path / 'out.pth')])
    params = tmp_path / 'x.params'
    params.write_bytes(b'')
    with pytest.raises(UserError, match='module not found'):
        main([str(params), str(tmp_path / 'out.pth'), '--network', 'network.no_such_net'])
    assert not (tmp_path / 'out.pth').exists()
