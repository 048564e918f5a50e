"""Segmentation scores from one dataset-level confusion matrix, as the reference's evaluation.py counts them.

conf[g, p] counts the pixels whose ground truth is g and prediction is p, over pixels where both are
valid (not 255). The reference (SEAM / SSENet evaluation.py) ignores only GT 255: a prediction of 255 on a
valid GT pixel is a miss of the GT class. label_confusion(..., pred_255_column=True) keeps those pixels in an
extra last column, which scores_from_confusion counts in T only. Label maps are HxW uint8 class indices; 255
means "ignore".
"""
import functools

import numpy as np

from tool.io import UserError

IGNORE = 255


def _runs(gt, pred):
    """Runs of equal (gt, pred) pairs in raster order of two label maps: gt values, pred values, lengths.

    Label maps are piecewise constant, so the few thousand runs are far cheaper to count than every pixel.
    """
    g, p = gt.ravel(), pred.ravel()
    change = g[1:] != g[:-1]
    change |= p[1:] != p[:-1]
    bounds = np.concatenate(([0], np.flatnonzero(change) + 1, [g.size]))
    return g[bounds[:-1]], p[bounds[:-1]], np.diff(bounds)


@functools.lru_cache
def _class_index(num_classes):
    """Lookup table of label values: a class to itself, 255 to num_classes, anything else to num_classes + 1."""
    index = np.full(256, num_classes + 1, np.intp)
    index[:num_classes] = np.arange(num_classes)
    index[IGNORE] = num_classes
    return index


def _check_values(values, num_classes, path):
    bad = values[(values >= num_classes) & (values != IGNORE)]
    if bad.size:
        raise UserError(f'{path} holds label {bad[0]}; labels must be 0..{num_classes - 1} or {IGNORE} (ignore)')


def _size(shape):
    return 'x'.join(str(d) for d in reversed(shape))


def check_same_size(pred_shape, gt_shape, pred_path, gt_path):
    if tuple(pred_shape) != tuple(gt_shape):
        raise UserError(f'{pred_path} is {_size(pred_shape)} (WxH) but its ground truth {gt_path} is '
                        f'{_size(gt_shape)}; predictions must have the size of the ground truth')


def label_confusion(gt, pred, num_classes, gt_path='ground truth', pred_path='prediction', pred_255_column=False):
    """num_classes x num_classes confusion of one uint8 image pair: bincount of gt * n + pred over pixels
    where both are < 255; with pred_255_column an (n + 1)th column counts the valid GT pixels predicted 255.
    UserError on a size mismatch or a label that is neither a class nor 255."""
    check_same_size(pred.shape, gt.shape, pred_path, gt_path)
    gt_values, pred_values, lengths = _runs(gt, pred)
    index, k = _class_index(num_classes), num_classes + 2
    codes = index[gt_values] * k + index[pred_values]
    counts = np.bincount(codes, weights=lengths, minlength=k * k).reshape(k, k)
    if counts[-1].any() or counts[:, -1].any():
        _check_values(gt_values, num_classes, gt_path)
        _check_values(pred_values, num_classes, pred_path)
    return counts[:num_classes, :num_classes + int(pred_255_column)].astype(np.int64)


def check_labels(label, num_classes, path):
    """UserError if a label map holds a value that is neither a class index nor 255."""
    _check_values(np.flatnonzero(np.bincount(label.ravel(), minlength=256)), num_classes, path)


def check_cam_dict(cam_dict, gt_shape, num_classes, path, gt_path):
    """UserError unless every key is a foreground class 0..num_classes-2 with a map of the GT's size."""
    for key, cam in cam_dict.items():
        if not isinstance(key, (int, np.integer)) or not 0 <= key < num_classes - 1:
            raise UserError(f'{path} has key {key!r}; CAM dict keys are foreground classes 0..{num_classes - 2}')
        check_same_size(np.shape(cam), gt_shape, f'{path} (class {key})', gt_path)


def foreground_max(cam_dict, shape, num_classes=21):
    """Per pixel the best foreground score and its label (class key + 1), as the reference's argmax sees them.

    The reference stacks a 21-channel array: channel 0 the background score, channel k+1 the CAM of class k,
    zeros for classes absent from the dict, and takes np.argmax (first maximum wins). Among the zero
    channels only the lowest absent class can win, so that one stands in for all of them.
    """
    keys = sorted(int(k) for k in cam_dict)
    absent = [k for k in range(num_classes - 1) if k not in cam_dict]
    channels = sorted(keys + absent[:1])
    stack = np.stack([np.asarray(cam_dict[k], np.float32) if k in cam_dict else np.zeros(shape, np.float32)
                      for k in channels])
    best = stack.argmax(0)
    return np.take_along_axis(stack, best[None], 0)[0], (np.asarray(channels) + 1)[best].astype(np.uint8)


def cam_to_label(cam_dict, bg_score, shape, num_classes=21):
    """argmax over [constant background bg_score, CAMs]: HxW uint8 labels (background wins ties)."""
    fg_score, fg_label = foreground_max(cam_dict, shape, num_classes)
    return np.where(fg_score <= np.float32(bg_score), 0, fg_label).astype(np.uint8)


def threshold_confusions(fg_score, fg_label, gt, thresholds, num_classes):
    """(len(thresholds), n, n) confusions of cam_to_label at every background score, in one bincount.

    A pixel is predicted as fg_label exactly for the thresholds below its fg_score, so it is counted once
    under (number of thresholds below fg_score, gt, fg_label); cumulative sums over that count give every
    threshold's matrix. `gt` must already be checked (values < num_classes or 255).
    """
    n = num_classes
    t = np.asarray(thresholds, np.float32)
    order = np.argsort(t, kind='stable')
    valid = gt != IGNORE
    below = np.searchsorted(t[order], fg_score[valid], side='left')
    codes = (below * n + gt[valid]) * n + fg_label[valid]
    hist = np.bincount(codes, minlength=(t.size + 1) * n * n).reshape(t.size + 1, n, n)
    fg_part = np.cumsum(hist[::-1], 0)[::-1][1:]          # pixels with more than i thresholds below
    bg_rows = np.cumsum(hist.sum(2), 0)[:-1]              # the rest: predicted background
    sorted_conf = fg_part.copy()
    sorted_conf[:, :, 0] += bg_rows
    conf = np.empty_like(sorted_conf)
    conf[order] = sorted_conf
    return conf


def _ratio(num, den):
    """num / den per class; inf where den is 0 and num is not, 0 where both are 0."""
    out = np.where(num > 0, np.inf, 0.0)
    return np.divide(num, den, out=out, where=den > 0)


def _reference_ratio(num, den):
    """The reference's num / (den + 1e-10): 0 where both are 0, num * 1e10 where only den is 0."""
    return num / (den + 1e-10)


def scores_from_confusion(conf, absent='zero'):
    """Scores of a confusion matrix, as fractions.

    conf: (n, n), or (n, n + 1) whose last column holds GT pixels predicted 255 (misses: counted in T only).
    Per class: iou = TP / union (union = T + P - TP), fp_all = (P - TP) / union, fn_all = (T - TP) / union
    (the reference adds 1e-10 to union: at most 1e-10 / union relative, and an IoU of 1 stays exactly 1);
    t_tp = T / (TP + 1e-10) and p_tp = P / (TP + 1e-10) as the reference (T * 1e10, not inf, when TP is 0);
    precision TP/P and recall TP/T (not in the reference; inf / 0 as _ratio). A class absent from both ground
    truth and prediction scores 0 and counts in the means with absent='zero' (the reference); with
    absent='skip' it is NaN and left out of the means (for datasets with fewer classes; on VOC every class
    occurs, so both agree).
    Means: miou over all classes; t_tp, p_tp, fp_all, fn_all and fg_miou over the foreground classes 1..
    """
    conf = np.asarray(conf, np.float64)
    n = conf.shape[0]
    tp = np.diag(conf[:, :n])
    t = conf.sum(1)
    p = conf[:, :n].sum(0)
    union = t + p - tp
    present = union > 0
    safe_union = np.where(present, union, 1)
    per_class = {
        'iou': tp / safe_union,
        'precision': _ratio(tp, p),
        'recall': _ratio(tp, t),
        't_tp': _reference_ratio(t, tp),
        'p_tp': _reference_ratio(p, tp),
        'fp_all': (p - tp) / safe_union,
        'fn_all': (t - tp) / safe_union,
    }
    if absent not in ('zero', 'skip'):
        raise ValueError(f"absent must be 'zero' or 'skip', got {absent!r}")
    for values in per_class.values():
        values[~present] = np.nan if absent == 'skip' else 0.0
    fg = slice(1, None)
    return {
        **per_class,
        'miou': _mean(per_class['iou']),
        'fg_miou': _mean(per_class['iou'][fg]),
        'mean_t_tp': _mean(per_class['t_tp'][fg]),
        'mean_p_tp': _mean(per_class['p_tp'][fg]),
        'mean_fp_all': _mean(per_class['fp_all'][fg]),
        'mean_fn_all': _mean(per_class['fn_all'][fg]),
    }


def _mean(values):
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float('nan')
