"""Evaluate label PNGs or CAM dicts against VOC ground truth: per-class IoU, mIoU and error ratios.

    python evaluation.py --list VOC2012/ImageSets/Segmentation/val.txt --predict_dir seg_crf \
        --gt_dir VOC2012/SegmentationClass --comment note --type png
    python evaluation.py ... --predict_dir cam --type npy --curve True    # background-score sweep

One dataset-level confusion matrix over the pixels whose GT is < 255, accumulated by worker processes that
each decode a chunk of the images. As the reference (SEAM / SSENet evaluation.py), a predicted 255 on such a
pixel is a miss of its GT class; `--ignore_pred_255` leaves those pixels out instead (this project's former
default). `--type npy` reads CAM dicts {class 0..19: HxW} and labels each pixel with argmax([t, CAMs]) for
a constant background score t (`--t`, default 0.2 as PSA's cam_pred); `--curve True` sweeps t = 0.00..0.59
instead, prints the best t, and writes the curve as CSV and PNG (`--curve_out`, default: beside the log
file). That best t is picked against the ground truth (an oracle number, not a fair weakly supervised result).
"""
import argparse
import csv
import os
import time
from multiprocessing import Pool

import numpy as np

from tool import metrics
from tool.cli import run_main, str2bool
from tool.io import UserError, atomic_write, check_output_dir, load_dict_npy, load_label_png, require_dir
from voc12.data import CAT_LIST, load_img_name_list

CURVE_THRESHOLDS = tuple(i / 100 for i in range(60))
DEFAULT_BG_SCORE = 0.2
CLASS_NAMES = ('background',) + tuple(CAT_LIST)


def default_workers():
    return min(8, len(os.sched_getaffinity(0)))


def _paths(image_id, predict_dir, gt_dir, kind):
    return os.path.join(predict_dir, f'{image_id}.{kind}'), os.path.join(gt_dir, f'{image_id}.png')


def _check_files(ids, predict_dir, gt_dir, kind):
    """One UserError listing how many prediction / GT files of the list are missing (before any work)."""
    for folder, ext, what in ((predict_dir, kind, 'prediction'), (gt_dir, 'png', 'ground-truth')):
        require_dir(folder, what)
        present = set(os.listdir(folder))
        missing = [i for i in ids if f'{i}.{ext}' not in present]
        if missing:
            raise UserError(f'{len(missing)} of {len(ids)} {what} files of the list are missing, e.g. '
                            f'{os.path.join(folder, missing[0] + "." + ext)} (check the folder and the list)')


def split_ids(ids, workers):
    """About four interleaved chunks per worker (balances the load, one result per chunk)."""
    n_chunks = min(len(ids), max(1, 4 * workers))
    return [ids[k::n_chunks] for k in range(n_chunks)]


def _chunk_confusion(job):
    """Summed confusion of a chunk of ids: (n, n + 1) for PNGs ((n, n) with ignore_pred_255),
    (len(thresholds), n, n) for CAM dicts."""
    ids, predict_dir, gt_dir, kind, thresholds, n, ignore_pred_255 = job
    total = 0
    for image_id in ids:
        pred_path, gt_path = _paths(image_id, predict_dir, gt_dir, kind)
        gt = load_label_png(gt_path)
        if kind == 'png':
            total = total + metrics.label_confusion(gt, load_label_png(pred_path), n, gt_path, pred_path,
                                                    pred_255_column=not ignore_pred_255)
            continue
        metrics.check_labels(gt, n, gt_path)
        cams = load_dict_npy(pred_path)
        metrics.check_cam_dict(cams, gt.shape, n, pred_path, gt_path)
        fg_score, fg_label = metrics.foreground_max(cams, gt.shape, n)
        total = total + metrics.threshold_confusions(fg_score, fg_label, gt, thresholds, n)
    return total


def _confusions(jobs, workers):
    if workers <= 1 or len(jobs) <= 1:
        return sum(_chunk_confusion(job) for job in jobs)
    with Pool(min(workers, len(jobs))) as pool:
        return sum(pool.imap_unordered(_chunk_confusion, jobs))


def _percent(scores):
    """scores_from_confusion with IoU-type values in percent (T/TP and P/TP stay ratios)."""
    out = dict(scores)
    for key in ('iou', 'precision', 'recall', 'fp_all', 'fn_all'):
        out[key] = [float(v) * 100 for v in scores[key]]
    for key in ('miou', 'fg_miou', 'mean_fp_all', 'mean_fn_all'):
        out[key] = scores[key] * 100
    for key in ('t_tp', 'p_tp'):
        out[key] = [float(v) for v in scores[key]]
    return out


def evaluate(ids, predict_dir, gt_dir, type='png', thresholds=None, workers=None, num_classes=21, absent='zero',
             ignore_pred_255=False):
    """Score the predictions of `ids` against `gt_dir/<id>.png`.

    type 'png': label PNGs `predict_dir/<id>.png`. type 'npy': CAM dicts `predict_dir/<id>.npy` scored at
    each background score in `thresholds` (default (0.2,)); the returned scores are those of the best one,
    with 'threshold' and 'curve' ([(t, mIoU %)] for every threshold) added.
    Returns the keys of tool.metrics.scores_from_confusion (IoU, precision, recall, FP/ALL, FN/ALL and
    their means in percent; per class as lists; `absent` says how a class absent from GT and prediction
    counts, see scores_from_confusion) plus
    'confusion' (n x n counts; for PNGs n x (n + 1), the last column the GT pixels predicted 255, unless
    ignore_pred_255 leaves those pixels out as GT 255) and 'num_images'. workers: processes decoding in parallel
    (0/1: in-process).
    """
    if type not in ('png', 'npy'):
        raise UserError(f'--type {type}: choose png (label maps) or npy (CAM dicts)')
    if type == 'png' and thresholds is not None:
        raise UserError('background thresholds (--t, --curve) apply to --type npy only')
    if not ids:
        raise UserError('the image list is empty; nothing to evaluate')
    if type == 'npy':
        thresholds = tuple(thresholds) if thresholds is not None else (DEFAULT_BG_SCORE,)
    workers = default_workers() if workers is None else workers
    _check_files(ids, predict_dir, gt_dir, type)

    jobs = [(chunk, predict_dir, gt_dir, type, thresholds, num_classes, ignore_pred_255)
            for chunk in split_ids(ids, workers)]
    confusion = _confusions(jobs, workers)
    if type == 'png':
        return {**_percent(metrics.scores_from_confusion(confusion, absent)), 'confusion': confusion,
                'num_images': len(ids)}

    curve = [(t, metrics.scores_from_confusion(conf, absent)['miou'] * 100) for t, conf in zip(thresholds, confusion)]
    best = int(np.argmax(np.nan_to_num([m for _, m in curve], nan=-1.0)))  # first best: lowest t
    return {**_percent(metrics.scores_from_confusion(confusion[best], absent)), 'confusion': confusion[best],
            'num_images': len(ids), 'threshold': thresholds[best], 'curve': curve}


def format_table(result, class_names):
    lines = [f'{"class":>12} {"IoU":>8} {"precision":>10} {"recall":>8}']
    for name, iou, prec, rec in zip(class_names, result['iou'], result['precision'], result['recall']):
        lines.append(f'{name:>12} {iou:8.3f} {prec:10.3f} {rec:8.3f}')
    lines += ['=' * 41,
              f'{"mIoU":>12} {result["miou"]:8.3f}',
              f'{"fg mIoU":>12} {result["fg_miou"]:8.3f}',
              f'{"T/TP":>12} {result["mean_t_tp"]:8.3f}   (means over foreground classes)',
              f'{"P/TP":>12} {result["mean_p_tp"]:8.3f}',
              f'{"FP/ALL":>12} {result["mean_fp_all"]:8.3f} %',
              f'{"FN/ALL":>12} {result["mean_fn_all"]:8.3f} %']
    return '\n'.join(lines)


def append_log(logfile, comment, entries):
    """Append '<timestamp>\\t<comment>', a 'key:value  ' line and a separator, as the reference does."""
    folder = os.path.dirname(logfile)
    if folder:
        os.makedirs(folder, exist_ok=True)
    values = ''.join(f'{key}:{value}  ' for key, value in entries.items())
    with open(logfile, 'a') as f:
        f.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")}\t{comment}\n{values}\n{"=" * 37}\n')


def write_curve(prefix, curve):
    """`<prefix>.csv` (threshold, mIoU) and `<prefix>.png` (the plot); returns both paths."""
    def write_csv(tmp):
        with open(tmp, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['bg_score', 'miou'])
            writer.writerows((f'{t:.2f}', f'{m:.4f}') for t, m in curve)

    def write_png(tmp):
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([t for t, _ in curve], [m for _, m in curve], marker='.')
        t_best, m_best = max(curve, key=lambda c: c[1])
        ax.axvline(t_best, color='grey', linestyle=':')
        ax.set(xlabel='background score t', ylabel='mIoU (%)', title=f'best t = {t_best:.2f}: {m_best:.2f}%')
        fig.tight_layout()
        fig.savefig(tmp, format='png', dpi=100)
        plt.close(fig)

    paths = (prefix + '.csv', prefix + '.png')
    atomic_write(paths[0], write_csv)
    atomic_write(paths[1], write_png)
    return paths


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--list', default='./VOC2012/ImageSets/Segmentation/train.txt', type=str,
                   help='split list: bare ids or "/JPEGImages/<id>.jpg ..." lines')
    p.add_argument('--predict_dir', default='./out_rw', type=str)
    p.add_argument('--gt_dir', default='./VOC2012/SegmentationClass', type=str)
    p.add_argument('--logfile', default='./evallog.txt', type=str, help='results are appended here')
    p.add_argument('--comment', required=True, type=str, help='written with the results into --logfile')
    p.add_argument('--type', default='png', choices=['npy', 'png'], type=str,
                   help='png: label maps; npy: CAM dicts {class 0..19: HxW} scored against a background score')
    p.add_argument('--t', default=None, type=float,
                   help=f'background score for --type npy (default {DEFAULT_BG_SCORE}, as cam_pred)')
    p.add_argument('--curve', default=False, type=str2bool, nargs='?', const=True,
                   help='--type npy: sweep the background score 0.00..0.59 (True/False)')
    p.add_argument('--curve_out', default=None, type=str,
                   help='path prefix of the curve .csv/.png (default: <logfile without extension>_curve)')
    p.add_argument('--num_classes', default=21, type=int)
    p.add_argument('--absent_classes', choices=['zero', 'skip'], default='zero',
                   help='a class absent from GT and prediction: IoU 0 in the mean (zero, the reference) or left '
                        'out (skip, for datasets that use fewer classes)')
    p.add_argument('--ignore_pred_255', action='store_true',
                   help='--type png: leave out pixels predicted 255, as if their GT were 255 (default: a miss of '
                        'the GT class, as the reference)')
    p.add_argument('--workers', default=default_workers(), type=int,
                   help='processes decoding images in parallel (0: in the main process)')
    return p


def _thresholds(args):
    """The background scores to evaluate CAM dicts at (None for --type png)."""
    if args.type == 'png':
        if args.curve or args.t is not None:
            raise UserError('--t and --curve set the background score of CAM dicts; use them with --type npy')
        return None
    if args.curve:
        return CURVE_THRESHOLDS
    return (DEFAULT_BG_SCORE if args.t is None else args.t,)


def _log_entries(args, result, names):
    if args.curve:
        return {'best_t': result['threshold'], 'best_mIoU': result['miou'],
                'mIoU': [round(m, 3) for _, m in result['curve']]}
    entries = {**dict(zip(names, result['iou'])), 'mIoU': result['miou']}
    if args.type == 'npy':
        entries['bg_score'] = result['threshold']
    return entries


def main(argv=None):
    args = build_parser().parse_args(argv)
    thresholds = _thresholds(args)
    ids = load_img_name_list(args.list)
    check_output_dir(os.path.dirname(os.path.abspath(args.logfile)), '--logfile')
    if args.curve and args.curve_out:
        check_output_dir(os.path.dirname(os.path.abspath(args.curve_out)), '--curve_out')
    names = CLASS_NAMES if args.num_classes == len(CLASS_NAMES) else [str(c) for c in range(args.num_classes)]

    print(f'evaluating {args.predict_dir} ({args.type}) against {args.gt_dir}, '
          f'list {args.list} ({len(ids)} images)')
    result = evaluate(ids, args.predict_dir, args.gt_dir, args.type, thresholds, args.workers, args.num_classes,
                      args.absent_classes, args.ignore_pred_255)
    if args.curve:
        print('oracle curve: the background score is picked against the ground truth')
        for k, (t, miou) in enumerate(result['curve']):
            print(f'{k}/{len(result["curve"])} background score: {t:.3f}\tmIoU: {miou:.3f}%')
    if args.type == 'npy':
        print(f'background score t = {result["threshold"]:.2f}')
    print(format_table(result, names))
    if args.curve:
        prefix = args.curve_out or os.path.splitext(args.logfile)[0] + '_curve'
        print('curve written to {} and {}'.format(*write_curve(prefix, result['curve'])))
        print(f'best background score {result["threshold"]:.2f}: mIoU {result["miou"]:.3f}%')
    append_log(args.logfile, args.comment, _log_entries(args, result, names))
    return result


if __name__ == '__main__':
    run_main(main)
