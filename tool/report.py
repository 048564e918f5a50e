"""The pipeline's report: markdown tables of the scores and stage times, and a PNG grid of a few images.

`write_report(work_dir, summary, records, columns, ids)` writes `<work_dir>/report.md` and
`<work_dir>/report_grid.png` (one row per image, one column per entry of `columns`). PIL only.
"""
import os
import shlex

import numpy as np
from PIL import Image, ImageDraw

from tool.io import atomic_save_image, atomic_write, load_dict_npy, load_image, load_label_png
from tool.palette import colorize
from tool.pipeline import EXTERNAL_SUPERVISION

GRID_NAME = 'report_grid.png'
CELL = 160     # grid tiles are fitted into CELL x CELL
TITLE_H = 18   # height of the column titles
MISSING_GREY = 96

# (summary key, row title) of the score table
SCORE_ROWS = (('cam_miou', 'CAM (background score {bg})'),
              ('cam_best_miou', 'CAM, best background score (oracle)'),
              ('crf_la_miou', 'CAM + dCRF (la)'),
              ('rw_miou', 'random walk (AffinityNet)'),
              ('resegment_miou', 'CAM re-segmented by the COCO-trained segmenter (SFL)'),
              ('seg_nocrf_miou', 'retrained segmentation'),
              ('seg_crf_miou', 'retrained segmentation + dCRF'))

OPTIONAL_ROWS = ('resegment_miou',)  # shown only where a method wrote them

# colour ramp of the CAM heat map: (position, RGB), dark blue -> cyan -> yellow -> red
RAMP = ((0.0, (0, 0, 128)), (0.25, (0, 64, 255)), (0.5, (0, 255, 255)), (0.75, (255, 255, 0)), (1.0, (255, 0, 0)))


def _number(value, fmt='{:.1f}'):
    return '-' if value is None else fmt.format(value)


def stage_titles(summary):
    """{summary key without '_miou': row title} of SCORE_ROWS, with this run's background scores."""
    bg = summary.get('cam_pred_bg')
    titles = {key[:-len('_miou')]: title.format(bg='0.2' if bg is None else f'{bg:g}') for key, title in SCORE_ROWS}
    if summary.get('cam_best_threshold') is not None:
        titles['cam_best'] = f"CAM, best background score {summary['cam_best_threshold']:.2f} (oracle)"
    return titles


def shown_rows(summaries):
    """SCORE_ROWS less the rows of a method none of `summaries` ran (OPTIONAL_ROWS)."""
    return [(key, title) for key, title in SCORE_ROWS
            if key not in OPTIONAL_ROWS or any(s.get(key) is not None for s in summaries)]


def method_title(name):
    """A method's name, tagged with the supervision it uses beyond the image-level labels."""
    extra = EXTERNAL_SUPERVISION.get(name)
    return f'{name} (+ {extra}: external pixel-level supervision)' if extra else name


def score_table(summary):
    lines = ['| stage | mIoU (val, %) |', '|---|---:|']
    titles = stage_titles(summary)
    for key, _ in shown_rows([summary]):
        lines.append(f"| {titles[key[:-len('_miou')]]} | {_number(summary.get(key))} |")
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


def data_text(summary):
    """Where the val images came from, for the report's first line."""
    data = summary.get('data') or {}
    quick = ', quick' if summary.get('quick') else ''
    params = data.get('demo_params') or {}
    preset = f", preset {params['preset']}" if 'preset' in params else ''
    if data.get('source') == 'generated':
        return f" (demo data{quick}{preset}, generated into `{data['voc12_root']}`)"
    if data.get('source') == 'given':
        return f" of the data in `{data['voc12_root']}` (demo settings{quick} on this folder; not generated)"
    return f" of `{data['voc12_root']}`" if data.get('voc12_root') else ''


def train_split_text(summary):
    """sfl: the train split's re-segmented labels against the CAMs they start from (a paragraph, or '')."""
    train = summary.get('train')
    if not train:
        return ''
    return (f"Train split (the images whose labels train_seg learns from): re-segmented labels "
            f"{train['resegment_miou']:.1f}; the CAMs they start from {_number(train['cam_miou'])} at the method's "
            f"background score {_number(summary.get('cam_pred_bg'), '{:.2f}')}, {train['cam_best_miou']:.1f} at "
            f"their best one {train['cam_best_threshold']:.2f} (oracle).\n")


def write_markdown(path, summary, records, sections=''):
    text = '\n'.join([
        '# Pipeline report', '',
        f"Work dir `{summary['work_dir']}`, method {method_title(summary.get('method'))}, {summary['num_val_images']} val images"
        f"{data_text(summary)}.", '',
        '## mIoU on the val split', '', score_table(summary), '', train_split_text(summary),
        ('The best background score is picked against the ground truth: an upper bound for the CAM, not a '
         'weakly supervised result. The segmentation is scored without image-level labels.'), '',
        '## Wall time', '', time_table(summary, records), '',
        '## Settings (the argv each stage ran with)', '', '```', settings_text(records), '```', '',
        '## Examples', '',
        'Image, ground truth, CAM heat map (max over the classes), random-walk labels, segmentation.', '',
        f'![examples]({GRID_NAME})', '', sections])

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


def write_report(work_dir, summary, records, columns, ids, sections=''):
    """<work_dir>/report.md (`sections`: markdown after the examples) and, for `ids`, <work_dir>/report_grid.png."""
    if ids:
        grid = make_grid(grid_rows(columns, ids), [title for title, _, _ in columns])
        atomic_save_image(os.path.join(work_dir, GRID_NAME), grid, format='PNG')
    write_markdown(os.path.join(work_dir, 'report.md'), summary, records, sections)


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


def diagnosis_section(work_dir, diagnoses, stages, image_of, gt_of, class_names):
    """The report's markdown section (table, worst images, grid) of `diagnoses` {title: diagnose_stage result}
    of the stages (title, path_of(id) of its label PNGs); writes <work_dir>/WORST_GRID_NAME."""
    grid = worst_grid([(title, pred_of, diagnoses[title]) for title, pred_of in stages], image_of, gt_of)
    atomic_save_image(os.path.join(work_dir, WORST_GRID_NAME), grid, format='PNG')
    return '\n'.join(['## Diagnosis (val, % of pixels)', '', diagnosis_table(diagnoses, class_names), '',
                      'Worst val images per stage (image mIoU, %):', '', worst_list(diagnoses), '',
                      f'![worst images]({WORST_GRID_NAME})', ''])


# ------------------------------------------------------------------------------ --method all

METHODS_NAME = 'methods'  # methods.md and methods.png
# (summary key, short name under the chart's bars) of the scores compared across methods
CHART_ROWS = (('cam_miou', 'CAM'), ('cam_best_miou', 'CAM best'), ('crf_la_miou', 'CAM+dCRF'),
              ('rw_miou', 'random walk'), ('resegment_miou', 're-segmented'), ('seg_nocrf_miou', 'seg'),
              ('seg_crf_miou', 'seg+dCRF'))
METHOD_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
CHART_GROUP, CHART_BAR, CHART_H, CHART_MARGIN = 120, 24, 300, 40


def methods_table(summaries):
    """Markdown: one row per score, one column per method (the CAM rows also give the background score)."""
    names = [method_title(name) for name in summaries]
    lines = ['| stage | ' + ' | '.join(names) + ' |', '|---|' + '---:|' * len(names)]
    for key, title in shown_rows(summaries.values()):
        cells = []
        for summary in summaries.values():
            cell = _number(summary.get(key))
            bg = {'cam_miou': summary.get('cam_pred_bg'), 'cam_best_miou': summary.get('cam_best_threshold')}.get(key)
            cells.append(cell if bg is None or summary.get(key) is None else f'{cell} (bg {bg:.2f})')
        title = {'cam_miou': "CAM (the method's background score)",
                 'cam_best_miou': 'CAM, best background score (oracle)'}.get(key, title)
        lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def methods_time_table(summaries, records):
    """Markdown: wall time (s) per stage (rows) and method (columns); a stage skipped in this run shows, in
    parentheses, the time of the run that made its outputs (records: {method: its stages.json})."""
    names = list(summaries)
    stages = list(dict.fromkeys(stage for s in summaries.values() for stage in s['seconds']))
    stages = [s for s in stages if s != 'total'] + ['total']
    lines = ['| stage | ' + ' | '.join(names) + ' |', '|---|' + '---:|' * len(names)]
    for stage in stages:
        cells = []
        for name, summary in summaries.items():
            seconds, earlier = summary['seconds'].get(stage), records.get(name, {}).get(stage)
            cells.append(f"({earlier['seconds']:.1f})" if seconds is None and earlier else _number(seconds))
        lines.append(f'| {stage} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def methods_markdown(summaries, records):
    first = next(iter(summaries.values()))
    return '\n'.join([
        '# Methods side by side', '',
        f"{', '.join(summaries)} on the same data{data_text(first)}, {first['num_val_images']} val images, seed "
        'shared; each method\'s own report is <method>/report.md.', '',
        '## mIoU on the val split (%)', '', methods_table(summaries), '',
        f'![mIoU per stage and method]({METHODS_NAME}.png)', '',
        '## Wall time (s)', '', 'In parentheses: a stage skipped in this run, the time of the run that made its outputs.',
        '', methods_time_table(summaries, records), ''])


def methods_chart(summaries):
    """A PIL bar chart: per score of CHART_ROWS a group of bars, one per method (0-100 % mIoU), and a legend."""
    legend_h = 16 * len(summaries) + 8
    width, height = 2 * CHART_MARGIN + CHART_GROUP * len(CHART_ROWS), CHART_H + 2 * CHART_MARGIN + legend_h
    chart = Image.new('RGB', (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(chart)
    top, bottom = CHART_MARGIN, CHART_MARGIN + CHART_H
    for tick in range(0, 101, 20):
        y = bottom - tick * CHART_H / 100
        draw.line([(CHART_MARGIN, y), (width - CHART_MARGIN, y)], fill=(220, 220, 220))
        draw.text((4, y - 6), str(tick), fill=(0, 0, 0))
    for g, (key, name) in enumerate(CHART_ROWS):
        x0 = CHART_MARGIN + g * CHART_GROUP + (CHART_GROUP - CHART_BAR * len(summaries)) // 2
        for m, summary in enumerate(summaries.values()):
            value = summary.get(key)
            if value is not None:
                x = x0 + m * CHART_BAR
                draw.rectangle([x, bottom - value * CHART_H / 100, x + CHART_BAR - 3, bottom],
                               fill=METHOD_COLOURS[m % len(METHOD_COLOURS)])
        draw.text((CHART_MARGIN + g * CHART_GROUP + 6, bottom + 6), name, fill=(0, 0, 0))
    draw.text((CHART_MARGIN, 8), 'val mIoU (%) per stage', fill=(0, 0, 0))
    for m, method in enumerate(summaries):
        y = bottom + 28 + 16 * m
        draw.rectangle([CHART_MARGIN, y, CHART_MARGIN + 12, y + 10], fill=METHOD_COLOURS[m % len(METHOD_COLOURS)])
        draw.text((CHART_MARGIN + 18, y - 1), method, fill=(0, 0, 0))
    return chart
