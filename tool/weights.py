"""Load weights into a network: mxnet `.params`, Caffe `.caffemodel` or a torch state dict; convert once to `.pth`.

    python -m tool.weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params res38_imagenet.pth
    python -m tool.weights vgg16_20M.caffemodel vgg16_imagenet.pth
"""
import argparse
import hashlib
import importlib
import os

import numpy as np
import torch

from tool.cli import run_main
from tool.io import UserError, atomic_torch_save, require_file

# suffix -> (network module whose converter reads it by default, converter function name)
CONVERTERS = {'.params': ('network.resnet38d', 'convert_mxnet_to_torch'),
              '.caffemodel': ('network.vgg16d', 'convert_caffe_to_torch')}
N_EXAMPLES = 3


def read_state_dict(path, network=None):
    """The weights in `path` as a dict of tensors. `.params` and `.caffemodel` go through the converter of
    `network` (a module path; default by suffix, see CONVERTERS); anything else is read with torch.load,
    as a state dict or a checkpoint dict with a 'model' key."""
    path = str(path)
    require_file(path, 'weights')
    suffix = os.path.splitext(path)[1].lower()
    if suffix in CONVERTERS:
        default_module, function = CONVERTERS[suffix]
        try:
            module = importlib.import_module(network or default_module)
        except ModuleNotFoundError as e:
            raise UserError(f'--network {network or default_module}: module not found ({e.name}); '
                            f'use a module path such as {default_module}')
        if not hasattr(module, function):
            raise UserError(f'{module.__name__} cannot read {suffix} files ({path}): it has no {function}; '
                            f'use --network {default_module}')
        state = getattr(module, function)(path)
    else:
        state = _torch_load(path)
    return {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def _torch_load(path):
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'cannot read weights {path} as a torch state dict ({e.__class__.__name__}); pass a state '
                        'dict .pth (e.g. <session_name>.pth, not a training checkpoint), .params or .caffemodel file')
    if isinstance(obj, dict) and isinstance(obj.get('model'), dict):
        obj = obj['model']
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise UserError(f'weights {path} are not a state dict (a dict of name -> tensor, or a checkpoint with a '
                        "'model' state dict); pass weights saved with torch.save(model.state_dict())")
    return obj


def check_fit(model, state, path):
    """Summary dict of how `state` fits `model`; UserError when no key matches or a matched key's shape differs.

    Missing `num_batches_tracked` buffers are not counted: weights saved before BatchNorm had them
    (the reference's) load fine without them."""
    own = model.state_dict()
    network = type(model).__module__
    matched = [k for k in state if k in own]
    if not matched:
        raise UserError(f'weights {path} do not fit network {network}: none of its {len(state)} keys is a key of the '
                        f'network (weights have {_examples(state)}; network has {_examples(own)}) — '
                        'pass weights trained for this network')
    wrong = [k for k in matched if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        shown = ', '.join(f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in wrong[:N_EXAMPLES])
        raise UserError(f'weights {path} do not fit network {network}: {len(wrong)} of {len(matched)} matching keys '
                        f'have other shapes (weights vs network: {shown}) — pass weights trained for this network')
    missing = [k for k in own if k not in state and not k.endswith('num_batches_tracked')]
    unexpected = [k for k in state if k not in own]
    return {'path': str(path), 'matched': len(matched), 'missing': len(missing), 'unexpected': len(unexpected),
            'missing_keys': missing, 'unexpected_keys': unexpected}


def _examples(keys):
    keys = list(keys)
    return ', '.join(keys[:N_EXAMPLES]) + (', ...' if len(keys) > N_EXAMPLES else '')


def load_weights(model, path):
    """Load `path` into `model` with strict=False like the reference, but refuse weights that do not fit
    (see check_fit). Returns the summary {'matched', 'missing', 'unexpected', ...} for the log."""
    state = read_state_dict(path)
    summary = check_fit(model, state, path)
    model.load_state_dict(state, strict=False)
    return summary


def load_initial_weights(model, path):
    """Training start: load `path` if given (strict=False, as the reference) and print what was loaded."""
    if not path:
        print('no --weights: training from the random initialisation')
        return
    summary = load_weights(model, path)
    print(f"loaded {path}: {summary['matched']} tensors, {summary['missing']} not in the file "
          f"(trained from scratch), {summary['unexpected']} unused")


def load_trained_weights(model, path):
    """Inference: every tensor of the network must come from `path` (the reference loads strictly here)."""
    summary = load_weights(model, path)
    if summary['missing'] or summary['unexpected']:
        network = type(model).__module__
        example = (summary['missing_keys'] + summary['unexpected_keys'])[0]
        raise UserError(f'weights {path} do not fit network {network}: {summary["missing"]} of its tensors missing, '
                        f'{summary["unexpected"]} unknown (e.g. {example}); pass the <session_name>.pth '
                        f'trained for {network}')


def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m tool.weights',
                                     description='Convert mxnet .params or Caffe .caffemodel weights to a torch '
                                                 'state dict (.pth) once; prints the SHA-256 of both files.')
    parser.add_argument('input', help='.params (mxnet) or .caffemodel (Caffe) file')
    parser.add_argument('output', help='the .pth to write')
    parser.add_argument('--network', default=None,
                        help='module whose converter reads the input (default: network.resnet38d for .params, '
                             'network.vgg16d for .caffemodel)')
    args = parser.parse_args(argv)
    if os.path.splitext(args.input)[1].lower() not in CONVERTERS:
        raise UserError(f'{args.input}: can only convert .params (mxnet) or .caffemodel (Caffe) files; '
                        'torch state dicts load as they are')
    state = read_state_dict(args.input, args.network)
    atomic_torch_save(args.output, state)
    print(f'wrote {len(state)} tensors to {args.output}')
    print(f'sha256 input:  {sha256(args.input)}  {args.input}')
    print(f'sha256 output: {sha256(args.output)}  {args.output}')


if __name__ == '__main__':
    run_main(main)
