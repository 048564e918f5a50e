"""kill -9 and rerun: an inference stage killed midway and rerun writes the outputs of an uninterrupted run,
byte for byte; a seeded training killed after an epoch checkpoint and rerun with --resume ends with the
weights of an uninterrupted run; under torchrun the resumed epochs shuffle as the uninterrupted ones."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

import infer_aff
import infer_cls
import train_cls
from test_distributed import free_port
from test_infer_aff import write_walk_inputs
from test_infer_cls import tiny_weights
from test_train_cls import start_weights
from test_train_loop import TinyNet, args_for, cls_share, make_data
from tool import train_loop
from voc12.data import load_img_name_list
from voc12.synthetic import make_voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def children(pid):
    with open(f'/proc/{pid}/task/{pid}/children') as f:
        return [int(p) for p in f.read().split()]


def alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def kill_midway(argv, finished, at_least):
    """Start `python argv` and SIGKILL it once `finished()` >= at_least; returns its child processes
    (CRF pool, resource tracker, data loader workers) as they were just before the kill."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None and finished() < at_least:
        time.sleep(0.005)
    kids = children(proc.pid) if proc.poll() is None else []
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]  # killed, not finished or failed
    return kids


def assert_children_exit(kids, timeout=20):
    """The orphans notice their parent is gone and exit on their own (no stray CRF / loader processes)."""
    deadline = time.time() + timeout
    while any(alive(p) for p in kids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in kids)


def tree(folder):
    """{relative path: bytes} of every file under `folder`, hidden ones included."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), 'rb').read()
            for d, _, files in os.walk(folder) for f in files}


def outputs(folder):
    """tree(folder) without the temp files a kill -9 can leave behind."""
    return {p: v for p, v in tree(folder).items() if not p.endswith('.tmp')}


def kill_mid_write(argv):
    """Run `python argv` with os.replace replaced by SIGKILL: it dies with its first output fully written to
    atomic_write's temp file, just before the rename (the widest window a kill -9 can hit)."""
    code = ('import os, runpy, signal, sys; os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL); '
            'sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")')
    proc = subprocess.run([sys.executable, '-c', code, *argv], cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


@pytest.fixture(scope='module')
def voc_root(tmp_path_factory):
    return make_voc(str(tmp_path_factory.mktemp('kill') / 'voc'), n_train=16, n_val=0, size=(40, 30), classes=5, seed=3)


@pytest.mark.slow
def test_infer_cls_killed_midway_and_rerun_writes_the_uninterrupted_outputs(voc_root, tmp_path):
    tiny_weights(tmp_path / 'cls.pth')
    ids = load_img_name_list(os.path.join(voc_root, 'lists', 'train.txt'))
    folders = {'--out_cam': 'cam', '--out_cam_pred': 'pred', '--out_la_crf': 'la', '--out_ha_crf': 'ha'}

    def argv(out, workers):
        return ['--network', 'network.resnet38_cls', '--width', '0.125', '--weights', str(tmp_path / 'cls.pth'),
                '--voc12_root', voc_root, '--infer_list', os.path.join(voc_root, 'lists', 'train.txt'),
                '--cls_labels', os.path.join(voc_root, 'cls_labels.npy'), '--device', 'cpu',
                '--num_workers', str(workers), *sum(([f, str(out / d)] for f, d in folders.items()), [])]

    infer_cls.main(argv(tmp_path / 'straight', 0))
    expected = tree(tmp_path / 'straight')
    assert len(expected) == 4 * len(ids)

    out = tmp_path / 'killed'
    kids = kill_midway(['infer_cls.py', *argv(out, 1)], lambda: len(list((out / 'ha').glob('*.npy'))), 2)
    assert 2 <= len(list((out / 'ha').glob('*.npy'))) < len(ids)
    assert kids  # the CRF worker (and the resource tracker) existed when the kill came
    assert_children_exit(kids)
    infer_cls.main(argv(out, 0))
    assert outputs(out) == expected

    out = tmp_path / 'mid_write'
    kill_mid_write(['infer_cls.py', *argv(out, 0)])
    leftover = tree(out)
    (name,) = leftover  # the first output, complete but not renamed
    assert re.fullmatch(rf'cam/\.{ids[0]}\.npy\.\w+\.tmp', name) and leftover[name] == expected[f'cam/{ids[0]}.npy']
    assert not list((out / 'cam').glob('*.npy'))  # pathlib's glob matches hidden files too
    infer_cls.main(argv(out, 0))
    assert tree(out) == {**expected, **leftover}  # ignored, not cleaned up (see the README)


@pytest.mark.slow
def test_infer_aff_killed_midway_and_rerun_writes_the_uninterrupted_labels(voc_root, tmp_path):
    train_list = os.path.join(voc_root, 'lists', 'train.txt')
    ids = load_img_name_list(train_list)
    write_walk_inputs(tmp_path, voc_root, train_list)

    def argv(out, workers):
        return ['--infer_list', train_list, '--voc12_root', voc_root, '--network', 'network.resnet38_aff',
                '--weights', str(tmp_path / 'aff.pth'), '--cam_dir', str(tmp_path / 'cam'), '--out_rw', str(out),
                '--width', '0.125', '--num_workers', str(workers), '--logt', '6', '--device', 'cpu']

    infer_aff.main(argv(tmp_path / 'straight', 0))
    expected = tree(tmp_path / 'straight')
    assert len(expected) == len(ids) and len(set(expected.values())) > 1

    out = tmp_path / 'killed'
    kids = kill_midway(['infer_aff.py', *argv(out, 1)], lambda: len(list(out.glob('*.png'))), 2)
    assert 2 <= len(list(out.glob('*.png'))) < len(ids)
    assert kids  # the data loader worker
    assert_children_exit(kids)
    infer_aff.main(argv(out, 0))
    assert outputs(out) == expected


@pytest.mark.slow
def test_train_cls_killed_after_a_checkpoint_and_resumed_ends_with_the_uninterrupted_weights(voc_root, tmp_path):
    start_weights(tmp_path / 'start.pth')

    def argv(session, *extra):
        return ['--network', 'network.resnet38_cls', '--width', '0.125', '--voc12_root', voc_root,
                '--train_list', os.path.join(voc_root, 'lists', 'train_aug.txt'), '--val_list=',
                '--cls_labels', os.path.join(voc_root, 'cls_labels.npy'), '--weights', str(tmp_path / 'start.pth'),
                '--crop_size', '32', '--batch_size', '4', '--max_epoches', '4', '--lr', '0.01', '--num_workers', '0',
                '--seed', '5', '--device', 'cpu', '--session_name', str(session), *extra]

    train_cls.main(argv(tmp_path / 'straight' / 'cls'))
    expected = torch.load(tmp_path / 'straight' / 'cls.pth', weights_only=True)

    session = tmp_path / 'killed' / 'cls'
    ckpt = tmp_path / 'killed' / 'cls.ckpt.pth'  # written atomically after each epoch: it exists from epoch 1 on
    kill_midway(['train_cls.py', *argv(session)], ckpt.exists, 1)
    epoch = torch.load(ckpt, weights_only=False)['epoch']
    assert 1 <= epoch < 4 and not (tmp_path / 'killed' / 'cls.pth').exists()
    train_cls.main(argv(session, '--resume', str(ckpt)))
    resumed = torch.load(tmp_path / 'killed' / 'cls.pth', weights_only=True)
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(v, resumed[k]) for k, v in expected.items())
    assert not torch.equal(expected['fc8.weight'], torch.load(tmp_path / 'start.pth')['fc8.weight'])


class _Stop(Exception):
    """Stands for a kill between epochs on every rank (a real kill of one rank would hang the others)."""


def _rank_runs(rank, world, port, folder):
    """Runs on each of `world` gloo processes: straight, interrupted after epoch 1, resumed without --seed,
    and an unseeded run; saves each run's (epoch, sampler seed, this rank's indices) per epoch."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    orders, stop = {}, {'at': None}
    real_iter, real_set_epoch = DistributedSampler.__iter__, DistributedSampler.set_epoch

    def recording_iter(self):
        indices = list(real_iter(self))
        orders.setdefault(run, []).append((self.epoch, self.seed, indices))
        return iter(indices)

    def stopping_set_epoch(self, epoch):
        if epoch == stop['at']:
            raise _Stop
        real_set_epoch(self, epoch)

    DistributedSampler.__iter__, DistributedSampler.set_epoch = recording_iter, stopping_set_epoch
    runs = [('straight', 3, None, None), ('killed', 3, None, 1), ('resumed', None, 'killed', None),
            ('unseeded', None, None, None)]
    for run, seed, resume, stop['at'] in runs:
        args = args_for(folder / run)  # batch 2: one image per rank
        args.seed = seed
        args.resume = resume and str(folder / resume / 'sess.ckpt.pth')
        torch.manual_seed(0)
        try:
            train_loop.fit(args, TinyNet().train(), make_data(8), cls_share)  # BN frozen before DDP wraps it
        except _Stop:
            pass
        torch.distributed.barrier()  # rank 0 has written its checkpoint before anyone resumes from it
    torch.save(orders, folder / f'orders{rank}.pt')
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_torchrun_resume_without_seed_shuffles_as_the_uninterrupted_run(tmp_path):
    mp.spawn(_rank_runs, args=(2, free_port(), tmp_path), nprocs=2)
    orders = [torch.load(tmp_path / f'orders{rank}.pt') for rank in range(2)]
    for rank in orders:
        assert [e for e, _, _ in rank['killed']] == [0]
        assert rank['resumed'] == rank['straight'][1:]  # epochs 1, 2: the checkpointed seed 3, same indices
        assert {s for _, s, _ in rank['straight']} == {3}
    straight = torch.load(tmp_path / 'straight' / 'sess.pth')
    resumed = torch.load(tmp_path / 'resumed' / 'sess.pth')
    assert all(torch.equal(v, resumed[k]) for k, v in straight.items())
    # without --seed every rank shuffles with rank 0's drawn seed: each epoch splits the data between them
    for (_, seed0, first), (_, seed1, second) in zip(orders[0]['unseeded'], orders[1]['unseeded']):
        assert seed0 == seed1 and sorted(first + second) == list(range(8))
