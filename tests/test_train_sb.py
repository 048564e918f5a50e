"""train_SB.py (SBNet): the joint image + boundary-map transform against the original's (myutils_20 with
skimage; fixture tests/fixtures/sbnet_transform.npz from /tmp/scratch_sbnet_train/make_transform_fixture.py),
the sb_map data layer, the README command's defaults, exact micro-batches and one command-line step."""
import os
import random
import re
import shlex
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

import train_SB
import voc12.data
from network.resnet38d import Normalize
from tool import train_loop
from tool.io import UserError
from voc12.synthetic import make_demo

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), 'fixtures', 'sbnet_transform.npz'))


def transform_with_draws(img, sb_map, target_long, flip, crop_draws, crop):
    queue = list(crop_draws)
    transform = train_SB.SBTrainTransform(Normalize(), crop, (20, 100), (0, 0, 0, 0))
    with mock.patch.object(random, 'randint', lambda a, b: target_long), \
         mock.patch.object(random, 'getrandbits', lambda k: int(flip)), \
         mock.patch.object(random, 'randrange', lambda n: queue.pop(0)):
        out = transform(Image.fromarray(img), sb_map)
    assert not queue
    return out


@pytest.mark.parametrize('case', range(len(FIXTURE['cases'])))
def test_joint_transform_matches_the_original(case):
    target_long, flip, draw_w, draw_h, crop = FIXTURE['cases'][case]
    img, sb_map = transform_with_draws(FIXTURE['img'], FIXTURE['sb_map'].copy(), target_long, flip,
                                       (draw_w, draw_h), crop)
    assert img.dtype == sb_map.dtype == torch.float32
    np.testing.assert_array_equal(img.numpy(), FIXTURE[f'img_{case}'])
    expected = FIXTURE[f'sb_map_{case}']
    assert expected.shape == sb_map.shape
    np.testing.assert_allclose(sb_map.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_flip_and_crop_move_image_and_map_together():
    rng = np.random.RandomState(1)
    img = rng.randint(0, 256, (30, 44, 3)).astype(np.uint8)
    # every map channel is the image's red channel + 1: a resize to the same size keeps it exact, padding is 0
    sb_map = np.repeat(img[None, :, :, 0].astype(np.float32) + 1, 21, axis=0)
    for flip, draws in ((True, (5, 3)), (False, (0, 0)), (True, (7, 6))):
        out_img, out_map = transform_with_draws(img, sb_map, 44, flip, draws, 36)
        red = (out_img[0].numpy() * 0.229 + 0.485) * 255
        inside = out_map[0].numpy() > 0
        assert 0 < inside.sum() < inside.size
        np.testing.assert_allclose(red[inside], out_map[0].numpy()[inside] - 1, atol=2e-3)
        assert (out_map == out_map[:1]).all()
        np.testing.assert_array_equal((out_img == 0).all(dim=0).numpy(), ~inside)


def test_missing_or_wrong_sb_map_is_one_user_error(tmp_path):
    with pytest.raises(UserError, match=r'sb_map.2007_000032\.npy.*make_sb_map\.py'):
        voc12.data.load_sb_map(str(tmp_path / 'sb_map' / '2007_000032.npy'), (4, 5))
    np.save(tmp_path / 'x.npy', np.zeros((21, 4, 4), np.float32))
    with pytest.raises(UserError, match='make_sb_map.py'):
        voc12.data.load_sb_map(str(tmp_path / 'x.npy'), (4, 5))


def test_readme_command_parses_with_the_original_defaults():
    args = train_SB.build_parser().parse_args(shlex.split('--voc12_root VOC2012 --weights W --session_name S'))
    assert (args.voc12_root, args.weights, args.session_name) == ('VOC2012', 'W', 'S')
    assert (args.batch_size, args.max_epoches, args.network, args.lr, args.wt_dec, args.crop_size) == \
        (8, 100, 'network.resnet38_SEAM_BD', 0.01, 5e-4, 448)
    assert (tuple(args.resize_long), args.seed, args.val_list, args.save_every_epoch, args.canny) == \
        ((448, 768), 100000, '', True, 'faithful')
    assert args.sb_map_dir is None and train_SB.build_parser().parse_args(['--voc12_root', 'V']).session_name == \
        'resnet38_SEAM'


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bd_network():
    pytest.importorskip('tool.boundary', reason='tool/boundary.py not built yet')
    return pytest.importorskip('network.resnet38_SEAM_BD', reason='network/resnet38_SEAM_BD.py not built yet')


def test_micro_batches_give_the_batch_gradients():
    bd_net = bd_network()
    torch.manual_seed(0)
    model = bd_net.Net(width=0.125, scratch=True).double().eval()  # eval: no dropout, the same forward twice
    img = torch.randn(3, 3, 30, 30, dtype=torch.float64)
    label = torch.tensor([[1.] + [0.] * 19, [0., 1.] + [0.] * 18, [1., 0., 1.] + [0.] * 17], dtype=torch.float64)
    sb_map = (torch.rand(3, 21, 30, 30) > 0.8).double()
    cannies = [train_SB.branch_cannies('faithful')(i.float()) for i in img]
    batch = [['a', 'b', 'c'], img, label, sb_map, [torch.stack([c[k] for c in cannies]).double() for k in (0, 1)]]
    grads, logs = [], []
    for micro in (0, 1, 2):
        model.zero_grad(set_to_none=True)
        logs.append(train_loop.accumulate_gradients(model, batch, train_SB.batch_loss, micro, torch.device('cpu')))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert logs[0]['loss_ct'] > 0 and logs[0]['loss_smooth'] > 0
    for other, other_logs in zip(grads[1:], logs[1:]):
        assert other.keys() == grads[0].keys()
        for key, g in grads[0].items():
            torch.testing.assert_close(other[key], g, rtol=1e-9, atol=1e-12)
        assert other_logs == pytest.approx(logs[0], rel=1e-6)  # batch_loss computes the losses in float32


def write_sb_maps(voc):
    os.makedirs(os.path.join(voc, 'sb_map'))
    rng = np.random.RandomState(0)
    for name in os.listdir(os.path.join(voc, 'JPEGImages')):
        w, h = Image.open(os.path.join(voc, 'JPEGImages', name)).size
        np.save(os.path.join(voc, 'sb_map', name[:-4] + '.npy'), (rng.rand(21, h, w) > 0.9).astype(np.float32))


def run(tmp_path, voc, *extra):
    args = ['--width', '0.125', '--scratch', '--voc12_root', voc,
            '--train_list', os.path.join(voc, 'lists', 'train_aug.txt'),
            '--cls_labels', os.path.join(voc, 'cls_labels.npy'), '--crop_size', '32', '--resize_long', '32', '48',
            '--batch_size', '2', '--num_workers', '0', '--log_interval', '1', '--device', 'cpu',
            '--session_name', str(tmp_path / 'sb' / 'sess'), *extra]
    proc = subprocess.run([sys.executable, 'train_SB.py', *args], cwd=REPO, capture_output=True, text=True)
    return proc


@pytest.mark.slow
def test_command_line_step_resume_per_epoch_saves_and_bf16(tmp_path):
    bd_net = bd_network()
    voc = make_demo(str(tmp_path / 'voc'), n_train=2, n_val=1, size=(40, 48), seed=0)
    proc = run(tmp_path, voc)
    assert proc.returncode != 0 and 'make_sb_map.py' in proc.stderr and 'sb_map' in proc.stderr
    write_sb_maps(voc)
    proc = run(tmp_path, voc, '--max_epoches', '1', '--val_list', os.path.join(voc, 'lists', 'val.txt'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / 'sb' / 'sess.log').read_text()
    assert re.search(r'^Iter:\s*1/\s*1 loss:[0-9.]+ .*loss_ct:[0-9.]+ loss_smooth:[0-9.]+', log, re.M), log
    assert re.search(r'^epoch 1 validation: loss:[0-9.]+', log, re.M)
    first = torch.load(tmp_path / 'sb' / 'sess.pth', weights_only=True)
    assert torch.equal(torch.load(tmp_path / 'sb' / 'sess_0.pth', weights_only=True)['fc8.weight'], first['fc8.weight'])
    bd_net.Net(width=0.125).load_state_dict(first)

    proc = run(tmp_path, voc, '--max_epoches', '2', '--resume', str(tmp_path / 'sb' / 'sess.ckpt.pth'),
               '--micro_batch', '1', '--amp', 'bf16', '--canny', 'fixed')
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / 'sb' / 'sess.log').read_text()
    assert 'after epoch 1' in log and re.search(r'^Iter:\s*2/\s*2 loss:[0-9.]+', log, re.M)
    second = torch.load(tmp_path / 'sb' / 'sess.pth', weights_only=True)
    assert not torch.equal(first['fc8.weight'], second['fc8.weight'])
    assert torch.equal(torch.load(tmp_path / 'sb' / 'sess_1.pth', weights_only=True)['fc8.weight'],
                       second['fc8.weight'])
