"""Pipeline stages against numbers computed by the ORIGINAL code, one stage at a time.

psa_stages_infer.npz: the original psa infer_cls.py and infer_aff.py (jiwoon-ahn/psa 9493e59), run unchanged on CPU
(shims: .cuda() a no-op, one fake GPU, PIL.Image.CUBIC = BICUBIC, np.load allow_pickle, scipy.misc.imsave kept the
array) with resnet38_cls / resnet38_aff filled by tests/reference_weights.fill(net, `cls_seed` / `aff_seed`), on the
two JPEGs stored as `<id>/jpeg` (50x75 and 67x70, labels `<id>/label`), default scales and alphas. Outputs per image:
`<id>/cam/<k>` (the CAM dict), `<id>/la/<k>`, `<id>/ha/<k>` (the alpha 4 / 32 CRF dicts), `<id>/cam_pred` and
`<id>/rw` (the label arrays it saved; infer_aff walked the CAM dicts infer_cls wrote).
psa_stages_eval.npz: the original evaluation.py of YudeWang/SEAM 3212261 (do_python_eval) and of
YudeWang/SSENet-pytorch 873c442 (which adds T/TP, P/TP, FP/ALL, FN/ALL, fg mIoU), unchanged, on the label maps
`<id>/gt`, `<id>/pred` and CAM dicts `<id>/cam/<k>` stored there (predicted 255 on valid GT, a class missing from
one image, a class absent from GT and prediction, a class only predicted, one only in GT).
psa_stages_train.npz (+ .json): the original psa voc12.data.VOC12AffDataset on two 96x96 JPEGs (`<id>/jpeg`) and
la/ha CRF dicts (`<id>/la/<k>`, `<id>/ha/<k>`; no score in the last 12 columns) with train_aff.py's transform lists
minus the random ones: `aff_img` and the pair labels `aff_label_bg/fg/neg` of the batch of both; the original
resnet38_aff (eval, fill seed `aff_seed`) on it: `aff_net`; train_aff.py's loss expressions on `aff_net` and on a
seeded `aff_fixed`: `aff_<net|fixed>_<loss|bg_loss|fg_loss|neg_loss|bg_cnt|fg_cnt|neg_cnt>`. The json: what the
original label extractor does with a crop of 100 (not a multiple of 8). train_cls.py's loss: resnet38_cls (eval,
fill seed `cls_seed`) on `cls_img` (2x3x64x64), `cls_label`: `cls_logits`, `cls_loss`.
The scripts that made them: /tmp/scratch_audit/run_psa_infer.py, run_seam_eval.py, run_psa_train.py (not in the
repository; they import the original code).
"""
import functools
import os

import numpy as np
import pytest
import torch

import evaluation
import infer_aff
import infer_cls
import train_aff
import train_cls
import voc12.data
from network import resnet38_aff, resnet38_cls, resnet38d
from reference_weights import deterministic_state_dict
from tool import imutils
from tool.io import atomic_save_npy, atomic_save_png, load_dict_npy, load_label_png

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')


def load_fixture(name):
    return dict(np.load(os.path.join(FIXTURES, name)))


def stored_dict(ref, prefix):
    return {int(k): ref[f'{prefix}/{k}'] for k in ref[f'{prefix}_keys']}


@functools.lru_cache(maxsize=2)
def reference_state(net_class, seed):
    """deterministic_state_dict of the full network (the original's), made once per network and seed."""
    with torch.device('meta'):
        shapes = {k: tuple(v.shape) for k, v in net_class().state_dict().items()}
    return {k: torch.from_numpy(v) for k, v in deterministic_state_dict(shapes, seed).items()}


def save_weights(net_class, seed, path):
    torch.save(reference_state(net_class, seed), path)
    return str(path)


def reference_net(net_class, seed):
    net = net_class()
    net.load_state_dict(reference_state(net_class, seed))
    return net.eval()


def max_diffs(ours, orig):
    """(max |ours - orig|, that divided by max |orig|) over two dicts with the same keys."""
    assert sorted(ours) == sorted(orig)
    abs_diff = max(float(np.abs(np.asarray(ours[k], np.float64) - orig[k]).max()) for k in orig)
    scale = max(float(np.abs(orig[k]).max()) for k in orig)
    return abs_diff, abs_diff / scale


# ----------------------------------------------------------------------------- infer_cls and infer_aff

@pytest.fixture(scope='module')
def infer_run(tmp_path_factory):
    """Our infer_cls.main and infer_aff.main on the fixture's JPEGs, with the original's seeds and defaults."""
    ref = load_fixture('psa_stages_infer.npz')
    base = tmp_path_factory.mktemp('stages_infer')
    ids = [str(i) for i in ref['ids']]
    os.makedirs(base / 'voc' / 'JPEGImages')
    for name in ids:
        (base / 'voc' / 'JPEGImages' / f'{name}.jpg').write_bytes(ref[f'{name}/jpeg'].tobytes())
        atomic_save_npy(str(base / 'orig_cam' / f'{name}.npy'), stored_dict(ref, f'{name}/cam'))
    (base / 'list.txt').write_text(''.join(f'/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n' for n in ids))
    np.save(base / 'labels.npy', {name: ref[f'{name}/label'] for name in ids})
    common = ['--infer_list', str(base / 'list.txt'), '--voc12_root', str(base / 'voc'), '--device', 'cpu']
    infer_cls.main(common + ['--network', 'network.resnet38_cls', '--cls_labels', str(base / 'labels.npy'),
                             '--weights', save_weights(resnet38_cls.Net, int(ref['cls_seed']), base / 'cls.pth'),
                             '--num_workers', '0', '--out_cam', str(base / 'cam'), '--out_la_crf', str(base / 'la'),
                             '--out_ha_crf', str(base / 'ha'), '--out_cam_pred', str(base / 'pred')])
    aff_weights = save_weights(resnet38_aff.Net, int(ref['aff_seed']), base / 'aff.pth')
    for rw in ('dense', 'sparse'):
        infer_aff.main(common + ['--network', 'network.resnet38_aff', '--weights', aff_weights, '--num_workers', '0',
                                 '--cam_dir', str(base / 'orig_cam'), '--out_rw', str(base / f'rw_{rw}'), '--rw', rw])
    return ref, base, ids


@pytest.mark.parametrize('output', ['cam', 'la', 'ha'])
def test_infer_cls_dicts_equal_the_original(infer_run, output):
    ref, base, ids = infer_run
    for name in ids:
        ours = load_dict_npy(str(base / output / f'{name}.npy'))
        abs_diff, rel_diff = max_diffs(ours, stored_dict(ref, f'{name}/{output}'))
        print(f'{output} {name}: max abs diff {abs_diff:.3g}, relative {rel_diff:.3g}')
        # measured: CAM 2.7e-6 (float32 sums of the 8 maps), CRF 2.7e-5 (the dCRF amplifies its inputs' rounding)
        assert rel_diff < (1e-5 if output == 'cam' else 1e-4)


def test_infer_cls_cam_pred_equals_the_original(infer_run):
    ref, base, ids = infer_run
    for name in ids:
        ours = load_label_png(str(base / 'pred' / f'{name}.png'))
        assert len(np.unique(ref[f'{name}/cam_pred'])) >= 2
        np.testing.assert_array_equal(ours, ref[f'{name}/cam_pred'])


@pytest.mark.parametrize('rw', ['dense', 'sparse'])
def test_infer_aff_labels_equal_the_original(infer_run, rw):
    ref, base, ids = infer_run
    for name in ids:
        ours = load_label_png(str(base / f'rw_{rw}' / f'{name}.png'))
        mismatched = int((ours != ref[f'{name}/rw']).sum())
        print(f'rw {rw} {name}: {mismatched} of {ours.size} pixels differ')
        assert len(np.unique(ref[f'{name}/rw'])) >= 2
        assert mismatched == 0


# ----------------------------------------------------------------------------- evaluation

@pytest.fixture(scope='module')
def eval_inputs(tmp_path_factory):
    ref = load_fixture('psa_stages_eval.npz')
    base = tmp_path_factory.mktemp('stages_eval')
    ids = [str(i) for i in ref['ids']]
    for name in ids:
        atomic_save_png(str(base / 'gt' / f'{name}.png'), ref[f'{name}/gt'])
        atomic_save_png(str(base / 'pred' / f'{name}.png'), ref[f'{name}/pred'])
        atomic_save_npy(str(base / 'cam' / f'{name}.npy'), stored_dict(ref, f'{name}/cam'))
    (base / 'list.txt').write_text(''.join(f'{name}\n' for name in ids))
    return ref, base


def run_evaluation(base, *extra):
    return evaluation.main(['--list', str(base / 'list.txt'), '--gt_dir', str(base / 'gt'), '--workers', '0',
                            '--comment', 'audit', '--logfile', str(base / 'log.txt'), *extra])


def test_evaluation_png_equals_the_original(eval_inputs):
    ref, base = eval_inputs
    assert (ref['png_iou'] == 0).sum() >= 10 and 0 < ref['png_miou'] < 100  # absent classes count as 0
    ours = run_evaluation(base, '--predict_dir', str(base / 'pred'))
    print('png: max |IoU diff| (percent)', np.abs(np.array(ours['iou']) - ref['png_iou']).max(),
          'mIoU diff', ours['miou'] - ref['png_miou'])
    # the reference's union + 1e-10: relative differences below 1e-10 / union
    np.testing.assert_allclose(ours['iou'], ref['png_iou'], rtol=1e-11, atol=0)
    assert abs(ours['miou'] - ref['png_miou']) < 1e-9
    # SSENet's extra means (fractions; ours prints FP/ALL and FN/ALL in percent); P/TP holds a 1e10 / TP term
    for key, ref_key, scale in (('mean_t_tp', 't_tp', 1), ('mean_p_tp', 'p_tp', 1), ('mean_fp_all', 'fp_all', 100),
                                ('mean_fn_all', 'fn_all', 100), ('fg_miou', 'miou_foreground', 100)):
        assert ours[key] == pytest.approx(float(ref['ssenet_' + ref_key]) * scale, rel=1e-11), key
    assert ref['ssenet_mIoU'] == ref['png_miou']


def test_evaluation_ignore_pred_255_is_not_the_original(eval_inputs):
    """The flag keeps this project's former rule: predicted-255 pixels leave T too, so IoUs rise."""
    ref, base = eval_inputs
    ours = run_evaluation(base, '--predict_dir', str(base / 'pred'), '--ignore_pred_255')
    assert ours['miou'] > ref['png_miou'] + 0.1


def test_evaluation_npy_curve_equals_the_original(eval_inputs):
    ref, base = eval_inputs
    ours = run_evaluation(base, '--predict_dir', str(base / 'cam'), '--type', 'npy', '--curve', 'True')
    thresholds, mious = np.array(ours['curve']).T
    np.testing.assert_array_equal(thresholds, ref['curve_thresholds'])
    print('curve: max |mIoU diff| (percent)', np.abs(mious - ref['curve_miou']).max())
    np.testing.assert_allclose(mious, ref['curve_miou'], rtol=1e-11, atol=0)
    best = int(np.argmax(ref['curve_miou']))
    assert ours['threshold'] == ref['curve_thresholds'][best]
    np.testing.assert_allclose(ours['iou'], ref['curve_iou'][best], rtol=1e-11, atol=0)
    assert len(np.unique(np.round(ref['curve_miou'], 6))) > 10


# ----------------------------------------------------------------------------- train_aff and train_cls

@pytest.fixture(scope='module')
def train_ref():
    import json
    with open(os.path.join(FIXTURES, 'psa_stages_train.json')) as f:
        return load_fixture('psa_stages_train.npz'), json.load(f)


def relative_max_diff(ours, orig):
    ours = np.asarray(ours, np.float64)
    assert ours.shape == orig.shape
    return float(np.abs(ours - orig).max() / np.abs(orig).max())


def test_affinity_labels_equal_the_original(train_ref, tmp_path):
    """VOC12AffDataset (la/ha dicts -> label map -> pair labels) with train_aff's transforms minus the random ones."""
    ref, _ = train_ref
    ids = [str(i) for i in ref['ids']]
    os.makedirs(tmp_path / 'voc' / 'JPEGImages')
    for name in ids:
        (tmp_path / 'voc' / 'JPEGImages' / f'{name}.jpg').write_bytes(ref[f'{name}/jpeg'].tobytes())
        for tag in ('la', 'ha'):
            atomic_save_npy(str(tmp_path / tag / f'{name}.npy'), stored_dict(ref, f'{name}/{tag}'))
    (tmp_path / 'list.txt').write_text(''.join(f'/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n' for n in ids))
    dataset = voc12.data.VOC12AffDataset(
        str(tmp_path / 'list.txt'), label_la_dir=str(tmp_path / 'la'), label_ha_dir=str(tmp_path / 'ha'),
        voc12_root=str(tmp_path / 'voc'), cropsize=ref['aff_img'].shape[-1], radius=5,
        joint_transform_list=[None] * 4,
        img_transform_list=[None, np.asarray, resnet38d.Normalize(), imutils.HWC_to_CHW],
        label_transform_list=[None, None, None, imutils.AvgPool2d(8)])
    items = [dataset[i] for i in range(len(ids))]
    img = np.stack([np.asarray(item[0]) for item in items])
    print('aff image: max abs diff', np.abs(img - ref['aff_img']).max())
    np.testing.assert_allclose(img, ref['aff_img'], rtol=0, atol=1e-6)
    for j, tag in enumerate(('bg', 'fg', 'neg')):
        ours = np.stack([item[1][j].numpy() for item in items])
        assert ref[f'aff_label_{tag}'].sum() > 100  # every kind of pair occurs
        np.testing.assert_array_equal(ours, ref[f'aff_label_{tag}'])


def test_affinity_loss_equals_the_original(train_ref):
    ref, _ = train_ref
    labels = tuple(torch.from_numpy(ref[f'aff_label_{tag}']) for tag in ('bg', 'fg', 'neg'))
    model = reference_net(resnet38_aff.Net, int(ref['aff_seed']))
    img = torch.from_numpy(ref['aff_img'])
    with torch.no_grad():
        aff = model(img)
        print('aff net output: relative max diff', relative_max_diff(aff, ref['aff_net']))
        assert relative_max_diff(aff, ref['aff_net']) < 1e-5
        for tag, a in (('fixed', torch.from_numpy(ref['aff_fixed'])), ('net', aff)):
            counts = [float(label.sum()) + train_aff.EPS for label in labels]
            terms = dict(zip(('loss', 'bg_loss', 'fg_loss', 'neg_loss'), train_aff.affinity_loss(a, labels, counts)))
            for key, value in terms.items():
                diff = abs(float(value) - float(ref[f'aff_{tag}_{key}'])) / abs(float(ref[f'aff_{tag}_{key}']))
                print(f'aff loss on {tag} affinities, {key}: relative diff {diff:.3g}')
                assert diff < (1e-6 if tag == 'fixed' else 1e-5)
        _, logs = train_aff.batch_loss(model, (img, labels), (img, labels))
    for key in ('loss', 'bg_loss', 'fg_loss', 'neg_loss', 'bg_cnt', 'fg_cnt', 'neg_cnt'):
        assert logs[key] == pytest.approx(float(ref[f'aff_net_{key}']), rel=1e-5), key


def test_crop_not_a_multiple_of_8_crashes_the_original_and_pairs_like_the_network_here(train_ref):
    """Crop 100: the original's labels use 100 // 8 = 12 but the pooled map and the feature map are 13 wide."""
    _, notes = train_ref
    assert notes['crop100'].startswith('ValueError: operands could not be broadcast')
    pooled = imutils.AvgPool2d(8)(np.zeros((100, 100, 1), np.float32))[..., 0].astype(np.uint8)
    assert list(pooled.shape) == notes['crop100_pooled_shape']
    labels = voc12.data.ExtractAffinityLabelInRadius(cropsize=100 // 8, radius=5)(pooled)
    model = resnet38_aff.Net(width=0.125).eval()
    with torch.no_grad():
        aff = model(torch.zeros(1, 3, 100, 100))
    assert labels[0].shape == aff.shape[1:] == (34, notes['crop100_net_pairs'])


def test_train_cls_loss_equals_the_original(train_ref):
    ref, _ = train_ref
    model = reference_net(resnet38_cls.Net, int(ref['cls_seed']))
    img, label = torch.from_numpy(ref['cls_img']), torch.from_numpy(ref['cls_label'])
    with torch.no_grad():
        logits = model(img)
        names = [str(i) for i in range(len(img))]
        loss, _ = train_cls.batch_loss(model, (names, img, label), (names, img, label))
    print('train_cls logits: relative max diff', relative_max_diff(logits, ref['cls_logits']),
          'loss relative diff', abs(float(loss) / float(ref['cls_loss']) - 1))
    assert relative_max_diff(logits, ref['cls_logits']) < 1e-5
    assert float(loss) == pytest.approx(float(ref['cls_loss']), rel=1e-6)
