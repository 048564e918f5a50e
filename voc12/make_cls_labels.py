"""Build cls_labels.npy (pickled dict id -> float32[20] multi-hot) from VOC Annotations/<id>.xml.

    python voc12/make_cls_labels.py --voc12_root VOC2012 --out voc12/cls_labels.npy
"""
import argparse
import os
import sys

if __package__ in (None, ''):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tool.cli import run_main
from tool.io import atomic_save_npy
from voc12.data import VOC12_DIR, load_image_label_from_xml, load_img_name_list


def make_cls_labels(voc12_root, list_paths):
    """{id: float32[20]} for the ids of all lists, in list order."""
    names = dict.fromkeys(name for path in list_paths for name in load_img_name_list(path))
    return {name: load_image_label_from_xml(name, voc12_root) for name in names}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--train_list', default=os.path.join(VOC12_DIR, 'train_aug.txt'))
    parser.add_argument('--val_list', default=os.path.join(VOC12_DIR, 'val.txt'))
    parser.add_argument('--out', default='cls_labels.npy')
    parser.add_argument('--voc12_root', required=True)
    args = parser.parse_args(argv)
    labels = make_cls_labels(args.voc12_root, [args.train_list, args.val_list])
    atomic_save_npy(args.out, labels)
    print(f'{args.out}: image-level labels of {len(labels)} images')


if __name__ == '__main__':
    run_main(main)
