"""infer_seg.py on synthetic VOC data: seed flags, outputs against an independent multi-scale + flip + dCRF
computation, palette PNG format, resume / --overwrite, one-line errors."""
import os
import shlex
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import infer_seg
from network.resnet38_seg import SegNet
from tool.cli import run_main
from voc12.synthetic import make_voc

SEED_COMMAND = 'python infer_seg.py --weights resnet38_seg.pth --image_dir VOC2012/JPEGImages --output_crf seg_crf'
SEED_SCALES = (1, 0.5, 0.75, 1.25, 1.5)
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# a few VOC palette entries (class: RGB), from the devkit's colour map
VOC_COLOURS = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 8: (64, 0, 0),
               15: (192, 128, 128), 20: (0, 64, 128)}


def seg_weights(path):
    """Random-init width-0.125 SegNet whose logits vary across the image: the random backbone's output is
    about 1e-3 in scale, so bn7's running variance is lowered to bring it to about 1."""
    torch.manual_seed(0)
    net = SegNet(width=0.125)
    net.bn7.running_var.fill_(1e-6)
    torch.save(net.state_dict(), path)
    return net.eval()


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp('infer_seg')
    voc = make_voc(str(base / 'voc'), n_train=3, n_val=1, size=((45, 60), (33, 47)), classes=[0, 7, 14], seed=3)
    net = seg_weights(base / 'seg.pth')
    ids = [line.split()[0][-15:-4] for line in open(os.path.join(voc, 'lists', 'train.txt'))]
    return {'base': base, 'voc': voc, 'net': net, 'ids': ids}


def argv(data, image_dir=None, *extra):
    image_dir = image_dir or os.path.join(data['voc'], 'JPEGImages')
    return ['--weights', str(data['base'] / 'seg.pth'), '--image_dir', image_dir,
            '--infer_list', os.path.join(data['voc'], 'lists', 'train.txt'), '--width', '0.125', '--device', 'cpu',
            *extra]


@pytest.fixture(scope='module')
def outputs(data):
    out = data['base'] / 'out'
    infer_seg.main(argv(data, None, '--output', str(out / 'seg'), '--output_crf', str(out / 'crf'),
                        '--num_workers', '2'))
    return out


def image(data, name):
    return np.asarray(Image.open(os.path.join(data['voc'], 'JPEGImages', name + '.jpg')).convert('RGB'))


def reference_logits(net, img):
    """The seed's steps: each scale (PIL bicubic, size rounded) and its flip through the net one at a time,
    bilinear upsampling to the image size, flip back, sum, times 0.1."""
    h, w = img.shape[:2]
    total = torch.zeros(21, h, w)
    for s in SEED_SCALES:
        scaled = np.asarray(Image.fromarray(img).resize((round(w * s), round(h * s)), Image.BICUBIC))
        x = torch.from_numpy(((scaled / 255. - MEAN) / STD).astype(np.float32).transpose(2, 0, 1))[None]
        for flip in (False, True):
            with torch.no_grad():
                y = net(torch.flip(x, [3]) if flip else x)
            y = F.interpolate(y, (h, w), mode='bilinear', align_corners=False)[0]
            total += torch.flip(y, [2]) if flip else y
    return total * 0.1


def reference_crf(img, logits):
    """pydensecrf directly with the seed's parameters on the softmax of the summed logits."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax
    probs = torch.softmax(logits, 0).numpy()
    h, w = img.shape[:2]
    crf = dcrf.DenseCRF2D(w, h, 21)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=83, srgb=5, rgbim=np.array(img, order="C"), compat=4)
    return np.array(crf.inference(10)).reshape(21, h, w).argmax(0)


def read_png(path):
    with Image.open(path) as im:
        return im.mode, im.getpalette(), np.array(im)


def error_lines(capsys):
    """The error lines of stderr (the progress bar writes there too); never a traceback."""
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return [line for line in err.splitlines() if line.startswith('error:')]


def test_seed_command_parses_with_reference_defaults():
    args = infer_seg.build_parser().parse_args(shlex.split(SEED_COMMAND)[2:])
    assert (args.weights, args.image_dir, args.output_crf) == ('resnet38_seg.pth', 'VOC2012/JPEGImages', 'seg_crf')
    assert (args.network, args.infer_list, args.num_workers, args.database) == \
        ('network.resnet38_seg', 'voc12/val.txt', 8, 'voc')
    assert args.output is None and tuple(args.scales) == SEED_SCALES
    assert (args.width, args.overwrite, args.device, args.amp) == (1.0, False, None, 'none')
    assert infer_seg.build_parser().parse_args(['--weights', 'w', '--image_dir', 'd', '--scales', '1,0.5']).scales \
        == (1.0, 0.5)


def test_outputs_are_voc_palette_pngs_of_the_image_size(data, outputs):
    for name in data['ids']:
        h, w = image(data, name).shape[:2]
        for kind in ('seg', 'crf'):
            mode, palette, label = read_png(outputs / kind / (name + '.png'))
            assert mode == 'P' and label.shape == (h, w) and label.max() <= 20
            for cls, rgb in VOC_COLOURS.items():
                assert tuple(palette[3 * cls:3 * cls + 3]) == rgb
    assert not [f for f in os.listdir(outputs / 'seg') if f.endswith('.tmp')]


def test_output_is_the_argmax_of_the_summed_multiscale_logits(data, outputs):
    predicted = set()
    for name in data['ids']:
        logits = reference_logits(data['net'], image(data, name))
        _, _, label = read_png(outputs / 'seg' / (name + '.png'))
        top2 = torch.topk(logits, 2, dim=0).values
        clear = (top2[0] - top2[1] > 1e-4).numpy()  # batched and single forwards differ by float rounding
        assert clear.mean() > 0.99
        np.testing.assert_array_equal(label[clear], logits.argmax(0).numpy()[clear])
        predicted.update(np.unique(label).tolist())
    assert len(predicted) >= 3  # the test weights give a varied prediction


def test_output_crf_agrees_with_an_independent_crf(data, outputs):
    name = data['ids'][0]
    img = image(data, name)
    expected = reference_crf(img, reference_logits(data['net'], img))
    _, _, label = read_png(outputs / 'crf' / (name + '.png'))
    assert (label == expected).mean() > 0.999
    _, _, plain = read_png(outputs / 'seg' / (name + '.png'))
    assert (label != plain).any()  # the CRF changes something: it is not the plain argmax again


def test_rerun_skips_finished_images_and_overwrite_redoes_them(data, outputs, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(outputs, out)
    marker = out / 'seg' / (data['ids'][0] + '.png')
    Image.new('P', (3, 2)).save(marker)
    os.remove(out / 'crf' / (data['ids'][1] + '.png'))
    flags = ['--output', str(out / 'seg'), '--output_crf', str(out / 'crf'), '--num_workers', '0']
    infer_seg.main(argv(data, None, *flags))
    assert read_png(marker)[2].shape == (2, 3)  # skipped: its outputs all exist
    for kind in ('seg', 'crf'):  # the image with a missing output is redone, and equals the first run
        name = data['ids'][1] + '.png'
        np.testing.assert_array_equal(read_png(out / kind / name)[2], read_png(outputs / kind / name)[2])
    infer_seg.main(argv(data, None, *flags, '--overwrite'))
    np.testing.assert_array_equal(read_png(marker)[2], read_png(outputs / 'seg' / (data['ids'][0] + '.png'))[2])


def test_corrupt_image_is_a_one_line_error_naming_the_file(data, tmp_path, capsys):
    images = tmp_path / 'JPEGImages'
    shutil.copytree(os.path.join(data['voc'], 'JPEGImages'), images)
    bad = images / (data['ids'][1] + '.jpg')
    bad.write_bytes(b'not a jpeg')
    out = tmp_path / 'seg'
    with pytest.raises(SystemExit) as exit_info:
        run_main(infer_seg.main, argv(data, str(images), '--output', str(out), '--num_workers', '0'))
    assert exit_info.value.code == 2
    assert error_lines(capsys) == [f'error: corrupt image {bad}: UnidentifiedImageError '
                                   '(re-download or remove it from the list)']
    assert not out.exists()  # every image is checked before the first output is written


def test_no_output_folder_and_weights_of_another_network_are_one_line_errors(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(infer_seg.main, argv(data))
    assert exit_info.value.code == 2 and '--output' in error_lines(capsys)[0]
    torch.save({'fc8.weight': torch.zeros(20, 512, 1, 1)}, tmp_path / 'cls.pth')
    args = argv(data, None, '--output', str(tmp_path / 'seg'))
    args[1] = str(tmp_path / 'cls.pth')
    with pytest.raises(SystemExit) as exit_info:
        run_main(infer_seg.main, args)
    errors = error_lines(capsys)
    assert exit_info.value.code == 2 and len(errors) == 1 and 'cls.pth' in errors[0]
