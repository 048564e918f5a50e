"""infer_and_envalue.py against the original loop (sfl_infer fixture, /tmp/scratch_sfl/make_sfl_infer.py): the same
per-iteration label maps and mIoU on the same weights and images; the PNGs decode to those maps; CAM dicts."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import infer_and_envalue
from network.deeplab_SEAM import Net as SEAMNet
from network.edge_SEAM import DeepLabv3_plus
from reference_weights import deterministic_state_dict
from tool.io import load_dict_npy, load_label_png

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'sfl_infer.npz')


def save_weights(net, path):
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    torch.save({k: torch.from_numpy(v) for k, v in deterministic_state_dict(shapes).items()}, path)
    return path


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    ref = dict(np.load(FIXTURE))
    root = tmp_path_factory.mktemp('sfl_voc')
    (root / 'JPEGImages').mkdir()
    (root / 'gt').mkdir()
    names = ref['names'].tolist()
    for name in names:
        (root / 'JPEGImages' / f'{name}.jpg').write_bytes(ref[f'{name}_jpg'].tobytes())
        Image.fromarray(ref[f'{name}_gt']).save(root / 'gt' / f'{name}.png')
    (root / 'list.txt').write_text('\n'.join(names) + '\n')
    np.save(root / 'cls_labels.npy', {name: ref[f'{name}_label'] for name in names})
    weights = save_weights(SEAMNet(), str(root / 'seam.pth'))
    edge = save_weights(DeepLabv3_plus(4, 1, 16), str(root / 'edge.pth'))
    return ref, root, names, weights, edge


def run(root, weights, edge, *extra):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixture's summation order: with 2 threads the third iteration's mIoU moved by 7e-5
    try:
        return _main(root, weights, edge, *extra)
    finally:
        torch.set_num_threads(threads)


def _main(root, weights, edge, *extra):
    return infer_and_envalue.main(['--weights', weights, '--edge_weights', edge, '--voc12_root', str(root),
                                   '--infer_list', str(root / 'list.txt'), '--cls_labels', str(root / 'cls_labels.npy'),
                                   '--num_workers', '0', '--device', 'cpu', '--logfile', str(root / 'eval.txt'),
                                   '--mUIfile', str(root / 'mui.txt'), *extra])


def test_miou_and_label_pngs_equal_original(voc, capsys):
    ref, root, names, weights, edge = voc
    mious = run(root, weights, edge, '--gt_dir', str(root / 'gt'), '--label_dir', str(root / 'labels2'),
                '--iterations', '2', '--out_cam', str(root / 'cams'))
    # each pass feeds back the last one's raw logits, float noise grows: the third pass's mIoU moved by 8e-4
    # (relative) on an AMD EPYC CPU, single thread, against the fixture's machine
    np.testing.assert_allclose(np.array(mious[:2]) * 100, ref['miou'][:2], rtol=1e-4)
    np.testing.assert_allclose(mious[2] * 100, ref['miou'][2], rtol=2e-3)
    out = capsys.readouterr().out
    for k, miou in enumerate(mious, start=1):
        assert 'mIoU: %.3f%%\t out%d_edge.pth' % (miou * 100, k) in out
    assert (root / 'mui.txt').read_text().count('\tout') == 3
    for name in names:
        np.testing.assert_array_equal(load_label_png(str(root / 'labels2' / f'{name}.png')), ref[f'{name}_pred2'])
        cams = load_dict_npy(str(root / 'cams' / f'{name}.npy'))
        present = np.nonzero(ref[f'{name}_label'])[0].tolist()
        assert sorted(cams) == present
        for c in present:
            expected = 1 / (1 + np.exp(-ref[f'{name}_scores2'][c + 1].astype(np.float64)))
            np.testing.assert_allclose(cams[c], expected, atol=1e-4)


def test_first_iteration_pngs_by_default(voc):
    ref, root, names, weights, edge = voc
    assert run(root, weights, edge, '--label_dir', str(root / 'labels1')) is None
    for name in names:
        np.testing.assert_array_equal(load_label_png(str(root / 'labels1' / f'{name}.png')), ref[f'{name}_pred1'])


def test_rerun_without_gt_skips_finished_images_and_overwrite_redoes_them(voc, capsys):
    ref, root, names, weights, edge = voc
    labels = root / 'labels_resume'
    run(root, weights, edge, '--label_dir', str(labels))
    done, redone = labels / f'{names[0]}.png', labels / f'{names[1]}.png'
    Image.fromarray(np.zeros_like(ref[f'{names[0]}_pred1'])).save(done)  # a finished output: must stay as it is
    redone.unlink()
    capsys.readouterr()
    run(root, weights, edge, '--label_dir', str(labels))
    assert f'{len(names) - 1} of {len(names)} images already have all outputs' in capsys.readouterr().out
    assert not load_label_png(str(done)).any()
    np.testing.assert_array_equal(load_label_png(str(redone)), ref[f'{names[1]}_pred1'])
    run(root, weights, edge, '--label_dir', str(labels), '--overwrite')
    np.testing.assert_array_equal(load_label_png(str(done)), ref[f'{names[0]}_pred1'])
