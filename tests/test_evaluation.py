"""evaluation.py and tool/metrics.py against independent per-class mask counting."""
import os
import subprocess
import sys

import numpy as np
import pytest

import evaluation
from tool import metrics
from tool.cli import run_main
from tool.io import UserError, atomic_save_npy, atomic_save_png, load_label_png
from voc12.data import load_img_name_list
from voc12.synthetic import make_voc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 21


# ----------------------------------------------------------------------------- independent reference

def independent_scores(gts, preds, n=N, ignore_pred_255=False):
    """Per-class TP/T/P from boolean masks over the pixels whose GT is < 255 (a predicted 255 is a miss, as
    the reference), or, with ignore_pred_255, whose GT and prediction are both < 255."""
    tp, t, p = np.zeros(n), np.zeros(n), np.zeros(n)
    for gt, pred in zip(gts, preds):
        valid = (gt != 255) & ((pred != 255) if ignore_pred_255 else True)
        for c in range(n):
            t[c] += np.sum((gt == c) & valid)
            p[c] += np.sum((pred == c) & valid)
            tp[c] += np.sum((gt == c) & (pred == c) & valid)
    union = t + p - tp
    present = union > 0
    fg = present.copy()
    fg[0] = False
    out = {}
    for key, num, den in (('iou', tp, union), ('fp_all', p - tp, union), ('fn_all', t - tp, union),
                          ('t_tp', t, tp), ('p_tp', p, tp)):
        # T/TP, P/TP: the reference's TP + 1e-10 (x / 0 is x * 1e10); the rest exact; 0 / 0 is 0; absent NaN
        eps = 1e-10 if key in ('t_tp', 'p_tp') else 0
        ratio = np.array([a / (b + eps) if b + eps else 0.0 for a, b in zip(num, den)])
        out[key] = np.where(present, ratio, np.nan)
    out['miou'] = out['iou'][present].mean()
    out['fg_miou'] = out['iou'][fg].mean()
    for key in ('fp_all', 'fn_all', 't_tp', 'p_tp'):
        out['mean_' + key] = out[key][fg].mean()
    return out


def reference_cam_label(cams, t, shape, n=N):
    """The reference: 21-channel float32 stack, channel 0 = t, channel k+1 = CAM of class k, np.argmax."""
    stack = np.zeros((n,) + shape, np.float32)
    for k, cam in cams.items():
        stack[k + 1] = cam
    stack[0] = t
    return np.argmax(stack, 0).astype(np.uint8)


# ----------------------------------------------------------------------------- random data

def random_gt(rng, h, w, classes):
    """Blocky labels from `classes` plus scattered single pixels, 255 on a few rows and pixels."""
    small = rng.choice(classes, size=(h // 8 + 1, w // 8 + 1))
    gt = np.kron(small, np.ones((8, 8), np.uint8))[:h, :w].astype(np.uint8)
    noise = rng.random((h, w)) < 0.05
    gt[noise] = rng.choice(classes, size=noise.sum())
    gt[rng.random((h, w)) < 0.03] = 255
    gt[h // 3] = 255
    return gt


def noisy_prediction(rng, gt, classes, flip=0.2, ignore=0.01):
    pred = np.where(gt == 255, rng.choice(classes, size=gt.shape), gt).astype(np.uint8)
    wrong = rng.random(gt.shape) < flip
    pred[wrong] = rng.choice(classes, size=wrong.sum())
    pred[rng.random(gt.shape) < ignore] = 255
    return pred


def write_pairs(folder, gts, preds, ext='png'):
    ids = [f'2007_{k:06d}' for k in range(len(gts))]
    for image_id, gt, pred in zip(ids, gts, preds):
        atomic_save_png(os.path.join(folder, 'gt', f'{image_id}.png'), gt)
        path = os.path.join(folder, 'pred', f'{image_id}.{ext}')
        atomic_save_npy(path, pred) if ext == 'npy' else atomic_save_png(path, pred)
    return ids, os.path.join(folder, 'pred'), os.path.join(folder, 'gt')


@pytest.fixture(scope='module')
def pairs():
    """Label maps of several sizes; class 7 never occurs, class 5 only in GT, class 9 only in predictions."""
    rng = np.random.default_rng(0)
    classes = [c for c in range(N) if c not in (5, 7, 9)]
    gts, preds = [], []
    for h, w in ((37, 51), (64, 48), (20, 90), (48, 48), (33, 17)):
        gt = random_gt(rng, h, w, classes)
        pred = noisy_prediction(rng, gt, classes)
        gt[:2, :3] = 5
        pred[-2:, -3:] = 9
        gts.append(gt)
        preds.append(pred)
    return gts, preds


PERCENT_KEYS = ('iou', 'fp_all', 'fn_all', 'miou', 'fg_miou', 'mean_fp_all', 'mean_fn_all')
RATIO_KEYS = ('t_tp', 'p_tp', 'mean_t_tp', 'mean_p_tp')


def assert_scores_equal(result, expected, scale=100):
    """Per class and means to 1e-6 (as fractions); `scale` 100 where IoU-type results are in percent."""
    for key in PERCENT_KEYS + RATIO_KEYS:
        factor = scale if key in PERCENT_KEYS else 1
        np.testing.assert_allclose(np.asarray(result[key], float), np.asarray(expected[key]) * factor,
                                   rtol=0, atol=1e-6 * factor, err_msg=key)


# ----------------------------------------------------------------------------- metrics

def test_label_confusion_of_noise_equals_masked_bincount():
    """Every pixel its own run: the run counting must still equal a per-pixel count."""
    rng = np.random.default_rng(1)
    gt = rng.choice([*range(N), 255], size=(31, 29)).astype(np.uint8)
    pred = np.repeat(rng.choice([*range(N), 255], size=(31, 5)), 6, axis=1)[:, :29].astype(np.uint8)
    valid = (gt < 255) & (pred < 255)
    expected = np.bincount(gt[valid].astype(int) * N + pred[valid], minlength=N * N).reshape(N, N)
    np.testing.assert_array_equal(metrics.label_confusion(gt, pred, N), expected)
    with_misses = metrics.label_confusion(gt, pred, N, pred_255_column=True)
    np.testing.assert_array_equal(with_misses[:, :N], expected)
    misses = (gt < 255) & (pred == 255)
    np.testing.assert_array_equal(with_misses[:, N], np.bincount(gt[misses], minlength=N))


def test_scores_equal_independent_counts(pairs):
    gts, preds = pairs
    conf = sum(metrics.label_confusion(g, p, N) for g, p in zip(gts, preds))
    scores = metrics.scores_from_confusion(conf, absent='skip')
    expected = independent_scores(gts, preds, ignore_pred_255=True)
    assert_scores_equal(scores, expected, scale=1)
    assert np.isnan(scores['iou'][7]) and scores['iou'][5] == 0 and scores['iou'][9] == 0
    # IoU + FP/ALL + FN/ALL = 1 for every present class
    present = ~np.isnan(scores['iou'])
    total = scores['iou'] + scores['fp_all'] + scores['fn_all']
    np.testing.assert_allclose(total[present], 1)


def test_absent_classes_count_as_zero_by_default_like_the_reference(pairs):
    """The reference: IoU_c = TP / (T + P - TP + 1e-10) for all 21 classes, mIoU their plain mean."""
    gts, preds = pairs
    conf = sum(metrics.label_confusion(g, p, N) for g, p in zip(gts, preds))
    tp, t, p = np.zeros(N), np.zeros(N), np.zeros(N)
    for gt, pred in zip(gts, preds):
        valid = (gt < 255) & (pred < 255)
        for c in range(N):
            t[c] += np.sum((gt == c) & valid)
            p[c] += np.sum((pred == c) & valid)
            tp[c] += np.sum((gt == c) & (pred == c) & valid)
    reference_iou = tp / (t + p - tp + 1e-10)
    scores = metrics.scores_from_confusion(conf)
    assert (t + p == 0).any()  # the fixture has a class absent from both
    np.testing.assert_allclose(scores['iou'], reference_iou, atol=1e-9)
    assert abs(scores['miou'] - reference_iou.mean()) < 1e-9


def test_ratios_of_class_never_predicted_right_are_the_references():
    """T/TP and P/TP divide by TP + 1e-10 as the reference: 1e10 * T, not inf."""
    conf = np.array([[5, 1], [3, 0]])
    scores = metrics.scores_from_confusion(conf)
    assert scores['iou'][1] == 0 and scores['t_tp'][1] == 3 / 1e-10 and scores['p_tp'][1] == 1 / 1e-10
    assert scores['iou'][0] == 5 / 9 and scores['recall'][1] == 0 and scores['precision'][1] == 0
    assert metrics.scores_from_confusion(np.array([[2, 0], [0, 1]]))['iou'][1] == 1  # no 1e-10 in the union


def test_predicted_255_column_counts_in_t_only():
    conf = np.array([[5, 1, 2], [3, 4, 6]])  # last column: GT pixels predicted 255
    scores = metrics.scores_from_confusion(conf)
    np.testing.assert_allclose(scores['iou'], [5 / (8 + 8 - 5), 4 / (13 + 5 - 4)])
    np.testing.assert_allclose(scores['recall'], [5 / 8, 4 / 13])
    np.testing.assert_allclose(scores['precision'], [5 / 8, 4 / 5])


@pytest.mark.parametrize('t', [-0.05, 0.0, 0.3, 0.5])
def test_cam_to_label_matches_reference_argmax(t):
    rng = np.random.default_rng(2)
    shape = (13, 11)
    cams = {k: (rng.integers(-5, 60, shape) / 100).astype(np.float32) for k in (2, 4, 19)}
    cams[4][:3] = cams[2][:3]  # ties between classes
    for cam in cams.values():
        cam[-2:] = -0.02  # below the zeros of the absent classes
    np.testing.assert_array_equal(metrics.cam_to_label(cams, t, shape), reference_cam_label(cams, t, shape))
    np.testing.assert_array_equal(metrics.cam_to_label({}, t, shape), reference_cam_label({}, t, shape))


# ----------------------------------------------------------------------------- evaluate()

@pytest.mark.parametrize('workers', [0, 2])
@pytest.mark.parametrize('ignore_pred_255', [False, True])
def test_evaluate_png_equals_independent(pairs, tmp_path, workers, ignore_pred_255):
    gts, preds = pairs
    ids, pred_dir, gt_dir = write_pairs(tmp_path, gts, preds)
    result = evaluation.evaluate(ids, pred_dir, gt_dir, 'png', workers=workers, absent='skip',
                                 ignore_pred_255=ignore_pred_255)
    assert_scores_equal(result, independent_scores(gts, preds, ignore_pred_255=ignore_pred_255))
    assert result['num_images'] == len(ids)
    assert result['confusion'].shape == (N, N if ignore_pred_255 else N + 1)


@pytest.fixture(scope='module')
def cam_pairs():
    """GT maps and CAM dicts quantised to 0.01 steps, so many scores tie exactly with a threshold."""
    rng = np.random.default_rng(3)
    gts, cams = [], []
    for h, w in ((30, 40), (25, 25), (40, 18), (32, 32)):
        present = sorted(rng.choice(20, size=rng.integers(1, 4), replace=False).tolist())
        gt = random_gt(rng, h, w, [0] + [k + 1 for k in present])
        cams.append({k: (rng.integers(0, 70, (h, w)) / 100).astype(np.float32) for k in present})
        gts.append(gt)
    return gts, cams


def test_evaluate_npy_equals_independent_argmax(cam_pairs, tmp_path):
    gts, cams = cam_pairs
    ids, pred_dir, gt_dir = write_pairs(tmp_path, gts, cams, ext='npy')
    result = evaluation.evaluate(ids, pred_dir, gt_dir, 'npy', thresholds=[0.3], workers=0, absent='skip')
    preds = [reference_cam_label(c, 0.3, g.shape) for g, c in zip(gts, cams)]
    assert_scores_equal(result, independent_scores(gts, preds))
    assert result['threshold'] == 0.3


def test_curve_best_threshold_equals_best_independent_evaluation(cam_pairs, tmp_path):
    gts, cams = cam_pairs
    ids, pred_dir, gt_dir = write_pairs(tmp_path, gts, cams, ext='npy')
    result = evaluation.evaluate(ids, pred_dir, gt_dir, 'npy', thresholds=evaluation.CURVE_THRESHOLDS, workers=2,
                                 absent='skip')
    independent = [independent_scores(gts, [reference_cam_label(c, t, g.shape) for g, c in zip(gts, cams)])['miou']
                   for t in evaluation.CURVE_THRESHOLDS]
    np.testing.assert_allclose([m for _, m in result['curve']], np.array(independent) * 100, atol=1e-4)
    best = int(np.argmax(independent))
    assert result['threshold'] == evaluation.CURVE_THRESHOLDS[best]
    assert result['miou'] == pytest.approx(independent[best] * 100, abs=1e-4)


def test_threshold_order_does_not_matter(cam_pairs):
    gt, cams = cam_pairs[0][0], cam_pairs[1][0]
    score, label = metrics.foreground_max(cams, gt.shape)
    forward = metrics.threshold_confusions(score, label, gt, [0.1, 0.4, 0.25], N)
    backward = metrics.threshold_confusions(score, label, gt, [0.25, 0.4, 0.1], N)
    np.testing.assert_array_equal(forward, backward[[2, 1, 0]])


# ----------------------------------------------------------------------------- errors

def test_missing_prediction_names_the_file(pairs, tmp_path):
    ids, pred_dir, gt_dir = write_pairs(tmp_path, *pairs)
    os.remove(os.path.join(pred_dir, f'{ids[2]}.png'))
    with pytest.raises(UserError, match=f'1 of 5 prediction.*{ids[2]}.png'):
        evaluation.evaluate(ids, pred_dir, gt_dir, workers=0)


@pytest.mark.parametrize('workers', [0, 2])
def test_size_mismatch_names_the_file(pairs, tmp_path, workers):
    gts, preds = pairs
    preds = list(preds)
    preds[3] = preds[3][:-1]
    ids, pred_dir, gt_dir = write_pairs(tmp_path, gts, preds)
    with pytest.raises(UserError, match=f'{ids[3]}.png is 48x47 .* ground truth .*is 48x48'):
        evaluation.evaluate(ids, pred_dir, gt_dir, workers=workers)


@pytest.mark.parametrize('which', ['gt', 'pred'])
def test_out_of_range_label_names_the_file(pairs, tmp_path, which):
    gts, preds = [list(x) for x in pairs]
    bad = (gts if which == 'gt' else preds)
    bad[1] = bad[1].copy()
    bad[1][5, 5] = 21
    ids, pred_dir, gt_dir = write_pairs(tmp_path, gts, preds)
    with pytest.raises(UserError, match=f'{which}/{ids[1]}.png holds label 21'):
        evaluation.evaluate(ids, pred_dir, gt_dir, workers=0)


def test_bad_cam_dict_key_and_gt_label(cam_pairs, tmp_path):
    gts, cams = [list(x) for x in cam_pairs]
    cams[0] = {20: cams[0][min(cams[0])]}
    ids, pred_dir, gt_dir = write_pairs(tmp_path, gts, cams, ext='npy')
    with pytest.raises(UserError, match=f'{ids[0]}.npy has key 20'):
        evaluation.evaluate(ids, pred_dir, gt_dir, 'npy', workers=0)
    gts[0] = np.full_like(gts[0], 30)
    ids, pred_dir, gt_dir = write_pairs(tmp_path, gts, cams, ext='npy')
    with pytest.raises(UserError, match=f'gt/{ids[0]}.png holds label 30'):
        evaluation.evaluate(ids, pred_dir, gt_dir, 'npy', workers=0)


# ----------------------------------------------------------------------------- command line

def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'evaluation.py'), *args],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    """Synthetic VOC with predictions: the SBD-style masks with one class swapped."""
    root = make_voc(str(tmp_path_factory.mktemp('voc')), n_train=2, n_val=4, seed=4)
    ids = load_img_name_list(os.path.join(root, 'lists', 'val.txt'))
    gts, preds = [], []
    for image_id in ids:
        gts.append(load_label_png(os.path.join(root, 'SegmentationClass', f'{image_id}.png')))
        pred = load_label_png(os.path.join(root, 'SegmentationClassAug', f'{image_id}.png')).copy()
        pred[pred == pred.max()] = 0
        preds.append(pred)
        atomic_save_png(os.path.join(root, 'pred', f'{image_id}.png'), pred)
    return root, independent_scores(gts, preds)


def test_cli_prints_miou_and_appends_log(voc, tmp_path):
    root, expected = voc
    log = tmp_path / 'logs' / 'eval.txt'
    args = ['--list', os.path.join(root, 'ImageSets', 'Segmentation', 'val.txt'), '--predict_dir',
            os.path.join(root, 'pred'), '--gt_dir', os.path.join(root, 'SegmentationClass'),
            '--logfile', str(log), '--workers', '2', '--absent_classes', 'skip']
    done = run_cli(*args, '--comment', 'first run')
    assert done.returncode == 0, done.stderr
    assert f'mIoU {expected["miou"] * 100:8.3f}' in done.stdout
    assert 'val.txt (4 images)' in done.stdout
    evaluation.main(args + ['--comment', 'second run', '--curve', 'False'])
    lines = log.read_text().splitlines()
    assert len(lines) == 6
    assert lines[0].endswith('\tfirst run') and lines[3].endswith('\tsecond run')
    assert lines[0][:4].isdigit() and lines[0][10] == ' '  # 'YYYY-MM-DD HH:MM:SS'
    miou = float(lines[1].split('mIoU:')[1].split()[0])
    assert miou == pytest.approx(expected['miou'] * 100, abs=1e-6)


def test_cli_error_exit_code_2_names_the_file(voc, tmp_path, capsys):
    root, _ = voc
    argv = ['--list', os.path.join(root, 'lists', 'val.txt'), '--predict_dir', str(tmp_path),
            '--gt_dir', os.path.join(root, 'SegmentationClass'), '--comment', 'x',
            '--logfile', str(tmp_path / 'log.txt')]
    with pytest.raises(SystemExit) as stop:
        run_main(evaluation.main, argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: 4 of 4 prediction files') and str(tmp_path) in err
    assert not (tmp_path / 'log.txt').exists()


def test_cli_curve_writes_csv_and_plot(cam_pairs, tmp_path, capsys):
    ids, pred_dir, gt_dir = write_pairs(tmp_path, *cam_pairs, ext='npy')
    (tmp_path / 'list.txt').write_text(''.join(f'{i}\n' for i in ids))
    common = ['--list', str(tmp_path / 'list.txt'), '--predict_dir', pred_dir, '--gt_dir', gt_dir,
              '--type', 'npy', '--workers', '0', '--comment', 'cam', '--logfile', str(tmp_path / 'log.txt')]
    result = evaluation.main(common + ['--curve', 'True'])
    out = capsys.readouterr().out
    assert f'best background score {result["threshold"]:.2f}: mIoU {result["miou"]:.3f}%' in out
    rows = (tmp_path / 'log_curve.csv').read_text().splitlines()
    assert rows[0] == 'bg_score,miou' and len(rows) == 61 and rows[21].startswith('0.20,')
    assert (tmp_path / 'log_curve.png').read_bytes()[:4] == b'\x89PNG'
    assert f'best_t:{result["threshold"]}' in (tmp_path / 'log.txt').read_text()

    single = evaluation.main(common + ['--curve', 'False'])
    assert single['threshold'] == 0.2 and len(single['curve']) == 1
    assert single['miou'] == pytest.approx(float(rows[21].split(',')[1]), abs=1e-4)


def test_curve_flag_parses_booleans():
    def parse(*extra):
        return evaluation.build_parser().parse_args(['--comment', 'x', *extra])

    assert parse('--curve', 'False').curve is False and parse('--curve', 'True').curve is True
    assert parse('--curve').curve is True and parse().curve is False
    with pytest.raises(UserError, match='--type npy'):
        evaluation.main(['--comment', 'x', '--curve', 'True', '--type', 'png'])
