"""Bad input on the command line: every case exits non-zero with one 'error:' line naming the file or
flag, no traceback, and no output written (the checks run before the first output).

The cases run as subprocesses, two at a time, in one module fixture (each start imports torch: ~2.5 s
of CPU); the tests then check each case's result.
"""
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from network import resnet38_aff, resnet38_cls
from tool.io import UserError, atomic_save_npy, load_dict_npy, load_label_png
from voc12.data import load_img_name_list
from voc12.synthetic import make_voc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WIDTH = ['--width', '0.125']


class Voc:
    """A 2-image synthetic VOC with tiny cls / aff weights and CAM / CRF dicts of the right sizes."""

    def __init__(self, base):
        self.base = base
        self.root = make_voc(str(base / 'voc'), n_train=2, n_val=1, size=(40, 32), classes=[0, 7], seed=3)
        self.jpeg = os.path.join(self.root, 'JPEGImages')
        self.labels = os.path.join(self.root, 'cls_labels.npy')
        self.list = os.path.join(self.root, 'lists', 'train.txt')
        self.ids = load_img_name_list(self.list)
        self.gt = os.path.join(self.root, 'SegmentationClassAug')
        torch.manual_seed(0)
        self.cls_weights, self.aff_weights = str(base / 'cls.pth'), str(base / 'aff.pth')
        torch.save(resnet38_cls.Net(width=0.125).state_dict(), self.cls_weights)
        torch.save(resnet38_aff.Net(width=0.125).state_dict(), self.aff_weights)
        self.cam, self.la, self.ha = (str(base / d) for d in ('cam', 'la', 'ha'))
        for name in self.ids:
            shape = load_label_png(os.path.join(self.gt, name + '.png')).shape
            atomic_save_npy(os.path.join(self.cam, name + '.npy'), {7: np.full(shape, 0.5, np.float32)})
            for folder in (self.la, self.ha):
                atomic_save_npy(os.path.join(folder, name + '.npy'),
                                {0: np.full(shape, 0.4, np.float32), 8: np.full(shape, 0.6, np.float32)})

    def case_dir(self, case):
        path = self.base / case
        path.mkdir()
        return path

    def list_of(self, folder, ids):
        path = folder / 'list.txt'
        path.write_text(''.join(i + '\n' for i in ids))
        return str(path)

    def copy_dir(self, src, folder, name):
        dst = folder / name
        shutil.copytree(src, dst)
        return dst

    def train_cls(self, folder, *extra):
        return ['train_cls.py', '--voc12_root', self.root, '--train_list', self.list, '--val_list', '',
                '--cls_labels', self.labels, '--network', 'network.resnet38_cls', *WIDTH, '--num_workers', '0',
                '--batch_size', '1', '--max_epoches', '1', '--crop_size', '32',
                '--session_name', str(folder / 'sess' / 'cls'), *extra]

    def train_aff(self, folder, *extra):
        return ['train_aff.py', '--voc12_root', self.root, '--train_list', self.list, '--la_crf_dir', self.la,
                '--ha_crf_dir', self.ha, '--network', 'network.resnet38_aff', *WIDTH, '--num_workers', '0',
                '--batch_size', '1', '--max_epoches', '1', '--crop_size', '72',
                '--session_name', str(folder / 'sess' / 'aff'), *extra]

    def train_seg(self, folder, *extra):
        return ['train_seg.py', '--image_dir', self.jpeg, '--mask_dir', self.gt, '--train_list', self.list, *WIDTH,
                '--num_workers', '0', '--batch_size', '1', '--max_epoches', '1', '--crop_size', '32',
                '--rescale', '32', '40', '--session_name', str(folder / 'sess' / 'seg'), *extra]

    def infer_cls(self, folder, *extra):
        return ['infer_cls.py', '--voc12_root', self.root, '--infer_list', self.list, '--cls_labels', self.labels,
                '--network', 'network.resnet38_cls', *WIDTH, '--weights', self.cls_weights, '--device', 'cpu',
                '--num_workers', '0', '--scales', '1', '--out_cam', str(folder / 'out' / 'cam'), *extra]

    def infer_aff(self, folder, *extra):
        return ['infer_aff.py', '--voc12_root', self.root, '--infer_list', self.list, '--cam_dir', self.cam,
                '--network', 'network.resnet38_aff', *WIDTH, '--weights', self.aff_weights, '--device', 'cpu',
                '--num_workers', '0', '--logt', '1', '--out_rw', str(folder / 'out' / 'rw'), *extra]

    def evaluation(self, folder, *extra):
        return ['evaluation.py', '--list', self.list, '--gt_dir', self.gt, '--comment', 'bad input', '--workers', '0',
                '--logfile', str(folder / 'out' / 'evallog.txt'), *extra]


class Evil:
    """Unpickling it runs a shell command: the restricted loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def truncate(path, keep=0.5):
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:int(len(data) * keep)])


# ------------------------------------------------------------------------------------------- the cases
# Each case: (voc, its own folder) -> (argv, text the error line must hold). Outputs go under folder/out
# or folder/sess, which must hold no file afterwards.

def missing_voc12_root(v, d):
    argv = v.train_cls(d)
    i = argv.index('--voc12_root')
    return argv[:i] + argv[i + 2:], '--voc12_root'


def missing_jpeg(v, d):
    return v.train_cls(d, '--train_list', v.list_of(d, [v.ids[0], '2099_000001'])), '2099_000001.jpg'


def truncated_jpeg(v, d):
    shutil.copy(os.path.join(v.jpeg, v.ids[0] + '.jpg'), os.path.join(v.jpeg, 'trunc_000001.jpg'))
    truncate(os.path.join(v.jpeg, 'trunc_000001.jpg'))
    return v.infer_cls(d, '--infer_list', v.list_of(d, [v.ids[0], 'trunc_000001'])), 'trunc_000001.jpg'


def random_bytes_jpeg(v, d):
    path = os.path.join(v.jpeg, 'noise_000001.jpg')
    open(path, 'wb').write(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return v.train_seg(d, '--train_list', v.list_of(d, [v.ids[0], 'noise_000001'])), path


def missing_cam_dict(v, d):
    cams = v.copy_dir(v.cam, d, 'cam')
    os.remove(cams / (v.ids[1] + '.npy'))
    return v.infer_aff(d, '--cam_dir', str(cams)), str(cams / (v.ids[1] + '.npy'))


def missing_crf_dict(v, d):
    ha = v.copy_dir(v.ha, d, 'ha')
    os.remove(ha / (v.ids[0] + '.npy'))
    return v.train_aff(d, '--ha_crf_dir', str(ha)), str(ha / (v.ids[0] + '.npy'))


def cam_not_a_dict(v, d):
    cams = v.copy_dir(v.cam, d, 'cam')
    np.save(cams / (v.ids[1] + '.npy'), np.zeros((32, 40), np.float32))
    return v.infer_aff(d, '--cam_dir', str(cams)), str(cams / (v.ids[1] + '.npy'))


def cam_wrong_shape(v, d):
    cams = v.copy_dir(v.cam, d, 'cam')
    atomic_save_npy(str(cams / (v.ids[1] + '.npy')), {7: np.zeros((5, 5), np.float32)})
    return v.infer_aff(d, '--cam_dir', str(cams)), str(cams / (v.ids[1] + '.npy'))


def crf_wrong_shape(v, d):
    la = v.copy_dir(v.la, d, 'la')
    atomic_save_npy(str(la / (v.ids[1] + '.npy')), {0: np.zeros((5, 5), np.float32)})
    return v.train_aff(d, '--la_crf_dir', str(la)), str(la / (v.ids[1] + '.npy'))


def label_wrong_size(v, d):
    masks = v.copy_dir(v.gt, d, 'masks')
    path = masks / (v.ids[1] + '.png')
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(path)
    return v.train_seg(d, '--mask_dir', str(masks)), str(path)


def label_values_21_to_254(v, d):
    masks = v.copy_dir(v.gt, d, 'masks')
    path = masks / (v.ids[1] + '.png')
    label = load_label_png(str(path))
    label[:2, :3] = 100
    Image.fromarray(label).save(path)
    return v.train_seg(d, '--mask_dir', str(masks)), str(path)


def empty_list(v, d):
    path = v.list_of(d, [])
    return v.infer_cls(d, '--infer_list', path), path


def aff_weights_to_infer_cls(v, d):
    return v.infer_cls(d, '--weights', v.aff_weights), v.aff_weights


def random_dict_weights(v, d):
    path = str(d / 'random.pth')
    torch.save({'conv.weight': torch.zeros(3, 3), 'step': torch.tensor(5)}, path)
    return v.infer_cls(d, '--weights', path), path


def truncated_pth(v, d):
    path = str(d / 'truncated.pth')
    shutil.copy(v.aff_weights, path)
    truncate(path)
    return v.infer_aff(d, '--weights', path), path


def truncated_checkpoint(v, d):
    path = str(d / 'cls.ckpt.pth')
    torch.save({'model': {}, 'optimizer': {}, 'epoch': 1}, path)
    truncate(path, 0.7)
    return v.train_cls(d, '--resume', path), path


def output_folder_under_a_file(v, d):
    (d / 'a_file').write_text('not a folder')  # fails for root too, unlike chmod
    return v.infer_cls(d, '--out_cam', str(d / 'a_file' / 'cam')), '--out_cam'


def session_folder_under_a_file(v, d):
    (d / 'a_file').write_text('not a folder')
    return v.train_cls(d, '--session_name', str(d / 'a_file' / 'cls')), '--session_name'


def logfile_under_a_file(v, d):
    (d / 'a_file').write_text('')
    argv = v.evaluation(d, '--predict_dir', v.gt, '--logfile', str(d / 'a_file' / 'log.txt'))
    return argv, '--logfile'


def batch_size_zero(v, d):
    return v.train_aff(d, '--batch_size', '0'), '--batch_size'


def crop_below_stride(v, d):
    return v.train_cls(d, '--crop_size', '4'), '--crop_size'


def crop_below_stride_seg(v, d):
    return v.train_seg(d, '--crop_size', '6'), '--crop_size'


def missing_predictions(v, d):
    preds = d / 'preds'
    preds.mkdir()
    shutil.copy(os.path.join(v.gt, v.ids[0] + '.png'), preds)
    return v.evaluation(d, '--predict_dir', str(preds)), str(preds / (v.ids[1] + '.png'))


def code_running_cam_dict(v, d):
    cams = v.copy_dir(v.cam, d, 'cam')
    np.save(cams / (v.ids[1] + '.npy'), {7: Evil(d / 'MARKER')}, allow_pickle=True)
    return v.infer_aff(d, '--cam_dir', str(cams)), str(cams / (v.ids[1] + '.npy'))


def code_running_cam_dict_evaluation(v, d):
    cams = v.copy_dir(v.cam, d, 'cam')
    np.save(cams / (v.ids[0] + '.npy'), {7: Evil(d / 'MARKER')}, allow_pickle=True)
    return v.evaluation(d, '--predict_dir', str(cams), '--type', 'npy'), str(cams / (v.ids[0] + '.npy'))


def code_running_cls_labels(v, d):
    path = str(d / 'cls_labels.npy')
    np.save(path, {v.ids[0]: Evil(d / 'MARKER')}, allow_pickle=True)
    return v.infer_cls(d, '--cls_labels', path), path


CASES = [missing_voc12_root, missing_jpeg, truncated_jpeg, random_bytes_jpeg, missing_cam_dict, missing_crf_dict,
         cam_not_a_dict, cam_wrong_shape, crf_wrong_shape, label_wrong_size, label_values_21_to_254, empty_list,
         aff_weights_to_infer_cls, random_dict_weights, truncated_pth, truncated_checkpoint,
         output_folder_under_a_file, session_folder_under_a_file, logfile_under_a_file, batch_size_zero,
         crop_below_stride, crop_below_stride_seg, missing_predictions, code_running_cam_dict,
         code_running_cam_dict_evaluation, code_running_cls_labels]


def run_case(voc, case):
    folder = voc.case_dir(case.__name__)
    argv, expected = case(voc, folder)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    return folder, expected, proc


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    voc = Voc(tmp_path_factory.mktemp('bad_input'))
    with ThreadPoolExecutor(2) as pool:
        return dict(zip((c.__name__ for c in CASES), pool.map(lambda c: run_case(voc, c), CASES)))


@pytest.mark.parametrize('case', [c.__name__ for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(results, case):
    folder, expected, proc = results[case]
    output = proc.stderr + proc.stdout
    assert proc.returncode != 0, output
    assert 'Traceback' not in output, output
    errors = [line for line in output.splitlines() if 'error:' in line]
    assert len(errors) == 1 and expected in errors[0], output
    written = [p for d in ('out', 'sess') for p in (folder / d).rglob('*') if p.is_file()]
    assert written == []
    assert not (folder / 'MARKER').exists()  # the code pickled in a CAM / label dict never ran


def test_restricted_loader_reads_numpy_1_pickles_and_refuses_other_objects(tmp_path):
    """np.save of numpy 1.x (protocol 2, 'numpy.core.multiarray', bytes via _codecs.encode) still loads."""
    cams = {np.int64(3): np.arange(6, dtype=np.float32).reshape(2, 3), 5: np.ones((2, 3))}
    holder = np.empty((), object)
    holder[()] = cams
    body = pickle.dumps(holder, protocol=2).replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
    assert b'numpy.core.multiarray\n_reconstruct' in body and b'_codecs\nencode' in body
    header = b"{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    header += b' ' * (-(10 + len(header) + 1) % 64) + b'\n'
    (tmp_path / 'old.npy').write_bytes(b'\x93NUMPY\x01\x00' + len(header).to_bytes(2, 'little') + header + body)
    loaded = load_dict_npy(str(tmp_path / 'old.npy'))
    assert list(loaded) == [3, 5] and all(type(k) is int for k in loaded)
    np.testing.assert_array_equal(loaded[3], cams[np.int64(3)])
    assert loaded[5].dtype == np.float64

    np.save(tmp_path / 'set.npy', {0: {1, 2}}, allow_pickle=True)  # a builtin that is not an array
    np.save(tmp_path / 'str_keys.npy', {'a': np.zeros(2)}, allow_pickle=True)
    for name in ('set', 'str_keys'):
        with pytest.raises(UserError, match=f'{name}.npy'):
            load_dict_npy(str(tmp_path / f'{name}.npy'))
    assert list(load_dict_npy(str(tmp_path / 'str_keys.npy'), str)) == ['a']
