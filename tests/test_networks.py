"""Networks: reference keys/shapes/parameter counts, loading reference state dicts, outputs against
independent functional computations, BN/layer freezing, parameter groups, weight-file renaming."""
import json
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import network
from network import resnet38_aff, resnet38_cls, resnet38_seg, resnet38d, vgg16_aff, vgg16_cls, vgg16d
from tool import affinity
from tool.io import UserError

FIXTURES = '/work/shared/fixtures'
NETS = {'network.resnet38_cls': resnet38_cls.Net, 'network.resnet38_aff': resnet38_aff.Net,
        'network.resnet38_seg': resnet38_seg.SegNet, 'network.vgg16_cls': vgg16_cls.Net,
        'network.vgg16_aff': vgg16_aff.Net}
PARAM_COUNTS = {'network.resnet38_cls': 105_152_832, 'network.resnet38_aff': 106_484_032,
                'network.resnet38_seg': 124_042_581, 'network.vgg16_cls': 20_504_384,
                'network.vgg16_aff': 21_045_952}
SMALL = 0.125  # width of the small nets used for the numeric checks


@pytest.fixture(scope='module')
def reference_shapes():
    with open(f'{FIXTURES}/reference_state_dict_shapes.json') as f:
        return json.load(f)


def meta_net(name):
    with torch.device('meta'):
        return NETS[name]()


def without_bn_counters(state_dict):
    return OrderedDict((k, v) for k, v in state_dict.items() if not k.endswith('num_batches_tracked'))


def randomize(net, seed=0):
    """Random weights and BN statistics (so BN matters), float64, eval mode."""
    g = torch.Generator().manual_seed(seed)
    net.double().eval()
    with torch.no_grad():
        for key, t in net.state_dict().items():
            if key.endswith('num_batches_tracked'):
                continue
            if key.endswith('running_var') or (key.endswith('weight') and t.dim() == 1):
                t.copy_(0.5 + torch.rand(t.shape, generator=g, dtype=t.dtype))
            elif t.dim() == 1:
                t.copy_(0.1 * torch.randn(t.shape, generator=g, dtype=t.dtype))
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) / fan_in ** 0.5)
    return net


def image(n, h, w, seed=1):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------
# Independent functional re-implementation from the spec, reading only the state dict.

def bn(x, sd, p):
    return F.batch_norm(x, sd[p + '.running_mean'], sd[p + '.running_var'], sd[p + '.weight'], sd[p + '.bias'],
                        training=False, eps=1e-5)


def conv(x, sd, p, stride=1, dilation=1):
    w = sd[p + '.weight']
    return F.conv2d(x, w, sd.get(p + '.bias'), stride, dilation * (w.shape[-1] // 2), dilation)


# (block, stride, first dilation, dilation, bottleneck) as spec section 2
RESNET38_BLOCKS = ([('b2', 2, 1, 1, False), ('b2_1', 1, 1, 1, False), ('b2_2', 1, 1, 1, False),
                    ('b3', 2, 1, 1, False), ('b3_1', 1, 1, 1, False), ('b3_2', 1, 1, 1, False),
                    ('b4', 2, 1, 1, False)] + [(f'b4_{i}', 1, 1, 1, False) for i in range(1, 6)]
                   + [('b5', 1, 1, 2, False), ('b5_1', 1, 2, 2, False), ('b5_2', 1, 2, 2, False),
                      ('b6', 1, 4, 4, True), ('b7', 1, 4, 4, True)])


def functional_resnet38(x, sd):
    """{block name: its BN-ReLU input} plus 'conv6' = ReLU(bn7(output))."""
    taps = {}
    x = conv(x, sd, 'conv1a')
    for name, stride, first_dil, dil, bottleneck in RESNET38_BLOCKS:
        a = F.relu(bn(x, sd, name + '.bn_branch2a'))
        taps[name] = a
        shortcut = conv(a, sd, name + '.conv_branch1', stride) if name + '.conv_branch1.weight' in sd else x
        if bottleneck:
            b = conv(a, sd, name + '.conv_branch2a', stride)
            b = conv(F.relu(bn(b, sd, name + '.bn_branch2b1')), sd, name + '.conv_branch2b1', 1, dil)
            b = conv(F.relu(bn(b, sd, name + '.bn_branch2b2')), sd, name + '.conv_branch2b2')
        else:
            b = conv(a, sd, name + '.conv_branch2a', stride, first_dil)
            b = conv(F.relu(bn(b, sd, name + '.bn_branch2b1')), sd, name + '.conv_branch2b1', 1, dil)
        x = shortcut + b
    taps['conv6'] = F.relu(bn(x, sd, 'bn7'))
    return taps


def functional_vgg16(x, sd, fc6_dilation):
    taps = {}
    for stage, (n_convs, pool_stride, dil) in enumerate([(2, 2, 1), (2, 2, 1), (3, 2, 1), (3, 1, 1), (3, None, 2)], 1):
        for i in range(1, n_convs + 1):
            x = F.relu(conv(x, sd, f'conv{stage}_{i}', dilation=dil))
        taps[stage] = x
        if pool_stride:
            x = F.max_pool2d(x, 3, pool_stride, 1)
    x = F.relu(conv(x, sd, 'fc6', dilation=fc6_dilation))
    taps['fc7'] = F.relu(conv(x, sd, 'fc7'))
    return taps


def spec_offsets():
    offsets = [(0, dx) for dx in range(1, 5)]
    offsets += [(dy, dx) for dy in range(1, 5) for dx in range(-4, 5) if dy * dy + dx * dx < 25]
    return offsets


def loop_affinity(feat, k, i):
    """exp(-mean_c |f(from_i) - f(from_i + offset_k)|) for a (C, H, W) numpy map, with the from pixels
    on rows 0..H-5, cols 4..W-5; also returns the flat indices of both ends."""
    h, w = feat.shape[1:]
    from_w = w - 8
    y, x = i // from_w, 4 + i % from_w
    dy, dx = spec_offsets()[k]
    total = 0.0
    for c in range(feat.shape[0]):
        total += abs(feat[c, y, x] - feat[c, y + dy, x + dx])
    return np.exp(-total / feat.shape[0]), y * w + x, (y + dy) * w + (x + dx)


# ---------------------------------------------------------------------------------------------------------
# Reference keys, shapes, parameter counts, loading.

@pytest.mark.parametrize('name', sorted(NETS))
def test_state_dict_keys_and_shapes_equal_the_reference(name, reference_shapes):
    sd = meta_net(name).state_dict()
    ours = [(k, list(v.shape)) for k, v in without_bn_counters(sd).items()]
    assert ours == list(reference_shapes[name].items())
    assert all(k.endswith('num_batches_tracked') for k in set(sd) - set(reference_shapes[name]))


@pytest.mark.parametrize('name', sorted(NETS))
def test_parameter_count_as_spec(name):
    assert sum(p.numel() for p in meta_net(name).parameters()) == PARAM_COUNTS[name]


@pytest.mark.parametrize('name', sorted(NETS))
def test_reference_format_state_dict_loads_strictly(name, reference_shapes):
    # Reference files: plain dict, fixture shapes, no num_batches_tracked.
    pool = torch.randn(19_000_000, generator=torch.Generator().manual_seed(0))
    state = {}
    for i, (key, shape) in enumerate(reference_shapes[name].items()):
        n = int(np.prod(shape))
        start = (i * 7919) % (pool.numel() - n + 1)
        state[key] = pool[start:start + n].view(shape)
    net = meta_net(name).to_empty(device='cpu')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = net.state_dict()
    for key in state:
        assert torch.equal(loaded[key], state[key]), key


def test_state_dict_with_metadata_but_no_bn_counters_loads_strictly():
    # A modern state dict (BatchNorm version 2 in _metadata) whose counters were dropped.
    src = randomize(resnet38_cls.Net(width=SMALL))
    sd = src.state_dict()
    for key in [k for k in sd if k.endswith('num_batches_tracked')]:
        del sd[key]
    assert sd._metadata['b2.bn_branch2a']['version'] == 2
    dst = resnet38_cls.Net(width=SMALL).double()
    result = dst.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(dst.b4_2.bn_branch2b1.running_var, src.b4_2.bn_branch2b1.running_var)


def test_full_size_forward_shapes():
    net = meta_net('network.resnet38_cls').to_empty(device='cpu').eval()
    with torch.no_grad():
        for t in net.state_dict().values():
            t.fill_(0.01)
    with torch.no_grad():
        taps = net.forward_as_dict(torch.randn(1, 3, 24, 24), extra_taps=True)
        cam = F.relu(F.conv2d(taps['conv6'], net.fc8.weight))
    assert {k: tuple(v.shape[1:]) for k, v in taps.items()} == {
        'b2_in': (64, 24, 24), 'b3_in': (128, 12, 12), 'b4_in': (256, 6, 6), 'conv4': (512, 3, 3),
        'conv5': (1024, 3, 3), 'b7_in': (2048, 3, 3), 'conv6': (4096, 3, 3)}
    assert net.feature_channels == {k: v.shape[1] for k, v in taps.items()}
    assert cam.shape == (1, 20, 3, 3)


# ---------------------------------------------------------------------------------------------------------
# Outputs against the functional re-implementation (small width, float64).

def test_resnet38_backbone_and_cls_head_match_functional():
    net = randomize(resnet38_cls.Net(width=SMALL))
    sd = net.state_dict()
    x = image(2, 32, 40)
    ref = functional_resnet38(x, sd)
    with torch.no_grad():
        taps = net.forward_as_dict(x, extra_taps=True)
        logits, cam = net(x), net.forward_cam(x)
    assert set(net.forward_as_dict(x)) == {'conv4', 'conv5', 'conv6'}
    for ours, theirs in [('b2_in', 'b2'), ('b3_in', 'b3'), ('b4_in', 'b4'), ('conv4', 'b5'), ('conv5', 'b6'),
                         ('b7_in', 'b7'), ('conv6', 'conv6')]:
        torch.testing.assert_close(taps[ours], ref[theirs], rtol=1e-10, atol=1e-10)
    fc8 = sd['fc8.weight'][:, :, 0, 0]
    conv6 = ref['conv6']
    torch.testing.assert_close(logits, conv6.mean(dim=(2, 3)) @ fc8.T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cam, torch.einsum('nchw,kc->nkhw', conv6, fc8).clamp(min=0), rtol=1e-10, atol=1e-10)
    assert logits.shape == (2, 20) and cam.shape == (2, 20, 4, 5)


def test_resnet38_seg_matches_functional():
    net = randomize(resnet38_seg.SegNet(width=SMALL))
    sd = net.state_dict()
    x = image(1, 40, 32)
    conv6 = functional_resnet38(x, sd)['conv6']
    expected = conv(F.relu(conv(conv6, sd, 'fc8_seg_conv1', dilation=12)), sd, 'fc8_seg_conv2', dilation=12)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (1, 21, 5, 4)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def check_affinity_output(net, x, expected_feat):
    with torch.no_grad():
        feat = net.forward_features(x)
        aff = net(x)
        dense = net(x[:1], to_dense=True)
    torch.testing.assert_close(feat, expected_feat, rtol=1e-10, atol=1e-10)
    n, _, h, w = feat.shape
    feat = feat.numpy()
    n_from = (h - 4) * (w - 8)
    assert aff.shape == (n, 34, n_from)
    for b, k, i in [(0, 0, 0), (0, 33, n_from - 1), (1, 10, 7), (1, 4, n_from // 2), (0, 20, 3)]:
        value, _, _ = loop_affinity(feat[b], k, i)
        assert aff[b, k, i].item() == pytest.approx(value, rel=1e-12)
    assert dense.shape == (h * w, h * w)
    torch.testing.assert_close(dense, dense.T, rtol=0, atol=0)
    assert torch.all(dense.diagonal() == 1)
    for k in range(34):
        for i in range(0, n_from, 9):
            value, src, dst = loop_affinity(feat[0], k, i)
            assert dense[src, dst].item() == pytest.approx(value, rel=1e-12)
    assert int((dense != 0).sum()) == h * w + 2 * 34 * n_from


def test_resnet38_aff_matches_functional():
    net = randomize(resnet38_aff.Net(width=SMALL))
    sd = net.state_dict()
    x = image(2, 72, 80)
    taps = functional_resnet38(x, sd)
    f = torch.cat([F.elu(conv(taps['b5'], sd, 'f8_3')), F.elu(conv(taps['b6'], sd, 'f8_4')),
                   F.elu(conv(taps['conv6'], sd, 'f8_5'))], dim=1)
    check_affinity_output(net, x, F.elu(conv(f, sd, 'f9')))


def test_vgg16_cls_matches_functional():
    net = randomize(vgg16_cls.Net(width=SMALL))
    sd = net.state_dict()
    x = image(2, 32, 40)
    fc7 = functional_vgg16(x, sd, fc6_dilation=1)['fc7']
    with torch.no_grad():
        logits, cam, taps = net(x), net.forward_cam(x), net.forward_as_dict(x)
    torch.testing.assert_close(taps['conv5fc'], fc7, rtol=1e-10, atol=1e-10)
    fc8 = sd['fc8.weight'][:, :, 0, 0]
    torch.testing.assert_close(logits, fc7.mean(dim=(2, 3)) @ fc8.T, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cam, torch.einsum('nchw,kc->nkhw', fc7, fc8).clamp(min=0).sqrt(),
                               rtol=1e-10, atol=1e-10)
    assert logits.shape == (2, 20) and cam.shape == (2, 20, 4, 5)


def test_vgg16_aff_matches_functional():
    net = randomize(vgg16_aff.Net(width=SMALL))
    sd = net.state_dict()
    x = image(2, 72, 80)
    taps = functional_vgg16(x, sd, fc6_dilation=4)

    def branch(t, f, gn, groups):
        return F.elu(F.group_norm(conv(t, sd, f), groups, sd[gn + '.weight'], sd[gn + '.bias'], eps=1e-5))
    f = torch.cat([branch(taps[4], 'f8_3', 'gn8_3', 8), branch(taps[5], 'f8_4', 'gn8_4', 16),
                   branch(taps['fc7'], 'f8_5', 'gn8_5', 32)], dim=1)
    check_affinity_output(net, x, F.elu(conv(f, sd, 'f9')))


def test_feature_map_without_full_neighbourhood_has_no_pairs():
    feat = torch.rand(1, 4, 4, 20)  # fewer than 5 rows: no "from" pixel
    aff = affinity.pairwise_affinity(feat)
    assert aff.shape == (1, 34, 0)
    torch.testing.assert_close(affinity.dense_affinity(aff, (4, 20)), torch.eye(80))
    assert affinity.pairwise_affinity(torch.rand(1, 4, 9, 8)).shape == (1, 34, 0)
    assert affinity.pairwise_affinity(torch.rand(1, 4, 5, 9)).shape == (1, 34, 1)


def test_to_dense_refuses_a_batch():
    with pytest.raises(ValueError, match='batch of one'):
        affinity.affinity_output(torch.rand(2, 4, 8, 12), to_dense=True)


def test_normalize():
    img = np.array([[[0, 128, 255], [10, 20, 30]]], dtype=np.uint8)
    out = resnet38d.Normalize()(img)
    assert out.dtype == np.float32 and out.shape == (1, 2, 3)
    assert out[0, 0, 1] == pytest.approx((128 / 255 - 0.456) / 0.224, rel=1e-6)
    assert out[0, 1, 2] == pytest.approx((30 / 255 - 0.406) / 0.225, rel=1e-6)
    bgr = vgg16d.Normalize()(img)
    assert bgr.dtype == np.float32
    np.testing.assert_allclose(bgr[0, 0], [255 - 104.008, 128 - 116.669, 0 - 122.675], rtol=1e-6)
    np.testing.assert_allclose(bgr[0, 1], [30 - 104.008, 20 - 116.669, 10 - 122.675], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Freezing and parameter groups.

NOT_TRAINING = {'network.resnet38_cls': ['conv1a', 'b2', 'b2_1', 'b2_2'],
                'network.resnet38_aff': ['conv1a', 'b2', 'b2_1', 'b2_2'],
                'network.resnet38_seg': [],
                'network.vgg16_cls': ['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2'],
                'network.vgg16_aff': ['conv1_1', 'conv1_2', 'conv2_1', 'conv2_2']}
FROM_SCRATCH = {'network.resnet38_cls': ['fc8'], 'network.resnet38_aff': ['f8_3', 'f8_4', 'f8_5', 'f9'],
                'network.resnet38_seg': ['fc8_seg_conv1', 'fc8_seg_conv2'], 'network.vgg16_cls': ['fc8'],
                'network.vgg16_aff': ['f8_3', 'f8_4', 'f8_5', 'f9']}


@pytest.mark.parametrize('name', sorted(NETS))
def test_train_freezes_bn_and_not_training_layers(name):
    net = NETS[name](width=SMALL)
    net.eval()
    net.train()
    assert net.training
    frozen_prefixes = tuple(p + '.' for p in NOT_TRAINING[name])
    for module_name, m in net.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert not m.training, module_name
        if isinstance(m, nn.Dropout2d):
            assert m.training, module_name
    for key, p in net.named_parameters():
        bn_param = isinstance(net.get_submodule(key.rsplit('.', 1)[0]), nn.BatchNorm2d)
        assert p.requires_grad == (not bn_param and not key.startswith(frozen_prefixes)), key
    if name == 'network.resnet38_seg':
        assert net.conv1a.weight.requires_grad and net.b2.conv_branch1.weight.requires_grad


@pytest.mark.parametrize('name', sorted(NETS))
def test_parameter_groups_partition_the_trainable_parameters(name):
    net = NETS[name](width=SMALL)
    groups = net.get_parameter_groups()
    assert len(groups) == 4
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in net.parameters() if p.requires_grad}
    scratch = [getattr(net, n) for n in FROM_SCRATCH[name]]
    assert {id(p) for p in groups[2]} == {id(m.weight) for m in scratch}
    assert {id(p) for p in groups[3]} == {id(m.bias) for m in scratch if m.bias is not None}
    assert all(p.dim() == 1 for p in groups[1] + groups[3])


def test_optimizer_step_changes_neither_bn_statistics_nor_frozen_layers():
    net = resnet38_cls.Net(width=SMALL)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD([{'params': g} for g in net.get_parameter_groups()], lr=0.1)
    loss = F.multilabel_soft_margin_loss(net(torch.randn(2, 3, 32, 32)), torch.ones(2, 20))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    after = net.state_dict()
    bn_keys = [k for k in before if k.rsplit('.', 1)[-1] in ('running_mean', 'running_var', 'num_batches_tracked')
               or '.bn_' in k or k.startswith('bn7.')]
    assert len(bn_keys) > 0
    for key in bn_keys + [k for k in before if k.startswith(('conv1a.', 'b2.', 'b2_1.', 'b2_2.'))]:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before['fc8.weight'], after['fc8.weight'])
    assert not torch.equal(before['b3.conv_branch2a.weight'], after['b3.conv_branch2a.weight'])


# ---------------------------------------------------------------------------------------------------------
# ImageNet weight files.

@pytest.mark.parametrize('mxnet_name, torch_key', [
    ('arg:res2a_branch2a_weight', 'b2.conv_branch2a.weight'),
    ('arg:bn2a_branch2a_gamma', 'b2.bn_branch2a.weight'),
    ('arg:bn2a_branch2a_beta', 'b2.bn_branch2a.bias'),
    ('aux:bn4b5_branch2b1_moving_var', 'b4_5.bn_branch2b1.running_var'),
    ('aux:bn5b2_branch2a_moving_mean', 'b5_2.bn_branch2a.running_mean'),
    ('arg:res2b1_branch1_weight', 'b2_1.conv_branch1.weight'),
    ('arg:res7a_branch2b2_weight', 'b7.conv_branch2b2.weight'),
    ('arg:conv1a_weight', 'conv1a.weight'),
    ('arg:bn7_beta', 'bn7.bias'),
    ('aux:bn7_moving_var', 'bn7.running_var'),
    ('arg:linear1000_weight', None),
    ('arg:linear1000_bias', None),
])
def test_rename_mxnet_key(mxnet_name, torch_key):
    assert resnet38d.rename_mxnet_key(mxnet_name) == torch_key


@pytest.mark.parametrize('mxnet_name', ['arg:test_uint8_table', 'arg:bn7_foo', 'arg:res2a_weight'])
def test_rename_mxnet_key_rejects_unknown_names(mxnet_name):
    with pytest.raises(ValueError, match='unexpected mxnet parameter name'):
        resnet38d.rename_mxnet_key(mxnet_name)


def mxnet_name(key):
    """The inverse renaming, written independently: 'b4_5.bn_branch2b1.running_var' -> 'aux:bn4b5_...'."""
    if key == 'conv1a.weight':
        return 'arg:conv1a_weight'
    bn_names = {'weight': ('arg', 'gamma'), 'bias': ('arg', 'beta'),
                'running_mean': ('aux', 'moving_mean'), 'running_var': ('aux', 'moving_var')}
    if key.startswith('bn7.'):
        kind, suffix = bn_names[key[4:]]
        return f'{kind}:bn7_{suffix}'
    block, layer, param = key.split('.')
    stage, _, index = block[1:].partition('_')
    token = f'{stage}b{index}' if index else f'{stage}a'
    layer_type, branch = layer.split('_')
    if layer_type == 'conv':
        return f'arg:res{token}_{branch}_weight'
    kind, suffix = bn_names[param]
    return f'{kind}:bn{token}_{branch}_{suffix}'


def test_convert_mxnet_to_torch_loads_into_the_backbone(monkeypatch):
    source = randomize(resnet38d.Net(width=SMALL)).float()
    expected = without_bn_counters(source.state_dict())
    params = OrderedDict((mxnet_name(k), v.numpy()) for k, v in expected.items())
    params['arg:linear1000_weight'] = np.zeros((1000, 512), np.float32)
    monkeypatch.setattr(resnet38d, 'load_mxnet_params', lambda path: params)
    converted = resnet38d.convert_mxnet_to_torch('ilsvrc.params')
    assert set(converted) == set(expected)
    target = resnet38_cls.Net(width=SMALL)
    result = target.load_state_dict(converted, strict=False)
    assert result.missing_keys == ['fc8.weight'] and not result.unexpected_keys
    for key, value in expected.items():
        assert torch.equal(target.state_dict()[key], value), key


def test_convert_mxnet_to_torch_rejects_another_file():
    with pytest.raises(UserError, match='sample.params.*ilsvrc-cls_rna-a1_cls1000_ep-0001.params'):
        resnet38d.convert_mxnet_to_torch(f'{FIXTURES}/mxnet/sample.params')


def caffe_layers(seed=0):
    """DeepLab-style blobs: legacy 4-d (num, channels, h, w) weights and (1, 1, 1, n) biases, plus fc8."""
    rng = np.random.default_rng(seed)
    layers = OrderedDict()
    for name, shape in vgg16d.caffe_shapes().items():
        layers[name] = [rng.standard_normal(shape, dtype=np.float32),
                        rng.standard_normal((1, 1, 1, shape[0]), dtype=np.float32)]
    layers['fc8_voc12'] = [np.zeros((21, 1024, 1, 1), np.float32), np.zeros((1, 1, 1, 21), np.float32)]
    return layers


def test_convert_caffe_to_torch_loads_into_the_backbone(monkeypatch, reference_shapes):
    layers = caffe_layers()
    layers['fc7'][0] = layers['fc7'][0].reshape(1024, 1024)  # fc layers may come as 2-d blobs
    monkeypatch.setattr(vgg16d, 'load_caffemodel', lambda path: layers)
    converted = vgg16d.convert_caffe_to_torch('vgg16_20M.caffemodel')
    backbone = {k: v for k, v in reference_shapes['network.vgg16_cls'].items() if k != 'fc8.weight'}
    assert {k: list(v.shape) for k, v in converted.items()} == backbone
    np.testing.assert_array_equal(converted['conv3_2.weight'].numpy(), layers['conv3_2'][0])
    np.testing.assert_array_equal(converted['fc7.weight'].numpy()[:, :, 0, 0], layers['fc7'][0])
    np.testing.assert_array_equal(converted['fc6.bias'].numpy(), layers['fc6'][1].ravel())
    net = meta_net('network.vgg16_aff').to_empty(device='cpu')
    result = net.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys
    assert sorted(result.missing_keys) == sorted(k for k in reference_shapes['network.vgg16_aff'] if k.startswith(('f8', 'gn8', 'f9')))


def test_convert_caffe_to_torch_reports_a_missing_layer(monkeypatch):
    layers = caffe_layers()
    del layers['conv4_2']
    monkeypatch.setattr(vgg16d, 'load_caffemodel', lambda path: layers)
    with pytest.raises(UserError, match='other.caffemodel: layer conv4_2'):
        vgg16d.convert_caffe_to_torch('other.caffemodel')


def test_scratch_variant_keeps_activations_alive_and_freezes_only_bn():
    """The reference init at width 0.125 lets the features vanish; scratch=True keeps them at unit scale."""
    from network import resnet38_cls
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = resnet38_cls.Net(width=0.125).eval().forward(x)
        scratch_net = resnet38_cls.Net(width=0.125, scratch=True)
        scratch = scratch_net.eval().forward(x)
    assert reference.std() < 0.05 < 0.3 < scratch.std() < 30
    scratch_net.train()
    assert scratch_net.not_training == [] and scratch_net.conv1a.weight.requires_grad
    assert scratch_net.b2.conv_branch2a.weight.requires_grad
    assert all(not m.training and not m.weight.requires_grad
               for m in scratch_net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.count_nonzero(scratch_net.b4_1.conv_branch2b1.weight) == 0
    assert len(resnet38_cls.Net(width=0.125).not_training) == 4  # the reference still freezes conv1a, b2*


@pytest.mark.parametrize('size,dilation', [((16, 16), 12), ((13, 7), 12), ((5, 4), 12), ((9, 20), 4)])
def test_dilated_conv_in_image_taps_equal_the_dense_conv(size, dilation):
    """The seg head's conv on CPU sums only the taps that read the image (most read padding at these
    sizes); output and every gradient must equal F.conv2d's on the same weights."""
    torch.manual_seed(0)
    layer = network.DilatedConv2d(6, 5, 3, padding=dilation, dilation=dilation).double()
    x = torch.randn(2, 6, *size, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad_out)
    dense = F.conv2d(x, layer.weight, layer.bias, padding=dilation, dilation=dilation)
    dense_grads = torch.autograd.grad(dense, (x, layer.weight, layer.bias), grad_out)
    torch.testing.assert_close(out, dense, rtol=1e-12, atol=1e-12)
    for grad, dense_grad in zip(grads, dense_grads):
        torch.testing.assert_close(grad, dense_grad, rtol=1e-12, atol=1e-12)


def test_dilated_conv_takes_the_in_image_path_only_where_padding_dominates(monkeypatch):
    layer = network.DilatedConv2d(4, 3, 3, padding=12, dilation=12)
    calls = []
    monkeypatch.setattr(network.DilatedConv2d, '_in_image_forward', lambda self, *a: calls.append(a) or 0)
    layer(torch.zeros(1, 4, 16, 16))  # 1/4 of the tap products read the image
    assert len(calls) == 1
    layer(torch.zeros(1, 4, 56, 56))  # VOC crops: 3/4 do -> the dense conv
    assert len(calls) == 1
