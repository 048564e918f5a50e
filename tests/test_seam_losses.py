"""tool/equivariance.py against the original training code: SSENet's and SEAM's loss terms, their operands and the
gradients of the totals, on /work/shared/fixtures/ssenet_losses.npz (YudeWang/SSENet-pytorch 873c442,
train_cls_ser.py loop body) and seam_losses.npz (YudeWang/SEAM 3212261, train_SEAM.py functions and loop body),
both computed on CPU on seeded tensors (see /work/shared/fixtures/README.md)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tool import equivariance as eq

FIXTURES = '/work/shared/fixtures'
OUTPUTS = ('cam1', 'cam_rv1', 'cam2', 'cam_rv2')


def load(name):
    return {k: torch.from_numpy(v).double() for k, v in np.load(f'{FIXTURES}/{name}.npz').items()}


@pytest.fixture(scope='module')
def sse():
    return load('ssenet_losses')


@pytest.fixture(scope='module')
def seam():
    return load('seam_losses')


def close(ours, ref, tol=1e-4):
    """Relative max error below tol (scalars: relative error)."""
    ours, ref = ours.detach().double(), ref.detach().double()
    assert ours.shape == ref.shape
    err = float((ours - ref).abs().max() / max(float(ref.abs().max()), 1e-12))
    assert err <= tol, f'relative max error {err:.3g} > {tol}'


def label21(label):
    return torch.cat([torch.ones_like(label[:, :1]), label], dim=1)[..., None, None]


# ---------------------------------------------------------------------------------------------------------
# The 0.3x branch: PyTorch 0.4.1's scale_factor sampling.

def test_downscale_is_pytorch_041_interpolation(sse, seam):
    assert tuple(eq.downscale(sse['img']).shape[2:]) == tuple(sse['downscaled_hw'].long().tolist()) == (19, 19)
    close(eq.downscale(sse['img']), sse['img_s'])
    close(eq.downscale(sse['cam']), sse['cam_r'])
    close(eq.downscale(seam['img1'], align_corners=True), seam['img2'])


def test_todays_scale_factor_default_is_not_the_original(sse):
    # The fixture tells the two apart: today's default reproduces the t2_* keys, not the plain ones.
    today = F.interpolate(sse['cam'], scale_factor=0.3, mode='bilinear', align_corners=False)
    close(today, sse['t2_cam_r'])
    assert (today - sse['cam_r']).abs().max() > 1e-3
    assert abs(float(sse['t2_loss_r'] - sse['loss_r'])) > 1e-4


def test_min_crop_keeps_one_output_cell():
    assert eq.min_crop() == 27 and int(27 * 0.3) == 8 and int(26 * 0.3) < 8


# ---------------------------------------------------------------------------------------------------------
# SSENet.

def test_ssenet_operands(sse):
    y = sse['label'][..., None, None]
    close(eq.class_logits(sse['cam']), sse['predicts'].flatten(1))
    close(eq.class_logits(sse['cam_s']), sse['predicts_s'].flatten(1))
    close(eq.peak_norm(sse['cam_r']) * y, sse['cam_rn'])
    close(eq.peak_norm(sse['cam_s']) * y, sse['cam_sn'])


def test_ssenet_loss_terms_and_gradients(sse):
    cam, cam_s = sse['cam'].clone().requires_grad_(), sse['cam_s'].clone().requires_grad_()
    terms = eq.ssenet_loss(cam, cam_s, sse['label'])
    for key in ('loss', 'loss_cls', 'loss_cls_s', 'loss_r'):
        close(terms[key], sse[key])
    close(terms['loss'], terms['loss_cls'] / 2 + terms['loss_cls_s'] / 2 + terms['loss_r'], 1e-12)
    terms['loss'].backward()
    close(cam.grad, sse['grad_cam'])
    close(cam_s.grad, sse['grad_cam_s'])


# ---------------------------------------------------------------------------------------------------------
# SEAM.

def test_seam_normalisations(seam):
    for key in OUTPUTS:
        if f'max_norm_{key}' in seam:
            close(eq.max_norm(seam[key]), seam[f'max_norm_{key}'])
        if f'max_onehot_{key}' in seam:
            close(eq.max_onehot(seam[key]), seam[f'max_onehot_{key}'])


def test_seam_intermediates(seam):
    y = label21(seam['label'])
    close(y[..., 0, 0], seam['label21'], 0)
    c1 = eq.downscale(eq.max_norm(seam['cam1']), align_corners=True) * y
    c2 = eq.max_norm(seam['cam2']) * y
    r1 = eq.downscale(eq.max_norm(seam['cam_rv1']), align_corners=True) * y
    r2 = eq.max_norm(seam['cam_rv2']) * y
    for ours, key in ((c1, 'C1_er'), (c2, 'C2_er'), (r1, 'R1'), (r2, 'R2')):
        close(ours, seam[key])
    t1, t2 = eq.max_onehot(eq.with_background(c2)), eq.max_onehot(eq.with_background(c1))
    close(t1, seam['ecr_target1'])
    close(t2, seam['ecr_target2'])
    close((t1 - r1).abs(), seam['tensor_ecr1'])
    close((t2 - r2).abs(), seam['tensor_ecr2'])
    assert int(seam['k_ecr']) == int(21 * 19 * 19 * 0.2)
    assert (int(seam['k_minpool1']), int(seam['k_minpool2'])) == (64 * 64 // 4, 19 * 19 // 4)


@pytest.mark.parametrize('prefix', ['', 'net_'])
def test_seam_loss_terms(seam, prefix):
    terms = eq.seam_loss(*(seam[prefix + k] for k in OUTPUTS), seam['label'])
    for key in ('loss', 'loss_cls', 'loss_cls1', 'loss_cls2', 'loss_rvmin1', 'loss_rvmin2', 'loss_er',
                'loss_ecr', 'loss_ecr1', 'loss_ecr2'):
        close(terms[key], seam[prefix + key])


def test_seam_loss_gradients(seam):
    outputs = [seam[k].clone().requires_grad_() for k in OUTPUTS]
    eq.seam_loss(*outputs, seam['label'])['loss'].backward()
    for key, t in zip(OUTPUTS, outputs):
        close(t.grad, seam['grad_' + key])


# ---------------------------------------------------------------------------------------------------------
# Micro-batches: each image's share with n = the batch size adds up to the batch's loss.

def test_per_image_shares_add_up(sse, seam):
    whole = eq.ssenet_loss(sse['cam'], sse['cam_s'], sse['label'])
    parts = [eq.ssenet_loss(sse['cam'][i:i + 1], sse['cam_s'][i:i + 1], sse['label'][i:i + 1], n=2) for i in (0, 1)]
    for key in whole:
        close(parts[0][key] + parts[1][key], whole[key], 1e-12)
    whole = eq.seam_loss(*(seam[k] for k in OUTPUTS), seam['label'])
    parts = [eq.seam_loss(*(seam[k][i:i + 1] for k in OUTPUTS), seam['label'][i:i + 1], n=2) for i in (0, 1)]
    for key in whole:
        close(parts[0][key] + parts[1][key], whole[key], 1e-12)
