"""The evaluate stage of run_pipeline.py: the val mIoU of every stage's outputs, summary.json and the report.

evaluation.py (the evaluation script) is imported by name when it is needed, as the stage scripts are.
"""
import importlib
import math
import os
import time

import numpy as np

import voc12.data
from tool import metrics, report
from tool.io import UserError, load_dict_npy, load_label_png
from tool.pipeline import write_json

# Classes absent from both the val masks and the predictions are left out of the mean (the demo uses a few
# classes; on VOC every class occurs, so this equals the reference's score).
ABSENT = 'skip'


def crf_dict_label(crf):
    """HxW uint8 labels of a CRF dict {0: bg, k+1: class k}: the key of the highest score."""
    keys = sorted(crf)
    return np.asarray(keys, np.uint8)[np.argmax(np.stack([crf[k] for k in keys]), 0)]


def crf_la_miou(lay, gt_dir):
    """mIoU (%) of the argmax of the val images' la CRF dicts."""
    confusion = 0
    for i in lay.val_ids:
        gt_path, crf_path = os.path.join(gt_dir, f'{i}.png'), lay.path('crf_la', f'{i}.npy')
        confusion = confusion + metrics.label_confusion(load_label_png(gt_path), crf_dict_label(load_dict_npy(crf_path)),
                                                        21, gt_path, crf_path)
    return metrics.scores_from_confusion(confusion, ABSENT)['miou'] * 100


def present(lay, folder, ext):
    return all(os.path.exists(p) for p in lay.files(folder, ext, lay.val_ids))


def evaluate_outputs(args, lay):
    """The mIoU (%) of every stage's val outputs that exist (None for the others)."""
    evaluation = importlib.import_module('evaluation')
    workers = args.num_workers if args.num_workers is not None else evaluation.default_workers()

    def png(folder):
        if not present(lay, folder, 'png'):
            return None
        return evaluation.evaluate(lay.val_ids, lay.path(folder), args.gt_dir, 'png', workers=workers,
                                   absent=ABSENT)['miou']

    scores = {'cam_miou': png('cam_pred'), 'cam_best_miou': None, 'cam_best_threshold': None,
              'crf_la_miou': crf_la_miou(lay, args.gt_dir) if present(lay, 'crf_la', 'npy') else None,
              'rw_miou': png('rw'), 'seg_nocrf_miou': png('seg_pred'), 'seg_crf_miou': png('seg_crf')}
    if present(lay, 'cam', 'npy'):
        best = evaluation.evaluate(lay.val_ids, lay.path('cam'), args.gt_dir, 'npy',
                                   thresholds=evaluation.CURVE_THRESHOLDS, workers=workers, absent=ABSENT)
        scores['cam_best_miou'], scores['cam_best_threshold'] = best['miou'], best['threshold']
    scores['seg_miou'] = scores['seg_crf_miou'] if args.seg_crf else scores['seg_nocrf_miou']
    return {k: (None if v is None or math.isnan(v) else float(v)) for k, v in scores.items()}


def check_ground_truth(args, lay):
    missing = [i for i in lay.val_ids if not os.path.exists(os.path.join(args.gt_dir, f'{i}.png'))]
    if missing:
        raise UserError(f'{len(missing)} ground-truth masks of --val_list are missing, e.g. '
                        f'{os.path.join(args.gt_dir, missing[0] + ".png")} (check --gt_dir / --voc12_root)')


def report_columns(args, lay):
    seg_dir = 'seg_crf' if args.seg_crf else 'seg_pred'
    return [('image', 'image', lambda i: voc12.data.get_img_path(i, args.voc12_root)),
            ('ground truth', 'label', lambda i: os.path.join(args.gt_dir, f'{i}.png')),
            ('CAM', 'cam', lambda i: lay.path('cam', f'{i}.npy')),
            ('random walk', 'label', lambda i: lay.path('rw', f'{i}.png')),
            ('segmentation' + (' + dCRF' if args.seg_crf else ''), 'label', lambda i: lay.path(seg_dir, f'{i}.png'))]


def evaluate_and_report(args, lay, records, status, seconds, wall_start):
    """The evaluate stage: scores the outputs, writes summary.json, report.md and the grid; returns the summary."""
    start = time.perf_counter()
    summary = evaluate_outputs(args, lay)
    seconds['evaluate'] = time.perf_counter() - start
    status['evaluate'] = 'ran'
    seconds['total'] = time.perf_counter() - wall_start
    summary.update({'seconds': {k: None if v is None else round(v, 2) for k, v in seconds.items()},
                    'status': status, 'num_val_images': len(lay.val_ids), 'work_dir': os.path.abspath(args.work_dir),
                    'method': args.method, 'demo': args.demo, 'quick': args.quick})
    write_json(lay.path('summary.json'), summary)
    report.write_report(args.work_dir, summary, records, report_columns(args, lay),
                        report.pick_ids(lay.val_ids, args.report_images))
    print('\n' + report.tables(summary, records))
    print(f'\nsummary: {lay.path("summary.json")}  report: {lay.path("report.md")}')
    return summary
