"""Test-wide settings: one OpenMP thread per process (CI has 2 cores; tests also start subprocesses
and worker pools, and oversubscribed threads slow a training step down by an order of magnitude)."""
import os

os.environ.setdefault('OMP_NUM_THREADS', '1')

import torch  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
