"""Run the PSA / AffinityNet pipeline end to end, every stage through its own script's main(), in order.

    python run_pipeline.py --voc12_root VOC2012 --work_dir run1 --init_weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params
    python run_pipeline.py --demo --work_dir demo_run             # built-in synthetic data, CPU, minutes
    python run_pipeline.py --demo --work_dir demo_run --from infer_aff --to infer_seg
    python run_pipeline.py --demo --work_dir demo_run --train_seg_args="--max_epoches 10 --lr 0.02"

Stages of --method psa: train_cls, infer_cls, train_aff, infer_aff, train_seg, infer_seg, evaluate. Each
script stage is its script's main() called in this process with an argv built from the method's stage table
(tool/pipeline.py METHODS; printed first, so the stage can be rerun by hand with `python <script>.py <argv>`).
The argv is, in this order: the wiring (paths, lists, --network, --width, --cls_labels), the pipeline's
tunables (--num_workers, --seed, --init_weights), the method's own flags (none for psa), the demo settings
(--demo: configs/demo_<method>.toml, which says why each is set), then --<stage>_args; argparse keeps the
last value, so --<stage>_args overrides everything before it except the wiring, which it may not change.

Artefacts pass through folders of --work_dir:

    data/               --demo only: the demo dataset in VOC layout (voc12.synthetic.make_demo)
    cls/res38_cls.pth   train_cls session (.log, .ckpt.pth and _tb/ beside it)
    cam/<id>.npy        infer_cls: CAM dicts of the train and val images
    crf_la/<id>.npy     infer_cls: low-alpha dCRF dicts (train images: train_aff; val: the CAM+dCRF score)
    crf_ha/<id>.npy     infer_cls: high-alpha dCRF dicts of the train images
    cam_pred/<id>.png   infer_cls: CAM labels at background score 0.2 of the val images
    aff/res38_aff.pth   train_aff session
    rw/<id>.png         infer_aff: random-walk labels (train images: train_seg's pseudo labels; val: scored)
    seg/res38_seg.pth   train_seg session
    seg_pred/<id>.png   infer_seg --output (val images)
    seg_crf/<id>.png    infer_seg --output_crf (val images; --no-seg_crf leaves it out)
    stages.json         script, argv and wall time of the run that wrote each stage's outputs
    summary.json, report.md, report_grid.png    written by the evaluate stage (val split, mIoU in %)

A stage whose outputs all exist is skipped, so a killed run continues: inference stages redo only the
missing images, a training stage resumes from its last epoch checkpoint. To redo a stage, delete its
folder (and those of the stages after it). evaluate always runs (seconds).
"""
import argparse
import os
import time

import torch

from tool import pipeline, pipeline_eval
from tool.cli import run_main

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


def method_name(argv):
    """--method's value, read before the parser is built: the method's stages name the stage options."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--method', default=pipeline.DEFAULT_METHOD)
    name = pre.parse_known_args(argv)[0].method
    return name if name in pipeline.METHODS else pipeline.DEFAULT_METHOD  # the parser reports a wrong one


def build_parser(method=pipeline.DEFAULT_METHOD):
    rows = pipeline.METHODS[method].stages
    stages = pipeline.stage_names(pipeline.METHODS[method])
    demo = pipeline.load_demo(pipeline.METHODS[method], quick=False).pipeline
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work_dir', required=True, help='folder for every artefact (see the layout above)')
    p.add_argument('--method', choices=sorted(pipeline.METHODS), default=pipeline.DEFAULT_METHOD,
                   help='the stage table that runs (tool/pipeline.py METHODS); --demo reads '
                        'configs/demo_<method>.toml (default %(default)s)')
    data = p.add_argument_group('data (ignored with --demo, which uses <work_dir>/data)')
    data.add_argument('--voc12_root', help='VOC2012 folder (JPEGImages/, SegmentationClass/)')
    data.add_argument('--train_list', default=os.path.join(REPO_DIR, 'voc12', 'train_aug.txt'),
                      help='images for training and pseudo labels (default: voc12/train_aug.txt beside this file)')
    data.add_argument('--val_list', default=os.path.join(REPO_DIR, 'voc12', 'val.txt'),
                      help='images that are scored (default: voc12/val.txt beside this file)')
    data.add_argument('--gt_dir', help='ground-truth masks of the val images (default: <voc12_root>/SegmentationClass)')
    data.add_argument('--cls_labels', help="image-level labels .npy (default: the stage scripts' voc12/cls_labels.npy)")

    demo_group = p.add_argument_group('demo')
    demo_group.add_argument('--demo', action='store_true',
                            help='generate the demo dataset into <work_dir>/data (once) and run with the demo '
                                 'settings (configs/demo_<method>.toml)')
    demo_group.add_argument('--quick', action='store_true', help='with --demo: fewer images and epochs (CI)')
    demo_group.add_argument('--seed', type=int, default=None,
                            help='seed of the training stages (--seed) and, with --demo, of the dataset (default 0 there)')

    sel = p.add_argument_group('stage selection: a stage runs if it lies in --from..--to and is not switched off')
    sel.add_argument('--from', dest='first', choices=stages, default=stages[0], help='first stage to run')
    sel.add_argument('--to', dest='last', choices=stages, default=stages[-1], help='last stage to run')
    for stage in stages:
        sel.add_argument(f'--{stage}', action=argparse.BooleanOptionalAction, default=True,
                         help=f'run {stage} (--no-{stage} skips it)')

    net = p.add_argument_group('networks (wiring: the same value reaches a network\'s training and inference)')
    net.add_argument('--cls_network', default='network.resnet38_cls')
    net.add_argument('--aff_network', default='network.resnet38_aff')
    net.add_argument('--seg_network', default='network.resnet38_seg')
    net.add_argument('--width', type=float, default=None, help=f"backbone width multiplier (default 1; --demo {demo.get('width')})")
    net.add_argument('--init_weights', default=None,
                     help='--weights of the three training stages (ImageNet .params / .caffemodel / .pth; '
                          'default: train from the random initialisation)')
    net.add_argument('--init_from_cls', action=argparse.BooleanOptionalAction, default=None,
                     help='train_aff and train_seg start from the backbone train_cls trained (instead of '
                          "--init_weights; default off, --demo on)")

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


def main(argv=None):
    args = build_parser(method_name(argv)).parse_args(argv)
    method = pipeline.METHODS[args.method]
    wall_start = time.perf_counter()
    os.makedirs(args.work_dir, exist_ok=True)
    demo = pipeline.load_demo(method, args.quick) if args.demo else None
    data_seconds = pipeline.resolve_data(args, demo)
    if args.threads:
        torch.set_num_threads(args.threads)
    lay = pipeline.Layout(args, method)
    run = pipeline.selected_stages(args, method)
    calls = {stage.name: pipeline.stage_calls(args, lay, stage) for stage in method.stages}
    argvs = pipeline.stage_argvs(args, method, calls, demo)
    if 'evaluate' in run:
        pipeline_eval.check_ground_truth(args, lay)

    status, seconds = {}, {}
    if args.demo:
        status['demo_data'] = 'ran' if data_seconds is not None else 'skipped'
        seconds['demo_data'] = data_seconds
    records = pipeline.run_stages(method, lay, run, calls, argvs, status, seconds)
    if 'evaluate' not in run:
        print('evaluate is off: no summary')
        return None
    return pipeline_eval.evaluate_and_report(args, lay, records, status, seconds, wall_start)


if __name__ == '__main__':
    run_main(main)
