"""tool/sfl.py against the original train_edge.py loop's numbers on seeded tensors (sfl_losses fixture)."""
import os

import numpy as np
import pytest
import torch

from tool.equivariance import downscale
from tool.sfl import LOCALISER_SCALE, SegmenterBuffer, fill_buffer, localiser_loss, present_pairs, segmenter_loss

HERE = os.path.join(os.path.dirname(__file__), 'fixtures', 'sfl_losses.npz')


@pytest.fixture(scope='module')
def ref():
    return dict(np.load(HERE))


def _t(ref, key, grad=False):
    return torch.tensor(ref[key], requires_grad=grad)


def test_second_branch_input(ref):
    img2 = downscale(_t(ref, 'img'), LOCALISER_SCALE, align_corners=True)
    np.testing.assert_allclose(img2.numpy(), ref['img2'], atol=1e-6)


def test_localiser_terms_and_grads(ref):
    cams = [_t(ref, k, True) for k in ('cam1', 'cam_rv1', 'cam2', 'cam_rv2')]
    terms, refer_map, refer_rv_map = localiser_loss(*cams, _t(ref, 'label'))
    for key in ('loss_cls1', 'loss_cls2', 'loss_rvmin1', 'loss_rvmin2', 'loss_er', 'loss_ecr1', 'loss_ecr2',
                'loss_ecr', 'loss_cls', 'loss'):
        np.testing.assert_allclose(terms[key].item(), ref[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(refer_map.numpy(), ref['refer_map'], atol=1e-6)
    np.testing.assert_allclose(refer_rv_map.numpy(), ref['refer_rv_map'], atol=1e-6)
    terms['loss'].backward()
    for key, cam in zip(('grad_cam1', 'grad_cam_rv1', 'grad_cam2', 'grad_cam_rv2'), cams):
        np.testing.assert_allclose(cam.grad.numpy(), ref[key], atol=1e-8, rtol=1e-4, err_msg=key)


def test_buffer_fill_and_state(ref):
    label = ref['label']
    assert present_pairs(label) == [tuple(p) for p in ref['edge_pairs'].tolist()]
    buffer = SegmenterBuffer(4, ref['img'].shape[2:])
    batches = fill_buffer(buffer, _t(ref, 'img'), _t(ref, 'refer_map'), _t(ref, 'refer_rv_map'), _t(ref, 'seg'),
                          label)
    assert len(batches) == int(ref['edge_iter_end'])
    for got, key in zip(batches[0], ('edge_in_img', 'edge_in_refer', 'edge_in_refer_rv', 'edge_in_seg')):
        np.testing.assert_array_equal(got.numpy(), ref[key], err_msg=key)
    assert buffer.count == int(ref['edge_data_size_end'])
    np.testing.assert_array_equal(buffer.refer.numpy(), ref['edge_buffer_refer_end'])
    np.testing.assert_array_equal(buffer.seg.numpy(), ref['edge_buffer_seg_end'])


def test_segmenter_dice_on_logits(ref):
    out, out_rv = _t(ref, 'edge_O', True), _t(ref, 'edge_O_rv', True)
    terms = segmenter_loss(out, out_rv, _t(ref, 'edge_in_seg'))
    for key in ('edge_loss1', 'edge_loss_rv', 'edge_loss_ds', 'edge_loss'):
        np.testing.assert_allclose(terms[key].item(), ref[key], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(terms['edge_loss1'].item(), ref['dice_O_G'], rtol=1e-6)
    terms['edge_loss'].backward()
    np.testing.assert_allclose(out.grad.numpy(), ref['grad_edge_O'], atol=1e-9, rtol=1e-4)
    np.testing.assert_allclose(out_rv.grad.numpy(), ref['grad_edge_O_rv'], atol=1e-9, rtol=1e-4)


def test_segmenter_dice_on_sigmoid(ref):
    terms = segmenter_loss(_t(ref, 'edge_O'), _t(ref, 'edge_O_rv'), _t(ref, 'edge_in_seg'), dice_on='sigmoid')
    np.testing.assert_allclose(terms['edge_loss1'].item(), ref['dice_sigmoidO_G'], rtol=1e-6)
    assert 0 <= terms['edge_loss'].item() <= 3
