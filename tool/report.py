"""The pipeline's report: markdown tables of the scores and stage times, and a PNG grid of a few images.

`write_report(work_dir, summary, records, columns, ids)` writes `<work_dir>/report.md` and
`<work_dir>/report_grid.png` (one row per image, one column per entry of `columns`). PIL only.
"""
import os
import shlex

import numpy as np
from PIL import Image, ImageDraw

from tool import diagnosis
from tool.io import atomic_save_image, atomic_write, load_dict_npy, load_image, load_label_png
from tool.palette import colorize

GRID_NAME = 'report_grid.png'
CELL = 160     # grid tiles are fitted into CELL x CELL
TITLE_H = 18   # height of the column titles
MISSING_GREY = 96

# (summary key, row title) of the score table
SCORE_ROWS = (('cam_miou', 'CAM (background score 0.2)'),
              ('cam_best_miou', 'CAM, best background score (oracle)'),
              ('crf_la_miou', 'CAM + dCRF (la)'),
              ('rw_miou', 'random walk (AffinityNet)'),
              ('seg_nocrf_miou', 'retrained segmentation'),
              ('seg_crf_miou', 'retrained segmentation + dCRF'))

# colour ramp of the CAM heat map: (position, RGB), dark blue -> cyan -> yellow -> red
RAMP = ((0.0, (0, 0, 128)), (0.25, (0, 64, 255)), (0.5, (0, 255, 255)), (0.75, (255, 255, 0)), (1.0, (255, 0, 0)))


def _number(value, fmt='{:.1f}'):
    return '-' if value is None else fmt.format(value)


def score_table(summary):
    lines = ['| stage | mIoU (val, %) |', '|---|---:|']
    for key, title in SCORE_ROWS:
        if key == 'cam_best_miou' and summary.get('cam_best_threshold') is not None:
            title = f"CAM, best background score {summary['cam_best_threshold']:.2f} (oracle)"
        lines.append(f'| {title} | {_number(summary.get(key))} |')
    return '\n'.join(lines)


def time_table(summary, records):
    """Stage status and wall time of this run; a skipped stage shows the time of the run that made its outputs."""
    lines = ['| stage | status | seconds |', '|---|---|---:|']
    for stage, status in summary['status'].items():
        seconds = summary['seconds'].get(stage)
        text = _number(seconds)
        if seconds is None and stage in records:
            text = f"({records[stage]['seconds']:.1f} when it ran)"
        lines.append(f'| {stage} | {status} | {text} |')
    lines.append(f"| total | | {_number(summary['seconds'].get('total'))} |")
    return '\n'.join(lines)


def tables(summary, records):
    return score_table(summary) + '\n\n' + time_table(summary, records)


def settings_text(records):
    """The argv of each stage as it last ran (`python <script>.py ...`)."""
    lines = []
    for stage, record in records.items():
        script = record.get('script', stage)  # stages.json of older runs has no 'script'
        lines += [f'python {script}.py {shlex.join(argv)}' for argv in record['argv']]
    return '\n'.join(lines)


def write_markdown(path, summary, records):
    data = ''
    if summary.get('demo'):
        data = ' (demo data, quick)' if summary.get('quick') else ' (demo data)'
    text = '\n'.join([
        '# Pipeline report', '',
        f"Work dir `{summary['work_dir']}`, {summary['num_val_images']} val images{data}.", '',
        '## mIoU on the val split', '', score_table(summary), '',
        ('The best background score is picked against the ground truth: an upper bound for the CAM, not a '
         'weakly supervised result. The segmentation is scored without image-level labels.'), '',
        '## Wall time', '', time_table(summary, records), '',
        '## Settings (the argv each stage ran with)', '', '```', settings_text(records), '```', '',
        '## Examples', '',
        'Image, ground truth, CAM heat map (max over the classes), random-walk labels, segmentation.', '',
        f'![examples]({GRID_NAME})', ''])

    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(path, write)


def heat_colours(values):
    """HxW values in [0, 1] -> HxWx3 uint8 along RAMP."""
    positions = [p for p, _ in RAMP]
    v = np.clip(np.asarray(values, np.float32), 0, 1)
    return np.stack([np.interp(v, positions, [c[i] for _, c in RAMP]) for i in range(3)], -1).astype(np.uint8)


def cam_heatmap(image, cam_dict, alpha=0.5):
    """The CAM dict's max over classes as a heat map blended on the image (HxWx3 uint8)."""
    cam = np.max(np.stack(list(cam_dict.values())), 0) if cam_dict else np.zeros(image.shape[:2], np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * heat_colours(cam).astype(np.float32)
    return blend.round().astype(np.uint8)


def load_tile(kind, path, image):
    """An HxWx3 uint8 tile of an artefact (None if the file does not exist)."""
    if not os.path.exists(path):
        return None
    if kind == 'image':
        return load_image(path)
    if kind == 'label':
        return colorize(load_label_png(path))
    if kind == 'cam':
        return cam_heatmap(image, load_dict_npy(path))
    raise ValueError(f'unknown tile kind {kind!r}')


def _fit(tile, resample):
    img = Image.fromarray(tile)
    scale = CELL / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)


def make_grid(rows, titles):
    """A PIL image: the titles on top, then one row per image of (tile, is_label) cells. A tile is HxWx3
    uint8 (None: not available, drawn grey) fitted into CELL x CELL; labels resize with nearest neighbour."""
    grid = Image.new('RGB', (CELL * len(titles), TITLE_H + CELL * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(titles):
        draw.text((c * CELL + 4, 3), title, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, (tile, is_label) in enumerate(row):
            x, y = c * CELL, TITLE_H + r * CELL
            if tile is None:
                draw.rectangle([x + 1, y + 1, x + CELL - 2, y + CELL - 2], fill=(MISSING_GREY,) * 3)
                draw.text((x + 4, y + 4), 'not run', fill=(255, 255, 255))
                continue
            img = _fit(tile, Image.NEAREST if is_label else Image.BILINEAR)
            grid.paste(img, (x + (CELL - img.width) // 2, y + (CELL - img.height) // 2))
    return grid


def pick_ids(ids, n):
    """n ids spread evenly over the list."""
    if n <= 0 or not ids:
        return []
    step = max(1, len(ids) // n)
    return list(ids[::step][:n])


def grid_rows(columns, ids):
    """columns: (title, kind 'image'|'label'|'cam', path_of(id)); the first column must be the image."""
    rows = []
    for i in ids:
        image = load_image(columns[0][2](i))
        rows.append([(load_tile(kind, path_of(i), image), kind == 'label') for _, kind, path_of in columns])
    return rows


def write_report(work_dir, summary, records, columns, ids):
    """<work_dir>/report.md and, for `ids`, <work_dir>/report_grid.png."""
    if ids:
        grid = make_grid(grid_rows(columns, ids), [title for title, _, _ in columns])
        atomic_save_image(os.path.join(work_dir, GRID_NAME), grid, format='PNG')
    write_markdown(os.path.join(work_dir, 'report.md'), summary, records)


# ------------------------------------------------------------------------------ diagnosis (tool/diagnosis.py)

WORST_GRID_NAME = 'report_worst.png'


def _percent(value):
    return '-' if value is None or np.isnan(value) else f'{100 * value:.1f}'


def diagnosis_table(diagnoses, class_names):
    """Markdown: one row per stage of {stage title: diagnosis.diagnose_stage result}; per-class IoU columns
    for the classes that occur in some stage (class_names[c] names label c)."""
    shown = [c for c in range(len(class_names))
             if any(not np.isnan(d['iou'][c]) for d in diagnoses.values())]
    head = ['stage', 'mIoU', 'bg leak', 'missed fg', 'class confusion'] + [f'IoU {class_names[c]}' for c in shown]
    lines = ['| ' + ' | '.join(head) + ' |', '|---|' + '---:|' * (len(head) - 1)]
    for title, d in diagnoses.items():
        cells = [d['miou'], d['bg_leak'], d['missed_fg'], d['confusion']] + [d['iou'][c] for c in shown]
        lines.append(f'| {title} | ' + ' | '.join(_percent(v) for v in cells) + ' |')
    return '\n'.join(lines)


def worst_list(diagnoses):
    """Markdown: per stage, its worst val images with their mIoU (%), worst first."""
    return '\n'.join(f"- {title}: " + ', '.join(f"{i} ({_percent(d['image_miou'][i])})" for i in d['worst'])
                     for title, d in diagnoses.items())


def worst_grid(stages, image_of, gt_of):
    """A PIL image: per stage (title, path_of(id) of its label PNGs, its diagnose_stage result) a grid with the
    columns image, ground truth, the stage's labels and one row per worst image (worst first); stacked."""
    grids = [make_grid(grid_rows([('image', 'image', image_of), ('ground truth', 'label', gt_of),
                                  (title, 'label', pred_of)], d['worst']), ['image', 'ground truth', title])
             for title, pred_of, d in stages]
    out = Image.new('RGB', (max(g.width for g in grids), sum(g.height for g in grids)), (255, 255, 255))
    y = 0
    for g in grids:
        out.paste(g, (0, y))
        y += g.height
    return out


def diagnosis_section(work_dir, ids, stages, image_of, gt_of, class_names):
    """Diagnose each stage (title, path_of(id) of its label PNGs) over `ids`, write <work_dir>/WORST_GRID_NAME
    and return the report's markdown section (table, worst images, grid)."""
    diagnoses = {title: diagnosis.diagnose_stage(ids, gt_of, pred_of, len(class_names)) for title, pred_of in stages}
    grid = worst_grid([(title, pred_of, diagnoses[title]) for title, pred_of in stages], image_of, gt_of)
    atomic_save_image(os.path.join(work_dir, WORST_GRID_NAME), grid, format='PNG')
    return '\n'.join(['## Diagnosis (val, % of pixels)', '', diagnosis_table(diagnoses, class_names), '',
                      'Worst val images per stage (image mIoU, %):', '', worst_list(diagnoses), '',
                      f'![worst images]({WORST_GRID_NAME})', ''])
