"""The shared training loop: poly schedule and momentum quirk, exact micro-batching, bit-exact resume."""
import argparse

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from tool import train_loop
from tool.torchutils import PolyOptimizer, parameter_groups


class TinyNet(nn.Module):
    """Conv + frozen BN + dropout head, with the reference's parameter-group interface."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(8, 4, 1, bias=True)

    def train(self, mode=True):
        super().train(mode)
        self.bn.eval()
        self.bn.weight.requires_grad = self.bn.bias.requires_grad = False
        return self

    def forward(self, x):
        x = self.drop(F.relu(self.bn(self.conv(x))))
        return self.fc8(x).mean(dim=(2, 3))

    def get_parameter_groups(self):
        return [self.conv.weight], [], [self.fc8.weight], [self.fc8.bias]


def cls_share(model, micro, batch):
    x, y = micro
    loss = F.multilabel_soft_margin_loss(model(x), y) * x.shape[0] / batch[0].shape[0]
    return loss, {'loss': loss.item()}


def make_data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), (torch.rand(n, 4, generator=g) > 0.5).float())


def test_poly_lr_and_momentum_quirk():
    p = nn.Parameter(torch.ones(3))
    opt = PolyOptimizer([{'params': [p], 'lr': 0.1, 'weight_decay': 5e-4}], lr=0.1, weight_decay=5e-4, max_step=10)
    assert opt.param_groups[0]['momentum'] == 5e-4  # the reference's positional-argument quirk
    lrs = []
    for _ in range(3):
        p.grad = torch.ones(3)
        opt.step()
        lrs.append(opt.param_groups[0]['lr'])
    assert lrs == pytest.approx([0.1 * (1 - t / 10) ** 0.9 for t in range(3)])
    real = PolyOptimizer([p], lr=0.1, weight_decay=5e-4, max_step=10, sgd_momentum=0.9)
    assert real.param_groups[0]['momentum'] == 0.9


def test_parameter_groups_multipliers():
    groups = parameter_groups(TinyNet(), lr=0.01, weight_decay=5e-4)
    assert [(g['lr'], g['weight_decay']) for g in groups] == [(0.01, 5e-4), (0.02, 0), (0.1, 5e-4), (0.2, 0)]


def test_micro_batches_give_the_same_gradients():
    data = make_data(4)
    batch = (data.tensors[0], data.tensors[1])
    grads = []
    for micro in (0, 1):
        torch.manual_seed(0)
        model = TinyNet().train()
        model.drop.p = 0.0
        train_loop.accumulate_gradients(model, batch, cls_share, micro, torch.device('cpu'))
        grads.append([p.grad.clone() for p in (model.conv.weight, model.fc8.weight, model.fc8.bias)])
    for whole, split in zip(*grads):
        torch.testing.assert_close(whole, split, rtol=1e-5, atol=1e-7)
    assert grads[0][0].abs().sum() > 0


def test_split_batch_nested():
    batch = (['a', 'b', 'c'], torch.arange(3), (torch.zeros(3, 2), torch.ones(3)))
    parts = train_loop.split_batch(batch, 2)
    assert [p[0] for p in parts] == [['a', 'b'], ['c']]
    assert parts[1][2][0].shape == (1, 2)


def args_for(tmp_path, **kw):
    parser = argparse.ArgumentParser()
    train_loop.add_training_args(parser)
    args = parser.parse_args([])
    args.__dict__.update(batch_size=2, max_epoches=3, lr=0.1, wt_dec=5e-4, num_workers=0,
                         session_name=str(tmp_path / 'sess'), seed=3, log_interval=1, **kw)
    return args


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    torch.manual_seed(0)
    init = TinyNet().state_dict()
    straight = TinyNet()
    straight.load_state_dict(init)
    train_loop.fit(args_for(tmp_path / 'a'), straight, make_data(), cls_share)

    calls = {'n': 0}
    real_save = train_loop.save_checkpoint

    def save_then_stop(*a, **kw):
        real_save(*a, **kw)
        calls['n'] += 1
        if calls['n'] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_loop, 'save_checkpoint', save_then_stop)
    (tmp_path / 'b').mkdir()
    interrupted = TinyNet()
    interrupted.load_state_dict(init)
    with pytest.raises(KeyboardInterrupt):
        train_loop.fit(args_for(tmp_path / 'b'), interrupted, make_data(), cls_share)
    resumed = TinyNet()
    resumed.load_state_dict(init)
    train_loop.fit(args_for(tmp_path / 'b', resume=str(tmp_path / 'b' / 'sess.ckpt.pth')), resumed,
                   make_data(), cls_share)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert not torch.equal(straight.fc8.weight, init['fc8.weight'])
    log = (tmp_path / 'a' / 'sess.log').read_text()
    assert 'Iter:' in log and 'imps:' in log
