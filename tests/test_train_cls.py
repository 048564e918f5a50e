"""train_cls.py: README command, augmentation shapes, loss shares, and a command-line run that learns."""
import glob
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import network.resnet38_cls
from network.resnet38d import Normalize
import train_cls
from voc12.synthetic import make_voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = ('python3 train_cls.py --lr 0.1 --batch_size 16 --max_epoches 15 --crop_size 448 '
          '--network network.resnet38_cls --voc12_root VOC2012 --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params '
          '--wt_dec 5e-4')


def test_readme_command_parses_with_reference_defaults():
    args = train_cls.build_parser().parse_args(shlex.split(README)[2:])
    assert (args.lr, args.batch_size, args.max_epoches, args.crop_size, args.wt_dec) == (0.1, 16, 15, 448, 5e-4)
    assert (args.network, args.voc12_root) == ('network.resnet38_cls', 'VOC2012')
    assert args.weights == 'ilsvrc-cls_rna-a1_cls1000_ep-0001.params'
    defaults = train_cls.build_parser().parse_args(['--voc12_root', 'V'])
    assert (defaults.batch_size, defaults.max_epoches, defaults.network, defaults.lr, defaults.num_workers,
            defaults.wt_dec, defaults.train_list, defaults.val_list, defaults.session_name, defaults.crop_size) == \
        (16, 15, 'network.vgg16_cls', 0.1, 8, 5e-4, 'voc12/train_aug.txt', 'voc12/val.txt', 'vgg_cls', 448)
    assert (defaults.width, defaults.val_crop, defaults.weights) == (1.0, 500, None)
    assert tuple(defaults.resize_long) == (256, 512) and tuple(defaults.color_jitter) == (0.3, 0.3, 0.3, 0.1)


def test_transforms_give_crops_of_normalised_images():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    norm = Normalize()
    x = train_cls.TrainTransform(norm, 600)(img)  # long side resized to 256..512: the crop pads
    assert x.dtype == torch.float32 and x.shape == (3, 600, 600)
    assert (x == 0).all(dim=0).float().mean() >= 1 - 512 * 384 / 600 ** 2
    x = train_cls.TrainTransform(norm, 100, resize_long=(80, 80))(img)  # 40x30 -> exactly 80x60
    assert (x != 0).any(dim=0).sum() == 80 * 60
    y = train_cls.ValTransform(norm, 20)(img)
    np.testing.assert_allclose(y.numpy(), norm(np.asarray(img))[5:25, 10:30].transpose(2, 0, 1))


def test_micro_batch_loss_shares_add_up_to_the_batch_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 20))
    img, label = torch.randn(5, 3, 2, 2), (torch.rand(5, 20) > 0.7).float()
    batch = [list('abcde'), img, label]
    shares = [train_cls.batch_loss(model, [batch[0][s], img[s], label[s]], batch)[0] for s in (slice(0, 2), slice(2, 5))]
    torch.testing.assert_close(sum(shares), F.multilabel_soft_margin_loss(model(img), label))


def start_weights(path):
    """Kaiming-initialised width-0.125 net with a small fc8: the faithful (PyTorch default) init of a
    from-scratch ResNet-38 has vanishing features, which would learn too slowly for a test."""
    torch.manual_seed(0)
    net = network.resnet38_cls.Net(width=0.125)
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and m is not net.fc8:
            nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
    net.fc8.weight.data *= 0.003
    torch.save(net.state_dict(), path)


def run_train(tmp_path, voc, *extra):
    args = ['--network', 'network.resnet38_cls', '--width', '0.125', '--voc12_root', voc,
            '--train_list', os.path.join(voc, 'lists', 'train_aug.txt'),
            '--val_list', os.path.join(voc, 'lists', 'val.txt'), '--cls_labels', os.path.join(voc, 'cls_labels.npy'),
            '--weights', str(tmp_path / 'start.pth'), '--crop_size', '32', '--val_crop', '32', '--batch_size', '4',
            '--lr', '1e-4', '--num_workers', '0', '--log_interval', '1', '--seed', '0', '--device', 'cpu',
            '--session_name', str(tmp_path / 'sess' / 'cls'), *extra]
    proc = subprocess.run([sys.executable, 'train_cls.py', *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_command_line_training_lowers_the_loss_and_resumes(tmp_path):
    voc = make_voc(str(tmp_path / 'voc'), n_train=8, n_val=2, size=(64, 48), classes=4, seed=0)
    start_weights(tmp_path / 'start.pth')
    run_train(tmp_path, voc, '--max_epoches', '2')
    sess = tmp_path / 'sess'
    log = (sess / 'cls.log').read_text()
    losses = [float(v) for v in re.findall(r'^Iter:\s*\d+/\s*4 loss:([0-9.]+)', log, re.M)]
    assert len(losses) == 4
    assert losses[-1] < 0.75 * losses[0]
    assert len(re.findall(r'^epoch \d validation: loss:[0-9.]+', log, re.M)) == 2
    assert glob.glob(str(sess / 'cls_tb' / 'events.out.tfevents.*'))
    state = torch.load(sess / 'cls.pth', weights_only=True)
    network.resnet38_cls.Net(width=0.125).load_state_dict(state)

    run_train(tmp_path, voc, '--max_epoches', '3', '--resume', str(sess / 'cls.ckpt.pth'))
    log = (sess / 'cls.log').read_text()
    assert 'resumed from' in log and 'after epoch 2' in log
    assert re.search(r'^Iter:\s*6/\s*6 loss:', log, re.M)  # epoch 3 continues the step count
    resumed = torch.load(sess / 'cls.pth', weights_only=True)
    assert not torch.equal(resumed['fc8.weight'], state['fc8.weight'])


def test_seed_repeats_a_run_from_scratch(tmp_path):
    """--seed also fixes the random initialisation (--scratch, fc8), not only the batches."""
    voc = make_voc(str(tmp_path / 'voc'), n_train=4, n_val=1, size=(40, 40), classes=3, seed=0)
    states = []
    for run in ('a', 'b'):
        train_cls.main(['--network', 'network.resnet38_cls', '--width', '0.125', '--scratch', '--voc12_root', voc,
                        '--train_list', os.path.join(voc, 'lists', 'train_aug.txt'), '--val_list=',
                        '--cls_labels', os.path.join(voc, 'cls_labels.npy'), '--crop_size', '32',
                        '--batch_size', '2', '--max_epoches', '1', '--num_workers', '0', '--seed', '0',
                        '--device', 'cpu', '--session_name', str(tmp_path / run / 'cls')])
        states.append(torch.load(tmp_path / run / 'cls.pth', weights_only=True))
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())
