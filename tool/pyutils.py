"""Small shared utilities: pair indices for the affinity radius, logging, meters, timers."""
import sys
import time

import numpy as np
import torch


def pair_offsets(radius):
    """Offsets (dy, dx) of the pairs within `radius`, in the reference order (34 for radius 5)."""
    offsets = [(0, dx) for dx in range(1, radius)]
    offsets += [(dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius)
                if dx * dx + dy * dy < radius * radius]
    return offsets


def get_indices_of_pairs(radius, size):
    """Flat indices of the "from" pixels and, for every offset in turn, of their "to" partners.

    "From" pixels are the grid without the last radius-1 rows and radius-1 columns on each side;
    a grid too small to hold any (height < radius or width < 2 * radius - 1) has no pairs.
    """
    h, w = size
    r = radius - 1
    if h - r <= 0 or w - 2 * r <= 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    grid = np.arange(h * w, dtype=np.int64).reshape(h, w)
    ind_from = grid[:h - r, r:w - r].reshape(-1)
    ind_to = [grid[dy:dy + h - r, r + dx:r + dx + w - 2 * r].reshape(-1)
              for dy, dx in pair_offsets(radius)]
    return torch.from_numpy(ind_from.copy()), torch.from_numpy(np.concatenate(ind_to))


class Logger:
    """Copies everything written to stdout into a log file as well."""

    def __init__(self, path):
        self.terminal = sys.stdout
        self.log = open(path, 'a', buffering=1)

    def write(self, message):
        self.terminal.write(message)
        self.log.write(message)

    def flush(self):
        self.terminal.flush()
        self.log.flush()


class AverageMeter:
    """Running means of named values."""

    def __init__(self, *keys):
        self._sums = {k: [0.0, 0] for k in keys}

    def add(self, values):
        for k, v in values.items():
            entry = self._sums.setdefault(k, [0.0, 0])
            entry[0] += float(v)
            entry[1] += 1

    def get(self, *keys):
        means = [self._sums[k][0] / max(self._sums[k][1], 1) for k in keys]
        return means[0] if len(means) == 1 else tuple(means)

    def pop(self, *keys):
        values = self.get(*keys)
        for k in keys:
            self._sums[k] = [0.0, 0]
        return values


class Timer:
    """Elapsed time and estimated finish from a progress fraction."""

    def __init__(self):
        self.start = time.time()
        self.est_remaining = 0.0

    def update_progress(self, fraction):
        elapsed = time.time() - self.start
        self.est_remaining = elapsed / max(fraction, 1e-12) - elapsed

    def str_est_finish(self):
        return time.strftime('%H:%M:%S', time.localtime(time.time() + self.est_remaining))

    def str_eta(self):
        return time.strftime('%H:%M:%S', time.gmtime(max(self.est_remaining, 0)))
