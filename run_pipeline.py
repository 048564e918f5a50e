"""Run the PSA / AffinityNet pipeline end to end, every stage through its own script's main(), in order.

    python run_pipeline.py --voc12_root VOC2012 --work_dir run1 --init_weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params
    python run_pipeline.py --demo --work_dir demo_run             # built-in synthetic data, CPU, minutes
    python run_pipeline.py --demo --work_dir demo_run --from infer_aff --to infer_seg
    python run_pipeline.py --demo --work_dir demo_run --train_seg_args="--max_epoches 10 --lr 0.02"

Stages: train_cls, infer_cls, train_aff, infer_aff, train_seg, infer_seg, evaluate. Each script stage is
its script's main() called in this process with an argv built here (printed first, so the stage can be
rerun by hand with `python <stage>.py <argv>`). The argv is, in this order: the wiring (paths, lists,
--network, --width, --cls_labels), the pipeline's tunables (--num_workers, --seed, --init_weights),
the demo settings (--demo, DEMO below), then --<stage>_args; argparse keeps the last value, so
--<stage>_args overrides everything before it except the wiring, which it may not change.

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
    stages.json         argv and wall time of the run that wrote each stage's outputs
    summary.json, report.md, report_grid.png    written by the evaluate stage (val split, mIoU in %)

A stage whose outputs all exist is skipped, so a killed run continues: inference stages redo only the
missing images, a training stage resumes from its last epoch checkpoint. To redo a stage, delete its
folder (and those of the stages after it). evaluate always runs (seconds).
"""
import argparse
import importlib
import json
import math
import os
import shlex
import time
from typing import NamedTuple

import numpy as np
import torch

import evaluation
import voc12.data
from tool import metrics, report
from tool.cli import run_main
from tool.io import UserError, atomic_write, load_dict_npy, load_label_png
from voc12.synthetic import make_demo

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
SCRIPT_STAGES = ('train_cls', 'infer_cls', 'train_aff', 'infer_aff', 'train_seg', 'infer_seg')
STAGES = SCRIPT_STAGES + ('evaluate',)
NEEDS = {'infer_cls': ('train_cls',), 'train_aff': ('infer_cls',), 'infer_aff': ('train_aff', 'infer_cls'),
         'train_seg': ('infer_aff',), 'infer_seg': ('train_seg',)}
SESSIONS = {'train_cls': 'cls/res38_cls', 'train_aff': 'aff/res38_aff', 'train_seg': 'seg/res38_seg'}

# The demo's settings, one row per stage: (argv with --demo, argv added on top with --demo --quick).
# 'data' holds make_demo's arguments and 'pipeline' this script's own options (dicts, not argv). Everything
# the paper does differently follows from one fact: the demo trains a narrow ResNet-38 from scratch (no
# ImageNet weights) on 128 px synthetic images on a 2-core CPU in minutes.
DEMO = {
    # 500 train images of 128 px, 6 classes whose objects (plain body + checkered part in the class colour) lie
    # among plain clutter blobs of the same colours, so CAMs are strongest near the part; 100 val images
    'data': ({'n_train': 500, 'n_val': 100, 'size': 128}, {'n_train': 96, 'n_val': 24}),
    # ~1.6M parameters instead of ~100M; two torch threads and no loader / CRF processes (the 128 px images
    # load in no time; on 2 cores this trains 1.6x faster than one thread beside a loader process); no ImageNet
    # weights, so the classifier trained in stage 1 is the pretrained backbone of stages 3 and 5
    'pipeline': ({'width': 0.125, 'num_workers': 0, 'threads': 2, 'init_from_cls': True}, {}),
    # from scratch: He init, SGD momentum 0.9 and lr 0.03 (lr 0.1 stays at the base-rate solution); images are
    # already crop-sized, so no resize; no colour jitter (colour is a class cue here); after 5 epochs one class
    # was still unlearnt (its CAM zero everywhere), after 8 all six are
    'train_cls': ('--scratch --crop_size 128 --resize_long 128 128 --color_jitter 0 0 0 0 --batch_size 8 '
                  '--max_epoches 8 --lr 0.03 --sgd_momentum 0.9 --val_list= --log_interval 25', '--max_epoches 1'),
    # one scale + flip: the 128 px images are small (the reference's 4 scales cost 6x the time)
    'infer_cls': ('--scales 1', ''),
    'train_aff': ('--scratch --crop_size 128 --color_jitter 0 0 0 0 --batch_size 8 --max_epoches 2 --lr 0.03 '
                  '--sgd_momentum 0.9 --log_interval 25', '--max_epoches 1'),
    # a 16x16 feature grid (not VOC's ~63x47): 2^4 walk steps instead of 2^8 spread the CAM over the object, not
    # past it; CAM ** 2.2 keeps the stride-8 CAM blur off the background (as the issue's probe found)
    'infer_aff': ('--cam_power 2.2 --logt 4', ''),
    # whole images (--rescale 128 128: a crop can cut an object's part off while its body keeps the class
    # label); val mIoU+dCRF after 8 epochs on one run's walk labels: batch 8, crops of 128-160 px rescales, lr
    # 0.003 / 0.005 -> 82.8 / 83.9; batch 8, whole images, lr 0.005 / 0.007 -> 84.9 / 86.5; batch 4, whole
    # images, lr 0.005 -> 87.2; lr 0.01 diverged (23 after 2 epochs: the head's 10x/20x lr)
    'train_seg': ('--scratch --crop_size 128 --rescale 128 128 --color_jitter 0 0 0 0 --batch_size 4 '
                  '--max_epoches 8 --lr 0.005 --sgd_momentum 0.9 --log_interval 50', '--max_epoches 1'),
    'infer_seg': ('--scales 1', ''),
}


class Call(NamedTuple):
    """One main() call of a stage script."""
    wiring: dict       # flag -> value (None: left out); --<stage>_args may not change these
    tunables: dict     # flag -> value (None: left out); pipeline options that --<stage>_args may override
    outputs: tuple     # the files that exist once the call is done


def flag_argv(flags):
    return [str(x) for flag, value in flags.items() if value is not None for x in (flag, value)]


# ------------------------------------------------------------------------------ options

def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work_dir', required=True, help='folder for every artefact (see the layout above)')
    data = p.add_argument_group('data (ignored with --demo, which uses <work_dir>/data)')
    data.add_argument('--voc12_root', help='VOC2012 folder (JPEGImages/, SegmentationClass/)')
    data.add_argument('--train_list', default=os.path.join(REPO_DIR, 'voc12', 'train_aug.txt'),
                      help='images for training and pseudo labels (default: voc12/train_aug.txt beside this file)')
    data.add_argument('--val_list', default=os.path.join(REPO_DIR, 'voc12', 'val.txt'),
                      help='images that are scored (default: voc12/val.txt beside this file)')
    data.add_argument('--gt_dir', help='ground-truth masks of the val images (default: <voc12_root>/SegmentationClass)')
    data.add_argument('--cls_labels', help="image-level labels .npy (default: the stage scripts' voc12/cls_labels.npy)")

    demo = p.add_argument_group('demo')
    demo.add_argument('--demo', action='store_true',
                      help='generate the demo dataset into <work_dir>/data (once) and run with the DEMO settings')
    demo.add_argument('--quick', action='store_true', help='with --demo: fewer images and epochs (CI)')
    demo.add_argument('--seed', type=int, default=None,
                      help='seed of the training stages (--seed) and, with --demo, of the dataset (default 0 there)')

    sel = p.add_argument_group('stage selection: a stage runs if it lies in --from..--to and is not switched off')
    sel.add_argument('--from', dest='first', choices=STAGES, default=STAGES[0], help='first stage to run')
    sel.add_argument('--to', dest='last', choices=STAGES, default=STAGES[-1], help='last stage to run')
    for stage in STAGES:
        sel.add_argument(f'--{stage}', action=argparse.BooleanOptionalAction, default=True,
                         help=f'run {stage} (--no-{stage} skips it)')

    net = p.add_argument_group('networks (wiring: the same value reaches a network\'s training and inference)')
    net.add_argument('--cls_network', default='network.resnet38_cls')
    net.add_argument('--aff_network', default='network.resnet38_aff')
    net.add_argument('--seg_network', default='network.resnet38_seg')
    net.add_argument('--width', type=float, default=None, help=f"backbone width multiplier (default 1; --demo {DEMO['pipeline'][0]['width']})")
    net.add_argument('--init_weights', default=None,
                     help='--weights of the three training stages (ImageNet .params / .caffemodel / .pth; '
                          'default: train from the random initialisation)')
    net.add_argument('--init_from_cls', action=argparse.BooleanOptionalAction, default=None,
                     help='train_aff and train_seg start from the backbone train_cls trained (instead of '
                          "--init_weights; default off, --demo on)")

    run = p.add_argument_group('running')
    run.add_argument('--num_workers', type=int, default=None,
                     help="every stage's --num_workers and the evaluation's processes (default: the scripts' 8; "
                          f"--demo {DEMO['pipeline'][0]['num_workers']})")
    run.add_argument('--threads', type=int, default=None,
                     help="torch CPU threads of this process (default: torch's choice; --demo "
                          f"{DEMO['pipeline'][0]['threads']}, with --num_workers 0: threads plus loader or CRF "
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
    for stage in SCRIPT_STAGES:
        passthrough.add_argument(f'--{stage}_args', default='', metavar='FLAGS', help=f'extra flags of {stage}.py')
    return p


def selected_stages(args):
    first, last = STAGES.index(args.first), STAGES.index(args.last)
    if first > last:
        raise UserError(f'--from {args.first} comes after --to {args.last}; stages run in the order {", ".join(STAGES)}')
    return [s for s in STAGES[first:last + 1] if getattr(args, s)]


# ------------------------------------------------------------------------------ data

def demo_row(key, quick):
    """A dict row of DEMO, with its --quick changes applied when `quick`."""
    full, changes = DEMO[key]
    return dict(full, **(changes if quick else {}))


def demo_data(args):
    """Generate the demo dataset into <work_dir>/data unless it is there (same settings); returns its root."""
    params = dict(demo_row('data', args.quick), seed=args.seed)
    root = os.path.join(args.work_dir, 'data')
    stamp = os.path.join(root, 'demo_params.json')
    if os.path.exists(stamp):
        with open(stamp) as f:
            old = json.load(f)
        if old != params:
            raise UserError(f'{root} holds a demo dataset made with {old}, not {params}; '
                            'use another --work_dir or delete that folder')
        return root, False
    print(f'generating the demo dataset into {root}: {params}')
    make_demo(root, **params)
    write_json(stamp, params)
    return root, True


def resolve_data(args):
    """Fill in the dataset options (from <work_dir>/data with --demo); returns the seconds spent generating."""
    if args.quick and not args.demo:
        raise UserError('--quick shortens the demo; use it with --demo')
    if args.demo and args.voc12_root:
        raise UserError('--demo brings its own data (<work_dir>/data); leave out --voc12_root')
    if not args.demo:
        if not args.voc12_root:
            raise UserError('give --voc12_root (the VOC2012 folder) or --demo (built-in synthetic data)')
        args.gt_dir = args.gt_dir or os.path.join(args.voc12_root, 'SegmentationClass')
        return None
    if args.seed is None:
        args.seed = 0  # the demo is deterministic
    start = time.perf_counter()
    root, made = demo_data(args)
    args.voc12_root = root
    args.train_list = os.path.join(root, 'lists', 'train_aug.txt')
    args.val_list = os.path.join(root, 'lists', 'val.txt')
    args.gt_dir = os.path.join(root, 'SegmentationClass')
    args.cls_labels = os.path.join(root, 'cls_labels.npy')
    for key, value in demo_row('pipeline', args.quick).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return time.perf_counter() - start if made else None


# ------------------------------------------------------------------------------ stages

class Layout:
    """Paths under --work_dir and the per-image outputs of the train and val lists."""

    def __init__(self, args):
        self.work_dir = args.work_dir
        self.train_ids = voc12.data.load_img_name_list(args.train_list)
        self.val_ids = voc12.data.load_img_name_list(args.val_list)

    def path(self, *parts):
        return os.path.join(self.work_dir, *parts)

    def files(self, folder, ext, ids):
        return tuple(self.path(folder, f'{i}.{ext}') for i in ids)

    def weights(self, stage):
        return self.path(SESSIONS[stage] + '.pth')


def stage_calls(args, lay):
    """{stage: [Call]} of the six script stages."""
    root, width = args.voc12_root, args.width
    train, val = args.train_list, args.val_list
    common = {'--num_workers': args.num_workers}
    training = dict(common, **{'--seed': args.seed, '--weights': args.init_weights})
    later_training = dict(training, **{'--weights': lay.weights('train_cls') if args.init_from_cls else args.init_weights})
    cls = {'--voc12_root': root, '--network': args.cls_network, '--width': width, '--cls_labels': args.cls_labels}
    aff = {'--voc12_root': root, '--network': args.aff_network, '--width': width}
    seg = {'--network': args.seg_network, '--width': width, '--image_dir': os.path.join(root, 'JPEGImages')}
    cam, crf_la, crf_ha = lay.path('cam'), lay.path('crf_la'), lay.path('crf_ha')
    seg_dirs = ('seg_pred', 'seg_crf') if args.seg_crf else ('seg_pred',)
    seg_outputs = {'--output': lay.path('seg_pred'), '--output_crf': lay.path('seg_crf') if args.seg_crf else None}
    return {
        'train_cls': [Call(dict(cls, **{'--train_list': train, '--session_name': lay.path(SESSIONS['train_cls'])}),
                           dict(training, **{'--val_list': val}), (lay.weights('train_cls'),))],
        'infer_cls': [
            Call(dict(cls, **{'--infer_list': train, '--weights': lay.weights('train_cls'), '--out_cam': cam,
                              '--out_la_crf': crf_la, '--out_ha_crf': crf_ha}), common,
                 sum((lay.files(d, 'npy', lay.train_ids) for d in ('cam', 'crf_la', 'crf_ha')), ())),
            Call(dict(cls, **{'--infer_list': val, '--weights': lay.weights('train_cls'), '--out_cam': cam,
                              '--out_la_crf': crf_la, '--out_cam_pred': lay.path('cam_pred')}), common,
                 lay.files('cam', 'npy', lay.val_ids) + lay.files('crf_la', 'npy', lay.val_ids)
                 + lay.files('cam_pred', 'png', lay.val_ids))],
        'train_aff': [Call(dict(aff, **{'--train_list': train, '--la_crf_dir': crf_la, '--ha_crf_dir': crf_ha,
                                        '--session_name': lay.path(SESSIONS['train_aff'])}),
                           later_training, (lay.weights('train_aff'),))],
        'infer_aff': [Call(dict(aff, **{'--infer_list': lst, '--weights': lay.weights('train_aff'), '--cam_dir': cam,
                                        '--out_rw': lay.path('rw')}), common, lay.files('rw', 'png', ids))
                      for lst, ids in ((train, lay.train_ids), (val, lay.val_ids))],
        'train_seg': [Call(dict(seg, **{'--train_list': train, '--mask_dir': lay.path('rw'),
                                        '--session_name': lay.path(SESSIONS['train_seg'])}),
                           later_training, (lay.weights('train_seg'),))],
        'infer_seg': [Call(dict(seg, **{'--infer_list': val, '--weights': lay.weights('train_seg')}, **seg_outputs),
                           common, sum((lay.files(d, 'png', lay.val_ids) for d in seg_dirs), ()))],
    }


def stage_extra_argv(args, stage):
    """The demo settings of `stage` (with --demo) followed by --<stage>_args."""
    extra = []
    if args.demo:
        demo, quick = DEMO[stage]
        extra += shlex.split(demo) + (shlex.split(quick) if args.quick else [])
    try:
        return extra + shlex.split(getattr(args, f'{stage}_args'))
    except ValueError as e:
        raise UserError(f'--{stage}_args: {e} (quote it as one shell word)')


def parse_stage_argv(stage, argv):
    parser = importlib.import_module(stage).build_parser()
    parser.prog = f'{stage}.py'
    try:
        return parser.parse_args(argv)
    except SystemExit as e:
        if e.code == 0:  # --help of the stage
            raise
        raise UserError(f'the arguments of {stage} do not parse (see the message above): {shlex.join(argv)}')


def stage_argvs(args, calls):
    """{stage: [argv per call]}; checks that every argv parses and that --<stage>_args leaves the wiring alone."""
    argvs = {}
    for stage, stage_calls_ in calls.items():
        extra = stage_extra_argv(args, stage)
        argvs[stage] = []
        for call in stage_calls_:
            wiring = flag_argv(call.wiring)
            argv = wiring + flag_argv(call.tunables) + extra
            wired, final = vars(parse_stage_argv(stage, wiring)), vars(parse_stage_argv(stage, argv))
            changed = [dest for dest in (flag[2:] for flag in call.wiring) if wired[dest] != final[dest]]
            if changed:
                raise UserError(f'--{stage}_args sets --{changed[0]}, which the pipeline wires itself; use '
                                f'run_pipeline.py\'s own option for it (see --help) or another --work_dir')
            argvs[stage].append(argv)
    return argvs


def missing_output(calls):
    """The first output of the calls that does not exist, or None when the stage is complete."""
    for call in calls:
        for path in call.outputs:
            if not os.path.exists(path):
                return path
    return None


def resume_argv(stage, lay):
    """--resume <checkpoint> for a training stage that was stopped after an epoch."""
    ckpt = lay.path(SESSIONS[stage] + '.ckpt.pth') if stage in SESSIONS else None
    return ['--resume', ckpt] if ckpt and os.path.exists(ckpt) else []


def run_script_stage(stage, argvs, lay):
    module = importlib.import_module(stage)
    for argv in argvs:
        argv = argv + resume_argv(stage, lay)
        print(f'\n=== {stage}: python {stage}.py {shlex.join(argv)}', flush=True)
        module.main(argv)


# ------------------------------------------------------------------------------ records

def write_json(path, obj):
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=2)
            f.write('\n')
    atomic_write(path, write)


def read_json(path):
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f'corrupt {path}: {e.__class__.__name__} (delete it; it is rewritten)')


def warn_if_settings_changed(stage, argvs, record):
    if record and record.get('argv') != argvs:
        print(f'note: {stage} is complete from a run with other settings (stages.json); '
              'delete its folder to redo it with the current ones')


# ------------------------------------------------------------------------------ evaluation

def crf_dict_label(crf):
    """HxW uint8 labels of a CRF dict {0: bg, k+1: class k}: the key of the highest score."""
    keys = sorted(crf)
    return np.asarray(keys, np.uint8)[np.argmax(np.stack([crf[k] for k in keys]), 0)]


# Classes absent from both the val masks and the predictions are left out of the mean (the demo uses a few
# classes; on VOC every class occurs, so this equals the reference's score).
ABSENT = 'skip'


def crf_la_miou(lay, gt_dir):
    """mIoU (%) of the argmax of the val images' la CRF dicts."""
    confusion = 0
    for i in lay.val_ids:
        gt_path, crf_path = os.path.join(gt_dir, f'{i}.png'), lay.path('crf_la', f'{i}.npy')
        confusion = confusion + metrics.label_confusion(load_label_png(gt_path), crf_dict_label(load_dict_npy(crf_path)),
                                                        21, gt_path, crf_path)
    return metrics.scores_from_confusion(confusion, ABSENT)['miou'] * 100


def present(lay, folder, ext):
    return all(os.path.exists(p) for p in lay.files(folder, ext, lay.val_ids))


def evaluate_outputs(args, lay):
    """The mIoU (%) of every stage's val outputs that exist (None for the others)."""
    workers = args.num_workers if args.num_workers is not None else evaluation.default_workers()

    def png(folder):
        if not present(lay, folder, 'png'):
            return None
        return evaluation.evaluate(lay.val_ids, lay.path(folder), args.gt_dir, 'png', workers=workers,
                                   absent=ABSENT)['miou']

    scores = {'cam_miou': png('cam_pred'), 'cam_best_miou': None, 'cam_best_threshold': None,
              'crf_la_miou': crf_la_miou(lay, args.gt_dir) if present(lay, 'crf_la', 'npy') else None,
              'rw_miou': png('rw'), 'seg_nocrf_miou': png('seg_pred'), 'seg_crf_miou': png('seg_crf')}
    if present(lay, 'cam', 'npy'):
        best = evaluation.evaluate(lay.val_ids, lay.path('cam'), args.gt_dir, 'npy',
                                   thresholds=evaluation.CURVE_THRESHOLDS, workers=workers, absent=ABSENT)
        scores['cam_best_miou'], scores['cam_best_threshold'] = best['miou'], best['threshold']
    scores['seg_miou'] = scores['seg_crf_miou'] if args.seg_crf else scores['seg_nocrf_miou']
    return {k: (None if v is None or math.isnan(v) else float(v)) for k, v in scores.items()}


def check_ground_truth(args, lay):
    missing = [i for i in lay.val_ids if not os.path.exists(os.path.join(args.gt_dir, f'{i}.png'))]
    if missing:
        raise UserError(f'{len(missing)} ground-truth masks of --val_list are missing, e.g. '
                        f'{os.path.join(args.gt_dir, missing[0] + ".png")} (check --gt_dir / --voc12_root)')


def report_columns(args, lay):
    seg_dir = 'seg_crf' if args.seg_crf else 'seg_pred'
    return [('image', 'image', lambda i: voc12.data.get_img_path(i, args.voc12_root)),
            ('ground truth', 'label', lambda i: os.path.join(args.gt_dir, f'{i}.png')),
            ('CAM', 'cam', lambda i: lay.path('cam', f'{i}.npy')),
            ('random walk', 'label', lambda i: lay.path('rw', f'{i}.png')),
            ('segmentation' + (' + dCRF' if args.seg_crf else ''), 'label', lambda i: lay.path(seg_dir, f'{i}.png'))]


# ------------------------------------------------------------------------------ main

def run_stages(args, lay, run, calls, argvs, status, seconds):
    """Run the selected script stages whose outputs are incomplete; fills `status` and `seconds` per stage
    and records what ran in stages.json. Returns the records."""
    records_path = lay.path('stages.json')
    records = read_json(records_path)
    for stage in SCRIPT_STAGES:
        seconds[stage] = None
        if stage not in run:
            status[stage] = 'off'
            continue
        if missing_output(calls[stage]) is None:
            status[stage] = 'skipped'
            warn_if_settings_changed(stage, argvs[stage], records.get(stage))
            print(f'=== {stage}: outputs complete, skipped')
            continue
        for need in NEEDS.get(stage, ()):
            gap = missing_output(calls[need])
            if gap:
                raise UserError(f'{stage} needs the outputs of {need}, but {gap} is missing; run {need} '
                                f'first (e.g. --from {need})')
        start = time.perf_counter()
        run_script_stage(stage, argvs[stage], lay)
        seconds[stage] = time.perf_counter() - start
        status[stage] = 'ran'
        records[stage] = {'argv': argvs[stage], 'seconds': round(seconds[stage], 2)}
        write_json(records_path, records)
    return records


def main(argv=None):
    args = build_parser().parse_args(argv)
    wall_start = time.perf_counter()
    os.makedirs(args.work_dir, exist_ok=True)
    data_seconds = resolve_data(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    lay = Layout(args)
    run = selected_stages(args)
    calls = stage_calls(args, lay)
    argvs = stage_argvs(args, calls)
    if 'evaluate' in run:
        check_ground_truth(args, lay)

    status, seconds = {}, {}
    if args.demo:
        status['demo_data'] = 'ran' if data_seconds is not None else 'skipped'
        seconds['demo_data'] = data_seconds
    records = run_stages(args, lay, run, calls, argvs, status, seconds)
    if 'evaluate' not in run:
        print('evaluate is off: no summary')
        return None

    start = time.perf_counter()
    summary = evaluate_outputs(args, lay)
    seconds['evaluate'] = time.perf_counter() - start
    status['evaluate'] = 'ran'
    seconds['total'] = time.perf_counter() - wall_start
    summary.update({'seconds': {k: None if v is None else round(v, 2) for k, v in seconds.items()},
                    'status': status, 'num_val_images': len(lay.val_ids), 'work_dir': os.path.abspath(args.work_dir),
                    'demo': args.demo, 'quick': args.quick})
    write_json(lay.path('summary.json'), summary)
    report.write_report(args.work_dir, summary, records, report_columns(args, lay),
                        report.pick_ids(lay.val_ids, args.report_images))
    print('\n' + report.tables(summary, records))
    print(f'\nsummary: {lay.path("summary.json")}  report: {lay.path("report.md")}')
    return summary


if __name__ == '__main__':
    run_main(main)
