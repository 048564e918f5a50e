"""Command-line plumbing shared by the stage scripts."""
import argparse
import importlib
import os
import sys

from tool.io import UserError, check_output_dir

NETWORK_STRIDE = 8  # the output stride of every network of the pipeline


def str2bool(value):
    """Parse booleans properly ('--curve False' is False, unlike argparse's type=bool)."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ('true', '1', 'yes', 'y', 'on'):
        return True
    if lowered in ('false', '0', 'no', 'n', 'off'):
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean (True/False), got {value!r}')


def scale_list(text):
    """argparse type for --scales: comma-separated positive floats."""
    try:
        scales = tuple(float(s) for s in text.split(','))
    except ValueError:
        scales = ()
    if not scales or min(scales) <= 0:
        raise argparse.ArgumentTypeError(f'expected comma-separated positive scales such as 1,0.5,1.5, got {text!r}')
    return scales


def positive_int(text):
    """argparse type for counts such as --batch_size: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}')
    return value


def check_training_args(args, min_crop=NETWORK_STRIDE):
    """Checks the training scripts make before reading any data: the crop holds at least one cell of the
    network's output, the session files can be written and the --resume checkpoint can be read."""
    if args.crop_size < min_crop:
        raise UserError(f'--crop_size {args.crop_size} is too small: pass {min_crop} or more (the networks have '
                        f'output stride {NETWORK_STRIDE})')
    check_output_dir(os.path.dirname(os.path.abspath(args.session_name)), '--session_name')
    if args.tblog_dir:
        check_output_dir(args.tblog_dir, '--tblog_dir')
    if args.resume:
        from tool.train_loop import read_checkpoint  # tool.train_loop imports this module
        read_checkpoint(args.resume)


def add_network_args(parser, training=False):
    """--width (and for training --scratch): the reduced-width / from-scratch variants of the networks."""
    parser.add_argument('--width', default=1.0, type=float,
                        help='backbone width multiplier (1 = the reference network; must match the weights)')
    if training:
        parser.add_argument('--scratch', action='store_true',
                            help='prepare the network for training from random weights (He init, zero-init '
                                 'residual branches, nothing frozen but BatchNorm); the demo uses it')


def import_network(module_path, cls='Net', width=1.0, scratch=False):
    """`importlib.import_module(module_path).<cls>()`, as the reference's --network convention.

    A `width` other than 1 or `scratch` builds that variant (`<cls>(width=width, scratch=True)`)."""
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        raise UserError(f'--network {module_path}: module not found ({e.name}); '
                        'use a module path such as network.resnet38_cls')
    if not hasattr(module, cls):
        raise UserError(f'--network {module_path} has no class {cls}; pick a network module that defines it')
    kwargs = {**({'width': width} if width != 1 else {}), **({'scratch': True} if scratch else {})}
    return getattr(module, cls)(**kwargs)


def pick_device(name=None):
    """torch.device(name); by default the GPU of this process (LOCAL_RANK under torchrun) or the CPU."""
    import torch
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
    return torch.device('cpu')


def _first_cause(message):
    """The original one-line message of a UserError re-raised by a DataLoader worker (which wraps it
    in "Caught UserError in DataLoader worker ... Original Traceback ...")."""
    if 'Original Traceback' not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split('UserError: ', 1)[-1]


def run_main(main, argv=None):
    """Run a stage's main(); bad input ends with 'error: <message>' and exit code 2, no traceback."""
    try:
        return main(argv)
    except UserError as e:
        print(f'error: {_first_cause(str(e))}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted; finished outputs are kept, rerun to continue', file=sys.stderr)
        sys.exit(130)
