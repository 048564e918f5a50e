"""Test-wide settings: one OpenMP thread per process (CI has 2 cores; tests also start subprocesses
and worker pools, and oversubscribed threads slow a training step down by an order of magnitude)."""
import os

os.environ.setdefault('OMP_NUM_THREADS', '1')

import torch  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that runs a demo (2 threads) must not change the threads of the tests after it in this process
    (test_kill compares an in-process run with a subprocess: the summation order must be the same)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
