"""`corr_depth train stereo`: train the learned stereo network on on-the-fly synthetic pairs."""
import shlex
import sys

from ._args import in_range, non_negative_float, positive_float, positive_int, size_hw


def register(subparsers):
    p = subparsers.add_parser('stereo', help='learned stereo (GwcNet-style, CPU-sized)')
    p.add_argument('--out', default='runs/stereo', help='output folder (log, checkpoint, weights)')
    p.add_argument('--steps', type=positive_int, default=4000)
    p.add_argument('--batch-size', type=positive_int, default=4)
    p.add_argument('--size', type=size_hw, default='256x192', help='training image size, WIDTHxHEIGHT')
    p.add_argument('--lr', type=positive_float, default=1e-3)
    p.add_argument('--weight-decay', type=non_negative_float, default=1e-4)
    p.add_argument('--warmup-steps', type=int, default=100)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    p.add_argument('--num-workers', type=int, default=1, help='data loader processes (rendering)')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--log-every', type=positive_int, default=20)
    p.add_argument('--val-every', type=positive_int, default=200)
    p.add_argument('--val-count', type=positive_int, default=16, help='held-out synthetic pairs')
    p.add_argument('--checkpoint-every', type=positive_int, default=100)
    p.add_argument('--resume', action='store_true', help='continue from OUT/checkpoint.pt')
    p.add_argument('--no-augment', action='store_true')
    p.add_argument('--scale-aug', type=in_range(float, 0.0, 1.0), default=0.0, metavar='PROB',
                   help='resize this share of the training pairs by a random factor '
                        '(--scale-aug-min to --scale-aug-max, log-uniform) and crop them to '
                        '--size (default 0: off). Above 1: larger objects and disparities than '
                        'the renderer makes; below 1 needs a --data pool larger than --size')
    p.add_argument('--scale-aug-min', type=in_range(float, 0.25, 1.0), default=1.0,
                   help='smallest factor of --scale-aug')
    p.add_argument('--scale-aug-max', type=in_range(float, 1.0, 4.0), default=1.6,
                   help='largest factor of --scale-aug')
    p.add_argument('--edge-weight', type=in_range(float, 1.0, 100.0), default=1.0,
                   metavar='W', help='weigh pixels within 3 px of a depth edge W times in the '
                                     'loss (1: all pixels alike)')
    p.add_argument('--data', default='', metavar='DIR',
                   help='train on a pool written by `corr_depth synth stereo` (at least '
                        '--size: larger pairs are cropped) instead of rendering on the fly')
    p.add_argument('--max-disparity', type=int, default=192, help='search range, pixels')
    p.add_argument('--feature-channels', type=int, default=48)
    p.add_argument('--groups', type=int, default=8)
    p.add_argument('--aggregation-channels', default='32,48,64')
    p.add_argument('--refine-from', default='', metavar='WEIGHTS',
                   help='train only a 1/4-resolution local refiner on top of these (frozen) '
                        'weights; the network options above are then taken from the file')
    p.add_argument('--refine-channels', type=int, default=16,
                   help='--refine-from: width of the refiner')
    p.add_argument('--refine-radius', type=int, default=2,
                   help='--refine-from: search of the refiner, quarter-resolution pixels each '
                        'side (2: +-8 px at full resolution)')
    p.add_argument('--init-from', default='', metavar='WEIGHTS',
                   help='start from these weights (their network; every parameter trains), '
                        'e.g. to fine-tune a base and its refiner together')
    p.add_argument('--ship', default='', metavar='PATH',
                   help='after training, write OUT/best.safetensors to PATH as shipped weights '
                        '(BatchNorm re-estimated, regression radius chosen on validation)')
    p.add_argument('--recalibrate-batches', type=int, default=32,
                   help='--ship: batches used to re-estimate BatchNorm statistics (0: keep)')
    p.set_defaults(func=run, option_defaults={
        dest: p.get_default(dest)
        for dest in (*NETWORK_OPTIONS, *(d for dests in OPTION_SCOPE.values() for d in dests))})


# Options that take effect only with another: {what they need: (dests, when it is given)}. One
# set away from its default without it is refused rather than silently ignored.
OPTION_SCOPE = {
    'augmentation (no --no-augment)': ('scale_aug', 'scale_aug_min', 'scale_aug_max'),
    '--scale-aug above 0': ('scale_aug_min', 'scale_aug_max'),
    '--refine-from': ('refine_channels', 'refine_radius'),
    '--ship': ('recalibrate_batches',),
}
# Taken from the weights' own architecture with --refine-from or --init-from.
NETWORK_OPTIONS = ('max_disparity', 'feature_channels', 'groups', 'aggregation_channels')


def options_out_of_scope(args) -> list:
    """'--name applies to ...' for each option set (away from its default) where it has no
    effect."""
    given = {'augmentation (no --no-augment)': not args.no_augment,
             # With --no-augment the line above names them already.
             '--scale-aug above 0': args.scale_aug > 0 or args.no_augment,
             '--refine-from': bool(args.refine_from), '--ship': bool(args.ship)}
    problems = [f'--{dest.replace("_", "-")} applies to {needs} only'
                for needs, dests in OPTION_SCOPE.items() if not given[needs]
                for dest in dests if getattr(args, dest) != args.option_defaults[dest]]
    source = '--refine-from' if args.refine_from else '--init-from' if args.init_from else ''
    if source:
        problems += [f'--{dest.replace("_", "-")} is taken from the {source} weights'
                     for dest in NETWORK_OPTIONS
                     if getattr(args, dest) != args.option_defaults[dest]]
    return problems


def run(args) -> int:
    problems = options_out_of_scope(args)
    if problems:
        print('train stereo: ' + '; '.join(problems), file=sys.stderr)
        return 2
    from ..core.stereo_net.train import AugmentConfig, train_stereo_net
    from ..core.training import TrainConfig, is_main_process
    height, width = args.size
    cfg = TrainConfig(out_dir=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                      log_every=args.log_every, val_every=args.val_every,
                      checkpoint_every=args.checkpoint_every, num_workers=args.num_workers,
                      seed=args.seed, device=args.device, threads=args.threads,
                      resume=args.resume)
    net_config = {'max_disparity_px': args.max_disparity, 'feature_channels': args.feature_channels,
                  'groups': args.groups,
                  'aggregation_channels': [int(c) for c in args.aggregation_channels.split(',')]}
    command = 'corr_depth ' + ' '.join(shlex.quote(a) for a in sys.argv[1:])
    result = train_stereo_net(cfg, height=height, width=width, net_config=net_config,
                              val_count=args.val_count,
                              augment=None if args.no_augment else AugmentConfig(
                                  scale_prob=args.scale_aug,
                                  scale_range=(args.scale_aug_min, args.scale_aug_max)),
                              data_dir=args.data, command=command,
                              refine_from=args.refine_from,
                              refine_channels=args.refine_channels,
                              refine_radius=args.refine_radius,
                              init_from=args.init_from, edge_weight=args.edge_weight)
    if is_main_process():        # the other torchrun ranks have no validation to report
        print({k: v for k, v in result.items()})
    if args.ship and is_main_process():
        import os
        from ..core.stereo_net.train import ship_weights
        header = ship_weights(os.path.join(args.out, 'best.safetensors'), args.ship,
                              height=height, width=width,
                              recalibrate_batches=args.recalibrate_batches,
                              val_count=args.val_count, command=command)
        print(f'shipped {args.ship}: validation {header["metadata"]["validation"]}')
    return 0
