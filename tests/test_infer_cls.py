"""infer_cls.py on synthetic VOC data: artefact formats and values, resumability, errors, README commands."""
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import infer_cls
import network.resnet38_cls
from tool import imutils
from tool.inference import msf_forward
from voc12.synthetic import make_voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_COMMANDS = [
    'python3 infer_cls.py --infer_list voc12/train_aug.txt --voc12_root VOC2012 --network network.resnet38_cls '
    '--weights res38_cls.pth --out_cam cam --out_la_crf crf_la --out_ha_crf crf_ha',
    'python3 infer_cls.py --infer_list voc12/val.txt --voc12_root VOC2012 --network network.resnet38_cls '
    '--weights res38_cls.pth --out_cam_pred cam_pred',
]


def tiny_weights(path, seed=0):
    """A width-0.125 ResNet-38 cls net whose CAMs are non-degenerate: Kaiming-initialised backbone and
    positive fc8 weights (the backbone features are >= 0, so every class map is positive somewhere)."""
    torch.manual_seed(seed)
    net = network.resnet38_cls.Net(width=0.125)
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and m is not net.fc8:
            nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
    net.fc8.weight.data = net.fc8.weight.data.abs() * 0.003
    torch.save(net.state_dict(), path)
    return net.eval()


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('infer_cls')
    voc = make_voc(str(root / 'voc'), n_train=4, n_val=1, size=(40, 30), classes=5, seed=1)
    net = tiny_weights(root / 'cls.pth')
    return {'root': root, 'voc': voc, 'weights': str(root / 'cls.pth'), 'net': net,
            'labels': np.load(os.path.join(voc, 'cls_labels.npy'), allow_pickle=True).item(),
            'ids': [line.split()[0][12:-4] for line in open(os.path.join(voc, 'lists', 'train.txt'))]}


def base_args(data, out, *extra):
    return ['--network', 'network.resnet38_cls', '--width', '0.125', '--weights', data['weights'],
            '--voc12_root', data['voc'], '--infer_list', os.path.join(data['voc'], 'lists', 'train.txt'),
            '--cls_labels', os.path.join(data['voc'], 'cls_labels.npy'), '--device', 'cpu', *extra]


def all_outputs(out):
    return ['--out_cam', str(out / 'cam'), '--out_cam_pred', str(out / 'pred'),
            '--out_la_crf', str(out / 'la'), '--out_ha_crf', str(out / 'ha')]


@pytest.fixture(scope='module')
def run(data):
    out = data['root'] / 'out'
    infer_cls.main(base_args(data, out, *all_outputs(out), '--num_workers', '2'))
    return out


def load(path):
    return np.load(path, allow_pickle=True).item()


def test_readme_commands_parse_with_reference_defaults():
    for command in README_COMMANDS:
        args = infer_cls.build_parser().parse_args(shlex.split(command)[2:])
        assert (args.network, args.voc12_root, args.weights) == ('network.resnet38_cls', 'VOC2012', 'res38_cls.pth')
        assert (args.num_workers, args.low_alpha, args.high_alpha) == (8, 4, 32)
    defaults = infer_cls.build_parser().parse_args(['--weights', 'w.pth', '--voc12_root', 'V'])
    assert (defaults.network, defaults.infer_list) == ('network.vgg16_cls', 'voc12/train.txt')
    assert defaults.out_cam is defaults.out_la_crf is defaults.out_ha_crf is defaults.out_cam_pred is None
    assert defaults.scales == (1.0, 0.5, 1.5, 2.0)


def test_cam_dicts_are_the_normalised_multiscale_flip_sum(data, run):
    for name in data['ids']:
        img = np.asarray(Image.open(os.path.join(data['voc'], 'JPEGImages', name + '.jpg')).convert('RGB'))
        label = data['labels'][name]
        cams = load(run / 'cam' / f'{name}.npy')
        assert sorted(cams) == np.nonzero(label)[0].tolist()
        maps = msf_forward(data['net'].forward_cam, img, (1.0, 0.5, 1.5, 2.0), data['net'].normalize,
                           torch.device('cpu'))
        total = sum(m.numpy() * label[:, None, None] for m in maps)
        for k, cam in cams.items():
            assert cam.dtype == np.float32 and cam.shape == img.shape[:2]
            assert cam.min() >= 0 and cam.max() == pytest.approx(1, abs=1e-4)
            np.testing.assert_allclose(cam, total[k] / (total[k].max() + 1e-5), rtol=1e-4, atol=1e-6)


def test_cam_pred_is_the_argmax_over_a_constant_background(data, run):
    for name in data['ids']:
        cams = load(run / 'cam' / f'{name}.npy')
        scores = np.zeros((21,) + next(iter(cams.values())).shape, np.float32)
        scores[0] = 0.2
        for k, cam in cams.items():
            scores[k + 1] = cam
        with Image.open(run / 'pred' / f'{name}.png') as png:
            assert png.mode == 'P'
            np.testing.assert_array_equal(np.array(png), scores.argmax(0))


def test_crf_dicts_refine_the_cams_with_both_alphas(data, run):
    name = data['ids'][0]
    img = np.asarray(Image.open(os.path.join(data['voc'], 'JPEGImages', name + '.jpg')).convert('RGB'))
    cams = load(run / 'cam' / f'{name}.npy')
    v = np.stack([cams[k] for k in sorted(cams)])
    for folder, alpha in (('la', 4), ('ha', 32)):
        for other in data['ids']:
            crf = load(run / folder / f'{other}.npy')
            assert sorted(crf) == [0] + [k + 1 for k in sorted(load(run / 'cam' / f'{other}.npy'))]
            np.testing.assert_allclose(sum(crf.values()), 1, atol=1e-4)
        crf = load(run / folder / f'{name}.npy')
        expected = imutils.crf_inference(img, np.concatenate(((1 - v.max(0, keepdims=True)) ** alpha, v)),
                                         labels=len(v) + 1)
        np.testing.assert_allclose(np.stack([crf[k] for k in sorted(crf)]), expected, atol=1e-6)


def test_rerun_skips_finished_images_and_overwrite_redoes_them(data, run):
    files = sorted(run.rglob('*.*'))
    before = {f: f.stat().st_mtime_ns for f in files}
    infer_cls.main(base_args(data, run, *all_outputs(run), '--num_workers', '0'))
    assert {f: f.stat().st_mtime_ns for f in files} == before
    redo = data['ids'][1]
    os.remove(run / 'ha' / f'{redo}.npy')  # one missing output: only that image is redone
    infer_cls.main(base_args(data, run, *all_outputs(run), '--num_workers', '0'))
    changed = {f for f in files if f.stat().st_mtime_ns != before[f]}
    assert changed == {run / d / f'{redo}.{ext}' for d, ext in (('cam', 'npy'), ('pred', 'png'), ('la', 'npy'),
                                                                 ('ha', 'npy'))}
    infer_cls.main(base_args(data, run, '--out_cam_pred', str(run / 'pred'), '--overwrite'))
    assert all((run / 'pred' / f'{i}.png').stat().st_mtime_ns > before[run / 'pred' / f'{i}.png']
               for i in data['ids'])


def test_image_without_any_class_gets_background_only_dicts(data, tmp_path, capsys):
    name = data['ids'][0]
    labels = dict(data['labels'], **{name: np.zeros(20, np.float32)})
    np.save(tmp_path / 'labels.npy', labels)
    (tmp_path / 'list.txt').write_text(name + '\n')
    args = base_args(data, tmp_path, *all_outputs(tmp_path), '--num_workers', '0')
    args[args.index('--cls_labels') + 1] = str(tmp_path / 'labels.npy')
    args[args.index('--infer_list') + 1] = str(tmp_path / 'list.txt')
    infer_cls.main(args)
    assert f'warning: {name} has no class' in capsys.readouterr().out
    assert load(tmp_path / 'cam' / f'{name}.npy') == {}
    assert not np.array(Image.open(tmp_path / 'pred' / f'{name}.png')).any()
    for folder in ('la', 'ha'):
        crf = load(tmp_path / folder / f'{name}.npy')
        assert list(crf) == [0] and np.all(crf[0] == 1)


def test_corrupt_image_stops_with_one_line_naming_it(data, tmp_path):
    voc = make_voc(str(tmp_path / 'voc'), n_train=2, n_val=0, size=(40, 30), classes=3, seed=2)
    good, bad = [line.split()[0][12:-4] for line in open(os.path.join(voc, 'lists', 'train.txt'))]
    bad_path = os.path.join(voc, 'JPEGImages', bad + '.jpg')
    with open(bad_path, 'wb') as f:
        f.write(b'not a jpeg')
    out = tmp_path / 'out'
    args = base_args({**data, 'voc': voc}, out, *all_outputs(out), '--num_workers', '1')
    proc = subprocess.run([sys.executable, 'infer_cls.py', *args], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith('error: corrupt image') and bad_path in lines[-1]
    assert 'Traceback' not in proc.stderr
    assert not out.exists()  # every image is checked before the first output is written


def test_nothing_to_write_is_an_error(data, tmp_path):
    with pytest.raises(infer_cls.UserError, match='nothing to write'):
        infer_cls.main(base_args(data, tmp_path))


def test_missing_image_is_reported_before_any_work(data, tmp_path):
    name = data['ids'][0]
    labels = dict(data['labels'], **{'2012_999999': data['labels'][name]})
    np.save(tmp_path / 'labels.npy', labels)
    (tmp_path / 'list.txt').write_text(f'{name}\n2012_999999\n')
    args = base_args(data, tmp_path, '--out_cam', str(tmp_path / 'cam'))
    args[args.index('--cls_labels') + 1] = str(tmp_path / 'labels.npy')
    args[args.index('--infer_list') + 1] = str(tmp_path / 'list.txt')
    with pytest.raises(infer_cls.UserError, match=r'1 of 2 images .* not found, e\.g\. .*2012_999999\.jpg'):
        infer_cls.main(args)
    assert not (tmp_path / 'cam').exists()
