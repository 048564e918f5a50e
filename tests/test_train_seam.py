"""train_cls_ser.py (SSENet) and train_SEAM.py: the originals' README commands and defaults, exact micro-batches
with the real networks, and one training step of each from the command line (resume, micro-batches, bf16, logs,
TensorBoard) on tiny synthetic data with width-0.125 networks."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

import train_SEAM
import train_cls_ser
from network import resnet38_SEAM, resnet38_cls_ser
from tool import train_loop
from voc12.synthetic import make_voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {'train_cls_ser': (train_cls_ser, resnet38_cls_ser.Net), 'train_SEAM': (train_SEAM, resnet38_SEAM.Net)}


@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_readme_command_parses_with_the_original_defaults(name):
    script = SCRIPTS[name][0]
    args = script.build_parser().parse_args(shlex.split('--voc12_root VOC2012 --weights W --session_name S'))
    assert (args.voc12_root, args.weights, args.session_name) == ('VOC2012', 'W', 'S')
    expected = {'train_cls_ser': (16, 15, 'network.resnet38_cls_ser', 1, 'voc12/val.txt'),
                'train_SEAM': (8, 8, 'network.resnet38_SEAM', None, '')}[name]
    assert (args.batch_size, args.max_epoches, args.network, args.seed, args.val_list) == expected
    assert (args.lr, args.wt_dec, args.crop_size, tuple(args.resize_long)) == (0.01, 5e-4, 448, (448, 768))
    assert (args.train_list, args.sgd_momentum, tuple(args.color_jitter)) == ('voc12/train_aug.txt', None,
                                                                               (0.3, 0.3, 0.3, 0.1))
    default = script.build_parser().parse_args(['--voc12_root', 'V']).session_name
    assert default == {'train_cls_ser': 'resnet38_cls_ser', 'train_SEAM': 'resnet38_SEAM'}[name]


@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_micro_batches_give_the_batch_gradients(name):
    script, net_class = SCRIPTS[name]
    torch.manual_seed(0)
    model = net_class(width=0.125, scratch=True).double().eval()  # eval: no dropout, the same forward twice
    img = torch.randn(3, 3, 30, 30, dtype=torch.float64)
    label = torch.tensor([[1.] + [0.] * 19, [0., 1.] + [0.] * 18, [1., 0., 1.] + [0.] * 17], dtype=torch.float64)
    batch = [['a', 'b', 'c'], img, label]
    grads, logs = [], []
    for micro in (0, 1, 2):
        model.zero_grad(set_to_none=True)
        logs.append(train_loop.accumulate_gradients(model, batch, script.batch_loss, micro, torch.device('cpu')))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert 'fc8.weight' in grads[0] and (name == 'train_cls_ser' or 'f9.weight' in grads[0])
    for other, other_logs in zip(grads[1:], logs[1:]):
        assert other.keys() == grads[0].keys()
        for key, g in grads[0].items():
            torch.testing.assert_close(other[key], g, rtol=1e-9, atol=1e-12)
        assert other_logs == pytest.approx(logs[0], rel=1e-9)


def run(name, tmp_path, voc, *extra):
    args = ['--width', '0.125', '--scratch', '--voc12_root', voc,
            '--train_list', os.path.join(voc, 'lists', 'train_aug.txt'),
            '--cls_labels', os.path.join(voc, 'cls_labels.npy'), '--crop_size', '32', '--val_crop', '32',
            '--batch_size', '2', '--num_workers', '0', '--log_interval', '1', '--seed', '0', '--device', 'cpu',
            '--session_name', str(tmp_path / name / 'sess'), *extra]
    proc = subprocess.run([sys.executable, f'{name}.py', *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (tmp_path / name / 'sess.log').read_text()


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_command_line_step_resume_and_outputs(name, tmp_path):
    voc = make_voc(str(tmp_path / 'voc'), n_train=2, n_val=1, size=(40, 36), classes=3, seed=0)
    val = ['--val_list', os.path.join(voc, 'lists', 'val.txt')]
    log = run(name, tmp_path, voc, '--max_epoches', '1', *val)
    terms = {'train_cls_ser': 'loss_cls_s', 'train_SEAM': 'loss_ecr'}[name]
    assert re.search(rf'^Iter:\s*1/\s*1 loss:[0-9.]+ .*{terms}:[0-9.]+', log, re.M), log
    assert re.search(r'^epoch 1 validation: loss:[0-9.]+', log, re.M)
    assert glob.glob(str(tmp_path / name / 'sess_tb' / 'events.out.tfevents.*'))
    first = torch.load(tmp_path / name / 'sess.pth', weights_only=True)
    SCRIPTS[name][1](width=0.125).load_state_dict(first)

    log = run(name, tmp_path, voc, '--max_epoches', '2', '--resume', str(tmp_path / name / 'sess.ckpt.pth'),
              '--micro_batch', '1', '--amp', 'bf16', '--val_list=')
    assert 'after epoch 1' in log and re.search(r'^Iter:\s*2/\s*2 loss:[0-9.]+', log, re.M)
    second = torch.load(tmp_path / name / 'sess.pth', weights_only=True)
    assert not torch.equal(first['fc8.weight'], second['fc8.weight'])
