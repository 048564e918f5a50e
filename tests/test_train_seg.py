"""train_seg.py: seed flags, the batch-normalised cross-entropy and its micro-batch shares, label checks,
and a from-scratch run on synthetic data that visibly learns."""
import os
import re
import shlex
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import train_seg
from network.resnet38_seg import SegNet
from tool import metrics, train_loop
from tool.cli import run_main
from voc12.synthetic import make_voc

SEED_COMMAND = ('python train_seg.py --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params '
                '--image_dir VOC2012/JPEGImages --mask_dir rw')
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def test_seed_command_parses_with_reference_defaults():
    args = train_seg.build_parser().parse_args(shlex.split(SEED_COMMAND)[2:])
    assert (args.weights, args.image_dir, args.mask_dir) == \
        ('ilsvrc-cls_rna-a1_cls1000_ep-0001.params', 'VOC2012/JPEGImages', 'rw')
    assert (args.batch_size, args.max_epoches, args.lr, args.wt_dec, args.crop_size) == (4, 30, 0.001, 5e-4, 448)
    assert (args.network, args.train_list, args.session_name, args.num_workers) == \
        ('network.resnet38_seg', 'voc12/train_aug.txt', 'resnet38_seg', 8)
    assert (args.rescale, args.width, args.database) == ([448, 768], 1.0, 'voc')
    assert (args.seed, args.resume, args.micro_batch, args.amp, args.sgd_momentum, args.log_interval) == \
        (None, None, 0, 'none', None, 50)


class TableNet(torch.nn.Module):
    """A 'network' whose output for image i (its pixels all hold i) is a fixed (21, 5, 5) logit table."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, img):
        return self.logits[img[:, 0, 0, 0].long()]


def test_loss_is_the_mean_over_the_batch_and_micro_shares_add_up():
    g = torch.Generator().manual_seed(0)
    n, crop = 3, 17
    model = TableNet(torch.randn(n, 21, 5, 5, generator=g, dtype=torch.float64))
    img = torch.arange(n, dtype=torch.float64).view(n, 1, 1, 1).expand(n, 3, crop, crop)
    mask = torch.randint(0, 21, (n, crop, crop), generator=g)
    mask[0, :12] = 255  # images with different numbers of valid pixels
    mask[2, :, :3] = 255
    batch = [['a', 'b', 'c'], img, mask]
    upsampled = F.interpolate(model.logits.detach(), (crop, crop), mode='bilinear', align_corners=False)
    expected = F.cross_entropy(upsampled, mask, ignore_index=255).item()

    loss, logs = train_seg.batch_loss(model, batch, batch)  # computed in float32
    np.testing.assert_allclose([loss.item(), logs['loss']], expected, rtol=1e-6)
    shares = [train_seg.batch_loss(model, micro, batch) for micro in train_loop.split_batch(batch, 1)]
    np.testing.assert_allclose(sum(s[0].item() for s in shares), expected, rtol=1e-6)
    np.testing.assert_allclose(sum(s[1]['loss'] for s in shares), expected, rtol=1e-6)
    alone = F.cross_entropy(upsampled[:1], mask[:1], ignore_index=255).item()
    assert abs(shares[0][0].item() - alone) > 1e-2  # normalised by the whole batch's valid pixels


def image_ids(root):
    return [line.split()[0][-15:-4] for line in open(os.path.join(root, 'lists', 'train_aug.txt'))]


def seg_argv(root, tmp_path, *extra, mask_dir=None):
    mask_dir = mask_dir or os.path.join(root, 'SegmentationClassAug')
    return ['--image_dir', os.path.join(root, 'JPEGImages'), '--mask_dir', mask_dir,
            '--train_list', os.path.join(root, 'lists', 'train_aug.txt'), '--width', '0.125', '--num_workers', '0',
            '--session_name', str(tmp_path / 'sess' / 'seg'), '--seed', '0', *extra]


@pytest.fixture(scope='module')
def small_voc(tmp_path_factory):
    return make_voc(str(tmp_path_factory.mktemp('seg_small') / 'voc'), n_train=4, n_val=1, size=((36, 44), (30, 40)),
                    classes=[0, 7], seed=2)


@pytest.mark.parametrize('defect', ['value 30', 'wrong size'])
def test_bad_pseudo_label_stops_before_training_naming_the_file(small_voc, tmp_path, capsys, defect):
    masks = tmp_path / 'rw'
    shutil.copytree(os.path.join(small_voc, 'SegmentationClassAug'), masks)
    bad = masks / (image_ids(small_voc)[2] + '.png')
    label = np.array(Image.open(bad))
    if defect == 'value 30':
        label[3, 4] = 30
    else:
        label = label[:-1]
    Image.fromarray(label).save(bad)
    with pytest.raises(SystemExit) as exit_info:
        run_main(train_seg.main, seg_argv(small_voc, tmp_path, mask_dir=str(masks)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert 'Traceback' not in err and len(errors) == 1 and str(bad) in errors[0]
    assert re.search(r'\b30\b' if defect == 'value 30' else 'size', errors[0])
    assert not (tmp_path / 'sess').exists()  # stopped before the training session started


def test_shared_loop_options_micro_batch_amp_and_resume(small_voc, tmp_path):
    small = ['--crop_size', '32', '--rescale', '32', '40', '--batch_size', '2', '--lr', '0.01', '--log_interval', '1']
    train_seg.main(seg_argv(small_voc, tmp_path, *small, '--max_epoches', '1', '--micro_batch', '1', '--amp', 'bf16'))
    session = tmp_path / 'sess' / 'seg'
    train_seg.main(seg_argv(small_voc, tmp_path, *small, '--max_epoches', '2',
                            '--resume', str(session) + '.ckpt.pth'))
    log = open(str(session) + '.log').read()
    assert 'resumed from' in log and re.search(r'Iter:\s*4/\s*4 loss:', log)
    state = torch.load(str(session) + '.pth', weights_only=True)
    assert state.keys() == SegNet(width=0.125).state_dict().keys()


def normalized(img):
    return torch.from_numpy(((img / 255. - MEAN) / STD).astype(np.float32).transpose(2, 0, 1))[None]


def load_pairs(root):
    pairs = []
    for name in image_ids(root):
        img = np.asarray(Image.open(os.path.join(root, 'JPEGImages', name + '.jpg')).convert('RGB'))
        pairs.append((img, np.array(Image.open(os.path.join(root, 'SegmentationClassAug', name + '.png')))))
    return pairs


def calibrated_init(path, pairs):
    """The seeded random init of a width-0.125 SegNet, with bn7's frozen statistics set to those of the
    training images' final features (as pretrained weights carry the statistics of their data). The random
    backbone's output is about 1e-3 in scale; from the plain init the net predicts only background for
    hundreds of steps, and calibrating every BatchNorm instead makes the frozen-BN net diverge."""
    torch.manual_seed(0)
    net = SegNet(width=0.125).eval()
    net.bn7.reset_running_stats()
    net.bn7.momentum = None  # cumulative average over the images
    net.bn7.train()
    with torch.no_grad():
        for img, _ in pairs:
            net(normalized(img))
    torch.save(net.eval().state_dict(), path)


def miou(predict, pairs):
    """mIoU (percent, classes of the set only) of `predict(img) -> HxW labels` against the training masks."""
    conf = sum(metrics.label_confusion(mask, predict(img).astype(np.uint8), 21) for img, mask in pairs)
    return 100 * metrics.scores_from_confusion(conf, absent='skip')['miou']


def net_predictor(state):
    """Single-scale argmax of a width-0.125 SegNet with `state`, upsampled to the image size."""
    net = SegNet(width=0.125)
    net.load_state_dict(state)
    net.eval()

    def predict(img):
        with torch.no_grad():
            logits = F.interpolate(net(normalized(img)), img.shape[:2], mode='bilinear', align_corners=False)
        return logits[0].argmax(0).numpy()
    return predict


def test_training_from_random_init_learns(tmp_path):
    """lr 0.03 instead of the seed's 0.001 (which starts from ImageNet weights): from scratch, 100 steps."""
    root = make_voc(str(tmp_path / 'voc'), n_train=8, n_val=1, size=((64, 80), (48, 64)), classes=[0, 7, 14], seed=1)
    pairs = load_pairs(root)
    calibrated_init(tmp_path / 'init.pth', pairs)
    init_miou = miou(net_predictor(torch.load(tmp_path / 'init.pth', weights_only=True)), pairs)
    train_seg.main(seg_argv(root, tmp_path, '--weights', str(tmp_path / 'init.pth'), '--lr', '0.03',
                            '--max_epoches', '50', '--batch_size', '4', '--crop_size', '64', '--rescale', '64', '80',
                            '--log_interval', '5'))
    session = tmp_path / 'sess' / 'seg'
    losses = [float(v) for v in re.findall(r'Iter:\s*\d+/\s*100 loss:([\d.]+)', open(str(session) + '.log').read())]
    assert len(losses) == 20 and np.isfinite(losses).all()
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:2]), losses
    trained_miou = miou(net_predictor(torch.load(str(session) + '.pth', weights_only=True)), pairs)
    background_only = miou(lambda img: np.zeros(img.shape[:2]), pairs)  # the class prior's best guess
    assert init_miou < 5 and background_only < 25 and trained_miou > background_only + 30, \
        (init_miou, background_only, trained_miou)
