"""Test-wide settings: one OpenMP thread per process (CI has 2 cores; tests also start subprocesses
and worker pools, and oversubscribed threads slow a training step down by an order of magnitude)."""
import os

os.environ.setdefault('OMP_NUM_THREADS', '1')

import torch  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

import pytest  # noqa: E402

# The full demo (the longest test) runs first, so that under `make test` (pytest -n 2 --dist worksteal) one worker
# runs it while the other works through the rest (worksteal leaves a worker's last queued test to it, so nothing
# else is queued behind the demo). The demo keeps its 2 torch threads beside the other worker's one (its numbers
# depend on the thread count; at one thread it took over 20 minutes beside the other worker).
LONG_FIRST = ('test_demo.py',)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONG_FIRST)



@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test that runs a demo (2 threads) must not change the threads of the tests after it in this process
    (test_kill compares an in-process run with a subprocess: the summation order must be the same)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
