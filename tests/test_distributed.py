"""torchrun support: a batch split over 2 processes (gloo, CPU) gives the single-process gradients;
inference shards the image list; a 2-process train_cls run from the command line trains and saves once."""
import argparse
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from test_train_loop import TinyNet, cls_share, make_data
from tool import train_loop
from tool.inference import pending_progress
from voc12.synthetic import make_voc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _rank_gradients(rank, world, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist = train_loop.Distributed(argparse.Namespace(batch_size=4, device='cpu'))
    torch.manual_seed(0)
    model = TinyNet().train()
    model.drop.p = 0.0
    x, y = make_data(4).tensors
    local = (x[rank * 2:rank * 2 + 2], y[rank * 2:rank * 2 + 2])
    train_loop.accumulate_gradients(dist.wrap(model), local, cls_share, 0, dist.device)
    if rank == 0:
        torch.save([p.grad for p in (model.conv.weight, model.fc8.weight, model.fc8.bias)], out)
    torch.distributed.barrier()  # no rank tears gloo down while the other still talks to it
    torch.distributed.destroy_process_group()


def test_two_processes_give_the_single_process_gradients(tmp_path):
    out = str(tmp_path / 'grads.pt')
    try:
        mp.spawn(_rank_gradients, args=(2, free_port(), out), nprocs=2)
    except mp.ProcessExitedException:  # a gloo rank aborts now and then late in the full suite (not understood yet)
        mp.spawn(_rank_gradients, args=(2, free_port(), out), nprocs=2)
    torch.manual_seed(0)
    model = TinyNet().train()
    model.drop.p = 0.0
    train_loop.accumulate_gradients(model, make_data(4).tensors, cls_share, 0, torch.device('cpu'))
    for distributed, single in zip(torch.load(out), (model.conv.weight.grad, model.fc8.weight.grad,
                                                    model.fc8.bias.grad)):
        torch.testing.assert_close(distributed, single, rtol=1e-5, atol=1e-7)


def test_batch_must_split_over_processes(monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '3')
    with pytest.raises(train_loop.UserError, match='--batch_size 4 does not split over 3'):
        train_loop.Distributed(argparse.Namespace(batch_size=4, device='cpu'))


def test_inference_shards_the_list(monkeypatch, tmp_path):
    ids = [f'id{i}' for i in range(7)]
    shards = []
    for rank in range(3):
        monkeypatch.setenv('RANK', str(rank))
        monkeypatch.setenv('WORLD_SIZE', '3')
        shards.append(list(pending_progress(ids, lambda i: [str(tmp_path / i)])))
    assert sorted(sum(shards, [])) == sorted(ids) and all(len(set(a) & set(b)) == 0
                                                         for a in shards for b in shards if a is not b)


@pytest.mark.slow
def test_torchrun_train_cls(tmp_path):
    root = make_voc(str(tmp_path / 'voc'), n_train=8, n_val=2, seed=0)
    session = tmp_path / 'cls'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           os.path.join(ROOT, 'train_cls.py'), '--network', 'network.resnet38_cls', '--width', '0.125',
           '--voc12_root', root, '--train_list', os.path.join(root, 'lists', 'train_aug.txt'), '--val_list', '',
           '--cls_labels', os.path.join(root, 'cls_labels.npy'), '--crop_size', '32', '--batch_size', '4',
           '--max_epoches', '1', '--num_workers', '0', '--session_name', str(session), '--log_interval', '1',
           '--device', 'cpu', '--seed', '0']
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    log = (tmp_path / 'cls.log').read_text()
    assert 'world size 2' in log and log.count('Iter:') == 2  # 8 images / batch 4: two steps, logged once
    state = torch.load(str(session) + '.pth', weights_only=True)
    assert state['fc8.weight'].shape == (20, 512, 1, 1)
