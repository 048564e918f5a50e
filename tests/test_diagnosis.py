"""tool.diagnosis against plain loops over tiny hand-made label maps (ignore 255, absent classes)."""
import numpy as np
import pytest
from PIL import Image

from tool import diagnosis, metrics

GT_A = np.array([[0, 0, 1, 1],
                 [0, 0, 1, 1],
                 [2, 2, 255, 0]], np.uint8)
PRED_A = np.array([[0, 1, 1, 1],
                   [0, 0, 0, 2],
                   [2, 1, 0, 3]], np.uint8)
GT_B = np.array([[3, 3, 0, 0]], np.uint8)
PRED_B = np.array([[3, 3, 0, 0]], np.uint8)
N = 5  # class 4 occurs nowhere


def loop_rates(pairs):
    """bg_leak, missed_fg, confusion and per-class IoU by counting pixel by pixel."""
    bg = leak = fg = missed = wrong = 0
    inter, union = np.zeros(N), np.zeros(N)
    for gt, pred in pairs:
        for g, p in zip(gt.ravel(), pred.ravel()):
            if g == 255 or p == 255:
                continue
            bg += g == 0
            leak += g == 0 and p != 0
            fg += g != 0
            missed += g != 0 and p == 0
            wrong += g != 0 and p != 0 and p != g
            for c in range(N):
                inter[c] += g == c and p == c
                union[c] += g == c or p == c
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return leak / bg, missed / fg, wrong / fg, iou


def test_diagnose_matches_a_pixel_loop():
    conf = sum(metrics.label_confusion(g, p, N) for g, p in ((GT_A, PRED_A), (GT_B, PRED_B)))
    d = diagnosis.diagnose(conf)
    leak, missed, wrong, iou = loop_rates([(GT_A, PRED_A), (GT_B, PRED_B)])
    # by hand: GT background 0,0,0,0,0 (A) + 0,0 (B) = 7 pixels, one (A[0,1]) predicted 1, one (A[2,3]) 3
    assert d['bg_leak'] == pytest.approx(2 / 7) == pytest.approx(leak)
    # GT objects: 4 of class 1, 2 of class 2, 2 of class 3 = 8; A[1,2] predicted 0 -> missed 1/8
    assert d['missed_fg'] == pytest.approx(1 / 8) == pytest.approx(missed)
    # A[1,3] (1 -> 2) and A[2,1] (2 -> 1) go to another object class
    assert d['confusion'] == pytest.approx(2 / 8) == pytest.approx(wrong)
    np.testing.assert_allclose(d['class_confusion'][1:4], [1 / 4, 1 / 2, 0])
    assert np.isnan(d['class_confusion'][0]) and np.isnan(d['class_confusion'][4])
    np.testing.assert_allclose(d['iou'], iou)  # NaN for absent class 4 on both sides
    assert d['miou'] == pytest.approx(np.nanmean(iou))


def test_empty_denominators_are_nan():
    d = diagnosis.diagnose(metrics.label_confusion(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), 3))
    assert d['bg_leak'] == 0 and np.isnan(d['missed_fg']) and np.isnan(d['confusion'])


def test_diagnose_stage_picks_the_worst_images(tmp_path):
    maps = {'a': (GT_A, PRED_A), 'b': (GT_B, PRED_B), 'c': (GT_B, np.array([[0, 3, 0, 0]], np.uint8))}
    for i, (gt, pred) in maps.items():
        Image.fromarray(gt).save(tmp_path / f'gt_{i}.png')
        Image.fromarray(pred).save(tmp_path / f'pred_{i}.png')
    d = diagnosis.diagnose_stage(list(maps), lambda i: str(tmp_path / f'gt_{i}.png'),
                                 lambda i: str(tmp_path / f'pred_{i}.png'), N, worst=2)
    # per image, a plain loop's mean IoU over the classes present in that image's GT or prediction
    for i, pair in maps.items():
        assert d['image_miou'][i] == pytest.approx(np.nanmean(loop_rates([pair])[3]))
    assert d['image_miou']['b'] == 1 and d['image_miou']['c'] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert d['worst'] == ['a', 'c']
    assert d['bg_leak'] == pytest.approx(loop_rates(maps.values())[0])


def test_report_table_list_and_worst_grid(tmp_path):
    from tool import report
    nan = float('nan')
    d = {'miou': 0.5, 'bg_leak': 0.25, 'missed_fg': 0.125, 'confusion': nan,
         'iou': np.array([0.9, nan, 0.3]), 'image_miou': {'x': 0.2, 'y': 0.75}, 'worst': ['x', 'y']}
    table = report.diagnosis_table({'random walk': d}, ['background', 'cat', 'dog'])
    head = '| stage | mIoU | bg leak | missed fg | class confusion | IoU background | IoU dog |'
    assert table.splitlines()[0] == head
    assert table.splitlines()[2] == '| random walk | 50.0 | 25.0 | 12.5 | - | 90.0 | 30.0 |'
    assert report.worst_list({'random walk': d}) == '- random walk: x (20.0), y (75.0)'
    for i in 'xy':
        Image.fromarray(np.full((8, 12, 3), 200, np.uint8)).save(tmp_path / f'{i}.jpg')
        Image.fromarray(np.ones((8, 12), np.uint8)).save(tmp_path / f'{i}.png')
    grid = report.worst_grid([('walk', lambda i: str(tmp_path / f'{i}.png'), d),
                              ('seg', lambda i: str(tmp_path / f'missing_{i}.png'), dict(d, worst=['y']))],
                             lambda i: str(tmp_path / f'{i}.jpg'), lambda i: str(tmp_path / f'{i}.png'))
    cell, title = report.CELL, report.TITLE_H
    assert grid.size == (3 * cell, 2 * title + 3 * cell)
    pixels = np.asarray(grid)
    assert (pixels[2 * title + 3 * cell - cell // 2, 2 * cell + cell // 2] == report.MISSING_GREY).all()  # seg not run
    assert not (pixels[title + cell // 2, 2 * cell + cell // 2] == report.MISSING_GREY).all()


def test_diagnosis_section_writes_the_grid(tmp_path):
    from tool import report
    for i, (gt, pred) in {'a': (GT_A, PRED_A), 'b': (GT_B, PRED_B)}.items():
        Image.fromarray(np.zeros(gt.shape + (3,), np.uint8)).save(tmp_path / f'{i}.jpg')
        Image.fromarray(gt).save(tmp_path / f'gt_{i}.png')
        Image.fromarray(pred).save(tmp_path / f'rw_{i}.png')
    gt_of, rw_of = lambda i: str(tmp_path / f'gt_{i}.png'), lambda i: str(tmp_path / f'rw_{i}.png')
    walk = diagnosis.diagnose_stage(['a', 'b'], gt_of, rw_of, N)
    text = report.diagnosis_section(str(tmp_path), {'walk': walk}, [('walk', rw_of)],
                                    lambda i: str(tmp_path / f'{i}.jpg'), gt_of, ['bg', 'c1', 'c2', 'c3', 'c4'])
    leak, missed, wrong, iou = loop_rates([(GT_A, PRED_A), (GT_B, PRED_B)])
    rates = ' | '.join(f'{100 * v:.1f}' for v in (np.nanmean(iou), leak, missed, wrong))
    assert f'| walk | {rates} |' in text
    assert '- walk: a (' in text and ', b (100.0)' in text
    with Image.open(tmp_path / report.WORST_GRID_NAME) as grid:
        assert grid.size == (3 * report.CELL, report.TITLE_H + 2 * report.CELL)
