"""The stage wiring of run_pipeline.py: a method is a table of stages (METHODS), its demo one TOML file.

A Stage row says which script runs it (imported by name when its argv is checked or it runs, so this module
imports no stage script and nothing of network/), which network's wiring it gets, what it reads and writes
under --work_dir, which stages it needs, and the method's own flags of that script. The argv of a call is,
in this order: the wiring (paths, lists, --network, --width, --cls_labels), the pipeline's tunables
(--num_workers, --seed, --weights, the row's options), the method's flags, the demo settings
(configs/<demo file> with --demo), then --<stage>_args; argparse keeps the last value, so --<stage>_args
overrides everything before it except the wiring, which it may not change.

A training stage (a row with a session) makes one call on the train list; its output is <session>.pth.
Any other stage makes one call per list in its outputs, and is complete once every listed file exists.
A row with `calls` builds its own calls (sfl's train_edge on the COCO-layout set, resegment on both lists).
A stage without a network gets --voc12_root. A Method is its stage table, its demo settings file (which may
start from a `base` file) and the default network of each wiring of NETS. The methods share PSA's stage names
where they share its stages (SBNet runs three stages before them: its SEAM first pass and the boundary maps;
SFL runs train_edge and resegment in place of train_aff and infer_aff), so methods.md compares stage by stage;
--method all parses the stage options of every method.
"""
import importlib
import inspect
import json
import os
import shlex
import time
import tomllib
from typing import Callable, NamedTuple

import voc12.data
from tool.cli import import_network
from tool.io import UserError, atomic_torch_save, atomic_write
from tool.weights import read_state_dict
from voc12.synthetic import make_demo, make_demo_coco

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_DIR, 'configs')
DEFAULT_PRESET = inspect.signature(make_demo).parameters['preset'].default


class Out(NamedTuple):
    """A per-image output folder of a call: `flag <work_dir>/<folder>` writing <id>.<ext>."""
    flag: str
    folder: str
    ext: str
    when: str = None   # a boolean option of run_pipeline.py that leaves the output out when off


class Stage(NamedTuple):
    """A row of a method's stage table."""
    name: str               # --from/--to, --no-<name>, --<name>_args and the key in stages.json
    net: str = None         # 'cls' / 'aff' / 'seg': the network wiring of NETS (None: no network)
    network: str = None     # a --network of the row's own instead of the run's --<net>_network
    needs: tuple = ()       # stages whose outputs must be complete before this one runs
    session: str = None     # training stages: --session_name under --work_dir (.pth, .ckpt.pth, .log beside it)
    weights: str = None     # the stage whose <session>.pth is --weights (a training stage: with --init_from_cls only)
    keep_head: bool = False  # a training stage with --init_from_cls: all of `weights`, not its backbone (same head)
    inputs: tuple = ()      # (flag, folder under --work_dir) the stage reads
    outputs: tuple = ()     # (list 'train' / 'val', (Out, ...)): one call per list
    options: tuple = ()     # (flag, option of run_pipeline.py): tunables that --<stage>_args may override
    script: str = None      # the script's module (default: name)
    flags: str = ''         # the method's own flags of the script
    list_flag: str = '--infer_list'  # the flag of the image list of a call that is no training
    calls: Callable = None  # (args, lay, stage) -> [Call]: the row's own calls where the rules above do not fit

    @property
    def module(self):
        return self.script or self.name


class Method(NamedTuple):
    stages: tuple           # Stage rows in the order they run; evaluate follows them
    demo: str               # the demo settings file under configs/
    networks: dict          # net of NETS -> the default of run_pipeline.py's --<net>_network


# the network wiring: the same value reaches a network's training and inference
NETS = {
    'cls': lambda args: {'--voc12_root': args.voc12_root, '--network': args.cls_network, '--width': args.width,
                         '--cls_labels': args.cls_labels},
    'aff': lambda args: {'--voc12_root': args.voc12_root, '--network': args.aff_network, '--width': args.width},
    'seg': lambda args: {'--network': args.seg_network, '--width': args.width,
                         '--image_dir': os.path.join(args.voc12_root, 'JPEGImages')},
}

CAM, CRF_LA, RW = Out('--out_cam', 'cam', 'npy'), Out('--out_la_crf', 'crf_la', 'npy'), Out('--out_rw', 'rw', 'png')
PSA = (
    Stage('train_cls', 'cls', session='cls/res38_cls', options=(('--val_list', 'val_list'),)),
    Stage('infer_cls', 'cls', needs=('train_cls',), weights='train_cls',
          outputs=(('train', (CAM, CRF_LA, Out('--out_ha_crf', 'crf_ha', 'npy'))),
                   ('val', (CAM, CRF_LA, Out('--out_cam_pred', 'cam_pred', 'png'))))),
    Stage('train_aff', 'aff', needs=('infer_cls',), session='aff/res38_aff', weights='train_cls',
          inputs=(('--la_crf_dir', 'crf_la'), ('--ha_crf_dir', 'crf_ha'))),
    Stage('infer_aff', 'aff', needs=('train_aff', 'infer_cls'), weights='train_aff', inputs=(('--cam_dir', 'cam'),),
          outputs=(('train', (RW,)), ('val', (RW,)))),
    Stage('train_seg', 'seg', needs=('infer_aff',), session='seg/res38_seg', weights='train_cls',
          inputs=(('--mask_dir', 'rw'),)),
    Stage('infer_seg', 'seg', needs=('train_seg',), weights='train_seg',
          outputs=(('val', (Out('--output', 'seg_pred', 'png'), Out('--output_crf', 'seg_crf', 'png', when='seg_crf'))),)),
)
# SSENet and SEAM: their own stage 1 and 2 scripts and networks, then PSA's stages 3-6 with the codebase's
# defaults where they differ from PSA's scripts (descendants.md sections 1.4, 2.3 and 5)
DESCENDANT_AFF = '--lr 0.01 --batch_size 8 --max_epoches 8'
SSENET = (
    PSA[0]._replace(session='cls/res38_cls_ser', script='train_cls_ser'),
    PSA[1]._replace(script='infer_cls_ser'),
    PSA[2]._replace(flags=DESCENDANT_AFF),
    PSA[3]._replace(flags='--bg_score 0.2 --beta 8 --logt 8'),  # a constant background score, not (1 - max CAM)^16
    *PSA[4:])
SEAM = (
    PSA[0]._replace(session='cls/res38_SEAM', script='train_SEAM'),
    PSA[1]._replace(script='infer_SEAM'),
    PSA[2]._replace(flags=DESCENDANT_AFF),
    PSA[3]._replace(flags='--alpha 6 --beta 8 --logt 6'),
    *PSA[4:])
# SBNet: a SEAM first pass whose CRF labels of the train images give the boundary maps (image-level supervision
# only; descendants.md section 3), then SEAM's chain with train_SB / infer_SB as stages 1 and 2
SB_LABELS, SB_MAP = Out('--out_la_crf', 'seam_crf_la', 'npy'), Out('--out_dir', 'sb_map', 'npy')
SBNET = (
    SEAM[0]._replace(name='train_seam', session='seam/res38_SEAM', network='network.resnet38_SEAM'),
    SEAM[1]._replace(name='infer_seam', network='network.resnet38_SEAM', needs=('train_seam',), weights='train_seam',
                     outputs=(('train', (SB_LABELS,)),)),
    Stage('make_sb_map', needs=('infer_seam',), inputs=(('--label_dir', SB_LABELS.folder),),
          outputs=(('train', (SB_MAP,)),), flags='--source crf', list_flag='--list'),
    SEAM[0]._replace(session='cls/res38_SB', script='train_SB', needs=('make_sb_map',), weights='train_seam',
                     keep_head=True, inputs=(('--sb_map_dir', SB_MAP.folder),)),
    SEAM[1]._replace(script='infer_SB'),
    *SEAM[2:])


# SFL (descendants.md section 4): SEAM as the VOC localiser (image-level labels); the class-agnostic segmenter,
# trained with a COCO localiser on COCO's pixel masks (external pixel-level supervision), re-segments its CAMs;
# then PSA's train_seg / infer_seg on the re-segmented labels. train_edge writes under <work_dir>/edge/:
# edge_edge.pth and edge_refer.pth (--session_name edge, --ret_root .), edge.ckpt.pth and edge.log.
EDGE_SESSION = 'edge'
EDGE_WEIGHTS = f'{EDGE_SESSION}/{EDGE_SESSION}_edge.pth'
SFL_LABELS = Out('--label_dir', 'sfl', 'png')


def coco_training_calls(args, lay, stage):
    """train_edge's one call on the COCO-layout set of --coco_root; with --init_from_cls its localiser starts
    from the VOC SEAM backbone, as it would from ImageNet weights."""
    wiring = {'--cocoRoot': args.coco_root, '--dataType': args.coco_type, '--categories': args.coco_categories,
              '--out_root': lay.work_dir, '--session_name': EDGE_SESSION, '--ret_root': '.', '--tblog_dir': 'tb',
              '--width': args.width}
    init = lay.backbone(stage.weights) if args.init_from_cls else args.init_weights
    tunables = {'--num_workers': args.num_workers, '--seed': args.seed, '--weights': init}
    return [Call(wiring, tunables, (lay.path(EDGE_WEIGHTS), lay.path(EDGE_SESSION, f'{EDGE_SESSION}_refer.pth')))]


def resegment_calls(args, lay, stage):
    """infer_and_envalue on the train and val lists: the re-segmented labels (iteration 1) into sfl/."""
    calls = []
    for split in ('train', 'val'):
        wiring = {'--voc12_root': args.voc12_root, '--width': args.width, '--cls_labels': args.cls_labels,
                  '--infer_list': lay.lists[split], '--weights': lay.weights(stage.weights),
                  '--edge_weights': lay.path(EDGE_WEIGHTS), SFL_LABELS.flag: lay.path(SFL_LABELS.folder)}
        calls.append(Call(wiring, {'--num_workers': args.num_workers},
                          lay.files(SFL_LABELS.folder, SFL_LABELS.ext, lay.ids[split])))
    return calls


SFL = (
    SEAM[0],
    SEAM[1]._replace(outputs=(('train', (CAM,)), ('val', (CAM, Out('--out_cam_pred', 'cam_pred', 'png'))))),
    Stage('train_edge', needs=('train_cls',), session=f'{EDGE_SESSION}/{EDGE_SESSION}', weights='train_cls',
          calls=coco_training_calls),
    Stage('resegment', script='infer_and_envalue', needs=('train_cls', 'train_edge'), weights='train_cls',
          outputs=(('train', (SFL_LABELS,)), ('val', (SFL_LABELS,))), calls=resegment_calls),
    PSA[4]._replace(needs=('resegment',), inputs=(('--mask_dir', SFL_LABELS.folder),)),
    PSA[5])
AFF_SEG = {'aff': 'network.resnet38_aff', 'seg': 'network.resnet38_seg'}
METHODS = {'psa': Method(PSA, 'demo_psa.toml', dict(AFF_SEG, cls='network.resnet38_cls')),
           'ssenet': Method(SSENET, 'demo_ssenet.toml', dict(AFF_SEG, cls='network.resnet38_cls_ser')),
           'seam': Method(SEAM, 'demo_seam.toml', dict(AFF_SEG, cls='network.resnet38_SEAM')),
           'sbnet': Method(SBNET, 'demo_sbnet.toml', dict(AFF_SEG, cls='network.resnet38_SEAM_BD')),
           'sfl': Method(SFL, 'demo_sfl.toml', dict(AFF_SEG, cls='network.resnet38_SEAM'))}
EXTERNAL_SUPERVISION = {'sfl': 'COCO pixel masks'}  # methods that learn from more than the image-level labels
DEFAULT_METHOD = 'psa'
ALL = 'all'  # --method all: every method of METHODS on the same data, each in <work_dir>/<method>


def stage_names(method):
    """The names --from/--to choose from: the method's stages, then evaluate."""
    return tuple(s.name for s in method.stages) + ('evaluate',)


def shared_stage_names():
    """The stage names of every method (--method all's --from/--to), in their order."""
    every = [set(stage_names(m)) for m in METHODS.values()]
    return tuple(n for n in stage_names(METHODS[DEFAULT_METHOD]) if all(n in names for names in every))


def all_stage_rows():
    """One row per stage name of any method (--method all's stage options), the default method's first."""
    rows = {}
    for method in (METHODS[DEFAULT_METHOD], *METHODS.values()):
        for stage in method.stages:
            rows.setdefault(stage.name, stage)
    return tuple(rows.values())


def selected_stages(args, method):
    """The stages of --from..--to (default: the method's first and last) that are not switched off."""
    names = stage_names(method)
    first, last = names.index(args.first or names[0]), names.index(args.last or names[-1])
    if first > last:
        raise UserError(f'--from {args.first} comes after --to {args.last}; stages run in the order {", ".join(names)}')
    return [s for s in names[first:last + 1] if getattr(args, s)]


# ------------------------------------------------------------------------------ demo settings

class Demo(NamedTuple):
    path: str
    data: dict        # make_demo's arguments
    coco: dict        # make_demo_coco's arguments (the methods with a train_edge stage)
    pipeline: dict    # run_pipeline.py's options
    argv: dict        # stage -> flags


def read_demo_file(path, names):
    """The TOML tables of a demo settings file, a `base = "<file>"` (beside it) under them: the base's [data] and
    [pipeline] keys the file does not set and the base's stage tables the file has not. A stage table's
    like = "<stage>" puts that stage's args and quick before its own, as the base sets them (as this file
    does, without a base)."""
    try:
        with open(path, 'rb') as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UserError(f'{path}: {e}')
    stages = {s.name for m in METHODS.values() for s in m.stages}  # a base file may hold other methods' stages
    for key in doc:
        if key not in ('base', 'data', 'coco', 'pipeline', *stages):
            raise UserError(f'{path}: [{key}] is neither base, data, coco, pipeline nor a stage ({", ".join(sorted(stages))})')
    base = read_demo_file(os.path.join(os.path.dirname(path), doc.pop('base')), names) if 'base' in doc else {}
    for stage in names:
        row = doc.get(stage, {})
        if 'like' in row:
            like = (base or doc).get(row['like'])
            if not isinstance(like, dict) or 'like' in like:
                raise UserError(f'{path}: [{stage}] like = {row["like"]!r} names no stage table with args '
                                f'{"of its base" if base else "in this file"}')
            lists = [(like.get(key, []), row.get(key, [])) for key in ('args', 'quick')]
            if not all(isinstance(v, list) for pair in lists for v in pair):
                raise UserError(f'{path}: [{stage}] and [{row["like"]}] hold args = [...] and quick = [...], lists')
            doc[stage] = {key: inherited + own for key, (inherited, own) in zip(('args', 'quick'), lists)}
    for key in ('data', 'coco', 'pipeline'):
        doc[key] = dict(base.get(key, {}), **doc.get(key, {}))
    return dict(base, **doc)


def load_demo(method, quick, preset=None):
    """The method's demo settings file, with --quick's changes applied when `quick` and make_demo's `preset`
    (--demo_preset) when given."""
    path = os.path.join(CONFIG_DIR, method.demo)
    names = [s.name for s in method.stages]
    doc = read_demo_file(path, names)

    def table(key):
        row = dict(doc.get(key, {}))
        changes = row.pop('quick', {})
        return dict(row, **(changes if quick else {}))

    def flags(stage):
        row = doc.get(stage, {})
        full, changes = row.get('args', []), row.get('quick', [])
        if set(row) - {'args', 'quick'} or not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                                                   for v in (full, changes)):
            raise UserError(f'{path}: [{stage}] holds args = [...] and quick = [...], lists of flags such as '
                            f'"--lr 0.1", and optionally like = "<stage>" (that stage\'s flags before its own)')
        return [token for item in full + (changes if quick else []) for token in shlex.split(item)]

    data, coco = table('data'), table('coco')
    if preset is not None and preset != DEFAULT_PRESET:  # the default one stays out of demo_params.json
        data['preset'] = coco['preset'] = preset
    return Demo(path, data, coco, table('pipeline'), {s: flags(s) for s in names})


def demo_data(root, seed, demo, maker=make_demo, table='data'):
    """Generate a demo dataset (maker(root, **[table] settings, seed=seed)) into `root` unless it is there with
    the same settings; returns whether it made it."""
    settings = getattr(demo, table)
    unknown = set(settings) - set(inspect.signature(maker).parameters)
    if unknown:
        raise UserError(f'{demo.path}: [{table}] {sorted(unknown)[0]} is no argument of voc12.synthetic.{maker.__name__}')
    params = dict(settings, seed=seed)
    stamp = os.path.join(root, 'demo_params.json')
    if os.path.exists(stamp):
        with open(stamp) as f:
            old = json.load(f)
        if old != params:
            raise UserError(f'{root} holds a demo dataset made with {old}, not {params}; '
                            'use another --work_dir or delete that folder')
        return False
    print(f'generating the demo dataset into {root}: {params}')
    maker(root, **params)
    write_json(stamp, params)
    return True


def demo_layout(root):
    """The dataset options of a folder make_demo wrote."""
    return {'train_list': os.path.join(root, 'lists', 'train_aug.txt'), 'val_list': os.path.join(root, 'lists', 'val.txt'),
            'gt_dir': os.path.join(root, 'SegmentationClass'), 'cls_labels': os.path.join(root, 'cls_labels.npy')}


def check_data_options(args):
    if args.quick and not args.demo:
        raise UserError('--quick shortens the demo; use it with --demo')
    if args.demo_preset and not args.demo:
        raise UserError('--demo_preset picks the demo data generated with --demo; use it with --demo')
    if args.demo_preset and args.voc12_root:
        raise UserError('--demo_preset picks the generated demo data; with --voc12_root the data is yours, leave it out')
    if not args.demo and not args.voc12_root:
        raise UserError('give --voc12_root (the VOC2012 folder) or --demo (built-in synthetic data)')


def resolve_data(args, demo):
    """Fill in the dataset options; `demo` is the Demo of --demo (None without). With --demo and no --voc12_root
    the demo dataset is generated into <work_dir>/data (once); with --voc12_root the demo settings run on that
    folder, the options not given being its make_demo layout. Sets args.data_source ('generated', 'given' or
    None without --demo) and returns the seconds spent generating the data (None if it was there or not demo)."""
    check_data_options(args)
    if args.demo and args.seed is None:
        args.seed = 0  # the demo is deterministic
    seconds = None
    if args.demo and not args.voc12_root:
        start = time.perf_counter()
        args.voc12_root = os.path.join(args.work_dir, 'data')
        made = demo_data(args.voc12_root, args.seed, demo)
        seconds = time.perf_counter() - start if made else None
        for key, value in demo_layout(args.voc12_root).items():
            setattr(args, key, value)
        args.data_source = 'generated'
    elif args.demo:
        for key, value in demo_layout(args.voc12_root).items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        args.data_source = args.data_source or 'given'
    else:
        args.train_list = args.train_list or os.path.join(REPO_DIR, 'voc12', 'train_aug.txt')
        args.val_list = args.val_list or os.path.join(REPO_DIR, 'voc12', 'val.txt')
        args.gt_dir = args.gt_dir or os.path.join(args.voc12_root, 'SegmentationClass')
        args.data_source = None
    if args.demo:
        for key, value in demo.pipeline.items():
            if not hasattr(args, key):
                raise UserError(f'{demo.path}: [pipeline] {key} is no option of run_pipeline.py')
            if getattr(args, key) is None:
                setattr(args, key, value)
    return seconds


def needs_coco(method):
    return any(s.module == 'train_edge' for s in method.stages)


def resolve_coco(args, method, demo):
    """The COCO-layout set of a method with a train_edge stage: --coco_root, or with --demo and none given the
    demo's, generated into <work_dir>/coco (once); --coco_categories defaults to <coco_root>/categories.
    Returns (status, seconds) of generating it: ('ran', s), ('skipped', None) when it was there, (None, None)
    when there is nothing to generate."""
    if not needs_coco(method):
        return None, None
    status = seconds = None
    if args.coco_root is None:
        if not args.demo:
            raise UserError(f'--method {args.method} trains its segmenter on a COCO-layout set: give --coco_root '
                            '(with annotations_trainval2017/annotations/instances_<--coco_type>.json) or use --demo')
        start = time.perf_counter()
        args.coco_root = os.path.join(args.work_dir, 'coco')
        made = demo_data(args.coco_root, args.seed, demo, make_demo_coco, 'coco')
        status, seconds = ('ran', time.perf_counter() - start) if made else ('skipped', None)
    args.coco_categories = args.coco_categories or os.path.join(args.coco_root, 'categories')
    return status, seconds


# ------------------------------------------------------------------------------ calls and argv

class Layout:
    """Paths under --work_dir, the sessions of the training stages and the ids of the train and val lists."""

    def __init__(self, args, method):
        self.work_dir = args.work_dir
        self.lists = {'train': args.train_list, 'val': args.val_list}
        self.ids = {split: voc12.data.load_img_name_list(path) for split, path in self.lists.items()}
        self.sessions = {s.name: s.session for s in method.stages if s.session}

    @property
    def val_ids(self):
        return self.ids['val']

    def path(self, *parts):
        return os.path.join(self.work_dir, *parts)

    def files(self, folder, ext, ids):
        return tuple(self.path(folder, f'{i}.{ext}') for i in ids)

    def session(self, stage):
        return self.path(self.sessions[stage])

    def weights(self, stage):
        return None if stage is None else self.session(stage) + '.pth'

    def backbone(self, stage):
        """The weights of training stage `stage` without its network's from-scratch layers (write_backbone)."""
        return self.session(stage) + '.backbone.pth'


class Call(NamedTuple):
    """One main() call of a stage script."""
    wiring: dict       # flag -> value (None: left out); --<stage>_args may not change these
    tunables: dict     # flag -> value (None: left out); pipeline options that --<stage>_args may override
    outputs: tuple     # the files that exist once the call is done


def flag_argv(flags):
    return [str(x) for flag, value in flags.items() if value is not None for x in (flag, value)]


def stage_calls(args, lay, stage):
    """[Call] of a stage row."""
    if stage.calls:
        return stage.calls(args, lay, stage)
    net = NETS[stage.net](args) if stage.net else {'--voc12_root': args.voc12_root}
    if stage.network:
        net['--network'] = stage.network
    inputs = {flag: lay.path(folder) for flag, folder in stage.inputs}
    if stage.session:
        wiring = dict(net, **{'--train_list': args.train_list}, **inputs, **{'--session_name': lay.session(stage.name)})
        init = args.init_weights
        if stage.weights and args.init_from_cls:
            init = lay.weights(stage.weights) if stage.keep_head else lay.backbone(stage.weights)
        tunables = {'--num_workers': args.num_workers, '--seed': args.seed, '--weights': init,
                    **{flag: getattr(args, option) for flag, option in stage.options}}
        return [Call(wiring, tunables, (lay.weights(stage.name),))]
    calls = []
    for split, outs in stage.outputs:
        outs = [o for o in outs if o.when is None or getattr(args, o.when)]
        wiring = dict(net, **{stage.list_flag: lay.lists[split], '--weights': lay.weights(stage.weights)}, **inputs,
                      **{o.flag: lay.path(o.folder) for o in outs})
        tunables = {'--num_workers': args.num_workers, **{flag: getattr(args, option) for flag, option in stage.options}}
        calls.append(Call(wiring, tunables, sum((lay.files(o.folder, o.ext, lay.ids[split]) for o in outs), ())))
    return calls


def extra_argv(args, stage, demo):
    """The method's flags of `stage`, its demo settings (with a Demo) and --<stage>_args."""
    try:
        user = shlex.split(getattr(args, f'{stage.name}_args'))
    except ValueError as e:
        raise UserError(f'--{stage.name}_args: {e} (quote it as one shell word)')
    return shlex.split(stage.flags) + (demo.argv[stage.name] if demo else []) + user


def parse_stage_argv(stage, argv):
    parser = importlib.import_module(stage.module).build_parser()
    parser.prog = f'{stage.module}.py'
    try:
        return parser.parse_args(argv)
    except SystemExit as e:
        if e.code == 0:  # --help of the stage
            raise
        raise UserError(f'the arguments of {stage.name} do not parse (see the message above): {shlex.join(argv)}')


def stage_argvs(args, method, calls, demo):
    """{stage: [argv per call]}; checks that every argv parses and that --<stage>_args leaves the wiring alone."""
    argvs = {}
    for stage in method.stages:
        extra = extra_argv(args, stage, demo)
        argvs[stage.name] = []
        for call in calls[stage.name]:
            wiring = flag_argv(call.wiring)
            argv = wiring + flag_argv(call.tunables) + extra
            wired, final = vars(parse_stage_argv(stage, wiring)), vars(parse_stage_argv(stage, argv))
            changed = [dest for dest in (flag[2:] for flag, v in call.wiring.items() if v is not None)
                       if wired[dest] != final[dest]]
            if changed:
                raise UserError(f'--{stage.name}_args sets --{changed[0]}, which the pipeline wires itself; use '
                                f'run_pipeline.py\'s own option for it (see --help) or another --work_dir')
            argvs[stage.name].append(argv)
    return argvs


# ------------------------------------------------------------------------------ running

def missing_output(calls):
    """The first output of the calls that does not exist, or None when the stage is complete."""
    for call in calls:
        for path in call.outputs:
            if not os.path.exists(path):
                return path
    return None


def resume_argv(stage, lay):
    """--resume <checkpoint> for a training stage that was stopped after an epoch."""
    ckpt = lay.session(stage.name) + '.ckpt.pth' if stage.session else None
    return ['--resume', ckpt] if ckpt and os.path.exists(ckpt) else []


def write_backbone(method, stage_name, argv, lay):
    """lay.backbone(stage_name): the weights stage `stage_name` (run with `argv`) trained, less the parameters of
    its network's from_scratch_layers (the head: fc8, SEAM's PCM), so that with --init_from_cls the later stages
    start from the backbone alone, as they would from ImageNet weights (SEAM's f9 would not even fit AffinityNet's).
    Rewritten before every run of a stage that reads it."""
    stage = next(s for s in method.stages if s.name == stage_name)
    trained = parse_stage_argv(stage, argv)
    model = import_network(trained.network, width=trained.width, scratch=trained.scratch)
    head = {id(p) for layer in model.from_scratch_layers for p in layer.parameters()}
    head_names = {name for name, p in model.named_parameters() if id(p) in head}
    state = read_state_dict(lay.weights(stage_name))
    atomic_torch_save(lay.backbone(stage_name), {k: v for k, v in state.items() if k not in head_names})


def run_script_stage(stage, argvs, lay):
    module = importlib.import_module(stage.module)
    for argv in argvs:
        argv = argv + resume_argv(stage, lay)
        print(f'\n=== {stage.name}: python {stage.module}.py {shlex.join(argv)}', flush=True)
        module.main(argv)


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


def run_stages(method, lay, run, calls, argvs, status, seconds):
    """Run the selected stages whose outputs are incomplete; fills `status` and `seconds` per stage and
    records what ran in stages.json. Returns the records."""
    records_path = lay.path('stages.json')
    records = read_json(records_path)
    for stage in method.stages:
        name = stage.name
        seconds[name] = None
        if name not in run:
            status[name] = 'off'
            continue
        if missing_output(calls[name]) is None:
            status[name] = 'skipped'
            warn_if_settings_changed(name, argvs[name], records.get(name))
            print(f'=== {name}: outputs complete, skipped')
            continue
        for need in stage.needs:
            gap = missing_output(calls[need])
            if gap:
                raise UserError(f'{name} needs the outputs of {need}, but {gap} is missing; run {need} '
                                f'first (e.g. --from {need})')
        start = time.perf_counter()
        if stage.session and stage.weights and lay.backbone(stage.weights) in argvs[name][0]:
            write_backbone(method, stage.weights, argvs[stage.weights][0], lay)
        run_script_stage(stage, argvs[name], lay)
        seconds[name] = time.perf_counter() - start
        status[name] = 'ran'
        records[name] = {'script': stage.module, 'argv': argvs[name], 'seconds': round(seconds[name], 2)}
        write_json(records_path, records)
    return records
