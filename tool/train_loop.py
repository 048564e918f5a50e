"""The training loop shared by train_cls, train_aff and train_seg.

What it adds to the reference loop: seeding, logging (console, `<session_name>.log`, TensorBoard),
a checkpoint after every epoch with `--resume` that continues bit-for-bit, micro-batching (exact
because every BatchNorm is frozen), and optional mixed precision.
"""
import argparse
import os
import random
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tool.cli import add_network_args, pick_device
from tool.io import UserError, atomic_torch_save, require_file
from tool.pyutils import Logger, Timer
from tool.torchutils import PolyOptimizer, parameter_groups


def add_training_args(parser):
    """Flags every training script has beyond the reference's own."""
    add_network_args(parser, training=True)
    parser.add_argument('--seed', type=int, default=None,
                        help='seed python/numpy/torch (default: a random seed, logged and checkpointed)')
    parser.add_argument('--resume', default=None,
                        help='checkpoint <session_name>.ckpt.pth to continue from')
    parser.add_argument('--micro_batch', type=int, default=0,
                        help='split each batch into micro-batches of this size (0: whole batch, '
                             'halved automatically on CUDA out-of-memory)')
    parser.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none',
                        help='mixed precision for forward/backward (fp16 needs CUDA)')
    parser.add_argument('--sgd_momentum', type=float, default=None,
                        help='real SGD momentum (default: the reference quirk, momentum = weight decay)')
    parser.add_argument('--color_jitter', nargs=4, type=float, default=(0.3, 0.3, 0.3, 0.1),
                        metavar=('BRIGHTNESS', 'CONTRAST', 'SATURATION', 'HUE'),
                        help='ColorJitter of the training images (the reference: 0.3 0.3 0.3 0.1)')
    parser.add_argument('--save_every_epoch', action=argparse.BooleanOptionalAction, default=False,
                        help='also save the state dict <session_name>_<epoch>.pth after every epoch (0-based)')
    parser.add_argument('--log_interval', type=int, default=50, help='steps between log lines')
    parser.add_argument('--tblog_dir', default=None, help='TensorBoard folder (default <session_name>_tb)')
    parser.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')


def seed_run(args):
    """Seed python/numpy/torch with --seed, drawing one when absent (kept in args: logged and checkpointed).

    The training scripts call it before building the network, so its random initialisation repeats too;
    fit calls it again, so the batches do not depend on how much randomness the network drew. Under
    torchrun that second call takes rank 0's seed on every rank: DistributedSampler needs one seed for all.
    """
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2 ** 31)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        shared = [args.seed]
        torch.distributed.broadcast_object_list(shared, src=0)
        args.seed = shared[0]
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)


def seed_worker(worker_id):
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def rng_state():
    """The RNG states in types torch.load(weights_only=True) accepts (numpy's key as a list of ints)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state['state'] = {'key': numpy_state['state']['key'].tolist(), 'pos': int(numpy_state['state']['pos'])}
    state = {'python': random.getstate(), 'numpy': numpy_state, 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def split_batch(batch, size):
    """Split a (nested) batch of tensors / lists along its first dimension into chunks of `size`."""
    if torch.is_tensor(batch):
        return list(torch.split(batch, size))
    if isinstance(batch, (list, tuple)) and batch and all(not torch.is_tensor(b) and not isinstance(b, (list, tuple, dict))
                                                         for b in batch):
        return [list(batch[i:i + size]) for i in range(0, len(batch), size)]
    if isinstance(batch, dict):
        parts = {k: split_batch(v, size) for k, v in batch.items()}
        return [dict(zip(parts, chunk)) for chunk in zip(*parts.values())]
    parts = [split_batch(b, size) for b in batch]
    return [type(batch)(chunk) for chunk in zip(*parts)]


def to_device(batch, device):
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def batch_length(batch):
    if torch.is_tensor(batch):
        return batch.shape[0]
    if isinstance(batch, dict):
        return batch_length(next(iter(batch.values())))
    return batch_length(batch[0]) if isinstance(batch[0], (list, tuple, dict)) or torch.is_tensor(batch[0]) \
        else len(batch)


def autocast(device, amp):
    if amp == 'none':
        return torch.autocast(device.type, enabled=False)
    if amp == 'fp16' and device.type != 'cuda':
        raise UserError('--amp fp16 needs a CUDA GPU; use --amp bf16 on the CPU')
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == 'bf16' else torch.float16)


def accumulate_gradients(model, batch, batch_loss, micro_batch, device, amp='none', scaler=None):
    """Backward the loss of `batch` in micro-batches; returns the summed logs of the whole batch.

    `batch_loss(model, micro, batch)` returns (loss, logs): the micro-batch's share of the full batch's
    loss (so the shares add up to the loss of the whole batch) and a dict of floats that add up likewise.
    """
    logs = {}
    for micro in split_batch(batch, micro_batch or batch_length(batch)):
        with autocast(device, amp):
            loss, part_logs = batch_loss(model, to_device(micro, device), batch)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        for k, v in part_logs.items():
            logs[k] = logs.get(k, 0.0) + float(v)
    return logs


def _train_step(model, optimizer, batch, batch_loss, state, device, amp, scaler):
    """One optimiser step; with micro_batch 0 on CUDA, halves the micro-batch on out-of-memory."""
    while True:
        optimizer.zero_grad(set_to_none=True)
        try:
            logs = accumulate_gradients(model, batch, batch_loss, state['micro_batch'], device, amp, scaler)
            break
        except torch.cuda.OutOfMemoryError:
            current = state['micro_batch'] or batch_length(batch)
            if not state['auto_micro'] or current == 1:
                raise UserError('CUDA out of memory; pass a smaller --micro_batch, --amp bf16, or a smaller --crop_size')
            state['micro_batch'] = current // 2
            torch.cuda.empty_cache()
            tqdm.write(f'out of memory: micro-batch {current} -> {state["micro_batch"]}')
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return logs


def save_checkpoint(path, model, optimizer, epoch, seed, scaler=None):
    atomic_torch_save(path, {'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                             'epoch': epoch, 'seed': seed, 'rng': rng_state(),
                             'scaler': scaler.state_dict() if scaler is not None else None})


def read_checkpoint(path):
    """The dict of save_checkpoint, read with weights_only=True (tensors and python values, no code)."""
    require_file(path, '--resume checkpoint')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f'cannot read the --resume checkpoint {path} ({e.__class__.__name__}); pass a '
                        '<session_name>.ckpt.pth written by this version of the training scripts')
    if not isinstance(ckpt, dict) or not {'model', 'optimizer', 'epoch', 'seed', 'rng'} <= ckpt.keys():
        raise UserError(f'{path} is not a training checkpoint (expected <session_name>.ckpt.pth)')
    return ckpt


def _resume(path, model, optimizer, scaler):
    """Load a checkpoint; the poly schedule keeps this run's max_step (so --max_epoches may change)."""
    ckpt = read_checkpoint(path)
    model.load_state_dict(ckpt['model'])
    max_step = optimizer.max_step
    optimizer.load_state_dict(ckpt['optimizer'])
    optimizer.max_step = max_step
    if scaler is not None and ckpt.get('scaler'):
        scaler.load_state_dict(ckpt['scaler'])
    set_rng_state(ckpt['rng'])
    return ckpt['epoch'], ckpt['seed']


class TrainLog:
    """Console + log file + TensorBoard for one training session."""

    def __init__(self, session_name, tblog_dir=None):
        os.makedirs(os.path.dirname(os.path.abspath(session_name)), exist_ok=True)
        self.stdout = sys.stdout
        sys.stdout = Logger(session_name + '.log')
        from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(tblog_dir or session_name + '_tb')

    def scalars(self, values, step):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self):
        self.writer.close()
        sys.stdout.log.close()
        sys.stdout = self.stdout


class Distributed:
    """torchrun support: one process per GPU (gloo on the CPU); a single process without torchrun.

    Each rank takes batch_size / world_size images of every batch; DistributedDataParallel averages the
    gradients, which for a loss that is a mean over the batch's images equals the single-process step
    (train_aff's and train_seg's pair / pixel counts are normalised per rank instead).
    """

    def __init__(self, args):
        self.world = int(os.environ.get('WORLD_SIZE', 1))
        self.rank = int(os.environ.get('RANK', 0))
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        if self.world == 1:
            self.device = pick_device(args.device)
            return
        if args.batch_size % self.world:
            raise UserError(f'--batch_size {args.batch_size} does not split over {self.world} processes; '
                            'pick a multiple of the torchrun --nproc_per_node')
        use_cuda = torch.cuda.is_available() and args.device != 'cpu'
        self.device = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
        if use_cuda:
            torch.cuda.set_device(self.device)
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group('nccl' if use_cuda else 'gloo')

    @property
    def main(self):
        return self.rank == 0

    def wrap(self, model):
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)

    def loader(self, dataset, args, seed, collate_fn):
        sampler = None
        if self.world > 1:
            from torch.utils.data.distributed import DistributedSampler
            sampler = DistributedSampler(dataset, self.world, self.rank, shuffle=True, seed=seed, drop_last=True)
        return DataLoader(dataset, batch_size=args.batch_size // self.world, shuffle=sampler is None,
                          sampler=sampler, num_workers=args.num_workers, pin_memory=self.device.type == 'cuda',
                          drop_last=True, worker_init_fn=seed_worker, collate_fn=collate_fn)


def _log_window(log, meter, step, max_step, imps, timer, lr):
    means = {k: float(np.mean(v)) for k, v in meter.items()}
    tqdm.write(f'Iter:{step:5d}/{max_step:5d} ' + ' '.join(f'{k}:{v:.4f}' for k, v in means.items())
               + f' imps:{imps:.1f} Fin:{timer.str_est_finish()} ETA:{timer.str_eta()} lr:{lr:.7f}')
    log.scalars({**{f'train/{k}': v for k, v in means.items()}, 'train/imps': imps, 'train/lr': lr}, step)


def fit(args, model, dataset, batch_loss, validate=None, collate_fn=None):
    """Train `model` on `dataset` with the reference's PolyOptimizer; save `<session_name>.pth`.

    `validate(model)` (optional) runs after each epoch and returns a dict of floats to log. Under torchrun
    every process trains its share of each batch and only rank 0 logs and saves.
    """
    dist = Distributed(args)
    device = dist.device
    if len(dataset) < args.batch_size:
        raise UserError(f'the training list has {len(dataset)} images, fewer than --batch_size {args.batch_size}')
    log = TrainLog(args.session_name, args.tblog_dir) if dist.main else None
    if dist.main:
        print(vars(args), f'world size {dist.world}' if dist.world > 1 else '')
    model = model.to(device)
    seed_run(args)
    loader = dist.loader(dataset, args, args.seed, collate_fn)
    steps_per_epoch = len(loader)
    max_step = steps_per_epoch * args.max_epoches
    optimizer = PolyOptimizer(parameter_groups(model, args.lr, args.wt_dec), lr=args.lr, weight_decay=args.wt_dec,
                              max_step=max_step, sgd_momentum=args.sgd_momentum)
    scaler = torch.amp.GradScaler('cuda') if args.amp == 'fp16' else None
    start_epoch = 0
    if args.resume:
        start_epoch, args.seed = _resume(args.resume, model, optimizer, scaler)
        if dist.world > 1:  # built before the checkpoint was read: the resumed epochs shuffle with its seed
            loader.sampler.seed = args.seed
        print(f'resumed from {args.resume} after epoch {start_epoch} (seed {args.seed})')
    else:
        print(f'seed {args.seed}')
    trained = dist.wrap(model)
    state = {'micro_batch': args.micro_batch, 'auto_micro': args.micro_batch == 0 and device.type == 'cuda'}
    try:
        timer = Timer()
        trained.train()
        done_steps = start_epoch * steps_per_epoch
        for epoch in range(start_epoch, args.max_epoches):
            if loader.sampler is not None and hasattr(loader.sampler, 'set_epoch'):
                loader.sampler.set_epoch(epoch)
            meter, window_start = {}, time.time()
            bar = tqdm(loader, total=steps_per_epoch, desc=f'epoch {epoch + 1}/{args.max_epoches}', leave=False,
                       disable=not dist.main)
            for batch in bar:
                logs = _train_step(trained, optimizer, batch, batch_loss, state, device, args.amp, scaler)
                for k, v in logs.items():
                    meter.setdefault(k, []).append(v)
                step = optimizer.global_step
                bar.set_postfix(loss=f'{logs.get("loss", 0.0):.4f}')
                if dist.main and (step % args.log_interval == 0 or step == max_step):
                    timer.update_progress((step - done_steps) / max(max_step - done_steps, 1))
                    imps = len(meter['loss']) * args.batch_size / max(time.time() - window_start, 1e-9)
                    _log_window(log, meter, step, max_step, imps, timer, optimizer.param_groups[0]['lr'])
                    meter, window_start = {}, time.time()
            if validate is not None and dist.main:
                model.eval()
                val_logs = validate(model)
                model.train()
                print(f'epoch {epoch + 1} validation: ' + ' '.join(f'{k}:{v:.4f}' for k, v in val_logs.items()))
                log.scalars({f'val/{k}': v for k, v in val_logs.items()}, optimizer.global_step)
            if dist.main:
                save_checkpoint(args.session_name + '.ckpt.pth', model, optimizer, epoch + 1, args.seed, scaler)
                if args.save_every_epoch:
                    atomic_torch_save(f'{args.session_name}_{epoch}.pth', model.state_dict())
        if dist.main:
            atomic_torch_save(args.session_name + '.pth', model.state_dict())
            print(f'saved {args.session_name}.pth')
    finally:
        if log is not None:
            log.close()
    return model
