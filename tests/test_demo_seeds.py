"""bench/demo_seeds.py: the runs it asks run_pipeline for, and its mean ± std table against numpy on their summaries
(run_pipeline.main is replaced by a stand-in that returns made-up summaries: the runs themselves are the demo's,
tested in tests/test_demo.py and tests/test_demo_methods.py)."""
import json
import os

import numpy as np

import run_pipeline
from bench import demo_seeds


def fake_summary(work_dir, preset, seed):
    """A summary and stages.json with numbers that differ per preset and seed."""
    base = (10 if preset == 'hard' else 0) + seed
    os.makedirs(work_dir, exist_ok=True)
    with open(os.path.join(work_dir, 'stages.json'), 'w') as f:
        json.dump({'train_cls': {'seconds': 100.0 + seed}, 'infer_cls': {'seconds': 20.0}}, f)
    return {'cam_miou': 50.0 + base, 'cam_best_miou': 60.0 + 2 * base, 'crf_la_miou': 70.0, 'rw_miou': 66.0 + base,
            'seg_nocrf_miou': None, 'seg_crf_miou': 68.0 + 3 * base, 'seg_miou': 68.0 + 3 * base, 'cam_pred_bg': 0.2,
            'work_dir': work_dir, 'seconds': {'total': 1.0},
            'diagnosis': {'cam': {'bg_leak': 5.0 + seed, 'missed_fg': 1.0}, 'rw': {'bg_leak': 2.0, 'missed_fg': 4.0}}}


def test_runs_and_table(tmp_path, monkeypatch):
    calls = []

    def fake_main(argv):
        calls.append(argv)
        preset, seed = argv[argv.index('--demo_preset') + 1], int(argv[argv.index('--seed') + 1])
        return fake_summary(argv[argv.index('--work_dir') + 1], preset, seed)
    monkeypatch.setattr(run_pipeline, 'main', fake_main)
    runs = demo_seeds.main(['--work_dir', str(tmp_path), '--seeds', '0', '1', '3', '--method', 'seam'])

    assert [(a[a.index('--demo_preset') + 1], a[a.index('--seed') + 1], a[a.index('--method') + 1]) for a in calls] == \
        [(p, s, 'seam') for p in ('demo', 'hard') for s in ('0', '1', '3')]
    assert all('--demo' in a and '--quick' not in a for a in calls)
    assert calls[4][calls[4].index('--work_dir') + 1] == str(tmp_path / 'hard_seed1')
    table = (tmp_path / 'seeds.md').read_text()
    cells = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:4]]
             for line in table.splitlines() if line.startswith('| ') and '---' not in line}

    def expected(values):
        return f'{np.mean(values):.1f} ± {np.std(values):.1f}'
    for p, preset in enumerate(('demo', 'hard')):
        s = runs[preset]
        assert cells['CAM (background score 0.2)'][p] == expected([x['cam_miou'] for x in s])
        assert cells['random walk - best CAM'][p] == expected([x['rw_miou'] - x['cam_best_miou'] for x in s])
        assert cells['segmentation (+dCRF) - best CAM'][p] == expected([x['seg_miou'] - x['cam_best_miou'] for x in s])
        assert cells['CAM: background leak'][p] == expected([5.0, 6.0, 8.0])
        assert cells['stage time (s)'][p] == expected([120.0, 121.0, 123.0])
    assert 'method seam, seeds 0 1 3' in table
    assert not {'retrained segmentation', 'segmentation + dCRF: missed foreground', 're-segmented CAM (sfl) - best CAM',
                'train split: re-segmented CAM - best CAM'} & set(cells)  # rows no run has are left out


def test_sfl_rows_give_the_re_segmentation_gains(tmp_path, monkeypatch):
    def fake_main(argv):
        seed = int(argv[argv.index('--seed') + 1])
        summary = fake_summary(argv[argv.index('--work_dir') + 1], 'demo', seed)
        return dict(summary, rw_miou=None, resegment_miou=70.0 + 2 * seed,
                    train={'cam_best_miou': 61.0, 'cam_best_threshold': 0.4, 'resegment_miou': 64.0 + seed,
                           'cam_miou': 58.0 - seed})
    monkeypatch.setattr(run_pipeline, 'main', fake_main)
    demo_seeds.main(['--work_dir', str(tmp_path), '--seeds', '0', '2', '--method', 'sfl', '--presets', 'demo'])
    cells = {line.split('|')[1].strip(): line.split('|')[2].strip()
             for line in (tmp_path / 'seeds.md').read_text().splitlines() if line.startswith('| ') and '---' not in line}
    assert cells['re-segmented CAM (sfl) - best CAM'] == '10.0 ± 0.0'  # (70 + 2s) - (60 + 2s)
    assert cells['train split: re-segmented CAM - best CAM'] == '4.0 ± 1.0'  # 3 and 5
    assert cells["train split: re-segmented CAM - CAM at the method's background score"] == '8.0 ± 2.0'  # 6 and 10
    assert 'random walk - best CAM' not in cells
