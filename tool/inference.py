"""Shared pieces of the per-image inference stages (infer_cls, infer_seg).

- `msf_forward`: multi-scale + flip forward of one image, the flip batched with its scale.
- `CrfPool`: dense CRF (or any CPU job) in worker processes while the network works on the next image.
- `pending_progress`: the resumable per-image loop (skip finished ids, progress bar with ETA).
- `load_model`: the trained network on the chosen device.
"""
import multiprocessing
import os
from collections import deque

import torch
import torch.nn.functional as F
from tqdm import tqdm

from tool.cli import import_network
from tool.imutils import HWC_to_CHW, pil_rescale
from tool.io import UserError, pending
from tool.train_loop import autocast
from tool.weights import load_trained_weights


def load_model(network, weights, device, width=1.0, cls='Net'):
    """The trained network in eval mode on `device`; weights of another network stop with one line."""
    model = import_network(network, cls, width)
    load_trained_weights(model, weights)
    return model.eval().to(device)


def msf_forward(forward, image, scales, normalize, device, out_size=None, amp='none', sum_outputs=False):
    """Run `forward` on every scale of `image` and its horizontal flip; maps at `out_size`.

    image: HxWx3 uint8. Each scale is a PIL bicubic rescale of the full image (size rounded), normalised
    by `normalize` (HWC -> HWC float32); the scaled image and its flip go through one forward of a batch
    of 2. Each output is bilinearly upsampled (align_corners=False) to `out_size` (default: the image
    size) and the flipped one is flipped back. Returns the float32 (C, H, W) maps in the reference order
    [scale0, scale0 flipped, scale1, ...], or their sum with `sum_outputs`.
    """
    out_size = tuple(out_size or image.shape[:2])
    maps, total = [], None
    for scale in scales:
        x = torch.from_numpy(HWC_to_CHW(normalize(pil_rescale(image, scale, 3))).copy())
        batch = torch.stack([x, x.flip(-1)]).to(device)
        with torch.no_grad(), autocast(device, amp):
            y = forward(batch)
        y = F.interpolate(y.float(), out_size, mode='bilinear', align_corners=False)
        pair = [y[0], y[1].flip(-1)]
        if sum_outputs:  # a running sum, in the reference's order, keeps one map in memory
            total = pair[0] + pair[1] if total is None else total + pair[0] + pair[1]
        else:
            maps += pair
    return total if sum_outputs else maps


def pending_progress(ids, out_paths, overwrite=False, desc='images', check=None):
    """The ids still to do (all with `overwrite`) wrapped in a progress bar with ETA.

    Under torchrun each process takes every WORLD_SIZE-th id starting at its RANK. `check(id)`, if given,
    runs for each id to do before the bar starts (input checks that should stop the run before any output).
    """
    rank, world = int(os.environ.get('RANK', 0)), int(os.environ.get('WORLD_SIZE', 1))
    ids = list(ids)[rank::world]
    todo = pending(ids, out_paths, overwrite)
    if check:
        for name in todo:
            check(name)
    if len(todo) < len(ids):
        print(f'{len(ids) - len(todo)} of {len(ids)} images already have all outputs; skipping them '
              '(--overwrite redoes them)')
    return tqdm(todo, desc=desc, unit='img', dynamic_ncols=True)


def _run_job(fn, args):
    """Worker side: (result, None) or (None, one-line error) so failures reach the main process."""
    try:
        return fn(*args), None
    except Exception as e:
        return None, f'{e.__class__.__name__}: {e}'.replace('\n', ' ')


class CrfPool:
    """Run CPU jobs in `workers` spawned processes (0: in this process, for debugging).

    `submit(name, fn, args, done)` queues `fn(*args)` (fn must be a module-level function); `done(result)`
    runs in this process, in submission order, typically an atomic write. At most `max_pending` jobs wait
    at a time, so a slow CRF throttles the network instead of piling up images in memory. A failing job
    raises UserError naming `name`. Use as a context manager: on exit the submitted jobs finish and are
    written, also after an error; Ctrl-C stops the workers at once (their images stay pending and are
    redone on the next run).
    """

    def __init__(self, workers, max_pending=None):
        self.pool = multiprocessing.get_context('spawn').Pool(workers) if workers > 0 else None
        self.max_pending = max_pending or 2 * max(workers, 1)
        self.jobs = deque()

    def submit(self, name, fn, args, done):
        if self.pool is None:
            self._finish(name, _run_job(fn, args), done)
            return
        self.jobs.append((name, self.pool.apply_async(_run_job, (fn, args)), done))
        self.collect(keep=self.max_pending)

    def collect(self, keep=0):
        """Finish the jobs that are done; block until at most `keep` are still running."""
        while self.jobs and (len(self.jobs) > keep or self.jobs[0][1].ready()):
            name, result, done = self.jobs.popleft()
            self._finish(name, result.get(), done)

    @staticmethod
    def _finish(name, outcome, done):
        value, error = outcome
        if error is not None:
            raise UserError(f'dense CRF failed on {name}: {error}')
        done(value)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.pool is None:
            return
        try:
            if exc_type is None:
                self.collect()
            elif issubclass(exc_type, Exception):
                self._finish_quietly()
        finally:
            self.pool.terminate()
            self.pool.join()

    def _finish_quietly(self):
        """After an error elsewhere, still write what the workers finish; that error is the one reported."""
        while self.jobs:
            try:
                self.collect()
            except Exception:
                pass
