"""run_pipeline.py: every stage in process on tiny synthetic data, skipping, resuming, stage selection,
pass-through flags, the summary, the report (tool/report.py), and the method tables and demo settings files
that drive the stages (tool/pipeline.py)."""
import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import run_pipeline
from tool import equivariance, pipeline, report
from tool.cli import import_network
from tool.io import UserError, load_dict_npy, load_label_png
from tool.weights import load_weights
from voc12.synthetic import make_voc

TINY = ['--width', '0.125', '--num_workers', '0', '--seed', '0',
        '--train_cls_args=--crop_size 48 --batch_size 4 --max_epoches 1 --val_crop 64 --lr 0.05',
        '--train_aff_args=--crop_size 72 --batch_size 4 --max_epoches 1',
        '--train_seg_args=--crop_size 48 --rescale 48 64 --batch_size 4 --max_epoches 1',
        '--infer_seg_args=--scales 1,0.5']
SCORE_KEYS = ('cam_miou', 'cam_best_miou', 'crf_la_miou', 'rw_miou', 'seg_miou', 'seg_nocrf_miou')
RESULT_FILES = ('summary.json', 'report.md', 'report_grid.png', 'report_worst.png')
PSA = pipeline.METHODS['psa']
STAGES = pipeline.stage_names(PSA)
SCRIPT_STAGES = STAGES[:-1]


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    return make_voc(str(tmp_path_factory.mktemp('voc')), n_train=8, n_val=4, size=(64, 48), classes=3, seed=0)


def pipeline_argv(voc, work_dir, *extra):
    return ['--work_dir', str(work_dir), '--voc12_root', voc, '--train_list', os.path.join(voc, 'lists', 'train_aug.txt'),
            '--val_list', os.path.join(voc, 'lists', 'val.txt'), '--cls_labels', os.path.join(voc, 'cls_labels.npy'),
            *TINY, *extra]


@pytest.fixture(scope='module')
def first_run(voc, tmp_path_factory):
    """A complete run; tests that change its outputs work on a copy."""
    work_dir = tmp_path_factory.mktemp('run') / 'work'
    summary = run_pipeline.main(pipeline_argv(voc, work_dir))
    return work_dir, summary


def artefact_mtimes(work_dir):
    """{relative path: mtime_ns} of every file under work_dir except the evaluate stage's results."""
    out = {}
    for folder, _, files in os.walk(work_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), work_dir)
            if rel not in RESULT_FILES:
                out[rel] = os.stat(os.path.join(folder, name)).st_mtime_ns
    return out


def copy_run(work_dir, dest):
    shutil.copytree(work_dir, dest)  # copy2 keeps the mtimes
    return dest


def independent_miou(pairs):
    """mIoU (%) over classes present in GT or prediction, from (gt, pred) label maps, GT 255 ignored."""
    conf = np.zeros((21, 21), np.int64)
    for gt, pred in pairs:
        valid = gt < 255
        conf += np.bincount(gt[valid].astype(int) * 21 + pred[valid], minlength=21 * 21).reshape(21, 21)
    tp, union = np.diag(conf), conf.sum(0) + conf.sum(1) - np.diag(conf)
    return 100 * np.mean(tp[union > 0] / union[union > 0])


def test_full_run_writes_summary_report_and_grid(first_run, voc):
    work_dir, summary = first_run
    on_disk = json.loads((work_dir / 'summary.json').read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in SCORE_KEYS:
        assert math.isfinite(on_disk[key]) and 0 <= on_disk[key] <= 100, key
    assert on_disk['cam_best_miou'] >= on_disk['cam_miou'] - 1e-9  # the sweep includes 0.2
    assert on_disk['seg_miou'] == on_disk['seg_crf_miou']
    assert on_disk['status'] == {stage: 'ran' for stage in STAGES}
    seconds = on_disk['seconds']
    assert all(seconds[s] > 0 for s in SCRIPT_STAGES) and seconds['evaluate'] >= 0
    assert seconds['total'] >= sum(seconds[s] for s in STAGES) - 0.05

    text = (work_dir / 'report.md').read_text()
    assert f"| random walk (AffinityNet) | {on_disk['rw_miou']:.1f} |" in text
    assert '| train_aff | ran |' in text and 'python train_seg.py ' in text and 'report_grid.png' in text
    with Image.open(work_dir / 'report_grid.png') as grid:
        assert grid.size == (5 * report.CELL, report.TITLE_H + 4 * report.CELL)
        assert len(np.unique(np.asarray(grid.convert('RGB')).reshape(-1, 3), axis=0)) > 20


def test_crf_la_score_equals_an_independent_computation(first_run, voc):
    work_dir, summary = first_run
    val_ids = (Path(voc) / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()
    pairs = []
    for i in val_ids:
        crf = load_dict_npy(str(work_dir / 'crf_la' / f'{i}.npy'))
        keys = sorted(crf)
        pred = np.array(keys)[np.argmax([crf[k] for k in keys], 0)]
        pairs.append((load_label_png(os.path.join(voc, 'SegmentationClass', f'{i}.png')), pred))
    assert summary['crf_la_miou'] == pytest.approx(independent_miou(pairs), abs=1e-6)
    pairs = [(gt, load_label_png(str(work_dir / 'rw' / f'{i}.png'))) for (gt, _), i in zip(pairs, val_ids)]
    assert summary['rw_miou'] == pytest.approx(independent_miou(pairs), abs=1e-6)


def test_pass_through_flags_reach_the_stage(first_run):
    work_dir, _ = first_run
    log = (work_dir / 'cls' / 'res38_cls.log').read_text()
    assert "'lr': 0.05" in log and "'val_crop': 64" in log and "'width': 0.125" in log
    records = json.loads((work_dir / 'stages.json').read_text())
    assert records['infer_seg']['argv'][0][-2:] == ['--scales', '1,0.5']
    assert len(records['infer_cls']['argv']) == 2  # the train and the val list


def test_rerun_skips_every_stage_and_rewrites_nothing(first_run, voc, capsys):
    work_dir, first = first_run
    before = artefact_mtimes(work_dir)
    summary = run_pipeline.main(pipeline_argv(voc, work_dir))
    assert artefact_mtimes(work_dir) == before
    assert summary['status'] == dict({s: 'skipped' for s in SCRIPT_STAGES}, evaluate='ran')
    assert all(summary['seconds'][s] is None for s in SCRIPT_STAGES)
    assert all(summary[k] == first[k] for k in SCORE_KEYS)
    out = capsys.readouterr().out
    assert out.count('outputs complete, skipped') == 6 and '| train_cls | skipped | (' in out


def test_from_infer_aff_runs_only_the_later_stages(first_run, voc, tmp_path):
    work_dir = copy_run(first_run[0], tmp_path / 'work')
    for folder in ('rw', 'seg', 'seg_pred', 'seg_crf'):
        shutil.rmtree(work_dir / folder)
    before = artefact_mtimes(work_dir)
    summary = run_pipeline.main(pipeline_argv(voc, work_dir, '--from', 'infer_aff'))
    assert summary['status'] == {'train_cls': 'off', 'infer_cls': 'off', 'train_aff': 'off', 'infer_aff': 'ran',
                                 'train_seg': 'ran', 'infer_seg': 'ran', 'evaluate': 'ran'}
    after = artefact_mtimes(work_dir)
    assert {k: after[k] for k in before if not k.startswith('stages.json')} == \
        {k: v for k, v in before.items() if not k.startswith('stages.json')}
    assert len([k for k in after if k.startswith('rw' + os.sep)]) == 12


def test_init_from_cls_starts_train_aff_from_the_trained_classifier(first_run, voc, tmp_path, capsys):
    work_dir = copy_run(first_run[0], tmp_path / 'work')
    shutil.rmtree(work_dir / 'aff')
    run_pipeline.main(pipeline_argv(voc, work_dir, '--from', 'train_aff', '--to', 'train_aff', '--init_from_cls'))
    argv = json.loads((work_dir / 'stages.json').read_text())['train_aff']['argv'][0]
    backbone = str(work_dir / 'cls' / 'res38_cls.backbone.pth')
    assert argv[argv.index('--weights') + 1] == backbone
    assert f'loaded {backbone}' in capsys.readouterr().out
    trained = torch.load(work_dir / 'cls' / 'res38_cls.pth', weights_only=True)
    kept = torch.load(backbone, weights_only=True)
    assert set(trained) - set(kept) == {'fc8.weight'}  # the classifier's from-scratch head
    assert all(torch.equal(kept[k], trained[k]) for k in kept)


def test_backbone_of_seam_leaves_out_the_pcm_and_fits_affinitynet(tmp_path):
    seam = pipeline.METHODS['seam']
    lay = SimpleNamespace(weights=lambda stage: str(tmp_path / 'seam.pth'),
                          backbone=lambda stage: str(tmp_path / 'seam.backbone.pth'))
    net = import_network('network.resnet38_SEAM', width=0.125, scratch=True)
    torch.save(net.state_dict(), lay.weights('train_cls'))
    argv = ['--voc12_root', str(tmp_path), '--network', 'network.resnet38_SEAM', '--width', '0.125', '--scratch']
    pipeline.write_backbone(seam, 'train_cls', argv, lay)
    kept = torch.load(lay.backbone('train_cls'), weights_only=True)
    assert set(net.state_dict()) - set(kept) == {'f8_3.weight', 'f8_4.weight', 'f9.weight', 'fc8.weight'}
    aff = import_network('network.resnet38_aff', width=0.125, scratch=True)
    assert load_weights(aff, lay.backbone('train_cls'))['unexpected'] == 0


def test_killed_run_continues_missing_images_and_resumes_training(first_run, voc, tmp_path):
    work_dir = copy_run(first_run[0], tmp_path / 'work')
    lost = min(os.listdir(work_dir / 'rw'))
    os.remove(work_dir / 'rw' / lost)
    os.remove(work_dir / 'seg' / 'res38_seg.pth')  # killed after the last checkpoint, before the final save
    before = artefact_mtimes(work_dir)
    summary = run_pipeline.main(pipeline_argv(voc, work_dir, '--to', 'train_seg'))
    assert summary is None  # evaluate is off
    after = artefact_mtimes(work_dir)
    changed = {k for k in after if before.get(k) != after[k]}
    assert os.path.join('rw', lost) in changed and (work_dir / 'seg' / 'res38_seg.pth').exists()
    assert not any(k.startswith(('rw' + os.sep, 'cam', 'cls', 'aff')) for k in changed - {os.path.join('rw', lost)})
    assert 'resumed from' in (work_dir / 'seg' / 'res38_seg.log').read_text()


def test_bad_selection_and_wiring_overrides_stop_before_any_stage(voc, tmp_path):
    work_dir = tmp_path / 'work'
    with pytest.raises(UserError, match='--out_rw, which the pipeline wires'):
        run_pipeline.main(pipeline_argv(voc, work_dir, '--infer_aff_args=--out_rw elsewhere'))
    with pytest.raises(UserError, match='--width, which the pipeline wires'):
        run_pipeline.main(pipeline_argv(voc, work_dir, '--train_seg_args=--width 0.5'))
    with pytest.raises(UserError, match='arguments of train_cls do not parse'):
        run_pipeline.main(pipeline_argv(voc, work_dir, '--train_cls_args=--no_such_flag 1'))
    with pytest.raises(UserError, match='comes after'):
        run_pipeline.main(pipeline_argv(voc, work_dir, '--from', 'train_seg', '--to', 'infer_cls'))
    with pytest.raises(UserError, match='needs the outputs of train_aff'):
        run_pipeline.main(pipeline_argv(voc, work_dir, '--from', 'infer_aff'))
    with pytest.raises(UserError, match='--voc12_root'):
        run_pipeline.main(['--work_dir', str(work_dir)])
    assert sorted(os.listdir(work_dir)) == []


def test_boolean_stage_switches(voc, tmp_path):
    args = run_pipeline.build_parser().parse_args(['--work_dir', 'w', '--no-train_aff', '--to', 'infer_seg'])
    assert pipeline.selected_stages(args, PSA) == ['train_cls', 'infer_cls', 'infer_aff', 'train_seg', 'infer_seg']
    args = run_pipeline.build_parser().parse_args(['--work_dir', 'w', '--from', 'train_aff', '--no-evaluate'])
    assert pipeline.selected_stages(args, PSA) == ['train_aff', 'infer_aff', 'train_seg', 'infer_seg']


def test_demo_generates_its_data_once_and_its_settings_parse(tmp_path, monkeypatch):
    psa_demo = pipeline.load_demo
    def small_demo(method, quick, preset=None):  # the settings file's stage flags, a smaller dataset
        demo = psa_demo(method, quick, preset)
        return demo._replace(data=dict({'n_train': 3, 'n_val': 2, 'size': 64}, **demo.data)
                             | {'n_train': 3, 'n_val': 2, 'size': 64})
    monkeypatch.setattr(pipeline, 'load_demo', small_demo)
    off = [f'--no-{stage}' for stage in STAGES]
    work_dir = tmp_path / 'demo'
    assert run_pipeline.main(['--demo', '--quick', '--work_dir', str(work_dir), *off]) is None  # argvs checked
    data = work_dir / 'data'
    assert json.loads((data / 'demo_params.json').read_text()) == {'n_train': 3, 'n_val': 2, 'size': 64, 'seed': 0}
    assert len((data / 'lists' / 'train_aug.txt').read_text().split('\n')) == 4
    stamp = (data / 'cls_labels.npy').stat().st_mtime_ns
    run_pipeline.main(['--demo', '--quick', '--work_dir', str(work_dir), *off])
    assert (data / 'cls_labels.npy').stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match='made with'):
        run_pipeline.main(['--demo', '--quick', '--seed', '1', '--work_dir', str(work_dir), *off])
    with pytest.raises(UserError, match='made with'):  # the preset is part of the data's settings
        run_pipeline.main(['--demo', '--quick', '--demo_preset', 'hard', '--work_dir', str(work_dir), *off])
    with pytest.raises(UserError, match='--demo_preset picks the generated'):
        run_pipeline.main(['--demo', '--demo_preset', 'hard', '--voc12_root', 'x', '--work_dir', str(work_dir)])
    with pytest.raises(UserError, match='--quick'):
        run_pipeline.main(['--quick', '--voc12_root', 'x', '--work_dir', str(work_dir)])
    with pytest.raises(UserError, match='--demo_preset'):
        run_pipeline.main(['--demo_preset', 'hard', '--voc12_root', 'x', '--work_dir', str(work_dir)])


FAKE_DEMO = """
[data]
n_train = 3
n_val = 2
size = 64
quick = { n_val = 1 }
[pipeline]
width = 0.5
[clf]
args = ["--lr 0.3"]
quick = ["--batch_size 2"]
"""
FAKE_FLAGS = ('--voc12_root', '--network', '--width', '--cls_labels', '--train_list', '--session_name', '--seed',
              '--weights', '--infer_list', '--out', '--lr', '--batch_size')


def fake_script(calls):
    """A stage script module that records its argv; a training call writes <session_name>.pth."""
    def build_parser():
        p = argparse.ArgumentParser()
        for flag in FAKE_FLAGS:
            p.add_argument(flag)
        return p

    def main(argv):
        calls.append(argv)
        session = build_parser().parse_args(argv).session_name
        if session:
            os.makedirs(os.path.dirname(session), exist_ok=True)
            Path(session + '.pth').touch()
    return SimpleNamespace(build_parser=build_parser, main=main)


def test_a_method_table_drives_the_stages(tmp_path, monkeypatch):
    """A method of two stages with their own names, run by another script: stage options, wiring, the argv
    order (wiring, tunables, method flags, demo settings, --<stage>_args), needs, skipping, stages.json."""
    calls = []
    monkeypatch.setitem(sys.modules, 'fake_stage_script', fake_script(calls))
    (tmp_path / 'demo_fake.toml').write_text(FAKE_DEMO)
    stages = (pipeline.Stage('clf', 'cls', session='net/clf', script='fake_stage_script', flags='--lr 0.5'),
              pipeline.Stage('labels', needs=('clf',), weights='clf', script='fake_stage_script',
                             outputs=(('val', (pipeline.Out('--out', 'lbl', 'png'),)),)))
    monkeypatch.setitem(pipeline.METHODS, 'fake', pipeline.Method(stages, str(tmp_path / 'demo_fake.toml'),
                                                                  {'cls': 'network.fake_cls'}))
    work, data = tmp_path / 'work', tmp_path / 'work' / 'data'
    argv = ['--method', 'fake', '--demo', '--quick', '--work_dir', str(work), '--no-evaluate', '--clf_args=--batch_size 3']
    assert run_pipeline.main(argv) is None
    assert json.loads((data / 'demo_params.json').read_text()) == {'n_train': 3, 'n_val': 1, 'size': 64, 'seed': 0}
    assert calls == [
        ['--voc12_root', str(data), '--network', 'network.fake_cls', '--width', '0.5',
         '--cls_labels', str(data / 'cls_labels.npy'), '--train_list', str(data / 'lists' / 'train_aug.txt'),
         '--session_name', str(work / 'net' / 'clf'), '--seed', '0',
         '--lr', '0.5', '--lr', '0.3', '--batch_size', '2', '--batch_size', '3'],
        ['--voc12_root', str(data), '--infer_list', str(data / 'lists' / 'val.txt'), '--weights',  # no network
         str(work / 'net' / 'clf.pth'), '--out', str(work / 'lbl')]]
    records = json.loads((work / 'stages.json').read_text())
    assert list(records) == ['clf', 'labels'] and records['clf']['script'] == 'fake_stage_script'
    assert 'python fake_stage_script.py --voc12_root ' in report.settings_text(records)

    run_pipeline.main(argv)  # clf is complete; labels wrote nothing, so it runs again
    assert len(calls) == 3 and calls[2] == calls[1]
    shutil.rmtree(work / 'net')
    with pytest.raises(UserError, match='labels needs the outputs of clf'):
        run_pipeline.main(argv + ['--from', 'labels'])
    with pytest.raises(SystemExit):  # the psa stage names are not this method's
        run_pipeline.main(argv + ['--from', 'train_cls'])


def test_a_bad_demo_settings_file_is_named(tmp_path):
    path = tmp_path / 'demo_bad.toml'
    for text, message in (('[train_cl]\nargs = []\n', r'\[train_cl\] is neither base, data, coco, pipeline nor a stage'),
                          ('[train_cls]\nargs = "--lr 0.1"\n', r'\[train_cls\] holds args = \[...\]'),
                          ('[infer_cls]\nquick = [1]\n', r'\[infer_cls\] holds args'),
                          ('[data\n', 'demo_bad.toml: ')):
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            pipeline.load_demo(PSA._replace(demo=str(path)), quick=False)


def test_heat_map_ramp_and_blend():
    np.testing.assert_array_equal(report.heat_colours(np.array([[0.0, 1.0, 0.5]])),
                                  [[[0, 0, 128], [255, 0, 0], [0, 255, 255]]])
    image = np.full((2, 3, 3), 100, np.uint8)
    blended = report.cam_heatmap(image, {4: np.ones((2, 3), np.float32), 7: np.zeros((2, 3), np.float32)})
    np.testing.assert_array_equal(blended, np.broadcast_to([178, 50, 50], (2, 3, 3)))
    np.testing.assert_array_equal(report.cam_heatmap(image, {}), np.broadcast_to([50, 50, 114], (2, 3, 3)))
    assert report.pick_ids(list('abcdefgh'), 3) == ['a', 'c', 'e'] and report.pick_ids(['a'], 4) == ['a']


# ------------------------------------------------------------------------------ methods, presets, diagnosis

@pytest.fixture(scope='module')
def small_demo_data(tmp_path_factory):
    from voc12.synthetic import make_demo
    root = str(tmp_path_factory.mktemp('demo_data') / 'data')
    make_demo(root, n_train=3, n_val=2, size=64)
    return root


def demo_argvs(method, work_dir, data):
    """The argv of every call of `method`'s demo (--quick) on `data`, from the stage table, running no stage."""
    args = run_pipeline.build_parser(method).parse_args(['--method', method, '--demo', '--quick',
                                                         '--work_dir', str(work_dir), '--voc12_root', data])
    table = pipeline.METHODS[method]
    demo = pipeline.load_demo(table, args.quick, args.demo_preset)
    pipeline.resolve_data(args, demo)
    pipeline.resolve_coco(args, table, demo)
    lay = pipeline.Layout(args, table)
    return {s.name: [pipeline.flag_argv(c.wiring) + pipeline.flag_argv(c.tunables) + pipeline.extra_argv(args, s, demo)
                     for c in pipeline.stage_calls(args, lay, s)] for s in table.stages}


def flag_value(argv, flag):
    """The value argparse keeps: the last one."""
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def test_method_tables_share_stage_names_and_name_their_scripts_and_networks():
    assert set(pipeline.METHODS) == {'psa', 'ssenet', 'seam', 'sbnet', 'sfl'}
    first_pass = ('train_seam', 'infer_seam', 'make_sb_map')
    for name, method in pipeline.METHODS.items():  # PSA's stages; sbnet's first pass before them
        if name != 'sfl':
            assert pipeline.stage_names(method) == (first_pass if name == 'sbnet' else ()) + STAGES
    # sfl: the random walk's two stages replaced by the segmenter's training and the re-segmentation
    assert pipeline.stage_names(pipeline.METHODS['sfl']) == STAGES[:2] + ('train_edge', 'resegment') + STAGES[4:]
    scripts = {name: [s.module for s in m.stages if s.name not in first_pass] for name, m in pipeline.METHODS.items()}
    assert scripts['ssenet'][:2] == ['train_cls_ser', 'infer_cls_ser']
    assert scripts['seam'][:2] == ['train_SEAM', 'infer_SEAM']
    assert scripts['sbnet'][:2] == ['train_SB', 'infer_SB']
    assert scripts['psa'][2:] == scripts['ssenet'][2:] == scripts['seam'][2:] == scripts['sbnet'][2:]
    assert scripts['sfl'] == ['train_SEAM', 'infer_SEAM', 'train_edge', 'infer_and_envalue', *scripts['psa'][4:]]
    assert [s.module for s in pipeline.METHODS['sbnet'].stages[:3]] == ['train_SEAM', 'infer_SEAM', 'make_sb_map']
    assert {name: m.networks['cls'] for name, m in pipeline.METHODS.items()} == {
        'psa': 'network.resnet38_cls', 'ssenet': 'network.resnet38_cls_ser', 'seam': 'network.resnet38_SEAM',
        'sbnet': 'network.resnet38_SEAM_BD', 'sfl': 'network.resnet38_SEAM'}
    for name in pipeline.METHODS:
        defaults = run_pipeline.build_parser(name).parse_args(['--work_dir', 'w'])
        assert defaults.cls_network == pipeline.METHODS[name].networks['cls']
        assert (defaults.aff_network, defaults.seg_network) == ('network.resnet38_aff', 'network.resnet38_seg')


def test_method_all_offers_every_stage_option_and_the_shared_stages_to_from_and_to():
    parser = run_pipeline.build_parser(pipeline.ALL)
    args = parser.parse_args(['--work_dir', 'w', '--no-make_sb_map', '--train_seam_args=--lr 1', '--from', 'train_seg'])
    assert not args.make_sb_map and args.train_seam_args == '--lr 1' and args.infer_seg_args == ''
    assert pipeline.selected_stages(args, pipeline.METHODS['sbnet']) == list(STAGES[4:])
    with pytest.raises(SystemExit):  # sfl has no train_aff
        parser.parse_args(['--work_dir', 'w', '--from', 'train_aff'])
    args = parser.parse_args(['--work_dir', 'w', '--no-make_sb_map'])  # no --from: each method's first stage
    assert pipeline.selected_stages(args, pipeline.METHODS['sbnet'])[:2] == ['train_seam', 'infer_seam']
    assert pipeline.selected_stages(args, PSA) == list(STAGES)
    with pytest.raises(SystemExit):  # psa has no make_sb_map to start from
        parser.parse_args(['--work_dir', 'w', '--from', 'make_sb_map'])


def test_sbnet_argvs_wire_its_first_pass_into_the_boundary_maps_and_train_sb(tmp_path, small_demo_data):
    argvs = demo_argvs('sbnet', tmp_path, small_demo_data)
    seam = demo_argvs('seam', tmp_path, small_demo_data)
    train_seam, infer_seam, sb_map = argvs['train_seam'][0], argvs['infer_seam'], argvs['make_sb_map']
    assert flag_value(train_seam, '--network') == 'network.resnet38_SEAM'
    assert flag_value(train_seam, '--session_name') == str(tmp_path / 'seam' / 'res38_SEAM')
    drop = ('--session_name',)
    assert [a for i, a in enumerate(train_seam) if train_seam[i - 1] not in drop] == \
        [a for i, a in enumerate(seam['train_cls'][0]) if seam['train_cls'][0][i - 1] not in drop]  # seam's demo
    assert len(infer_seam) == 1 and flag_value(infer_seam[0], '--infer_list').endswith('train_aug.txt')
    assert flag_value(infer_seam[0], '--out_la_crf') == str(tmp_path / 'seam_crf_la')
    assert flag_value(infer_seam[0], '--weights') == str(tmp_path / 'seam' / 'res38_SEAM.pth')
    assert len(sb_map) == 1 and flag_value(sb_map[0], '--label_dir') == str(tmp_path / 'seam_crf_la')
    assert flag_value(sb_map[0], '--source') == 'crf' and flag_value(sb_map[0], '--out_dir') == str(tmp_path / 'sb_map')
    assert flag_value(sb_map[0], '--voc12_root') == small_demo_data and '--weights' not in sb_map[0]
    train_sb = argvs['train_cls'][0]
    assert flag_value(train_sb, '--network') == 'network.resnet38_SEAM_BD'
    assert flag_value(train_sb, '--sb_map_dir') == str(tmp_path / 'sb_map')
    # the demo (init_from_cls) starts it from the whole first-pass SEAM network, not its backbone, at lr 0.01
    assert flag_value(train_sb, '--weights') == str(tmp_path / 'seam' / 'res38_SEAM.pth')
    assert flag_value(train_sb, '--lr') == '0.01' and '--weights' not in train_seam
    assert flag_value(argvs['train_aff'][0], '--weights') == str(tmp_path / 'cls' / 'res38_SB.backbone.pth')
    assert argvs['infer_aff'] == seam['infer_aff']


def test_sfl_argvs_train_the_segmenter_on_the_coco_set_and_retrain_on_its_labels(tmp_path, small_demo_data):
    """sfl's demo: SEAM's classifier argv, train_edge on the generated COCO-layout set from the SEAM backbone,
    resegment on both lists into sfl/ with the trained weights, train_seg on sfl/ with psa's settings."""
    argvs = demo_argvs('sfl', tmp_path, small_demo_data)
    seam, psa = demo_argvs('seam', tmp_path, small_demo_data), demo_argvs('psa', tmp_path, small_demo_data)
    assert argvs['train_cls'] == seam['train_cls']
    assert [flag_value(a, '--infer_list') for a in argvs['infer_cls']] == [flag_value(a, '--infer_list')
                                                                         for a in seam['infer_cls']]
    assert not any('--out_la_crf' in a or '--out_ha_crf' in a for a in argvs['infer_cls'])  # nothing reads them
    edge = argvs['train_edge'][0]
    coco = str(tmp_path / 'coco')
    assert (flag_value(edge, '--cocoRoot'), flag_value(edge, '--categories')) == (coco, os.path.join(coco, 'categories'))
    assert os.path.exists(os.path.join(coco, 'annotations_trainval2017', 'annotations', 'instances_train2017.json'))
    assert flag_value(edge, '--weights') == str(tmp_path / 'cls' / 'res38_SEAM.backbone.pth')
    assert flag_value(edge, '--edge_width') == '0.125' and flag_value(edge, '--width') == '0.125'
    assert flag_value(edge, '--max_epoches') == '1'  # quick
    lists = [flag_value(a, '--infer_list') for a in argvs['resegment']]
    assert [os.path.basename(path) for path in lists] == ['train_aug.txt', 'val.txt']
    for argv in argvs['resegment']:
        assert flag_value(argv, '--label_dir') == str(tmp_path / 'sfl')
        assert flag_value(argv, '--weights') == str(tmp_path / 'cls' / 'res38_SEAM.pth')
        assert flag_value(argv, '--edge_weights') == str(tmp_path / 'edge' / 'edge_edge.pth')
        assert flag_value(argv, '--edge_width') == '0.125'
    seg = argvs['train_seg'][0]
    assert flag_value(seg, '--mask_dir') == str(tmp_path / 'sfl')
    drop = ('--mask_dir', '--weights')
    assert [a for i, a in enumerate(seg) if a not in drop and seg[i - 1] not in drop] == \
        [a for i, a in enumerate(psa['train_seg'][0]) if a not in drop and psa['train_seg'][0][i - 1] not in drop]


def test_sfl_without_a_coco_set_is_refused(tmp_path, small_demo_data):
    with pytest.raises(UserError, match='--coco_root'):
        run_pipeline.main(['--method', 'sfl', '--work_dir', str(tmp_path), '--voc12_root', small_demo_data])


@pytest.mark.parametrize('method, cls_script, cls_network, walk', [
    ('ssenet', 'train_cls_ser', 'network.resnet38_cls_ser', {'--bg_score': '0.2', '--beta': '8'}),
    ('seam', 'train_SEAM', 'network.resnet38_SEAM', {'--alpha': '6', '--beta': '8'})])
def test_descendant_argvs_carry_the_method_flags_then_the_demo_settings(tmp_path, small_demo_data, method, cls_script,
                                                                      cls_network, walk):
    argvs = demo_argvs(method, tmp_path, small_demo_data)
    psa = demo_argvs('psa', tmp_path, small_demo_data)
    train_cls = argvs['train_cls'][0]
    assert flag_value(train_cls, '--network') == cls_network
    assert int(flag_value(train_cls, '--crop_size')) >= equivariance.min_crop()
    assert cls_script in {s.module for s in pipeline.METHODS[method].stages}
    infer_val = argvs['infer_cls'][1]
    assert flag_value(infer_val, '--network') == cls_network and '--out_cam_pred' in infer_val
    aff = argvs['train_aff'][0]
    assert aff[aff.index('--lr'):][:6] == ['--lr', '0.01', '--batch_size', '8', '--max_epoches', '8']  # the method's
    assert flag_value(aff, '--lr') == '0.03' and flag_value(aff, '--max_epoches') == '1'  # then the demo's (quick)
    walk_argv = argvs['infer_aff'][0]
    assert all(flag_value(walk_argv, flag) == value for flag, value in walk.items())
    assert flag_value(walk_argv, '--logt') == '4'  # the demo's 16x16 feature grid wins over the method's
    assert '--bg_score' in walk_argv if method == 'ssenet' else '--bg_score' not in walk_argv
    for stage in ('train_seg', 'infer_seg'):  # psa's segmentation settings, shared by --method all
        assert [a for a in argvs[stage][0] if not a.endswith('.pth')] == [a for a in psa[stage][0] if not a.endswith('.pth')]


def test_descendant_demo_files_are_psa_settings():
    """demo_ssenet.toml, demo_seam.toml and demo_sbnet.toml start from demo_psa.toml (base) and change nothing of
    it but sbnet's train_SB lr and epochs; sbnet's first pass takes seam's stage 1 and 2 settings (like = ...)."""
    for quick in (False, True):
        psa = pipeline.load_demo(PSA, quick=quick)
        for name in ('ssenet', 'seam', 'sbnet'):
            demo = pipeline.load_demo(pipeline.METHODS[name], quick=quick)
            argv = {s: v for s, v in demo.argv.items() if s in psa.argv and (name, s) != ('sbnet', 'train_cls')}
            assert (demo.data, demo.pipeline, argv) == (psa.data, psa.pipeline,
                                                        {s: v for s, v in psa.argv.items() if s in argv})
        sbnet = pipeline.load_demo(pipeline.METHODS['sbnet'], quick=quick).argv
        assert (sbnet['train_seam'], sbnet['infer_seam'], sbnet['make_sb_map']) == (psa.argv['train_cls'],
                                                                                   psa.argv['infer_cls'], [])
        full = pipeline.load_demo(PSA, quick=False).argv['train_cls']
        own = ['--lr', '0.01', '--max_epoches', '3']
        assert sbnet['train_cls'] == full + own + psa.argv['train_cls'][len(full):]  # then psa's quick changes


def test_a_stage_table_like_another(tmp_path):
    (tmp_path / 'demo.toml').write_text('[train_cls]\nargs = ["--lr 1"]\nquick = ["--max_epoches 1"]\n'
                                        '[infer_cls]\nlike = "train_cls"\n')
    method = PSA._replace(demo=str(tmp_path / 'demo.toml'))
    assert pipeline.load_demo(method, quick=True).argv['infer_cls'] == ['--lr', '1', '--max_epoches', '1']
    (tmp_path / 'demo.toml').write_text('[infer_cls]\nlike = "nope"\n')
    with pytest.raises(UserError, match='like'):
        pipeline.load_demo(method, quick=True)
    # with a base: like takes the base's table, before the file's own args, even where the file replaces that table
    (tmp_path / 'base.toml').write_text('[train_cls]\nargs = ["--lr 1"]\nquick = ["--max_epoches 1"]\n')
    (tmp_path / 'demo.toml').write_text('base = "base.toml"\n[train_cls]\nlike = "train_cls"\nargs = ["--lr 2"]\n'
                                        '[infer_cls]\nlike = "train_cls"\n')
    argv = pipeline.load_demo(method, quick=True).argv
    assert argv['train_cls'] == ['--lr', '1', '--lr', '2', '--max_epoches', '1']
    assert argv['infer_cls'] == ['--lr', '1', '--max_epoches', '1']


def test_a_demo_file_with_a_base_overrides_keys_and_stage_tables(tmp_path):
    (tmp_path / 'base.toml').write_text('[data]\nn_train = 5\nsize = 64\n[pipeline]\nwidth = 0.5\n'
                                        '[train_cls]\nargs = ["--lr 1"]\n[infer_cls]\nargs = ["--scales 1"]\n')
    (tmp_path / 'child.toml').write_text('base = "base.toml"\n[data]\nsize = 32\n[train_cls]\nargs = ["--lr 2"]\n')
    demo = pipeline.load_demo(PSA._replace(demo=str(tmp_path / 'child.toml')), quick=False)
    assert demo.data == {'n_train': 5, 'size': 32} and demo.pipeline == {'width': 0.5}
    assert demo.argv['train_cls'] == ['--lr', '2'] and demo.argv['infer_cls'] == ['--scales', '1']
    (tmp_path / 'child.toml').write_text('base = "missing.toml"\n')
    with pytest.raises(UserError, match='missing.toml'):
        pipeline.load_demo(PSA._replace(demo=str(tmp_path / 'child.toml')), quick=False)


def test_demo_preset_reaches_make_demo_and_the_default_changes_nothing():
    default = pipeline.load_demo(PSA, quick=False)
    assert default.data == {'n_train': 500, 'n_val': 100, 'size': 128}  # demo_params.json as before
    assert pipeline.load_demo(PSA, quick=False, preset=pipeline.DEFAULT_PRESET).data == default.data
    assert pipeline.load_demo(PSA, quick=True, preset='hard').data == {'n_train': 96, 'n_val': 24, 'size': 128,
                                                                       'preset': 'hard'}
    with pytest.raises(SystemExit):
        run_pipeline.build_parser().parse_args(['--work_dir', 'w', '--demo_preset', 'nope'])


def test_method_all_refuses_a_network_option(tmp_path):
    with pytest.raises(UserError, match='--cls_network with --method all'):
        run_pipeline.main(['--method', 'all', '--demo', '--work_dir', str(tmp_path), '--cls_network', 'network.x'])


def fake_summary(scores, seconds):
    keys = [key for key, _ in report.SCORE_ROWS if key not in report.OPTIONAL_ROWS]
    return dict(zip(keys, scores), cam_pred_bg=0.2, cam_best_threshold=0.31, num_val_images=4, quick=False,
                seconds=seconds, data={'source': 'generated', 'voc12_root': '/d', 'demo_params': {'seed': 0}})


def test_methods_report_puts_the_methods_side_by_side(tmp_path):
    from tool import pipeline_eval
    summaries = {'psa': fake_summary([72.0, 77.0, 86.7, 83.5, 83.1, 85.6], {'train_cls': 126.0, 'total': 532.0}),
                 'seam': dict(fake_summary([60.25, 70.0, None, 80.0, 81.0, 82.0], {'train_cls': None, 'total': 600.0}),
                              cam_pred_bg=0.26)}
    for name, summary in summaries.items():
        summary['work_dir'] = str(tmp_path / name)
    (tmp_path / 'seam').mkdir()
    (tmp_path / 'seam' / 'stages.json').write_text('{"train_cls": {"seconds": 150.5}}')  # skipped in this run
    pipeline_eval.write_methods_report(str(tmp_path), summaries)
    text = (tmp_path / 'methods.md').read_text()
    assert '| stage | psa | seam |' in text
    assert "| CAM (the method's background score) | 72.0 (bg 0.20) | 60.2 (bg 0.26) |" in text
    assert '| CAM + dCRF (la) | 86.7 | - |' in text and '| random walk (AffinityNet) | 83.5 | 80.0 |' in text
    assert '| train_cls | 126.0 | (150.5) |' in text and '| total | 532.0 | 600.0 |' in text
    assert 'generated into `/d`' in text and '![mIoU per stage and method](methods.png)' in text
    with Image.open(tmp_path / 'methods.png') as png:
        pixels = np.asarray(png.convert('RGB'))
    assert png.size == (2 * report.CHART_MARGIN + report.CHART_GROUP * len(report.CHART_ROWS),
                        report.CHART_H + 2 * report.CHART_MARGIN + 16 * 2 + 8)
    # the bar of psa's random walk (83.5 %) is filled in psa's colour up to 83.5 % of the axis, not above
    x = report.CHART_MARGIN + 3 * report.CHART_GROUP + (report.CHART_GROUP - 2 * report.CHART_BAR) // 2 + 5
    bottom = report.CHART_MARGIN + report.CHART_H
    assert tuple(pixels[bottom - int(0.83 * report.CHART_H), x]) == report.METHOD_COLOURS[0]
    assert tuple(pixels[bottom - int(0.86 * report.CHART_H), x]) != report.METHOD_COLOURS[0]


def test_summary_and_report_carry_the_diagnosis(first_run, voc):
    work_dir, summary = first_run
    val_ids = (Path(voc) / 'ImageSets' / 'Segmentation' / 'val.txt').read_text().split()
    gts = [load_label_png(os.path.join(voc, 'SegmentationClass', f'{i}.png')) for i in val_ids]
    assert list(summary['diagnosis']) == ['cam', 'rw', 'seg_nocrf', 'seg_crf']
    for key, folder in (('cam', 'cam_pred'), ('rw', 'rw'), ('seg_crf', 'seg_crf')):
        preds = [load_label_png(str(work_dir / folder / f'{i}.png')) for i in val_ids]
        d = summary['diagnosis'][key]
        assert d['miou'] == pytest.approx(summary[f'{key}_miou'], abs=1e-3)
        valid = [(g < 255) for g in gts]
        bg = sum(((g == 0) & v).sum() for g, v in zip(gts, valid))
        leak = sum(((g == 0) & (p != 0) & v).sum() for g, p, v in zip(gts, preds, valid))
        fg = sum(((g > 0) & v).sum() for g, v in zip(gts, valid))
        missed = sum(((g > 0) & (p == 0) & v).sum() for g, p, v in zip(gts, preds, valid))
        assert d['bg_leak'] == pytest.approx(100 * leak / bg, abs=1e-3)
        assert d['missed_fg'] == pytest.approx(100 * missed / fg, abs=1e-3)
        image_miou = {i: independent_miou([(g, p)]) for i, g, p in zip(val_ids, gts, preds)}
        assert [i for i, _ in d['worst']] == sorted(val_ids, key=lambda i: (image_miou[i], i))[:5]
        assert all(m == pytest.approx(image_miou[i], abs=1e-3) for i, m in d['worst'])
    text = (work_dir / 'report.md').read_text()
    assert '## Diagnosis (val, % of pixels)' in text and '![worst images](report_worst.png)' in text
    assert f"| random walk (AffinityNet) | {summary['diagnosis']['rw']['miou']:.1f} | " in text
    assert f"of `{voc}`" in text
    with Image.open(work_dir / 'report_worst.png') as grid:
        assert grid.size == (3 * report.CELL, 4 * (report.TITLE_H + len(val_ids) * report.CELL))


def test_method_all_runs_every_method_on_the_shared_data(tmp_path, monkeypatch):
    psa_demo = pipeline.load_demo
    monkeypatch.setattr(pipeline, 'load_demo', lambda method, quick, preset=None:
                        psa_demo(method, quick, preset)._replace(data={'n_train': 3, 'n_val': 2, 'size': 64}))
    seen = []

    def fake_run(args):
        seen.append(vars(args).copy())
        return fake_summary([50.0] * 6, {'total': 1.0}) | {'work_dir': args.work_dir}
    monkeypatch.setattr(run_pipeline, 'run_method', fake_run)
    summaries = run_pipeline.main(['--method', 'all', '--demo', '--work_dir', str(tmp_path), '--seed', '3'])
    assert list(summaries) == ['psa', 'ssenet', 'seam', 'sbnet', 'sfl'] == [s['method'] for s in seen]
    data = str(tmp_path / 'data')
    assert json.loads((tmp_path / 'data' / 'demo_params.json').read_text())['seed'] == 3  # generated once, here
    for args in seen:
        assert args['work_dir'] == str(tmp_path / args['method'])
        assert (args['voc12_root'], args['seed'], args['data_source'], args['demo']) == (data, 3, 'generated', True)
        assert args['cls_labels'] == os.path.join(data, 'cls_labels.npy')
        assert args['cls_network'] == pipeline.METHODS[args['method']].networks['cls']
    assert (tmp_path / 'methods.md').exists() and (tmp_path / 'methods.png').exists()
