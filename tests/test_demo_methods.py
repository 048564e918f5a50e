"""The --quick demo settings of every method end to end on a small folder of one's own (--method all).

--quick is a code check, not a result (1 epoch per training stage on 96 images): these tests check that each
method's own scripts and networks ran in its stages and that every artefact the run promises is there and
consistent, not the mIoU (tests/test_demo.py checks psa's full demo numbers).
"""
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

import evaluation
import run_pipeline
import voc12.data
from tool import report
from tool.io import load_dict_npy
from voc12.synthetic import make_demo

SCORES = ('cam_miou', 'cam_best_miou', 'crf_la_miou', 'rw_miou', 'seg_nocrf_miou', 'seg_crf_miou')
STAGES = ('train_cls', 'infer_cls', 'train_aff', 'infer_aff', 'train_seg', 'infer_seg')


def run(argv):
    threads = torch.get_num_threads()
    try:
        return run_pipeline.main(argv)
    finally:
        torch.set_num_threads(threads)  # the demo sets its own; the other tests run with conftest's


def check_artefacts(work_dir, summary, method, scores=SCORES, stages=STAGES, diagnosed=('cam', 'rw', 'seg_nocrf', 'seg_crf')):
    on_disk = json.loads((work_dir / 'summary.json').read_text())
    assert on_disk == json.loads(json.dumps(summary)) and on_disk['method'] == method
    assert all(math.isfinite(on_disk[k]) and 0 <= on_disk[k] <= 100 for k in scores)
    assert all(on_disk['status'][s] == 'ran' for s in stages)
    assert list(on_disk['diagnosis']) == list(diagnosed)
    for d in on_disk['diagnosis'].values():
        assert d['iou']['background'] is not None and 0 <= d['bg_leak'] <= 100 and 0 <= d['missed_fg'] <= 100
        assert len(d['worst']) == 5
    text = (work_dir / 'report.md').read_text()
    assert f'method {method}' in text and '## Diagnosis (val, % of pixels)' in text
    for name in ('report_grid.png', 'report_worst.png'):
        with Image.open(work_dir / name) as png:
            assert len(np.unique(np.asarray(png.convert('RGB')).reshape(-1, 3), axis=0)) > 20
    return on_disk, text


METHOD_STAGES = {  # method: (its stage 1 and 2 scripts, its classification network, a loss term of its log, bg)
    'psa': (('train_cls', 'infer_cls'), 'network.resnet38_cls', ' loss:', 0.2),
    'ssenet': (('train_cls_ser', 'infer_cls_ser'), 'network.resnet38_cls_ser', 'loss_r:', 0.2),
    'seam': (('train_SEAM', 'infer_SEAM'), 'network.resnet38_SEAM', 'loss_ecr:', 0.26),
    'sbnet': (('train_SB', 'infer_SB'), 'network.resnet38_SEAM_BD', 'loss_smooth:', 0.26)}
MIN_MAX_NORMED = ('seam', 'sbnet')  # SEAM's min-max norm of the CAMs sends the min below 0


def check_method_run(work_dir, summary, method, data):
    """The method's own scripts, network and loss ran in stages 1-2, PSA's after; its CAM dicts and cam_pred bg."""
    on_disk, text = check_artefacts(work_dir, summary, method)
    scripts, network, loss_term, cam_pred_bg = METHOD_STAGES[method]
    records = json.loads((work_dir / 'stages.json').read_text())
    assert (records['train_cls']['script'], records['infer_cls']['script']) == scripts
    assert records['train_aff']['script'] == 'train_aff' and records['infer_seg']['script'] == 'infer_seg'
    log = next((work_dir / 'cls').glob('*.log')).read_text()
    assert f"'network': '{network}'" in log and loss_term in log  # the method's loss was trained
    assert on_disk['cam_pred_bg'] == cam_pred_bg and f'CAM (background score {cam_pred_bg:g})' in text
    val_ids = voc12.data.load_img_name_list(str(data / 'lists' / 'val.txt'))[:3]
    labels = voc12.data.load_image_label_list_from_npy(val_ids, str(data / 'cls_labels.npy'))
    for i, label in zip(val_ids, labels):  # CAM dicts of the label's classes, at most 1 (max-norm: at least 0)
        cam = load_dict_npy(str(work_dir / 'cam' / f'{i}.npy'))
        assert sorted(cam) == np.nonzero(label)[0].tolist()
        assert all(np.isfinite(v).all() and v.max() <= 1 and (method in MIN_MAX_NORMED or v.min() >= 0)
                   for v in cam.values())
    return on_disk, text


def check_sbnet_first_pass(work_dir, data):
    """sbnet's SEAM first pass ran with SEAM's scripts and network, and train_SB read the boundary maps of its CRF
    labels: per train image, the inner boundary of each label region of the argmax of the la CRF dict."""
    records = json.loads((work_dir / 'stages.json').read_text())
    assert [records[s]['script'] for s in ('train_seam', 'infer_seam', 'make_sb_map')] == \
        ['train_SEAM', 'infer_SEAM', 'make_sb_map']
    assert "'network': 'network.resnet38_SEAM'" in next((work_dir / 'seam').glob('*.log')).read_text()
    argv = records['train_cls']['argv'][0]
    assert argv[argv.index('--sb_map_dir') + 1] == str(work_dir / 'sb_map')
    for i in voc12.data.load_img_name_list(str(data / 'lists' / 'train_aug.txt'))[:3]:
        crf = load_dict_npy(str(work_dir / 'seam_crf_la' / f'{i}.npy'))
        keys = sorted(crf)
        label = np.asarray(keys)[np.argmax(np.stack([crf[k] for k in keys]), 0)]
        sb_map = np.load(work_dir / 'sb_map' / f'{i}.npy')
        assert sb_map.shape == (21,) + label.shape and sb_map.dtype == np.float32
        for c in range(21):
            region = np.pad(label == c, 1, mode='edge')
            inside = np.ones_like(region[1:-1, 1:-1])
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    inside &= region[1 + dy:region.shape[0] - 1 + dy, 1 + dx:region.shape[1] - 1 + dx]
            np.testing.assert_array_equal(sb_map[c], (label == c) & ~inside)


SFL_SCORES = ('cam_miou', 'cam_best_miou', 'resegment_miou', 'seg_nocrf_miou', 'seg_crf_miou')
SFL_STAGES = ('demo_coco', 'train_cls', 'infer_cls', 'train_edge', 'resegment', 'train_seg', 'infer_seg')


def check_sfl_run(work_dir, summary, data):
    """sfl: SEAM's stages 1-2, the segmenter trained on the generated COCO-layout set, the train and val CAMs
    re-segmented into sfl/ (label PNGs of the image's classes), train_seg retrained on them; tagged as using
    external pixel-level supervision."""
    on_disk, text = check_artefacts(work_dir, summary, 'sfl', SFL_SCORES, SFL_STAGES,
                                    ('cam', 'resegment', 'seg_nocrf', 'seg_crf'))
    assert on_disk['rw_miou'] is None and on_disk['crf_la_miou'] is None
    records = json.loads((work_dir / 'stages.json').read_text())
    assert [records[s]['script'] for s in SFL_STAGES[1:5]] == ['train_SEAM', 'infer_SEAM', 'train_edge',
                                                               'infer_and_envalue']
    edge_argv = records['train_edge']['argv'][0]
    assert edge_argv[edge_argv.index('--cocoRoot') + 1] == str(work_dir / 'coco')
    assert (work_dir / 'coco' / 'train2017').is_dir() and (work_dir / 'edge' / 'edge_edge.pth').is_file()
    seg_argv = records['train_seg']['argv'][0]
    assert seg_argv[seg_argv.index('--mask_dir') + 1] == str(work_dir / 'sfl')
    ids = voc12.data.load_img_name_list(str(data / 'lists' / 'train_aug.txt'))
    labels = voc12.data.load_image_label_list_from_npy(ids, str(data / 'cls_labels.npy'))
    for i, label in zip(ids, labels):
        with Image.open(work_dir / 'sfl' / f'{i}.png') as png:
            assert png.mode == 'P' and png.size == Image.open(data / 'JPEGImages' / f'{i}.jpg').size
            assert set(np.unique(np.asarray(png))) <= {0} | set(np.nonzero(label)[0] + 1)
    train = on_disk['train']  # the CAM at the method's background score is a point of the best one's curve
    assert set(train) == {'cam_miou', 'cam_best_miou', 'cam_best_threshold', 'resegment_miou'}
    assert all(0 <= train[k] <= 100 for k in ('cam_miou', 'cam_best_miou', 'resegment_miou'))
    assert train['cam_miou'] <= train['cam_best_miou']
    val_ids = voc12.data.load_img_name_list(str(data / 'lists' / 'val.txt'))  # the curve's point is cam_pred's score
    curve = evaluation.evaluate(val_ids, str(work_dir / 'cam'), str(data / 'SegmentationClass'), 'npy',
                                thresholds=evaluation.CURVE_THRESHOLDS, workers=1, absent='skip')['curve']
    assert dict(curve)[on_disk['cam_pred_bg']] == pytest.approx(on_disk['cam_miou'], abs=1e-6)
    assert 'method sfl (+ COCO pixel masks: external pixel-level supervision)' in text
    assert f"| CAM re-segmented by the COCO-trained segmenter (SFL) | {on_disk['resegment_miou']:.1f} |" in text
    assert f"re-segmented labels {train['resegment_miou']:.1f}" in text
    return on_disk, text


@pytest.mark.slow
def test_quick_demo_settings_of_every_method_on_a_folder_of_ones_own(tmp_path):
    """--method all with the demo's settings on a small VOC-layout folder given by the dataset flags (made under
    another seed than the demo's): each method's own stages ran on it, the reports name the folder, nothing was
    generated, and methods.md / methods.png compare the five runs (sfl's segmenter on a generated COCO-layout set)."""
    data = tmp_path / 'mine'
    make_demo(str(data), n_train=16, n_val=6, size=96, seed=7)
    work_dir = tmp_path / 'work'
    summaries = run(['--demo', '--quick', '--method', 'all', '--work_dir', str(work_dir), '--voc12_root', str(data),
                     '--train_list', str(data / 'lists' / 'train_aug.txt'), '--val_list', str(data / 'lists' / 'val.txt'),
                     '--gt_dir', str(data / 'SegmentationClass'), '--cls_labels', str(data / 'cls_labels.npy')])
    assert list(summaries) == ['psa', 'ssenet', 'seam', 'sbnet', 'sfl'] and not (work_dir / 'data').exists()
    check_sbnet_first_pass(work_dir / 'sbnet', data)
    checked = {'sfl': check_sfl_run(work_dir / 'sfl', summaries['sfl'], data)}
    for method, summary in summaries.items():
        on_disk, text = checked.get(method) or check_method_run(work_dir / method, summary, method, data)
        assert on_disk['num_val_images'] == 6 and 'demo_data' not in on_disk['status']
        assert on_disk['data'] == {'source': 'given', 'voc12_root': str(data), 'demo_params': None}
        assert f'of the data in `{data}` (demo settings, quick on this folder; not generated)' in text
        argv = json.loads((work_dir / method / 'stages.json').read_text())['train_cls']['argv'][0]
        assert argv[argv.index('--train_list') + 1] == str(data / 'lists' / 'train_aug.txt')
        assert argv[-2:] == ['--max_epoches', '1'] and '--scratch' in argv  # the demo's settings, --quick's epochs
    table = (work_dir / 'methods.md').read_text()
    assert '| sfl (+ COCO pixel masks: external pixel-level supervision) |' in table
    for key, title, missing in (('rw_miou', 'random walk (AffinityNet)', ['sfl']),
                                ('seg_crf_miou', 'retrained segmentation + dCRF', []),
                                ('resegment_miou', 'CAM re-segmented by the COCO-trained segmenter (SFL)',
                                 ['psa', 'ssenet', 'seam', 'sbnet'])):
        row = next(line for line in table.splitlines() if line.startswith(f'| {title}'))
        cells = ['-' if s[key] is None else f'{s[key]:.1f}' for s in summaries.values()]
        assert row == f'| {title} | ' + ' | '.join(cells) + ' |'
        assert [m for m, cell in zip(summaries, cells) if cell == '-'] == missing
    with Image.open(work_dir / 'methods.png') as png:  # a bar per method and score: the five method colours
        colours = {tuple(c) for c in np.asarray(png.convert('RGB')).reshape(-1, 3)}
    assert set(report.METHOD_COLOURS) <= colours
