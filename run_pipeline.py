"""Run the PSA / AffinityNet pipeline end to end, every stage through its own script's main(), in order.

    python run_pipeline.py --voc12_root VOC2012 --work_dir run1 --init_weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params
    python run_pipeline.py --demo --work_dir demo_run             # built-in synthetic data, CPU, minutes
    python run_pipeline.py --demo --work_dir demo_run --from infer_aff --to infer_seg
    python run_pipeline.py --demo --work_dir demo_run --train_seg_args="--max_epoches 10 --lr 0.02"
    python run_pipeline.py --demo --method seam --work_dir demo_seam          # SEAM's stages 1-2, then PSA's
    python run_pipeline.py --demo --method sfl --work_dir demo_sfl            # SEAM CAMs re-segmented (COCO masks)
    python run_pipeline.py --demo --method all --work_dir demo_all            # psa, ssenet, seam, sbnet, sfl side by side
    python run_pipeline.py --demo --demo_preset hard --work_dir demo_hard     # data the demo was not tuned on
    python run_pipeline.py --demo --work_dir mine --voc12_root DIR --train_list A --val_list B --gt_dir G --cls_labels L

Stages of every method: train_cls, infer_cls, train_aff, infer_aff, train_seg, infer_seg, evaluate (sbnet runs
train_seam, infer_seam and make_sb_map before them: its SEAM first pass and the boundary maps of its CRF labels,
in seam/, seam_crf_la/ and sb_map/ under --work_dir; sfl runs train_edge and resegment instead of train_aff and
infer_aff: infer_and_envalue.py's re-segmentation of the SEAM CAMs by the segmenter train_edge.py trained on the
COCO-layout set of --coco_root, whose pixel masks are supervision beyond the image-level labels). Each script stage is its script's main() called in this
process with an argv built from the method's stage table (tool/pipeline.py METHODS; printed first, so the stage
can be rerun by hand with `python <script>.py <argv>`): psa runs train_cls.py / infer_cls.py, ssenet
train_cls_ser.py / infer_cls_ser.py, seam train_SEAM.py / infer_SEAM.py, sbnet train_SB.py / infer_SB.py, each
with its own classification network (--cls_network's default), then all of them
train_aff, infer_aff, train_seg and infer_seg. The argv is, in this order: the wiring (paths, lists,
--network, --width, --cls_labels), the pipeline's tunables (--num_workers, --seed, --init_weights), the
method's own flags (ssenet, seam and sbnet: train_aff --lr 0.01 --batch_size 8 --max_epoches 8; infer_aff ssenet
--bg_score 0.2 --beta 8 --logt 8, seam and sbnet --alpha 6 --beta 8 --logt 6), the demo settings (--demo:
configs/demo_<method>.toml, which says why each is set), then --<stage>_args; argparse keeps the last
value, so --<stage>_args overrides everything before it except the wiring, which it may not change.

Artefacts pass through folders of --work_dir:

    data/               --demo only: the demo dataset in VOC layout (voc12.synthetic.make_demo)
    cls/res38_cls.pth   train_cls session (.log, .ckpt.pth and _tb/ beside it)
    cam/<id>.npy        infer_cls: CAM dicts of the train and val images
    crf_la/<id>.npy     infer_cls: low-alpha dCRF dicts (train images: train_aff; val: the CAM+dCRF score)
    crf_ha/<id>.npy     infer_cls: high-alpha dCRF dicts of the train images
    cam_pred/<id>.png   infer_cls: CAM labels at background score 0.2 of the val images
    aff/res38_aff.pth   train_aff session
    rw/<id>.png         infer_aff: random-walk labels (train images: train_seg's pseudo labels; val: scored)
    edge/, sfl/<id>.png sfl: train_edge's session (edge_edge.pth, edge_refer.pth) and the re-segmented labels
    coco/               --demo --method sfl: the segmenter's COCO-layout set (voc12.synthetic.make_demo_coco)
    seg/res38_seg.pth   train_seg session
    seg_pred/<id>.png   infer_seg --output (val images)
    seg_crf/<id>.png    infer_seg --output_crf (val images; --no-seg_crf leaves it out)
    stages.json         script, argv and wall time of the run that wrote each stage's outputs
    summary.json, report.md, report_grid.png    written by the evaluate stage (val split, mIoU in %)
    report_worst.png    evaluate: the five worst val images of each label stage (the report's diagnosis)

--method all runs each method in <work_dir>/<method> (the layout above) on the same data and seed (--demo:
generated once into <work_dir>/data) and writes <work_dir>/methods.md and methods.png (mIoU per stage and
method, side by side, and the wall times).

A stage whose outputs all exist is skipped, so a killed run continues: inference stages redo only the
missing images, a training stage resumes from its last epoch checkpoint. To redo a stage, delete its
folder (and those of the stages after it). evaluate always runs (seconds).
"""
import argparse
import copy
import os
import time

import torch

from tool import pipeline, pipeline_eval
from tool.cli import run_main
from tool.io import UserError
from voc12.synthetic import PRESETS


def method_name(argv):
    """--method's value, read before the parser is built: the method's stages name the stage options."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--method', default=pipeline.DEFAULT_METHOD)
    name = pre.parse_known_args(argv)[0].method
    return name if name in pipeline.METHODS or name == pipeline.ALL else pipeline.DEFAULT_METHOD  # the parser reports a wrong one


def build_parser(method=pipeline.DEFAULT_METHOD):
    """The parser of --method `method`; with 'all' the stage options are those of every method's stages,
    --from / --to choose among the stages every method has and the networks default to each method's own."""
    table = pipeline.METHODS.get(method, pipeline.METHODS[pipeline.DEFAULT_METHOD])
    rows = pipeline.all_stage_rows() if method == pipeline.ALL else table.stages
    stages = tuple(r.name for r in rows) + ('evaluate',)
    ends = pipeline.shared_stage_names() if method == pipeline.ALL else stages
    demo = pipeline.load_demo(table, quick=False).pipeline
    networks = {} if method == pipeline.ALL else table.networks
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work_dir', required=True, help='folder for every artefact (see the layout above)')
    p.add_argument('--method', choices=sorted(pipeline.METHODS) + [pipeline.ALL], default=pipeline.DEFAULT_METHOD,
                   help="the stage table that runs (tool/pipeline.py METHODS); --demo reads "
                        "configs/demo_<method>.toml (default %(default)s). 'all' runs every method on the same data "
                        "and seed, each in <work_dir>/<method>, and writes <work_dir>/methods.md and methods.png")
    p.set_defaults(data_source=None)  # set by tool/pipeline.resolve_data; --method all passes its shared data on
    data = p.add_argument_group('data (with --demo: generated into <work_dir>/data unless --voc12_root is given)')
    data.add_argument('--voc12_root', help='VOC2012 folder (JPEGImages/, SegmentationClass/); with --demo: run the '
                                           "demo settings on this folder instead of generating the demo data")
    data.add_argument('--train_list',
                      help='images for training and pseudo labels (default: voc12/train_aug.txt beside this file; '
                           '--demo: <voc12_root>/lists/train_aug.txt)')
    data.add_argument('--val_list', help='images that are scored (default: voc12/val.txt beside this file; '
                                         '--demo: <voc12_root>/lists/val.txt)')
    data.add_argument('--gt_dir', help='ground-truth masks of the val images (default: <voc12_root>/SegmentationClass)')
    data.add_argument('--cls_labels', help="image-level labels .npy (default: the stage scripts' voc12/cls_labels.npy; "
                                           '--demo: <voc12_root>/cls_labels.npy)')
    data.add_argument('--coco_root', help="--method sfl: the COCO-layout set of the segmenter (train_edge.py's "
                                          '--cocoRoot; --demo: generated into <work_dir>/coco)')
    data.add_argument('--coco_type', default='train2017', help="--method sfl: train_edge.py's --dataType (%(default)s)")
    data.add_argument('--coco_categories', help="--method sfl: train_edge.py's --categories (default "
                                                '<coco_root>/categories)')

    demo_group = p.add_argument_group('demo')
    demo_group.add_argument('--demo', action='store_true',
                            help='generate the demo dataset into <work_dir>/data (once) and run with the demo '
                                 'settings (configs/demo_<method>.toml)')
    demo_group.add_argument('--quick', action='store_true', help='with --demo: fewer images and epochs (CI)')
    demo_group.add_argument('--demo_preset', choices=sorted(PRESETS), default=None,
                            help=f"with --demo: make_demo's preset of the generated data (default "
                                 f"{pipeline.DEFAULT_PRESET}; 'hard': data the demo settings were not tuned on)")
    demo_group.add_argument('--seed', type=int, default=None,
                            help='seed of the training stages (--seed) and, with --demo, of the dataset (default 0 there)')

    sel = p.add_argument_group('stage selection: a stage runs if it lies in --from..--to and is not switched off')
    sel.add_argument('--from', dest='first', choices=ends, default=None,
                     help=f"first stage to run (default: the method's first, {ends[0]})")
    sel.add_argument('--to', dest='last', choices=ends, default=None, help=f'last stage to run (default {ends[-1]})')
    for stage in stages:
        sel.add_argument(f'--{stage}', action=argparse.BooleanOptionalAction, default=True,
                         help=f'run {stage} (--no-{stage} skips it)')

    net = p.add_argument_group('networks (wiring: the same value reaches a network\'s training and inference)')
    for name in pipeline.NETS:
        net.add_argument(f'--{name}_network', default=networks.get(name),
                         help="default: the method's (tool/pipeline.py METHODS; %(default)s)")
    net.add_argument('--width', type=float, default=None, help=f"backbone width multiplier (default 1; --demo {demo.get('width')})")
    net.add_argument('--init_weights', default=None,
                     help='--weights of the three training stages (ImageNet .params / .caffemodel / .pth; '
                          'default: train from the random initialisation)')
    net.add_argument('--init_from_cls', action=argparse.BooleanOptionalAction, default=None,
                     help='train_aff and train_seg start from the backbone train_cls trained, sbnet\'s train_cls '
                          "from the whole SEAM network train_seam trained (instead of --init_weights; default "
                          "off, --demo on)")

    run = p.add_argument_group('running')
    run.add_argument('--num_workers', type=int, default=None,
                     help="every stage's --num_workers and the evaluation's processes (default: the scripts' 8; "
                          f"--demo {demo.get('num_workers')})")
    run.add_argument('--threads', type=int, default=None,
                     help="torch CPU threads of this process (default: torch's choice; --demo "
                          f"{demo.get('threads')}, with --num_workers 0: threads plus loader or CRF "
                          'processes beyond the CPU cores contend and run an order of magnitude slower)')
    run.add_argument('--seg_crf', action=argparse.BooleanOptionalAction, default=True,
                     help='infer_seg also writes the dCRF-refined labels (seg_miou is then scored on them)')
    run.add_argument('--report_images', type=int, default=4, help='val images in report_grid.png')

    passthrough = p.add_argument_group(
        'flags of the stage scripts',
        "--<stage>_args='FLAGS' appends FLAGS to that stage's argv (after everything else, so they override "
        "the pipeline's tunables and the demo settings); write it with '=' because the value starts with "
        "'--'. Every flag of the script is reachable (python <stage>.py --help) except the wiring the "
        'pipeline sets: paths, lists, --network, --width, --cls_labels.')
    for row in rows:
        passthrough.add_argument(f'--{row.name}_args', default='', metavar='FLAGS', help=f'extra flags of {row.module}.py')
    return p


def run_method(args):
    """One method's stages and evaluation; returns the summary (None with evaluate off)."""
    method = pipeline.METHODS[args.method]
    wall_start = time.perf_counter()
    os.makedirs(args.work_dir, exist_ok=True)
    demo = pipeline.load_demo(method, args.quick, args.demo_preset) if args.demo else None
    data_seconds = pipeline.resolve_data(args, demo)
    coco_status, coco_seconds = pipeline.resolve_coco(args, method, demo)
    if args.threads:
        torch.set_num_threads(args.threads)
    lay = pipeline.Layout(args, method)
    run = pipeline.selected_stages(args, method)
    calls = {stage.name: pipeline.stage_calls(args, lay, stage) for stage in method.stages}
    argvs = pipeline.stage_argvs(args, method, calls, demo)
    if 'evaluate' in run:
        pipeline_eval.check_ground_truth(args, lay)

    status, seconds = {}, {}
    if args.data_source == 'generated':
        status['demo_data'] = 'ran' if data_seconds is not None else 'skipped'
        seconds['demo_data'] = data_seconds
    if coco_status:
        status['demo_coco'], seconds['demo_coco'] = coco_status, coco_seconds
    records = pipeline.run_stages(method, lay, run, calls, argvs, status, seconds)
    if 'evaluate' not in run:
        print('evaluate is off: no summary')
        return None
    return pipeline_eval.evaluate_and_report(args, lay, records, status, seconds, wall_start)


def run_all(args):
    """--method all: the data (--demo: the default method's demo data, generated once into <work_dir>/data),
    then each method in <work_dir>/<method>; writes methods.md and methods.png. Returns {method: summary}."""
    given = [f'--{name}_network' for name in pipeline.NETS if getattr(args, f'{name}_network')]
    if given:
        raise UserError(f'{given[0]} with --method all: each method trains its own networks; run one method to change them')
    os.makedirs(args.work_dir, exist_ok=True)
    shared = copy.copy(args)
    demo = pipeline.load_demo(pipeline.METHODS[pipeline.DEFAULT_METHOD], args.quick, args.demo_preset) if args.demo else None
    pipeline.resolve_data(shared, demo)
    summaries = {}
    for name, method in pipeline.METHODS.items():
        sub = copy.copy(args)
        for key in ('voc12_root', 'train_list', 'val_list', 'gt_dir', 'cls_labels', 'seed', 'data_source'):
            setattr(sub, key, getattr(shared, key))
        sub.method, sub.work_dir, sub.demo_preset = name, os.path.join(args.work_dir, name), None
        for net in pipeline.NETS:
            setattr(sub, f'{net}_network', method.networks[net])
        print(f'\n##### --method {name} in {sub.work_dir}', flush=True)
        summaries[name] = run_method(sub)
    done = {name: summary for name, summary in summaries.items() if summary}
    if done:
        pipeline_eval.write_methods_report(args.work_dir, done)
    return summaries


def main(argv=None):
    args = build_parser(method_name(argv)).parse_args(argv)
    return run_all(args) if args.method == pipeline.ALL else run_method(args)


if __name__ == '__main__':
    run_main(main)
