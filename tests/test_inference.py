"""tool/inference.py: multi-scale + flip forward, the CRF process pool, resumable loop, model loading."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import network.resnet38_cls
from tool.inference import CrfPool, load_model, msf_forward, pending_progress
from tool.io import UserError

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def random_image(h=29, w=37, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def unbatched_msf(forward, image, scales):
    """One forward per scale and per flip, with an independent PIL resize, normalisation and flips."""
    h, w = image.shape[:2]
    maps = []
    for s in scales:
        size = (int(round(w * s)), int(round(h * s)))
        scaled = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC)) if size != (w, h) else image
        x = torch.from_numpy(((scaled / 255. - MEAN) / STD).astype(np.float32)).permute(2, 0, 1)[None]
        for flip in (False, True):
            with torch.no_grad():
                y = forward(torch.flip(x, [3]) if flip else x)
            y = F.interpolate(y, (h, w), mode='bilinear', align_corners=False)[0]
            maps.append(torch.flip(y, [2]) if flip else y)
    return maps


@pytest.fixture(scope='module')
def tiny_cls():
    torch.manual_seed(0)
    return network.resnet38_cls.Net(width=0.125).eval()


def test_msf_forward_equals_unbatched_forwards(tiny_cls):
    image, scales = random_image(), (1.0, 0.5, 1.5)
    maps = msf_forward(tiny_cls.forward_cam, image, scales, tiny_cls.normalize, torch.device('cpu'))
    expected = unbatched_msf(tiny_cls.forward_cam, image, scales)
    assert len(maps) == 6
    for got, want in zip(maps, expected):
        assert got.shape == (20, 29, 37)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    total = msf_forward(tiny_cls.forward_cam, image, scales, tiny_cls.normalize, torch.device('cpu'),
                        sum_outputs=True)
    torch.testing.assert_close(total, torch.stack(expected).sum(0), rtol=1e-5, atol=1e-5)


def test_msf_forward_unflips_and_resizes_to_out_size():
    image = random_image(12, 20)
    ramp = torch.linspace(0, 1, 20 * 2)  # position-dependent: a missing un-flip would show

    def forward(x):
        return x[:, :1] * ramp[:x.shape[-1]]

    maps = msf_forward(forward, image, (2.0,), lambda a: np.asarray(a, np.float32), torch.device('cpu'),
                       out_size=(24, 40))
    x = torch.from_numpy(np.asarray(Image.fromarray(image).resize((40, 24), Image.BICUBIC), np.float32))
    x = x.permute(2, 0, 1)[None]
    torch.testing.assert_close(maps[0], forward(x)[0])
    torch.testing.assert_close(maps[1], forward(x.flip(-1))[0].flip(-1))


def test_crf_pool_runs_jobs_in_order_in_processes_and_in_process():
    for workers in (0, 2):
        written = []
        with CrfPool(workers) as pool:
            for i, v in enumerate([4.0, 9.0, 16.0, 25.0]):
                pool.submit(f'img{i}', math.sqrt, (v,), written.append)
        assert written == [2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize('workers', [0, 2])
def test_crf_pool_reports_the_failing_item(workers):
    written = []
    with pytest.raises(UserError, match=r'img_bad.*ValueError') as info:
        with CrfPool(workers) as pool:
            pool.submit('img_ok', math.sqrt, (4.0,), written.append)
            pool.submit('img_bad', math.sqrt, (-1.0,), written.append)
    assert '\n' not in str(info.value)
    assert written == [2.0]


def test_pending_progress_skips_finished_ids(tmp_path, capsys):
    ids = ['a', 'b', 'c']
    (tmp_path / 'a.npy').write_bytes(b'x')
    (tmp_path / 'a.png').write_bytes(b'x')
    (tmp_path / 'b.npy').write_bytes(b'x')  # b lacks its png: not finished

    def out_paths(i):
        return [tmp_path / f'{i}.npy', tmp_path / f'{i}.png']

    assert list(pending_progress(ids, out_paths)) == ['b', 'c']
    assert '1 of 3 images already have all outputs' in capsys.readouterr().out
    assert list(pending_progress(ids, out_paths, overwrite=True)) == ids


def test_load_model_refuses_weights_of_another_network(tmp_path, tiny_cls):
    state = tiny_cls.state_dict()
    good, bad = tmp_path / 'cls.pth', tmp_path / 'no_fc8.pth'
    torch.save(state, good)
    torch.save({k: v for k, v in state.items() if not k.startswith('fc8')}, bad)
    model = load_model('network.resnet38_cls', str(good), torch.device('cpu'), width=0.125)
    assert not model.training
    torch.testing.assert_close(model.fc8.weight, tiny_cls.fc8.weight)
    with pytest.raises(UserError, match=r'no_fc8\.pth do not fit .*1 of its tensors missing.*fc8\.weight'):
        load_model('network.resnet38_cls', str(bad), torch.device('cpu'), width=0.125)
    assert os.path.exists(good)
