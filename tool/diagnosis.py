"""Where a stage's labels go wrong: per-class IoU, background leak, missed foreground, confusion between
object classes, and the val images it labels worst.

All numbers come from metrics.label_confusion (conf[g, p], pixels with GT g predicted p; 255 ignored) and
are fractions; a rate whose denominator is empty is NaN.
"""
import numpy as np

from tool import metrics
from tool.io import load_label_png

WORST = 5  # worst val images per stage


def _share(num, den):
    return float(num / den) if den else float('nan')


def diagnose(conf):
    """Scores of one confusion matrix (class 0 = background):

    iou          per class (NaN for a class absent from both GT and prediction), and its mean 'miou'
    bg_leak      share of GT background pixels predicted as an object class
    missed_fg    share of GT object pixels predicted as background
    confusion    share of GT object pixels predicted as another object class
    class_confusion   per class c >= 1: share of c's GT pixels predicted as another object class
    """
    conf = np.asarray(conf, np.float64)
    scores = metrics.scores_from_confusion(conf, absent='skip')
    fg = conf[1:, 1:]
    rows = conf.sum(1)
    wrong_object = fg.sum(1) - np.diag(fg)
    return {'iou': scores['iou'], 'miou': scores['miou'],
            'bg_leak': _share(conf[0, 1:].sum(), rows[0]),
            'missed_fg': _share(conf[1:, 0].sum(), rows[1:].sum()),
            'confusion': _share(wrong_object.sum(), rows[1:].sum()),
            'class_confusion': np.concatenate(([np.nan], [_share(n, d) for n, d in zip(wrong_object, rows[1:])]))}


def diagnose_stage(ids, gt_path, pred_path, num_classes=21, worst=WORST):
    """diagnose() of a stage's label PNGs over `ids` (gt_path(id), pred_path(id) give the files), plus
    'image_miou' {id: mIoU of that image alone} and 'worst': the `worst` ids of lowest mIoU, worst first."""
    total, per_image = 0, {}
    for i in ids:
        conf = metrics.label_confusion(load_label_png(gt_path(i)), load_label_png(pred_path(i)), num_classes,
                                       gt_path(i), pred_path(i))
        total = total + conf
        per_image[i] = metrics.scores_from_confusion(conf, absent='skip')['miou']
    result = diagnose(total)
    ranked = sorted(ids, key=lambda i: (np.nan_to_num(per_image[i], nan=np.inf), i))
    return dict(result, image_miou=per_image, worst=ranked[:worst])
