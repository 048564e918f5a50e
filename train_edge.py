"""Segmentation from localization: train the COCO localiser (network.refer_SEAM, SEAM with K classes) and the
class-agnostic segmenter (network.edge_SEAM.DeepLabv3_plus) jointly on COCO pixel masks.

    python train_edge.py --cocoRoot COCO --dataType train2017 --batch_size 2 --edge_batch_size 4 \
        --max_epoches 6 --lr 0.001 --edge_lr 1e-4 --num_workers 8 --wt_dec 5e-4 --crop_size 448 \
        --categories ./coco_categories --weights REFER.pth --session_name toEdge --out_root edge_out

Per batch: one SEAM step of the localiser (second branch at scale 0.5, tool/sfl.localiser_loss, PolyOptimizer);
every present (image, class) pair goes into a buffer of --edge_batch_size; each full buffer is one Adam step of
the segmenter on Dice(O, G) + Dice(O_rv, G) + Dice(O, O_rv). Writes under <out_root>/<session_name>/<ret_root>/
<session_name>_refer_%06d.pth / _edge_%06d.pth every --save_interval steps of each, and the final
<session_name>_refer.pth / _edge.pth; <session_name>.ckpt.pth after every epoch for --resume; the log at
<out_root>/<session_name>/<session_name>.log and TensorBoard under <ret_root>/<tblog_dir>.

Uses COCO's pixel masks: external pixel-level supervision, not image-level only.
"""
import argparse
import os

import torch
from torch.utils.data import DataLoader

from network.edge_SEAM import TORCHVISION_RESNET101, DeepLabv3_plus
from network.refer_SEAM import Net as ReferNet
from tool import sfl
from tool.cli import add_network_args, pick_device, positive_int, run_main
from tool.coco import COCOSegDataset, read_categories
from tool.equivariance import downscale
from tool.io import UserError, atomic_torch_save
from tool.torchutils import PolyOptimizer, parameter_groups
from tool.train_loop import TrainLog, rng_state, seed_worker, set_rng_state, read_checkpoint, seed_run
from tool.weights import load_initial_weights, load_trained_weights

LOGGED = ('loss', 'loss_cls', 'loss_er', 'loss_ecr')
EDGE_LOGGED = ('edge_loss1', 'edge_loss_rv', 'edge_loss_ds', 'edge_loss')


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cocoRoot', required=True, help='COCO root: annotations_trainval2017/annotations/, <dataType>/')
    parser.add_argument('--dataType', default='train2017')
    parser.add_argument('--batch_size', default=2, type=positive_int)
    parser.add_argument('--edge_batch_size', default=4, type=positive_int)
    parser.add_argument('--max_epoches', default=8, type=int)
    parser.add_argument('--lr', default=0.001, type=float)
    parser.add_argument('--edge_lr', default=0.001, type=float)
    parser.add_argument('--num_workers', default=8, type=int)
    parser.add_argument('--wt_dec', default=2.5e-4, type=float)
    parser.add_argument('--crop_size', default=448, type=positive_int)
    parser.add_argument('--categories', default='./coco_categories', help='COCO category names, one a line')
    parser.add_argument('--weights', default=None,
                        help='localiser start: a K-class _refer.pth, or ImageNet resnet38 .params (default: random)')
    parser.add_argument('--edge_weights', default=None, help='segmenter start: a _edge.pth (strict)')
    parser.add_argument('--edge_width', default=1.0, type=float,
                        help="the segmenter's channel width multiplier (1 = the original DeepLabv3+; the demo's is narrow)")
    parser.add_argument('--resnet101', default=TORCHVISION_RESNET101,
                        help="torchvision's ImageNet resnet101-5d3b4d8f.pth for the segmenter's backbone when there "
                             "are no --edge_weights ('' : random init)")
    parser.add_argument('--session_name', default='toedge20220304')
    parser.add_argument('--tblog_dir', default='./train_in_coco')
    parser.add_argument('--ret_root', default='./train_ret')
    parser.add_argument('--out_root', default='./edge_out')
    parser.add_argument('--dice_on', choices=['logits', 'sigmoid'], default='logits',
                        help='Dice on the raw logits (the original; unbounded) or on their sigmoid (the fix)')
    parser.add_argument('--fix_scale_bug', action='store_true',
                        help='draw the resize-crop scale from U(0.7, 1.3) (the original always uses 1.3)')
    parser.add_argument('--save_interval', default=5000, type=positive_int, help='steps between weight snapshots')
    parser.add_argument('--log_interval', default=100, type=positive_int)
    parser.add_argument('--seed', type=int, default=None)
    parser.add_argument('--resume', default=None, help='<session_name>.ckpt.pth to continue from')
    parser.add_argument('--device', default=None)
    add_network_args(parser, training=True)
    return parser


def build_segmenter(args):
    if args.edge_weights:
        net = DeepLabv3_plus(4, 1, 16, width=args.edge_width)
        load_trained_weights(net, args.edge_weights)
        return net
    return DeepLabv3_plus(4, 1, 16, pretrained=args.resnet101 or False, width=args.edge_width)


def localiser_step(model, optimizer, img, label):
    cam1, cam_rv1 = model(img)
    cam2, cam_rv2 = model(downscale(img, sfl.LOCALISER_SCALE, align_corners=True))
    terms, refer_map, refer_rv_map = sfl.localiser_loss(cam1, cam_rv1, cam2, cam_rv2, label)
    optimizer.zero_grad(set_to_none=True)
    terms['loss'].backward()
    optimizer.step()
    return terms, refer_map, refer_rv_map


def segmenter_step(model, optimizer, batch, dice_on):
    img, refer, refer_rv, seg = batch
    terms = sfl.segmenter_loss(model(img, refer), model(img, refer_rv), seg, dice_on)
    optimizer.zero_grad(set_to_none=True)
    terms['edge_loss'].backward()
    optimizer.step()
    return terms


class Session:
    """Paths of one run: <out_root>/<session_name>/ for the log, <ret_root>/ below it for weights and TensorBoard."""

    def __init__(self, args):
        self.dir = os.path.join(args.out_root, args.session_name)
        self.ret = os.path.join(self.dir, args.ret_root)
        os.makedirs(self.ret, exist_ok=True)
        self.name = args.session_name
        self.tblog = os.path.join(self.ret, args.tblog_dir)

    def weights(self, which, step=None):
        suffix = '' if step is None else '_%06d' % step
        return os.path.join(self.ret, f'{self.name}_{which}{suffix}.pth')

    @property
    def checkpoint(self):
        return os.path.join(self.ret, self.name + '.ckpt.pth')


def save_state(path, refer, edge, ref_opt, edge_opt, buffer, epoch, edge_iter, seed):
    atomic_torch_save(path, {'model': refer.state_dict(), 'optimizer': ref_opt.state_dict(), 'edge_model':
                             edge.state_dict(), 'edge_optimizer': edge_opt.state_dict(), 'epoch': epoch,
                             'seed': seed, 'rng': rng_state(), 'edge_iter': edge_iter,
                             'buffer': {'img': buffer.img, 'refer': buffer.refer, 'refer_rv': buffer.refer_rv,
                                        'seg': buffer.seg, 'count': buffer.count}})


def resume_state(path, refer, edge, ref_opt, edge_opt, buffer):
    ckpt = read_checkpoint(path)
    if 'edge_model' not in ckpt:
        raise UserError(f'{path} is not a train_edge checkpoint (expected <session_name>.ckpt.pth of train_edge.py)')
    refer.load_state_dict(ckpt['model'])
    edge.load_state_dict(ckpt['edge_model'])
    ref_opt.load_state_dict(ckpt['optimizer'])
    edge_opt.load_state_dict(ckpt['edge_optimizer'])
    for key in ('img', 'refer', 'refer_rv', 'seg'):
        getattr(buffer, key).copy_(ckpt['buffer'][key])
    buffer.count = ckpt['buffer']['count']
    set_rng_state(ckpt['rng'])
    return ckpt['epoch'], ckpt['edge_iter'], ckpt['seed']


def train(args):
    categories = read_categories(args.categories)
    dataset = COCOSegDataset(args.cocoRoot, args.dataType, categories, crop_size=args.crop_size, augment=True,
                             fix_scale_bug=args.fix_scale_bug)
    if len(dataset) < args.batch_size:
        raise UserError(f'--cocoRoot: {len(dataset)} images hold the categories, fewer than --batch_size {args.batch_size}')
    session = Session(args)
    device = pick_device(args.device)
    seed_run(args)
    refer = ReferNet(dataset.num_classes, **({'width': args.width} if args.width != 1 else {}),
                     **({'scratch': True} if args.scratch else {}))
    load_initial_weights(refer, args.weights)
    edge = build_segmenter(args)
    refer, edge = refer.to(device), edge.to(device)
    max_step = len(dataset) // args.batch_size * args.max_epoches
    ref_opt = PolyOptimizer(parameter_groups(refer, args.lr, args.wt_dec), lr=args.lr, weight_decay=args.wt_dec,
                            max_step=max_step)
    edge_opt = torch.optim.Adam(edge.parameters(), lr=args.edge_lr)
    buffer = sfl.SegmenterBuffer(args.edge_batch_size, (args.crop_size, args.crop_size), device)
    start_epoch, edge_iter = 0, 0
    if args.resume:
        start_epoch, edge_iter, args.seed = resume_state(args.resume, refer, edge, ref_opt, edge_opt, buffer)
    else:
        seed_run(args)
    log = TrainLog(os.path.join(session.dir, session.name), session.tblog)
    try:
        print(vars(args))
        print(f'{len(dataset)} images, {dataset.num_classes} classes (person + {categories})')
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers,
                            drop_last=True, worker_init_fn=seed_worker, pin_memory=device.type == 'cuda')
        refer.train()
        edge.train()
        for epoch in range(start_epoch, args.max_epoches):
            for img, label, seg in loader:
                img, label, seg = img.to(device), label.to(device), seg.to(device)
                terms, refer_map, refer_rv_map = localiser_step(refer, ref_opt, img, label)
                step = ref_opt.global_step
                if step % args.log_interval == 0 or step == 1:
                    print(f'Refer Iter:{step:5d}/{max_step:5d} ' + ' '.join(f'{k}:{terms[k].item():.4f}' for k in LOGGED)
                          + f' lr:{ref_opt.param_groups[0]["lr"]:.6f}', flush=True)
                    log.scalars({f'loss/{k}': terms[k].item() for k in LOGGED}, step)
                if step % args.save_interval == 0:
                    atomic_torch_save(session.weights('refer', step), refer.state_dict())
                for batch in sfl.fill_buffer(buffer, img, refer_map, refer_rv_map, seg, label):
                    edge_terms = segmenter_step(edge, edge_opt, batch, args.dice_on)
                    edge_iter += 1
                    if edge_iter % args.log_interval == 0 or edge_iter == 1:
                        print(f'Edge Iter:{edge_iter:5d} ' + ' '.join(f'{k}:{edge_terms[k].item():.4f}'
                                                                     for k in EDGE_LOGGED), flush=True)
                        log.scalars({f'edge_loss/{k}': edge_terms[k].item() for k in EDGE_LOGGED}, edge_iter)
                    if edge_iter % args.save_interval == 0:
                        atomic_torch_save(session.weights('edge', edge_iter), edge.state_dict())
            save_state(session.checkpoint, refer, edge, ref_opt, edge_opt, buffer, epoch + 1, edge_iter, args.seed)
        atomic_torch_save(session.weights('refer'), refer.state_dict())
        atomic_torch_save(session.weights('edge'), edge.state_dict())
        print(f'saved {session.weights("refer")} and {session.weights("edge")} '
              f'({ref_opt.global_step} localiser, {edge_iter} segmenter steps)')
    finally:
        log.close()


def main(argv=None):
    train(build_parser().parse_args(argv))


if __name__ == '__main__':
    run_main(main)
