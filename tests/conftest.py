"""Test-wide settings: one OpenMP thread per process (CI has 2 cores; tests also start subprocesses
and worker pools, and oversubscribed threads slow a training step down by an order of magnitude)."""
import os

os.environ.setdefault('OMP_NUM_THREADS', '1')

import torch  # noqa: E402

torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))

import pytest  # noqa: E402

# The test files whose tests take minutes; run first, so that under `make test` (pytest -n 2 --dist worksteal)
# one worker runs them while the other works through the rest and then takes over its remaining queue.
LONG_FIRST = ('test_demo.py', 'test_demo_methods.py')


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONG_FIRST)


@pytest.fixture
def demo_threads():
    """Extra run_pipeline flags of a demo run in a test: beside another pytest-xdist worker on CI's 2 cores,
    one torch thread instead of the demo's 2 (threads beyond the cores slow training by an order of magnitude)."""
    return ['--threads', '1'] if os.environ.get('PYTEST_XDIST_WORKER') else []
