"""train_aff.py: README flags, the spec's loss, exact micro-batch shares, training on synthetic data."""
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_aff
from network import resnet38_aff
from tool import train_loop
from tool.cli import run_main
from tool.io import atomic_save_npy, load_label_png
from voc12.synthetic import make_voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_CMD = ('python3 train_aff.py --lr 0.1 --batch_size 8 --max_epoches 8 --crop_size 448 --voc12_root VOC2012 '
              '--network network.resnet38_aff --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params --wt_dec 5e-4 '
              '--la_crf_dir crf_la --ha_crf_dir crf_ha')


def test_readme_command_parses_with_reference_defaults():
    args = train_aff.build_parser().parse_args(shlex.split(README_CMD)[2:])
    assert (args.lr, args.batch_size, args.max_epoches, args.crop_size, args.wt_dec) == (0.1, 8, 8, 448, 5e-4)
    assert (args.network, args.voc12_root, args.la_crf_dir, args.ha_crf_dir) == \
        ('network.resnet38_aff', 'VOC2012', 'crf_la', 'crf_ha')
    defaults = train_aff.build_parser().parse_args(['--weights', 'w', '--voc12_root', 'v', '--la_crf_dir', 'a',
                                                    '--ha_crf_dir', 'b'])
    assert (defaults.network, defaults.session_name, defaults.train_list, defaults.num_workers) == \
        ('network.vgg16_aff', 'vgg_aff', 'voc12/train_aug.txt', 8)
    assert (defaults.batch_size, defaults.max_epoches, defaults.lr, defaults.crop_size) == (8, 8, 0.1, 448)
    assert (defaults.micro_batch, defaults.amp, defaults.log_interval, defaults.width) == (0, 'none', 50, 1.0)


def hand_made_batch(n=3, offsets=34, n_from=20, seed=0):
    rng = np.random.default_rng(seed)
    aff = rng.uniform(0.01, 0.99, (n, offsets, n_from))
    kind = rng.integers(0, 4, (n, offsets, n_from))  # 0 bg pair, 1 fg pair, 2 neg pair, 3 ignored
    labels = [(kind == k).astype(np.float32) for k in range(3)]
    return aff, labels


def spec_loss(aff, labels):
    """psa.md: bg/4 + fg/4 + neg/2, each a sum normalised by its pair count + 1e-5 (float64 numpy)."""
    bg, fg, neg = labels
    bg_loss = np.sum(-bg * np.log(aff + 1e-5)) / (bg.sum() + 1e-5)
    fg_loss = np.sum(-fg * np.log(aff + 1e-5)) / (fg.sum() + 1e-5)
    neg_loss = np.sum(-neg * np.log(1 + 1e-5 - aff)) / (neg.sum() + 1e-5)
    return bg_loss / 4 + fg_loss / 4 + neg_loss / 2, bg_loss, fg_loss, neg_loss


class FixedAff(torch.nn.Module):
    """A 'network' whose output for image i (a one-element tensor holding i) is a fixed affinity table."""

    def __init__(self, aff):
        super().__init__()
        self.aff = torch.nn.Parameter(torch.as_tensor(aff, dtype=torch.float64))

    def forward(self, idx):
        return self.aff[idx.long().view(-1)]


def test_loss_equals_spec_formula_and_micro_shares_add_up():
    aff, labels = hand_made_batch()
    expected = spec_loss(aff, labels)
    batch = [torch.arange(3.), [torch.from_numpy(lab) for lab in labels]]
    model = FixedAff(aff)
    loss, logs = train_aff.batch_loss(model, batch, batch)
    np.testing.assert_allclose(loss.item(), expected[0], rtol=1e-6)
    np.testing.assert_allclose([logs['bg_loss'], logs['fg_loss'], logs['neg_loss']], expected[1:], rtol=1e-6)
    assert logs['bg_cnt'] == labels[0].sum()

    shares = [train_aff.batch_loss(model, micro, batch) for micro in train_loop.split_batch(batch, 1)]
    np.testing.assert_allclose(sum(s[0].item() for s in shares), expected[0], rtol=1e-6)
    for key, value in zip(('loss', 'bg_loss', 'fg_loss', 'neg_loss'), expected):
        np.testing.assert_allclose(sum(s[1][key] for s in shares), value, rtol=1e-6)
    # one image's share alone is not the loss of that image on its own: counts are the whole batch's
    alone = spec_loss(aff[:1], [lab[:1] for lab in labels])[0]
    assert abs(shares[0][0].item() - alone) > 1e-3


def accumulated_grads(init, batch, batch_loss, micro):
    model = resnet38_aff.Net(width=0.125)
    model.load_state_dict(init)
    model.train()
    for m in model.modules():  # dropout off: the only randomness of a step
        if isinstance(m, torch.nn.Dropout2d):
            m.eval()
    train_loop.accumulate_gradients(model, batch, batch_loss, micro, torch.device('cpu'))
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def max_rel_diff(a, b):
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max()) for n in b)


def test_micro_batches_give_the_same_gradients():
    torch.manual_seed(0)
    init = resnet38_aff.Net(width=0.125).state_dict()
    g = torch.Generator().manual_seed(1)
    kind = torch.randint(0, 4, (4, 34, 8 * 4), generator=g)  # crop 96: a 12x12 grid, 8x4 "from" pixels
    batch = [torch.randn(4, 3, 96, 96, generator=g), [(kind == k).float() for k in range(3)]]
    whole = accumulated_grads(init, batch, train_aff.batch_loss, 0)
    split = accumulated_grads(init, batch, train_aff.batch_loss, 1)
    assert whole.keys() == split.keys() and {'f9.weight', 'b3.conv_branch2a.weight'} <= whole.keys()
    assert max_rel_diff(split, whole) < 1e-3  # float32 summation order only
    # normalising each micro-batch by its own pair counts would not be exact
    per_micro = accumulated_grads(init, batch, lambda model, micro, _: train_aff.batch_loss(model, micro, micro), 1)
    assert max_rel_diff(per_micro, whole) > 1e-2


def write_crf_dicts(root, out):
    """la and ha CRF dicts {0: bg, k+1: class k} in infer_cls's format: one-hot scores of the synthetic masks."""
    labels = np.load(os.path.join(root, 'cls_labels.npy'), allow_pickle=True).item()
    for name, label in labels.items():
        mask = load_label_png(os.path.join(root, 'SegmentationClassAug', name + '.png'))
        present = np.flatnonzero(label)
        for kind in ('la', 'ha'):
            scores = {0: (mask == 0).astype(np.float32)}
            scores.update({k + 1: (mask == k + 1).astype(np.float32) for k in present})
            atomic_save_npy(os.path.join(out, kind, name + '.npy'), scores)


def test_training_from_the_command_line_reduces_the_loss(tmp_path):
    root = make_voc(str(tmp_path / 'voc'), n_train=8, n_val=1, size=((88, 112), (72, 96)), classes=3, seed=1)
    write_crf_dicts(root, str(tmp_path))
    torch.manual_seed(0)
    torch.save(resnet38_aff.Net(width=0.125).state_dict(), tmp_path / 'init.pth')
    session = tmp_path / 'sess' / 'aff'
    cmd = [sys.executable, os.path.join(REPO, 'train_aff.py'), '--lr', '0.1', '--batch_size', '4',
           '--max_epoches', '5', '--crop_size', '96', '--voc12_root', root, '--network', 'network.resnet38_aff',
           '--weights', str(tmp_path / 'init.pth'), '--wt_dec', '5e-4', '--la_crf_dir', str(tmp_path / 'la'),
           '--ha_crf_dir', str(tmp_path / 'ha'), '--train_list', os.path.join(root, 'lists', 'train_aug.txt'),
           '--width', '0.125', '--num_workers', '0', '--log_interval', '1', '--session_name', str(session),
           '--seed', '0']
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    with open(str(session) + '.log') as f:
        log = f.read()
    losses = [float(v) for v in re.findall(r'Iter:\s*\d+/\s*10 loss:([\d.]+)', log)]
    assert len(losses) == 10
    for key in ('bg_loss', 'fg_loss', 'neg_loss', 'bg_cnt', 'fg_cnt', 'neg_cnt', 'imps', 'lr'):
        assert key + ':' in log
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    state = torch.load(str(session) + '.pth', weights_only=True)
    assert state.keys() == resnet38_aff.Net(width=0.125).state_dict().keys()
    assert os.path.exists(str(session) + '.ckpt.pth')


def test_missing_crf_folder_is_a_one_line_error(tmp_path):
    cmd = [sys.executable, os.path.join(REPO, 'train_aff.py'), '--weights', 'w.pth', '--voc12_root', 'VOC2012',
           '--la_crf_dir', 'nowhere_la', '--ha_crf_dir', 'nowhere_ha']
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert 'nowhere_la' in run.stderr


def test_too_small_crop_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_aff.main, ['--voc12_root', str(tmp_path), '--la_crf_dir', str(tmp_path),
                                  '--ha_crf_dir', str(tmp_path), '--crop_size', '64'])
    assert exit_info.value.code == 2
    assert 'error: --crop_size 64 is too small' in capsys.readouterr().err
