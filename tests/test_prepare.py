import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tool.io import UserError
from voc12 import data, make_cls_labels, prepare_sbd
from voc12.synthetic import make_voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def voc(tmp_path):
    return make_voc(str(tmp_path / 'VOC2012'), n_train=5, n_val=3, size=(40, 30), seed=2)


def _png(path):
    return np.asarray(Image.open(path))


# ------------------------------------------------------------------------------- make_cls_labels

def test_make_cls_labels_script_from_another_cwd(voc, tmp_path):
    out = tmp_path / 'labels.npy'
    cmd = [sys.executable, os.path.join(REPO, 'voc12', 'make_cls_labels.py'), '--voc12_root', voc,
           '--train_list', os.path.join(voc, 'lists', 'train_aug.txt'),
           '--val_list', os.path.join(voc, 'lists', 'val.txt'), '--out', str(out)]
    run = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    made = np.load(out, allow_pickle=True).item()
    expected = np.load(os.path.join(voc, 'cls_labels.npy'), allow_pickle=True).item()
    assert list(made) == data.load_img_name_list(os.path.join(voc, 'lists', 'train_aug.txt')) + \
        data.load_img_name_list(os.path.join(voc, 'lists', 'val.txt'))
    for name, label in expected.items():
        assert made[name].dtype == np.float32
        np.testing.assert_array_equal(made[name], label)


def test_make_cls_labels_unknown_class(voc, tmp_path):
    name = data.load_img_name_list(os.path.join(voc, 'lists', 'val.txt'))[0]
    xml = os.path.join(voc, 'Annotations', name + '.xml')
    with open(xml) as f:
        text = f.read()
    with open(xml, 'w') as f:
        f.write(text.replace('<name>', '<name>big', 1))
    with pytest.raises(UserError, match=f'{name}.xml.*unknown class'):
        make_cls_labels.main(['--voc12_root', voc, '--train_list', os.path.join(voc, 'lists', 'train_aug.txt'),
                              '--val_list', os.path.join(voc, 'lists', 'val.txt'), '--out', str(tmp_path / 'x.npy')])
    assert not os.path.exists(tmp_path / 'x.npy')


# ---------------------------------------------------------------------------------- prepare_sbd

def _sbd_from(voc, tmp_path, sbd_ids):
    """Move the masks of `sbd_ids` out of VOC into SBD cls/<id>.mat files (struct GTcls, field Segmentation)."""
    sbd = tmp_path / 'benchmark_RELEASE' / 'dataset'
    os.makedirs(sbd / 'cls')
    masks = {}
    for name in sbd_ids:
        seg = _png(os.path.join(voc, 'SegmentationClassAug', name + '.png')).astype(np.uint8)
        masks[name] = seg
        scipy.io.savemat(str(sbd / 'cls' / f'{name}.mat'),
                         {'GTcls': {'Segmentation': seg, 'CategoriesPresent': np.unique(seg[seg > 0]).astype(np.uint8),
                                    'Boundaries': np.zeros((1, 1), object)}})
        os.remove(os.path.join(voc, 'SegmentationClass', name + '.png'))
    return str(sbd), masks


def _args(voc, sbd, out, *extra):
    lists = os.path.join(voc, 'lists')
    return ['--sbd_root', sbd, '--voc12_root', voc, '--out', out,
            '--train_aug_list', os.path.join(lists, 'train_aug.txt'), '--train_list', os.path.join(lists, 'train.txt'),
            '--val_list', os.path.join(lists, 'val.txt'), '--full_voc', 'False', *extra]


def test_prepare_sbd_builds_segmentation_class_aug(voc, tmp_path, capsys):
    train = data.load_img_name_list(os.path.join(voc, 'lists', 'train_aug.txt'))
    val = data.load_img_name_list(os.path.join(voc, 'lists', 'val.txt'))
    voc_masks = {n: _png(os.path.join(voc, 'SegmentationClass', n + '.png')) for n in train + val}
    sbd, sbd_masks = _sbd_from(voc, tmp_path, train[:3])
    out = str(tmp_path / 'SegmentationClassAug')
    prepare_sbd.main(_args(voc, sbd, out))
    assert sorted(os.listdir(out)) == sorted(n + '.png' for n in train + val)
    for name in train + val:
        with Image.open(os.path.join(out, name + '.png')) as img:
            assert img.mode == 'P'
        expected = sbd_masks[name] if name in sbd_masks else voc_masks[name]
        np.testing.assert_array_equal(_png(os.path.join(out, name + '.png')), expected)
    assert (voc_masks[val[0]] == 255).any()  # the VOC masks keep their 255 borders
    report = capsys.readouterr().out
    assert 'train_aug' in report and 'ready' in report

    # resumable: a second run writes nothing and keeps the files
    stamp = os.path.getmtime(os.path.join(out, train[0] + '.png'))
    prepare_sbd.main(_args(voc, sbd, out))
    assert 'writing 0' in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(out, train[0] + '.png')) == stamp
    prepare_sbd.main(_args(voc, sbd, out, '--overwrite', 'True'))
    assert f'writing {len(train) + len(val)}' in capsys.readouterr().out


def test_prepare_sbd_default_out_and_full_counts(voc, tmp_path, capsys):
    sbd, _ = _sbd_from(voc, tmp_path, [])
    with pytest.raises(UserError, match='train_aug list has 5 ids, full VOC 2012 \\+ SBD has 10582'):
        prepare_sbd.main(_args(voc, sbd, '', '--full_voc', 'True'))
    args = _args(voc, sbd, '')
    del args[4:6]  # no --out: <voc12_root>/SegmentationClassAug (the synthetic one, rebuilt)
    os.rename(os.path.join(voc, 'SegmentationClassAug'), os.path.join(voc, 'old'))
    prepare_sbd.main(args)
    assert len(os.listdir(os.path.join(voc, 'SegmentationClassAug'))) == 8


def test_prepare_sbd_errors(voc, tmp_path):
    train = data.load_img_name_list(os.path.join(voc, 'lists', 'train_aug.txt'))
    sbd, masks = _sbd_from(voc, tmp_path, train[:2])
    os.remove(os.path.join(sbd, 'cls', train[0] + '.mat'))
    out = str(tmp_path / 'out')
    with pytest.raises(UserError, match=f'no mask for {train[0]}.*{train[0]}.png.*{train[0]}.mat'):
        prepare_sbd.main(_args(voc, sbd, out))
    bad = masks[train[0]].copy()
    bad[0, 0] = 40
    scipy.io.savemat(os.path.join(sbd, 'cls', train[0] + '.mat'), {'GTcls': {'Segmentation': bad}})
    with pytest.raises(UserError, match=f'{train[0]}.mat.*40'):
        prepare_sbd.main(_args(voc, sbd, out))
    scipy.io.savemat(os.path.join(sbd, 'cls', train[0] + '.mat'), {'other': bad})
    with pytest.raises(UserError, match=f'{train[0]}.mat.*GTcls'):
        prepare_sbd.main(_args(voc, sbd, out))
