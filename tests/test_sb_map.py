"""make_sb_map.py / tool/sb_map.py: SBNet's boundary maps against a pixel-by-pixel recomputation."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

import make_sb_map
from tool import sb_map
from tool.io import UserError, atomic_save_npy, atomic_save_png
from voc12.data import load_img_name_list
from voc12.synthetic import make_voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def boundaries_by_loops(label, thickness):
    """Channel c, pixel p: p is class c and some pixel inside the image within Chebyshev distance
    `thickness` of p has another value (255 included); 255 pixels are in no channel."""
    h, w = label.shape
    out = np.zeros((21, h, w), np.float32)
    for y in range(h):
        for x in range(w):
            c = label[y, x]
            if c == 255:
                continue
            window = label[max(y - thickness, 0):y + thickness + 1, max(x - thickness, 0):x + thickness + 1]
            out[c, y, x] = float((window != c).any())
    return out


def random_label(seed, shape=(23, 31), classes=(0, 3, 7, 20, 255)):
    rng = np.random.default_rng(seed)
    coarse = rng.choice(classes, size=(shape[0] // 4 + 1, shape[1] // 4 + 1))
    return np.kron(coarse, np.ones((4, 4), np.uint8))[:shape[0], :shape[1]].astype(np.uint8)


@pytest.mark.parametrize('thickness', [1, 2, 3])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_matches_the_loop_computation(seed, thickness):
    label = random_label(seed)
    made = sb_map.pseudo_label_boundaries(label, thickness)
    assert made.dtype == np.float32 and made.shape == (21,) + label.shape
    np.testing.assert_array_equal(made, boundaries_by_loops(label, thickness))


def test_channel_layout_background_and_thickness():
    label = np.zeros((6, 8), np.uint8)
    label[:, 4:] = 5  # background left, class 5 (channel 5) right
    one = sb_map.pseudo_label_boundaries(label, 1)
    expected = np.zeros((21, 6, 8), np.float32)
    expected[0, :, 3] = 1  # background side of the interface, in the background channel
    expected[5, :, 4] = 1
    np.testing.assert_array_equal(one, expected)
    two = sb_map.pseudo_label_boundaries(label, 2)
    expected[0, :, 2] = expected[5, :, 5] = 1
    np.testing.assert_array_equal(two, expected)


def test_ignore_pixels_are_in_no_channel_and_end_the_region():
    label = np.full((7, 7), 2, np.uint8)
    label[3, :] = 255
    made = sb_map.pseudo_label_boundaries(label, 1)
    assert not made[:, 3].any()
    np.testing.assert_array_equal(np.flatnonzero(made[2].any(1)), [2, 4])
    assert made[2, 2].all() and made[2, 4].all() and made.sum() == 14


def test_one_class_image_has_no_boundary():
    assert not sb_map.pseudo_label_boundaries(np.full((5, 4), 9, np.uint8), 2).any()


def write_sbd_mat(path, class_maps):
    """An SBD cls/<id>.mat: struct GTcls with a 20x1 cell Boundaries of sparse maps, as SBD ships them."""
    cells = np.empty((20, 1), object)
    for k in range(20):
        cells[k, 0] = scipy.sparse.csc_matrix(class_maps[k].astype(bool))
    h, w = class_maps.shape[1:]
    scipy.io.savemat(path, {'GTcls': {'Boundaries': cells, 'Segmentation': np.zeros((h, w), np.uint8),
                                      'CategoriesPresent': np.array([1], np.uint8)}})


def test_sbd_boundaries(tmp_path):
    rng = np.random.default_rng(0)
    class_maps = np.zeros((20, 9, 11), bool)
    class_maps[[0, 4, 19]] = rng.random((3, 9, 11)) > 0.7
    path = str(tmp_path / 'a.mat')
    write_sbd_mat(path, class_maps)
    made = sb_map.sbd_boundaries(sb_map.load_sbd_boundaries(path))
    assert made.dtype == np.float32 and made.shape == (21, 9, 11)
    np.testing.assert_array_equal(made[1:], class_maps)
    np.testing.assert_array_equal(made[0], class_maps[0] | class_maps[4] | class_maps[19])


def test_sbd_file_without_boundaries(tmp_path):
    path = str(tmp_path / 'b.mat')
    scipy.io.savemat(path, {'GTcls': {'Segmentation': np.zeros((3, 3), np.uint8)}})
    with pytest.raises(UserError, match='b.mat is not an SBD boundary file'):
        sb_map.load_sbd_boundaries(path)


# ------------------------------------------------------------------------------------------ CLI

@pytest.fixture()
def voc(tmp_path):
    """A tiny VOC; its SegmentationClass PNGs (with 255 borders) stand in for first-stage pseudo labels."""
    root = make_voc(str(tmp_path / 'VOC2012'), n_train=3, n_val=1, size=(24, 18), seed=3)
    return root, os.path.join(root, 'lists', 'train_aug.txt'), os.path.join(root, 'SegmentationClass')


def label_of(label_dir, name):
    return np.asarray(Image.open(os.path.join(label_dir, name + '.png')))


@pytest.mark.parametrize('workers', ['0', '2'])
def test_cli_from_label_pngs_and_rerun_skips(voc, tmp_path, capsys, workers):
    root, list_path, label_dir = voc
    names = load_img_name_list(list_path)
    make_sb_map.main(['--voc12_root', root, '--list', list_path, '--label_dir', label_dir, '--thickness', '2',
                      '--num_workers', workers])
    for name in names:
        made = np.load(os.path.join(root, 'sb_map', name + '.npy'))
        label = label_of(label_dir, name)
        assert 255 in label and made.dtype == np.float32
        np.testing.assert_array_equal(made, boundaries_by_loops(label, 2))
    stamps = {n: os.stat(os.path.join(root, 'sb_map', n + '.npy')).st_mtime_ns for n in names}
    capsys.readouterr()
    make_sb_map.main(['--voc12_root', root, '--list', list_path, '--label_dir', label_dir])
    assert f'{len(names)} maps already in' in capsys.readouterr().out
    assert stamps == {n: os.stat(os.path.join(root, 'sb_map', n + '.npy')).st_mtime_ns for n in names}
    assert sorted(os.listdir(os.path.join(root, 'sb_map'))) == sorted(n + '.npy' for n in names)


def test_cli_from_crf_dicts_uses_the_argmax(voc, tmp_path):
    root, list_path, label_dir = voc
    crf_dir = tmp_path / 'crf_4.0'
    name = load_img_name_list(list_path)[0]
    label = label_of(label_dir, name)
    label = np.where(label == 255, 0, label)
    rng = np.random.default_rng(0)
    keys = [0] + [int(k) for k in np.unique(label) if k] + [11]  # 11: a class the argmax never picks
    crf = {k: rng.random(label.shape).astype(np.float32) * 0.5 for k in keys}
    for k in keys:
        crf[k][label == k] += 1
    atomic_save_npy(str(crf_dir / f'{name}.npy'), crf)
    out = tmp_path / 'out'
    make_sb_map.main(['--voc12_root', root, '--list', str(_one_id_list(tmp_path, name)), '--source', 'crf',
                      '--label_dir', str(crf_dir), '--out_dir', str(out)])
    np.testing.assert_array_equal(np.load(out / f'{name}.npy'), boundaries_by_loops(label, 1))


def _one_id_list(tmp_path, name):
    path = tmp_path / 'one.txt'
    path.write_text(name + '\n')
    return path


def test_cli_from_sbd(voc, tmp_path):
    root, list_path, label_dir = voc
    names = load_img_name_list(list_path)
    os.makedirs(tmp_path / 'sbd' / 'cls')
    expected = {}
    for name in names:
        label = label_of(label_dir, name)
        class_maps = boundaries_by_loops(label, 1)[1:] > 0
        write_sbd_mat(str(tmp_path / 'sbd' / 'cls' / f'{name}.mat'), class_maps)
        expected[name] = np.concatenate([class_maps.any(0, keepdims=True), class_maps]).astype(np.float32)
    make_sb_map.main(['--voc12_root', root, '--list', list_path, '--source', 'sbd', '--sbd_root',
                      str(tmp_path / 'sbd'), '--out_dir', str(tmp_path / 'out'), '--num_workers', '0'])
    for name in names:
        np.testing.assert_array_equal(np.load(tmp_path / 'out' / f'{name}.npy'), expected[name])


def test_missing_label_png_names_the_file_and_the_stage(voc, tmp_path):
    root, list_path, label_dir = voc
    name = load_img_name_list(list_path)[1]
    os.remove(os.path.join(label_dir, name + '.png'))
    with pytest.raises(UserError, match=rf'label PNGs of .* not found, e.g. .*{name}\.png .*infer_aff\.py --out_rw'):
        make_sb_map.main(['--voc12_root', root, '--list', list_path, '--label_dir', label_dir])
    assert not os.path.exists(os.path.join(root, 'sb_map'))


def test_missing_image(voc):
    root, list_path, label_dir = voc
    name = load_img_name_list(list_path)[2]
    os.remove(os.path.join(root, 'JPEGImages', name + '.jpg'))
    with pytest.raises(UserError, match=rf'images of .* not found, e.g. .*{name}\.jpg \(check --voc12_root'):
        make_sb_map.main(['--voc12_root', root, '--list', list_path, '--label_dir', label_dir])
    assert not os.path.exists(os.path.join(root, 'sb_map'))


@pytest.mark.parametrize('extra, message', [
    (['--source', 'sbd'], '--source sbd reads --sbd_root'),
    (['--source', 'sbd', '--sbd_root', '.', '--thickness', '2'], '--thickness applies to pseudo labels'),
    (['--thickness', '0'], '--thickness 0'),
    (['--label_dir', 'nowhere'], '--label_dir folder not found'),
])
def test_bad_flags(voc, extra, message):
    root, list_path, label_dir = voc
    argv = ['--voc12_root', root, '--list', list_path] + (['--label_dir', label_dir] if '--source' not in extra
                                                          and '--label_dir' not in extra else []) + extra
    with pytest.raises(UserError, match=message):
        make_sb_map.main(argv)


def test_bad_label_values_and_sizes(voc, tmp_path):
    root, list_path, label_dir = voc
    name = load_img_name_list(list_path)[0]
    one = str(_one_id_list(tmp_path, name))
    label = label_of(label_dir, name).copy()
    label[0, 0] = 30
    atomic_save_png(os.path.join(label_dir, name + '.png'), label)
    with pytest.raises(UserError, match=f'{name}.png holds label 30'):
        make_sb_map.main(['--voc12_root', root, '--list', one, '--label_dir', label_dir])
    atomic_save_png(os.path.join(label_dir, name + '.png'), label[:, 1:] % 30)
    with pytest.raises(UserError, match=f'{name}.png is 23x18 but its image is 24x18'):
        make_sb_map.main(['--voc12_root', root, '--list', one, '--label_dir', label_dir])
    assert not os.path.exists(os.path.join(root, 'sb_map', name + '.npy'))


def test_script_help_and_one_line_error(tmp_path):
    run = subprocess.run([sys.executable, os.path.join(REPO, 'make_sb_map.py'), '--help'], cwd=str(tmp_path),
                         capture_output=True, text=True)
    assert run.returncode == 0 and 'EXTRA PIXEL-LEVEL SUPERVISION' in run.stdout and 'image-level' in run.stdout
    run = subprocess.run([sys.executable, os.path.join(REPO, 'make_sb_map.py'), '--voc12_root', str(tmp_path)],
                         cwd=str(tmp_path), capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.strip().count('\n') == 0 and '--label_dir' in run.stderr
