"""Segmentation from localization on VOC: SEAM CAMs re-segmented by the class-agnostic segmenter, with mIoU.

    python infer_and_envalue.py --weights resnet38_SEAM.pth --edge_weights toEdge_edge_055000.pth \
        --voc12_root VOC2012 --gt_dir VOC2012/SegmentationClassAug --infer_list voc12/train.txt \
        --logfile evallog.txt --mUIfile muilog.txt --label_dir sfl_labels

Per image (whole image, one scale, no flip): M_c = max_norm(SEAM's raw CAM)[c] for each class c of the image-level
label; O1 = Seg(image, M_c), O2 = Seg(image, O1), O3 = Seg(image, O2). Iteration k's label map is the argmax of
[0.5 (background), O_k for the present classes, 0 for the others]. Prints and appends to --logfile / --mUIfile
the mIoU of O1, O2, O3 against --gt_dir (mean over all 21 classes, as the original).

Beyond the original: --label_dir writes <id>.png palette label maps of iteration --iterations (default 1) for
train_seg.py, --out_cam the sigmoid of that iteration's per-class outputs as CAM dicts {class: HxW} for the
dCRF / random-walk stages. --dice_on sigmoid (for a segmenter trained with train_edge.py --dice_on sigmoid)
thresholds and feeds back sigmoid(O) instead of the raw logits. Without --gt_dir, images whose --label_dir /
--out_cam outputs all exist are skipped (--overwrite redoes them); with it every image runs, as the mIoU needs.
"""
import argparse
import os
import time

import numpy as np
import torch
from tqdm import tqdm

import voc12.data
from network.edge_SEAM import DeepLabv3_plus
from tool.cli import add_network_args, import_network, pick_device, run_main
from tool.coco import normalize_image
from tool.equivariance import max_norm
from tool.io import atomic_save_npy, atomic_save_png, check_output_dir, load_label_png, pending, require_dir
from tool.metrics import label_confusion, scores_from_confusion
from tool.weights import load_trained_weights

BACKGROUND_SCORE = 0.5
ITERATIONS = 3
CATEGORIES = ['background'] + voc12.data.CAT_LIST


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', required=True, help='SEAM VOC weights (resnet38_SEAM.pth)')
    parser.add_argument('--edge_weights', required=True, help='segmenter weights (<session>_edge*.pth)')
    parser.add_argument('--infer_list', default='voc12/val.txt')
    parser.add_argument('--num_workers', default=8, type=int)
    parser.add_argument('--voc12_root', default='VOC2012')
    parser.add_argument('--label_dir', default=None, help='write <id>.png label maps of iteration --iterations here')
    parser.add_argument('--out_cam', default=None, help='write <id>.npy CAM dicts of sigmoid(O) of --iterations here')
    parser.add_argument('--iterations', default=1, type=int, choices=range(1, ITERATIONS + 1),
                        help='which re-segmentation (1..3) --label_dir / --out_cam take')
    parser.add_argument('--gt_dir', default=None, help='ground-truth PNGs for the mIoU (default: no evaluation)')
    parser.add_argument('--logfile', default='./evallog.txt')
    parser.add_argument('--mUIfile', default='./muilog.txt')
    parser.add_argument('--cls_labels', default=None, help='image-level labels .npy (default voc12/cls_labels.npy)')
    parser.add_argument('--dice_on', choices=['logits', 'sigmoid'], default='logits',
                        help='logits: raw outputs against 0.5 and fed back (the original); sigmoid: their sigmoid')
    parser.add_argument('--device', default=None)
    parser.add_argument('--overwrite', action='store_true', help='redo images whose outputs already exist')
    parser.add_argument('--edge_width', default=1.0, type=float, help="the segmenter's width (train_edge.py's)")
    add_network_args(parser)
    return parser


def resegment(localiser, segmenter, img, label, dice_on='logits'):
    """[(C, H, W) scores of iteration 1..3]: channel 0 = 0.5, channel c+1 = O_k for present class c, else 0."""
    cam = max_norm(localiser(img)[0])
    scores = [torch.zeros((cam.shape[1],) + img.shape[2:]) for _ in range(ITERATIONS)]
    for s in scores:
        s[0] = BACKGROUND_SCORE
    for c in torch.nonzero(label > 0.5).flatten().tolist():
        refer = cam[:, c + 1:c + 2]
        for s in scores:
            refer = segmenter(img, refer)
            if dice_on == 'sigmoid':
                refer = torch.sigmoid(refer)
            s[c + 1] = refer[0, 0].cpu()
    return scores


def print_scores(scores):
    """The original's table: IoU per class, two a line, then the mIoU."""
    iou = scores['iou']
    for i, name in enumerate(CATEGORIES):
        print('%11s:%7.3f%%' % (name, iou[i] * 100), end='\n' if i % 2 else '\t')
    print('\n======================================================')
    print('%11s:%7.3f%%' % ('mIoU', scores['miou'] * 100))


def append_logs(args, scores, comment):
    metric = {**{name: scores['iou'][i] * 100 for i, name in enumerate(CATEGORIES)}, 'mIoU': scores['miou'] * 100}
    with open(args.logfile, 'a') as f:
        f.write(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime()) + f'\t{comment}\n')
        f.write(''.join(f'{k}:{v}  ' for k, v in metric.items()) + '\n=====================================\n')
    with open(args.mUIfile, 'a') as f:
        f.write('\t%s\t%f\n' % (comment, metric['mIoU']))


def pending_indices(args, names):
    """The list positions of the images whose outputs are not all written (all of them with --overwrite)."""
    folders = [(getattr(args, flag), ext) for flag, ext in (('label_dir', 'png'), ('out_cam', 'npy')) if getattr(args, flag)]
    todo = set(pending(names, lambda name: [os.path.join(d, f'{name}.{ext}') for d, ext in folders], args.overwrite))
    if len(todo) < len(names):
        print(f'{len(names) - len(todo)} of {len(names)} images already have all outputs; skipping them '
              '(--overwrite redoes them)')
    return [k for k, name in enumerate(names) if name in todo]


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = pick_device(args.device)
    localiser = import_network('network.deeplab_SEAM', width=args.width)
    load_trained_weights(localiser, args.weights)
    segmenter = DeepLabv3_plus(4, 1, 16, width=args.edge_width)
    load_trained_weights(segmenter, args.edge_weights)
    localiser, segmenter = localiser.eval().to(device), segmenter.eval().to(device)
    if args.gt_dir:
        require_dir(args.gt_dir, '--gt_dir')
    for flag in ('label_dir', 'out_cam'):
        if getattr(args, flag):
            check_output_dir(getattr(args, flag), '--' + flag)
    dataset = voc12.data.VOC12ClsDataset(args.infer_list, args.voc12_root, transform=normalize_image,
                                         cls_labels=args.cls_labels)
    if not args.gt_dir:
        dataset = torch.utils.data.Subset(dataset, pending_indices(args, dataset.img_name_list))
    loader = torch.utils.data.DataLoader(dataset, shuffle=False, num_workers=args.num_workers)
    confusion = np.zeros((ITERATIONS, len(CATEGORIES), len(CATEGORIES)), np.int64)
    with torch.no_grad():
        for (name,), img, label in tqdm(loader, dynamic_ncols=True):
            scores = resegment(localiser, segmenter, img.to(device), label[0], args.dice_on)
            preds = [s.numpy().argmax(0).astype(np.uint8) for s in scores]
            if args.gt_dir:
                gt_path = os.path.join(args.gt_dir, name + '.png')
                gt = load_label_png(gt_path)
                for k, pred in enumerate(preds):
                    confusion[k] += label_confusion(gt, pred, len(CATEGORIES), gt_path)
            if args.label_dir:
                atomic_save_png(os.path.join(args.label_dir, name + '.png'), preds[args.iterations - 1])
            if args.out_cam:
                chosen = scores[args.iterations - 1]
                maps = chosen if args.dice_on == 'sigmoid' else torch.sigmoid(chosen)
                present = torch.nonzero(label[0] > 0.5).flatten().tolist()
                atomic_save_npy(os.path.join(args.out_cam, name + '.npy'),
                                {c: maps[c + 1].numpy().astype(np.float32) for c in present})
    if not args.gt_dir:
        return None
    results = [scores_from_confusion(conf) for conf in confusion]
    for scores in results:
        print_scores(scores)
    weight_name = os.path.basename(args.edge_weights)
    for k, scores in enumerate(results, start=1):
        comment = f'out{k}_{weight_name}'
        print('mIoU: %.3f%%\t %s' % (scores['miou'] * 100, comment))
        append_logs(args, scores, comment)
    return [s['miou'] for s in results]


if __name__ == '__main__':
    run_main(main)
