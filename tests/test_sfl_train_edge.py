"""train_edge.py from the CLI on the sfl_coco fixture set (COCO layout): outputs, resume, bad input."""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip('pycocotools')
import train_edge  # noqa: E402
from tool.io import UserError  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'sfl_coco')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flags(out_root, epochs=1, *extra):
    return ['--cocoRoot', ROOT, '--categories', os.path.join(ROOT, 'categories'), '--crop_size', '48',
            '--batch_size', '2', '--edge_batch_size', '2', '--max_epoches', str(epochs), '--num_workers', '0',
            '--resnet101', '', '--out_root', str(out_root), '--session_name', 's', '--seed', '0',
            '--save_interval', '2', '--log_interval', '1', '--device', 'cpu', '--width', '0.25', *extra]


def test_one_epoch_from_cli_and_resume(tmp_path):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    run = subprocess.run([sys.executable, 'train_edge.py', *flags(tmp_path, 1, '--dice_on', 'sigmoid')], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ret = tmp_path / 's' / 'train_ret'
    names = set(os.listdir(ret))
    assert {'s_refer.pth', 's_edge.pth', 's_refer_000002.pth', 's.ckpt.pth', 'train_in_coco'} <= names
    assert 'Edge Iter:    1' in run.stdout and (tmp_path / 's' / 's.log').is_file()
    refer = torch.load(ret / 's_refer.pth', weights_only=True)
    assert refer['fc8.weight'].shape[0] == 3  # person + car + dog, no background channel
    ckpt = torch.load(ret / 's.ckpt.pth', weights_only=True)
    assert ckpt['epoch'] == 1 and ckpt['optimizer']['poly']['global_step'] == 2 and ckpt['edge_iter'] >= 1
    train_edge.main(flags(tmp_path, 2, '--dice_on', 'sigmoid', '--resume', str(ret / 's.ckpt.pth')))
    ckpt2 = torch.load(ret / 's.ckpt.pth', weights_only=True)
    assert ckpt2['epoch'] == 2 and ckpt2['optimizer']['poly']['global_step'] == 4
    assert ckpt2['edge_iter'] > ckpt['edge_iter']


def test_missing_resnet101_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match='resnet101'):
        train_edge.main(flags(tmp_path) + ['--resnet101', str(tmp_path / 'none.pth')])
