"""SBNet's boundary maps <out_dir>/<id>.npy: float32 21 x H x W, channel c = boundary of class c (1 on the
boundary, 0 elsewhere), channel 0 = background; the size of VOC2012/JPEGImages/<id>.jpg.

    # image-level supervision only: from the pipeline's own first-stage pseudo labels
    python make_sb_map.py --voc12_root VOC2012 --label_dir rw              # label PNGs (infer_aff --out_rw)
    python make_sb_map.py --voc12_root VOC2012 --source crf --label_dir crf_4.0   # CRF dicts (argmax)
    # ablation with EXTRA PIXEL-LEVEL SUPERVISION: SBD's semantic-boundary ground truth
    python make_sb_map.py --voc12_root VOC2012 --source sbd --sbd_root benchmark_RELEASE/dataset

--source png / crf: channel c marks the pixels of class c that have a pixel of another label within
--thickness pixels (8-neighbours, so t pixels deep on each side of an interface, each side in its own
class's channel); the image border is no boundary; ignore pixels (255) are in no channel and end the
class region next to them. --source sbd: SBD's GTcls.Boundaries as given (channel 0 = their union).
Finished files are skipped on a rerun (--overwrite redoes them). A 500x375 image takes 15.75 MB
(float32, as the original reads float), i.e. about 167 GB for train_aug.
"""
import argparse
import multiprocessing
import os

from tqdm import tqdm

from tool import sb_map
from tool.cli import run_main, str2bool
from tool.io import UserError, check_output_dir, pending, require_dir, require_files
from voc12.data import VOC12_DIR, get_img_path, load_img_name_list

DEFAULT_THICKNESS = 1


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--voc12_root', required=True, help='VOC2012 folder (JPEGImages/ gives each map its size)')
    parser.add_argument('--list', default=os.path.join(VOC12_DIR, 'train_aug.txt'), help='image ids')
    parser.add_argument('--source', choices=sorted(sb_map.SOURCES), default='png',
                        help='png: pseudo-label PNGs in --label_dir; crf: CRF dicts {0: bg, k+1: class k} in '
                             '--label_dir, labelled by argmax (both image-level supervision only); '
                             'sbd: SBD semantic-boundary ground truth in --sbd_root (EXTRA PIXEL-LEVEL SUPERVISION)')
    parser.add_argument('--label_dir', help='first-stage pseudo labels (--source png / crf)')
    parser.add_argument('--sbd_root', help='SBD dataset folder holding cls/<id>.mat (--source sbd)')
    parser.add_argument('--thickness', type=int, default=None,
                        help=f'boundary depth in pixels on each side of an interface (default {DEFAULT_THICKNESS}; '
                             '--source png / crf only)')
    parser.add_argument('--out_dir', help='output folder (default: <voc12_root>/sb_map, where SBNet reads them)')
    parser.add_argument('--num_workers', type=int, default=4, help='worker processes (0: in this process)')
    parser.add_argument('--overwrite', type=str2bool, default=False)
    return parser


def check_args(args):
    """The input folder of the source (returned) and the thickness, as one-line errors."""
    flag, folder = ('--sbd_root', args.sbd_root) if args.source == 'sbd' else ('--label_dir', args.label_dir)
    if not folder:
        raise UserError(f'--source {args.source} reads {flag}: pass it')
    if args.source == 'sbd' and args.thickness is not None:
        raise UserError('--thickness applies to pseudo labels; SBD boundaries are used as given (drop --thickness)')
    args.thickness = DEFAULT_THICKNESS if args.thickness is None else args.thickness
    if args.thickness < 1:
        raise UserError(f'--thickness {args.thickness}: pass 1 or more')
    if args.num_workers < 0:
        raise UserError(f'--num_workers {args.num_workers}: pass 0 or more')
    require_dir(folder, flag)
    return folder


def main(argv=None):
    args = build_parser().parse_args(argv)
    folder = check_args(args)
    out_dir = check_output_dir(args.out_dir or os.path.join(args.voc12_root, 'sb_map'), '--out_dir')
    names = load_img_name_list(args.list)

    def out_path(name):
        return os.path.join(out_dir, name + '.npy')

    todo = pending(names, lambda n: [out_path(n)], args.overwrite)
    _, what, hint = sb_map.SOURCES[args.source]
    require_files([sb_map.input_path(args.source, folder, n) for n in todo], f'{what} of {args.list}', hint)
    require_files([get_img_path(n, args.voc12_root) for n in todo], f'images of {args.list}',
                  'check --voc12_root and --list')
    print(f'{len(names)} ids, {len(names) - len(todo)} maps already in {out_dir}, writing {len(todo)}')
    jobs = [(name, args.source, folder, args.voc12_root, out_path(name), args.thickness) for name in todo]
    for _ in tqdm(run_jobs(jobs, args.num_workers), total=len(jobs), unit='img', dynamic_ncols=True):
        pass
    print(f'boundary maps ({args.source}) in {out_dir}')


def run_jobs(jobs, num_workers):
    """sb_map.make_one of each job, in worker processes unless num_workers is 0; yields as each one ends."""
    if num_workers == 0 or len(jobs) < 2:
        yield from map(_make_one, jobs)
        return
    with multiprocessing.Pool(min(num_workers, len(jobs))) as pool:
        yield from pool.imap_unordered(_make_one, jobs)


def _make_one(job):
    return sb_map.make_one(*job)


if __name__ == '__main__':
    run_main(main)
