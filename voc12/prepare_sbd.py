"""Build SegmentationClassAug (VOC 2012 masks + SBD masks as class-index PNGs) and check the split counts.

    python voc12/prepare_sbd.py --sbd_root benchmark_RELEASE/dataset --voc12_root VOC2012

For every id of the train_aug, train and val lists: VOC2012/SegmentationClass/<id>.png when it exists
(palette indices, 255 borders kept), else the SBD mask <sbd_root>/cls/<id>.mat (struct GTcls, field
Segmentation, classes 0..20). Outputs are written atomically; existing ones are kept unless --overwrite,
so an interrupted run continues. At the end every listed id must have a label; with --full_voc True (the
default) the lists and labels must also number train_aug 10,582, train 1,464, val 1,449.
"""
import argparse
import os
import sys

if __package__ in (None, ''):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import scipy.io

from tool.cli import run_main, str2bool
from tool.io import UserError, atomic_save_png, load_label_png, pending
from tool.metrics import check_labels
from voc12.data import N_CLASSES, VOC12_DIR, load_img_name_list

FULL_VOC_COUNTS = {'train_aug': 10582, 'train': 1464, 'val': 1449}


def load_gtcls_field(path, field, what):
    """Field `field` of the struct GTcls of an SBD cls/<id>.mat; `what` names the file in the one-line error."""
    try:
        return getattr(scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)['GTcls'], field)
    except Exception as e:
        raise UserError(f'{path} is not an SBD {what} (struct GTcls with field {field}): '
                        f'{e.__class__.__name__} (re-extract the SBD archive)')


def load_sbd_mat(path):
    """Class indices of an SBD cls/<id>.mat as HxW uint8."""
    seg = np.asarray(load_gtcls_field(path, 'Segmentation', 'class mask'))
    if seg.ndim != 2 or seg.min(initial=0) < 0 or seg.max(initial=0) > 255:
        raise UserError(f'{path}: GTcls.Segmentation must be an HxW map of classes 0..20')
    return seg.astype(np.uint8)


def label_source(name, voc12_root, sbd_root):
    voc_png = os.path.join(voc12_root, 'SegmentationClass', name + '.png')
    if os.path.exists(voc_png):
        return voc_png
    sbd_mat = os.path.join(sbd_root, 'cls', name + '.mat')
    if os.path.exists(sbd_mat):
        return sbd_mat
    raise UserError(f'no mask for {name}: neither {voc_png} nor {sbd_mat} exists '
                    '(check --voc12_root and --sbd_root)')


def convert_one(name, voc12_root, sbd_root, out_dir):
    src = label_source(name, voc12_root, sbd_root)
    label = load_label_png(src) if src.endswith('.png') else load_sbd_mat(src)
    check_labels(label, N_CLASSES + 1, src)
    atomic_save_png(os.path.join(out_dir, name + '.png'), label)


def check_list_sizes(lists):
    """The lists must be the full VOC 2012 + SBD splits."""
    for split, names in lists.items():
        if len(names) != FULL_VOC_COUNTS[split]:
            raise UserError(f'{split} list has {len(names)} ids, full VOC 2012 + SBD has {FULL_VOC_COUNTS[split]} '
                            '(use the lists in voc12/, or --full_voc False for a subset)')


def check_labels_present(lists, out_dir):
    """Print listed/labelled counts per split; UserError when a listed id has no label."""
    print(f'{"split":<10} {"listed":>7} {"labels":>7}')
    for split, names in lists.items():
        found = sum(os.path.exists(os.path.join(out_dir, n + '.png')) for n in names)
        print(f'{split:<10} {len(names):>7} {found:>7}')
        if found != len(names):
            raise UserError(f'{out_dir}: {len(names) - found} {split} labels missing (rerun this script)')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sbd_root', required=True, help='SBD dataset folder holding cls/<id>.mat')
    parser.add_argument('--voc12_root', required=True, help='VOC2012 folder (SegmentationClass/ is used first)')
    parser.add_argument('--out', default=None, help='output folder (default: <voc12_root>/SegmentationClassAug)')
    parser.add_argument('--train_aug_list', default=os.path.join(VOC12_DIR, 'train_aug.txt'))
    parser.add_argument('--train_list', default=os.path.join(VOC12_DIR, 'train.txt'))
    parser.add_argument('--val_list', default=os.path.join(VOC12_DIR, 'val.txt'))
    parser.add_argument('--full_voc', type=str2bool, default=True,
                        help='require the full VOC 2012 counts (False: only that every listed id has a label)')
    parser.add_argument('--overwrite', type=str2bool, default=False)
    args = parser.parse_args(argv)

    out_dir = args.out or os.path.join(args.voc12_root, 'SegmentationClassAug')
    lists = {'train_aug': load_img_name_list(args.train_aug_list), 'train': load_img_name_list(args.train_list),
             'val': load_img_name_list(args.val_list)}
    if args.full_voc:
        check_list_sizes(lists)
    names = list(dict.fromkeys(n for split_names in lists.values() for n in split_names))
    todo = pending(names, lambda n: [os.path.join(out_dir, n + '.png')], args.overwrite)
    print(f'{len(names)} ids, {len(names) - len(todo)} labels already in {out_dir}, writing {len(todo)}')
    for i, name in enumerate(todo, 1):
        convert_one(name, args.voc12_root, args.sbd_root, out_dir)
        if i % 1000 == 0:
            print(f'{i}/{len(todo)}', flush=True)
    check_labels_present(lists, out_dir)
    print(f'{out_dir}: ready')


if __name__ == '__main__':
    run_main(main)
