"""tool/sb_losses against the original SBNet train_SB.py + smoothness/ (fixture tests/fixtures/sbnet_losses.npz,
made on CPU by /tmp/scratch_sbnet_train/make_loss_fixture.py), and micro-batch shares adding up to the batch."""
import os

import numpy as np
import pytest
import torch

from tool import sb_losses

FIXTURE = np.load(os.path.join(os.path.dirname(__file__), 'fixtures', 'sbnet_losses.npz'))
OUTPUTS = ('cam1', 'cam_rv1', 'edge1', 'cam2', 'cam_rv2', 'edge2')


def inputs():
    return {k: torch.from_numpy(FIXTURE[f'in_{k}']).clone().requires_grad_() for k in OUTPUTS}


def loss_of(leaves, sl=slice(None), n=None):
    return sb_losses.sbnet_loss(*(leaves[k][sl] for k in OUTPUTS), torch.from_numpy(FIXTURE['in_sb_map'])[sl],
                                torch.from_numpy(FIXTURE['in_label'])[sl], n=n)


def test_every_term_and_the_gradient_match_the_original():
    leaves = inputs()
    terms = loss_of(leaves)
    terms['loss'].backward()
    for key in ('loss', 'loss_cls', 'loss_er', 'loss_ecr', 'loss_ct', 'loss_smooth', 'loss_ct1', 'loss_ct2',
                'loss_smooth1', 'loss_smooth2'):
        assert terms[key].item() == pytest.approx(float(FIXTURE[f'out_{key}']), rel=1e-5), key
    for key in OUTPUTS:
        expected = torch.from_numpy(FIXTURE[f'grad_{key}'])
        assert expected.abs().max() > 0
        torch.testing.assert_close(leaves[key].grad, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_smoothness_of_a_zero_map_is_the_charbonnier_floor_and_boundaries_lower_it():
    label = torch.ones(1, 20)
    zero = torch.zeros(1, 21, 8, 8)  # (zero padding: any other constant has border responses)
    assert sb_losses.smoothness(zero, zero, label).item() == pytest.approx(10 * 2e-3 + 1e-3, rel=1e-5)
    step = torch.zeros(1, 21, 8, 8)
    step[..., 4:] = 1
    edge = torch.zeros_like(step)
    edge[..., 3:5] = 1
    assert sb_losses.smoothness(step, edge, label) < sb_losses.smoothness(step, torch.zeros_like(step), label)


def test_micro_batch_shares_add_up_to_the_batch_loss_and_gradient():
    whole = inputs()
    terms = loss_of(whole)
    terms['loss'].backward()
    parts = inputs()
    shares = [loss_of(parts, slice(i, i + 1), n=3) for i in range(3)]
    sum(s['loss'] for s in shares).backward()
    for key in ('loss', 'loss_ct', 'loss_smooth', 'loss_cls', 'loss_ecr'):
        assert sum(s[key].item() for s in shares) == pytest.approx(terms[key].item(), rel=1e-6), key
    for key in OUTPUTS:
        torch.testing.assert_close(parts[key].grad, whole[key].grad, rtol=1e-5, atol=1e-9)


def test_boundary_and_smoothness_terms_stay_float32_under_bf16_autocast():
    plain = loss_of(inputs())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mixed = loss_of(inputs())
    for key in ('loss_ct1', 'loss_ct2', 'loss_smooth1', 'loss_smooth2'):
        assert mixed[key].dtype == torch.float32
        assert mixed[key].item() == pytest.approx(plain[key].item(), rel=1e-6), key
