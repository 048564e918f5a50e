"""infer_cls_ser.py (SSENet), infer_SEAM.py (SEAM) and infer_SB.py (SBNet) against the original scripts.

Fixtures infer_cls_ser_original.npz / infer_SEAM_original.npz: the ORIGINAL YudeWang/SSENet-pytorch 873c442
infer_cls_ser.py and YudeWang/SEAM 3212261 infer_SEAM.py, run unchanged on CPU (float32, only .cuda()/replicate,
PIL.Image.CUBIC, np.load allow_pickle and scipy.misc.imsave shimmed) with
`--out_cam cam --out_crf crf --out_cam_pred pred`, their network filled with tests/reference_weights.fill(net, seed),
on two seeded JPEGs. Keys: `jpeg_<id>` (the JPEG file's bytes), `label_<id>` (20 image-level labels), `seed`,
`cam_<id>_<k>` (--out_cam dict), `crf4_<id>_<k>` / `crf24_<id>_<k>` (the dicts in crf_4.0/ and crf_24.0/), with the
dict keys in `<tag>_<id>_keys`, and `pred_<id>` (the --out_cam_pred array).

infer_SB.py is checked against the original infer_SEAM.py's fixture: the original infer_SB.py is infer_SEAM.py with
SBNet's network, whose cam_rv comes from SEAM's layers alone (the boundary branch's output is discarded), and the
per-key weights give those layers the same values in both networks.
"""
import os
import shlex

import numpy as np
import pytest
import torch

import infer_cls
import infer_cls_ser
import infer_SB
import infer_SEAM
from network import resnet38_cls_ser, resnet38_SEAM, resnet38_SEAM_BD
from reference_weights import deterministic_state_dict
from tool.io import UserError, load_image

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
SCRIPTS = {'ssenet': (infer_cls_ser, resnet38_cls_ser.Net, 'infer_cls_ser_original.npz'),
           'seam': (infer_SEAM, resnet38_SEAM.Net, 'infer_SEAM_original.npz'),
           'sbnet': (infer_SB, resnet38_SEAM_BD.Net, 'infer_SEAM_original.npz')}
README_COMMANDS = {
    'ssenet': 'python infer_cls_ser.py --weights W --infer_list voc12/val.txt --out_cam C --out_crf R '
              '--out_cam_pred P --voc12_root VOC2012',
    'seam': 'python infer_SEAM.py --weights W --infer_list voc12/val.txt --out_cam C --out_crf R --voc12_root VOC2012',
    'sbnet': 'python infer_SB.py --weights W --infer_list voc12/val.txt --out_cam C --out_crf R --voc12_root VOC2012',
}


def load(path):
    return np.load(path, allow_pickle=True).item()


def reference_dict(ref, tag, name):
    return {int(k): ref[f'{tag}_{name}_{k}'] for k in ref[f'{tag}_{name}_keys']}


@pytest.fixture(scope='module', params=sorted(SCRIPTS))
def case(request, tmp_path_factory):
    """The reference inputs as a VOC folder, the same deterministic weights in a .pth, and the fixture."""
    script, net_cls, fixture = SCRIPTS[request.param]
    ref = np.load(os.path.join(FIXTURES, fixture))
    root = tmp_path_factory.mktemp(request.param)
    os.makedirs(root / 'VOC2012' / 'JPEGImages')
    ids = [str(i) for i in ref['ids']]
    for name in ids:
        (root / 'VOC2012' / 'JPEGImages' / f'{name}.jpg').write_bytes(ref[f'jpeg_{name}'].tobytes())
    (root / 'list.txt').write_text(''.join(f'/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n' for n in ids))
    np.save(root / 'labels.npy', {name: ref[f'label_{name}'] for name in ids})
    with torch.device('meta'):
        shapes = {k: tuple(v.shape) for k, v in net_cls().state_dict().items()}
    torch.save({k: torch.from_numpy(v) for k, v in deterministic_state_dict(shapes, int(ref['seed'])).items()},
               root / 'weights.pth')
    return {'name': request.param, 'script': script, 'ref': ref, 'ids': ids, 'root': root}


def run_args(case, *outputs):
    root = case['root']
    return ['--weights', str(root / 'weights.pth'), '--infer_list', str(root / 'list.txt'),
            '--voc12_root', str(root / 'VOC2012'), '--cls_labels', str(root / 'labels.npy'), '--device', 'cpu',
            '--num_workers', '0', *outputs]


@pytest.fixture(scope='module')
def outputs(case):
    out = case['root'] / 'out'
    case['script'].main(run_args(case, '--out_cam', str(out / 'cam'), '--out_crf', str(out / 'crf'),
                                 '--out_cam_pred', str(out / 'pred')))
    return out


def assert_dicts_close(ours, ref, what, atol):
    assert list(ours) == list(ref), what
    diff = max(float(np.abs(ours[k] - ref[k]).max()) for k in ref)
    print(f'{what}: max |ours - original| = {diff:.3g}')
    assert all(ours[k].dtype == np.float32 and ours[k].shape == ref[k].shape for k in ref)
    assert diff <= atol, what


def test_cam_dicts_equal_the_original(case, outputs):
    for name in case['ids']:
        assert_dicts_close(load(outputs / 'cam' / f'{name}.npy'), reference_dict(case['ref'], 'cam', name),
                           f'{case["name"]} CAM {name}', atol=2e-5)


def test_crf_folders_and_dicts_equal_the_original(case, outputs):
    """End to end the dCRF amplifies the CAMs' float32 noise (SEAM's min-max divides by small ranges here), so the
    CRF step is also checked alone: the original's CAM dicts through our crf_with_alpha. End to end it differed
    by up to 1e-3 on the fixture's machine and 1.7e-3 on an AMD EPYC CPU (2026-12-08), the CAMs there within 2e-5;
    alone 2e-7 on the fixture's machine, 1.9e-5 on the AMD one (the float32 lattice of pydensecrf)."""
    assert sorted(p.name for p in outputs.iterdir()) == ['cam', 'crf_24.0', 'crf_4.0', 'pred']
    for name in case['ids']:
        img = load_image(str(case['root'] / 'VOC2012' / 'JPEGImages' / f'{name}.jpg'))
        for tag, folder, alpha in (('crf4', 'crf_4.0', 4), ('crf24', 'crf_24.0', 24)):
            ref = reference_dict(case['ref'], tag, name)
            assert_dicts_close(load(outputs / folder / f'{name}.npy'), ref, f'{case["name"]} {folder} {name}',
                               atol=5e-3)
            alone = infer_cls.crf_with_alpha(img, reference_dict(case['ref'], 'cam', name), alpha)
            assert_dicts_close(alone, ref, f'{case["name"]} {folder} {name} from the original CAMs', atol=1e-4)


def test_cam_pred_equals_the_original(case, outputs):
    from PIL import Image
    for name in case['ids']:
        with Image.open(outputs / 'pred' / f'{name}.png') as png:
            np.testing.assert_array_equal(np.array(png), case['ref'][f'pred_{name}'])


def test_pipeline_flags_write_the_same_crf_dicts(case, outputs):
    """run_pipeline wires --out_la_crf/--out_ha_crf with --low_alpha/--high_alpha, as for psa's infer_cls."""
    out = case['root'] / 'pipeline'
    case['script'].main(run_args(case, '--out_la_crf', str(out / 'la'), '--out_ha_crf', str(out / 'ha'),
                                 '--low_alpha', '4', '--high_alpha', '24'))
    for name in case['ids']:
        for folder, crf_folder in (('la', 'crf_4.0'), ('ha', 'crf_24.0')):
            ours, before = load(out / folder / f'{name}.npy'), load(outputs / crf_folder / f'{name}.npy')
            assert list(ours) == list(before)
            assert all(np.array_equal(ours[k], before[k]) for k in ours)


@pytest.mark.parametrize('name', sorted(SCRIPTS))
def test_readme_commands_parse_with_the_original_defaults(name):
    script = SCRIPTS[name][0]
    args = infer_cls.build_parser(getattr(script, name.upper()), script.__doc__).parse_args(
        shlex.split(README_COMMANDS[name])[2:])
    expected = {'ssenet': ('network.resnet38_cls_ser', (1.0, 0.5, 1.5, 2.0), 0.2),
                'seam': ('network.resnet38_SEAM', (0.5, 1.0, 1.5, 2.0), 0.26),
                'sbnet': ('network.resnet38_SEAM_BD', (0.5, 1.0, 1.5, 2.0), 0.26)}[name]
    assert (args.network, tuple(args.scales), args.out_cam_pred_alpha) == expected
    assert (args.low_alpha, args.high_alpha, args.num_workers, args.infer_list) == (4, 24, 8, 'voc12/val.txt')
    infer_cls.crf_folders(args)
    assert (args.out_la_crf, args.out_ha_crf) == ('R_4.0', 'R_24.0')


def test_seam_normalisation_matches_the_reference_rule():
    """Hand-computed: negatives clipped, values below min + 1e-5 zeroed, then (x - min - 1e-5) / (max - min + 1e-5)."""
    cam = torch.tensor([[[-1.0, 2.0], [3.0, 5.0]], [[0.0, 0.0], [0.0, 0.0]]])
    norm = infer_SEAM.seam_norm(cam).numpy()
    np.testing.assert_allclose(norm[0], [[-1e-5 / (5 + 1e-5), (2 - 1e-5) / (5 + 1e-5)],
                                         [(3 - 1e-5) / (5 + 1e-5), (5 - 1e-5) / (5 + 1e-5)]], rtol=1e-6)
    np.testing.assert_allclose(norm[1], -1, rtol=1e-6)


def test_out_crf_with_la_ha_is_an_error(case, tmp_path):
    with pytest.raises(UserError, match='--out_crf'):
        case['script'].main(run_args(case, '--out_crf', str(tmp_path / 'r'), '--out_la_crf', str(tmp_path / 'la')))


def test_missing_weights_stop_with_one_line_naming_them(case, tmp_path):
    args = run_args(case, '--out_cam', str(tmp_path / 'cam'))
    args[1] = str(tmp_path / 'none.pth')
    with pytest.raises(UserError, match='none.pth'):
        case['script'].main(args)
    assert not (tmp_path / 'cam').exists()
