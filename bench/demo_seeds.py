"""The demo over presets and seeds: mean ± std of every stage's val mIoU, the gains over the best-threshold
CAM and the diagnosis rates, so a gain can be told from the luck of one dataset and seed.

    python bench/demo_seeds.py --work_dir seeds                        # presets demo and hard, seeds 0 1 2
    python bench/demo_seeds.py --work_dir seeds --method seam --seeds 0 1
    python bench/demo_seeds.py --work_dir seeds_sfl --method sfl --seeds 0 1   # + its train-split gain
    python bench/demo_seeds.py --work_dir seeds_quick --quick          # a code check (CI-sized runs)

Each run is `run_pipeline.py --demo --demo_preset P --seed S --method M` in <work_dir>/<P>_seed<S> (the seed makes
both the data and the training), run one after the other in this process; a run whose outputs are complete is
skipped, so a stopped bench continues. Prints a markdown table (one column per preset: mean ± std over the
seeds, population std) and writes it to <work_dir>/seeds.md.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run_pipeline  # noqa: E402
from tool import pipeline, report  # noqa: E402
from tool.cli import run_main  # noqa: E402
from tool.io import atomic_write  # noqa: E402
from voc12.synthetic import PRESETS  # noqa: E402

GAINS = (('rw_miou', 'random walk - best CAM'), ('resegment_miou', 're-segmented CAM (sfl) - best CAM'),
         ('seg_miou', 'segmentation (+dCRF) - best CAM'))
RATES = (('bg_leak', 'background leak'), ('missed_fg', 'missed foreground'))
DIAGNOSED = (('cam', 'CAM'), ('rw', 'random walk'), ('resegment', 're-segmented CAM'), ('seg_crf', 'segmentation + dCRF'))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work_dir', required=True, help='one run_pipeline work_dir per preset and seed under it')
    p.add_argument('--presets', nargs='+', choices=sorted(PRESETS), default=['demo', 'hard'])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--method', choices=sorted(pipeline.METHODS), default=pipeline.DEFAULT_METHOD)
    p.add_argument('--quick', action='store_true', help="run_pipeline's --quick (a code check, not a result)")
    return p


def rows(summary):
    """{row title: value} of one run's summary: the stage mIoUs, the gains, the diagnosis rates, the stage time."""
    out = {title.format(bg=summary.get('cam_pred_bg')): summary.get(key) for key, title in report.SCORE_ROWS}
    for key, title in GAINS:
        value = summary.get(key)
        out[title] = None if value is None or summary['cam_best_miou'] is None else value - summary['cam_best_miou']
    for stage, stage_title in DIAGNOSED:
        entry = summary['diagnosis'].get(stage, {})
        for key, title in RATES:
            out[f'{stage_title}: {title}'] = entry.get(key)
    train = summary.get('train')  # sfl: the labels train_seg learns from, against the CAMs they start from
    out['train split: re-segmented CAM - best CAM'] = train and train['resegment_miou'] - train['cam_best_miou']
    out["train split: re-segmented CAM - CAM at the method's background score"] = \
        train and train['resegment_miou'] - train['cam_miou']
    records = pipeline.read_json(os.path.join(summary['work_dir'], 'stages.json'))
    out['stage time (s)'] = sum(r['seconds'] for r in records.values())  # of the runs that made the outputs
    return out


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return '-'
    return f'{np.mean(values):.1f} ± {np.std(values):.1f}'


def seeds_table(runs, method, seeds):
    """Markdown of {preset: [summary per seed]}."""
    presets = list(runs)
    per_preset = {p: [rows(s) for s in runs[p]] for p in presets}
    titles = list(per_preset[presets[0]][0])
    lines = [f'method {method}, seeds {" ".join(map(str, seeds))} (val, %; mean ± std over the seeds)', '',
             '| | ' + ' | '.join(f'preset {p}' for p in presets) + ' |', '|---|' + '---:|' * len(presets)]
    for title in titles:
        cells = [mean_std([r[title] for r in per_preset[p]]) for p in presets]
        if any(cell != '-' for cell in cells):  # leave out the rows of stages the method does not have
            lines.append(f'| {title} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = build_parser().parse_args(argv)
    runs = {}
    for preset in args.presets:
        runs[preset] = []
        for seed in args.seeds:
            work_dir = os.path.join(args.work_dir, f'{preset}_seed{seed}')
            print(f'\n##### preset {preset}, seed {seed}: {work_dir}', flush=True)
            run_argv = ['--demo', '--demo_preset', preset, '--seed', str(seed), '--method', args.method,
                        '--work_dir', work_dir] + (['--quick'] if args.quick else [])
            runs[preset].append(run_pipeline.main(run_argv))
    text = seeds_table(runs, args.method, args.seeds)

    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(os.path.join(args.work_dir, 'seeds.md'), write)
    print('\n' + text)
    return runs


if __name__ == '__main__':
    run_main(main)
