"""Deterministic weights for the checks against the original code.

The same function fills the original network (run once on the CPU, outside the project, to make the
fixtures under tests/fixtures/) and this project's network in the tests, so both compute with identical
weights without a weight file in the repository. Each tensor has its own stream, seeded by its key, so the values
do not depend on the order of the state dict. numpy's legacy RandomState is used because its stream is
frozen across numpy versions.
"""
import zlib

import numpy as np


def deterministic_state_dict(shapes, seed=0):
    """{key: float32 array} for `shapes` ({key: shape}, any order): conv / linear weights ~ N(0, 1/fan_in),
    BN weights and running_var ~ U(0.5, 1.5), biases and running_mean ~ N(0, 0.1^2); num_batches_tracked 0."""
    state = {}
    for key, shape in shapes.items():
        shape = tuple(shape)
        rng = np.random.RandomState((zlib.crc32(key.encode()) + seed) % 2 ** 32)
        if key.endswith('num_batches_tracked'):
            state[key] = np.zeros(shape, np.int64)
        elif key.endswith('running_var') or (key.endswith('weight') and len(shape) == 1):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif len(shape) <= 1:
            state[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return state


def fill(net, seed=0):
    """Load deterministic_state_dict into a torch module ; returns the module."""
    import torch
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    state = deterministic_state_dict(shapes, seed)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return net
