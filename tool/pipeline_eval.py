"""The evaluate stage of run_pipeline.py: the val mIoU of every stage's outputs, summary.json and the report.

evaluation.py (the evaluation script) is imported by name when it is needed, as the stage scripts are.
"""
import importlib
import json
import math
import os
import time

import numpy as np

import voc12.data
from tool import diagnosis, metrics, pipeline, report
from tool.io import UserError, atomic_save_image, atomic_write, load_dict_npy, load_label_png
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


def present(lay, folder, ext, ids=None):
    return all(os.path.exists(p) for p in lay.files(folder, ext, lay.val_ids if ids is None else ids))


def evaluate_outputs(args, lay, cam_pred_bg):
    """The mIoU (%) of every stage's val outputs that exist (None for the others); cam_pred_bg: the method's
    background score of the CAM (None if infer_cls has not run)."""
    evaluation = importlib.import_module('evaluation')
    workers = args.num_workers if args.num_workers is not None else evaluation.default_workers()

    def png(folder):
        if not present(lay, folder, 'png'):
            return None
        return evaluation.evaluate(lay.val_ids, lay.path(folder), args.gt_dir, 'png', workers=workers,
                                   absent=ABSENT)['miou']

    scores = {'cam_miou': png('cam_pred'), 'cam_best_miou': None, 'cam_best_threshold': None,
              'crf_la_miou': crf_la_miou(lay, args.gt_dir) if present(lay, 'crf_la', 'npy') else None,
              'rw_miou': png('rw'), 'resegment_miou': png(pipeline.SFL_LABELS.folder),
              'seg_nocrf_miou': png('seg_pred'), 'seg_crf_miou': png('seg_crf')}
    if present(lay, 'cam', 'npy'):
        best = evaluation.evaluate(lay.val_ids, lay.path('cam'), args.gt_dir, 'npy',
                                   thresholds=evaluation.CURVE_THRESHOLDS, workers=workers, absent=ABSENT)
        scores['cam_best_miou'], scores['cam_best_threshold'] = best['miou'], best['threshold']
    scores['seg_miou'] = scores['seg_crf_miou'] if args.seg_crf else scores['seg_nocrf_miou']
    scores = {k: (None if v is None or math.isnan(v) else float(v)) for k, v in scores.items()}
    scores['train'] = train_split_scores(args, lay, evaluation, workers, cam_pred_bg)
    return scores


def train_split_scores(args, lay, evaluation, workers, cam_pred_bg):
    """sfl: the train images' re-segmented labels against the CAMs they start from (at the method's background
    score, read off the curve, and at the best one), where the train images have ground truth (the demo's do);
    None otherwise."""
    ids, labels = lay.ids['train'], pipeline.SFL_LABELS.folder
    if not (present(lay, labels, 'png', ids) and present(lay, 'cam', 'npy', ids)
            and all(os.path.exists(os.path.join(args.gt_dir, f'{i}.png')) for i in ids)):
        return None
    best = evaluation.evaluate(ids, lay.path('cam'), args.gt_dir, 'npy', thresholds=evaluation.CURVE_THRESHOLDS,
                               workers=workers, absent=ABSENT)
    resegmented = evaluation.evaluate(ids, lay.path(labels), args.gt_dir, 'png', workers=workers, absent=ABSENT)
    curve = dict((round(t, 2), m) for t, m in best['curve'])
    return {'cam_miou': None if cam_pred_bg is None else float(curve[round(cam_pred_bg, 2)]),
            'cam_best_miou': float(best['miou']), 'cam_best_threshold': float(best['threshold']),
            'resegment_miou': float(resegmented['miou'])}


def check_ground_truth(args, lay):
    missing = [i for i in lay.val_ids if not os.path.exists(os.path.join(args.gt_dir, f'{i}.png'))]
    if missing:
        raise UserError(f'{len(missing)} ground-truth masks of --val_list are missing, e.g. '
                        f'{os.path.join(args.gt_dir, missing[0] + ".png")} (check --gt_dir / --voc12_root)')


CLASS_NAMES = ['background'] + voc12.data.CAT_LIST
# (summary key prefix, label PNG folder) of the stages the diagnosis scores, in the order they run
DIAGNOSED = (('cam', 'cam_pred'), ('rw', 'rw'), ('resegment', pipeline.SFL_LABELS.folder), ('seg_nocrf', 'seg_pred'),
             ('seg_crf', 'seg_crf'))


def cam_pred_background(method, records):
    """The constant background score of the val call of infer_cls --out_cam_pred (None if it has not run)."""
    record = records.get('infer_cls')
    if not record:
        return None
    stage = next(s for s in method.stages if s.name == 'infer_cls')
    return getattr(pipeline.parse_stage_argv(stage, record['argv'][-1]), 'out_cam_pred_alpha', None)


def _percent_or_none(value):
    return None if value is None or np.isnan(value) else round(100 * float(value), 4)


def diagnosis_record(d):
    """summary.json's entry of a diagnose_stage result: rates and per-class IoU in %, the worst val images."""
    return {'miou': _percent_or_none(d['miou']), 'bg_leak': _percent_or_none(d['bg_leak']),
            'missed_fg': _percent_or_none(d['missed_fg']), 'confusion': _percent_or_none(d['confusion']),
            'iou': {CLASS_NAMES[c]: _percent_or_none(v) for c, v in enumerate(d['iou']) if not np.isnan(v)},
            'worst': [[i, _percent_or_none(d['image_miou'][i])] for i in d['worst']]}


def diagnose_outputs(args, lay, titles):
    """{summary key prefix: (title, path_of(id), diagnose_stage result)} of the label-PNG stages whose val
    outputs all exist."""
    out = {}
    for key, folder in DIAGNOSED:
        if present(lay, folder, 'png'):
            def path_of(i, folder=folder):
                return lay.path(folder, f'{i}.png')
            out[key] = (titles[key], path_of, diagnosis.diagnose_stage(
                lay.val_ids, lambda i: os.path.join(args.gt_dir, f'{i}.png'), path_of, len(CLASS_NAMES)))
    return out


def report_columns(args, lay):
    seg_dir = 'seg_crf' if args.seg_crf else 'seg_pred'
    sfl = present(lay, pipeline.SFL_LABELS.folder, 'png')
    pseudo, folder = ('re-segmented CAM', pipeline.SFL_LABELS.folder) if sfl else ('random walk', 'rw')
    return [('image', 'image', lambda i: voc12.data.get_img_path(i, args.voc12_root)),
            ('ground truth', 'label', lambda i: os.path.join(args.gt_dir, f'{i}.png')),
            ('CAM', 'cam', lambda i: lay.path('cam', f'{i}.npy')),
            (pseudo, 'label', lambda i: lay.path(folder, f'{i}.png')),
            ('segmentation' + (' + dCRF' if args.seg_crf else ''), 'label', lambda i: lay.path(seg_dir, f'{i}.png'))]


def evaluate_and_report(args, lay, records, status, seconds, wall_start):
    """The evaluate stage: scores the outputs, writes summary.json, report.md and the grid; returns the summary."""
    start = time.perf_counter()
    cam_pred_bg = cam_pred_background(pipeline.METHODS[args.method], records)
    summary = evaluate_outputs(args, lay, cam_pred_bg)
    summary['cam_pred_bg'] = cam_pred_bg
    diagnosed = diagnose_outputs(args, lay, report.stage_titles(summary))
    seconds['evaluate'] = time.perf_counter() - start
    status['evaluate'] = 'ran'
    seconds['total'] = time.perf_counter() - wall_start
    summary.update({'seconds': {k: None if v is None else round(v, 2) for k, v in seconds.items()},
                    'status': status, 'num_val_images': len(lay.val_ids), 'work_dir': os.path.abspath(args.work_dir),
                    'method': args.method, 'demo': args.demo, 'quick': args.quick, 'data': data_record(args),
                    'diagnosis': {key: diagnosis_record(d) for key, (_, _, d) in diagnosed.items()}})
    write_json(lay.path('summary.json'), summary)
    section = ''
    if diagnosed:
        section = report.diagnosis_section(args.work_dir, {title: d for title, _, d in diagnosed.values()},
                                           [(title, path_of) for title, path_of, _ in diagnosed.values()],
                                           lambda i: voc12.data.get_img_path(i, args.voc12_root),
                                           lambda i: os.path.join(args.gt_dir, f'{i}.png'), CLASS_NAMES)
    report.write_report(args.work_dir, summary, records, report_columns(args, lay),
                        report.pick_ids(lay.val_ids, args.report_images), section)
    print('\n' + report.tables(summary, records))
    print(f'\nsummary: {lay.path("summary.json")}  report: {lay.path("report.md")}')
    return summary


def data_record(args):
    """summary.json's 'data': where the images came from ('generated' demo data, demo settings on 'given' data,
    or None: no --demo), the folder and, for a folder make_demo wrote, its parameters."""
    stamp = os.path.join(args.voc12_root, 'demo_params.json')
    params = None
    if os.path.exists(stamp):
        with open(stamp) as f:
            params = json.load(f)
    return {'source': args.data_source, 'voc12_root': os.path.abspath(args.voc12_root), 'demo_params': params}


def write_methods_report(work_dir, summaries):
    """<work_dir>/methods.md and methods.png: the mIoU per stage and the wall time of each method's summary."""
    records = {name: pipeline.read_json(os.path.join(s['work_dir'], 'stages.json')) for name, s in summaries.items()}
    text = report.methods_markdown(summaries, records)

    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(os.path.join(work_dir, report.METHODS_NAME + '.md'), write)
    atomic_save_image(os.path.join(work_dir, report.METHODS_NAME + '.png'), report.methods_chart(summaries),
                      format='PNG')
    print('\n' + text)
