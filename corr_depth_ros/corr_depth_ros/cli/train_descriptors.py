"""`corr_depth train descriptors`: Dense Object Nets descriptors on synthetic pairs."""
from ._args import (in_range, non_negative_float, non_negative_int, positive_float,
                    positive_int, size_hw)


def register(subparsers):
    p = subparsers.add_parser('descriptors', help='dense object descriptors (Dense Object Nets)')
    p.add_argument('--out', default='runs/descriptors', help='run folder (log, checkpoint, weights)')
    p.add_argument('--steps', type=positive_int, default=3000)
    p.add_argument('--batch-size', type=positive_int, default=6)
    p.add_argument('--lr', type=positive_float, default=2e-3)
    p.add_argument('--weight-decay', type=non_negative_float, default=1e-4)
    p.add_argument('--warmup-steps', type=non_negative_int, default=100)
    p.add_argument('--val-every', type=positive_int, default=200)
    p.add_argument('--checkpoint-every', type=positive_int, default=50)
    # Run s renders training seeds s * 1e7 onwards, below the held-out seeds (1e9): s < 100.
    p.add_argument('--seed', type=in_range(int, 0, 99), default=0)
    p.add_argument('--device', default='auto')
    p.add_argument('--threads', type=non_negative_int, default=1,
                   help='torch CPU threads (0: torch default)')
    p.add_argument('--no-resume', action='store_true')
    p.add_argument('--size', type=size_hw, default='256x192', help='training image size WIDTHxHEIGHT')
    p.add_argument('--descriptor-dim', type=positive_int, default=16)
    p.add_argument('--base-channels', type=positive_int, default=16)
    p.add_argument('--no-normalize', action='store_true', help='do not unit-normalise descriptors')
    p.add_argument('--margin', type=positive_float, default=1.0,
                   help='non-match margin M (descriptor units)')
    p.add_argument('--num-matches', type=positive_int, default=2048,
                   help='matches sampled per pair')
    p.add_argument('--global-non-matches', type=non_negative_int, default=0, metavar='K',
                   help='per match, also the K pixels of the whole second image closest in '
                        'descriptor space (mined hard negatives; 0: off)')
    p.add_argument('--global-matches', type=positive_int, default=256,
                   help='--global-non-matches: how many of the sampled matches get the search')
    p.add_argument('--edge-match-weight', type=in_range(float, 0.01, 1000.0), default=1.0,
                   metavar='W',
                   help='draw matches within 3 px of a correspondence edge (a depth edge seen '
                        'from both views, or an occlusion border) W times as often (1: off)')
    p.add_argument('--init-from', default='', metavar='WEIGHTS',
                   help='start from these descriptor weights (their network; all parameters '
                        'train), e.g. to fine-tune the shipped net with another loss')
    p.add_argument('--stereo-fraction', type=in_range(float, 0.0, 1.0), default=0.3,
                   help='share of rectified stereo pairs (rest: multiview pairs)')
    p.add_argument('--background-prob', type=in_range(float, 0.0, 1.0), default=0.2,
                   help='probability of DON background randomisation per pair')
    p.add_argument('--pool-size', type=positive_int, default=256,
                   help='rendered pairs kept in memory')
    p.add_argument('--photo-textures', type=in_range(float, 0.0, 1000.0), default=0.0,
                   metavar='WEIGHT',
                   help="add the 'photo' texture family (photographs) at this weight beside "
                        'the procedural ones (their weights sum to 1; 0: off). Validation then '
                        'uses photographs that training never sees')
    p.add_argument('--val-pairs', type=positive_int, default=6,
                   help='held-out pairs validated on (200 points each)')
    p.add_argument('--notes', default='', help='free text stored in the weights metadata')
    p.add_argument('--ship', default='', help='copy the best weights (+ .json) here at the end')
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..core.descriptors import train as train_mod
    from ..core.training import TrainConfig, is_main_process
    args.height, args.width = args.size
    spec = train_mod.spec_from_args(args)
    cfg = TrainConfig(out_dir=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                      log_every=10, val_every=args.val_every,
                      checkpoint_every=args.checkpoint_every, num_workers=0, seed=args.seed,
                      device=args.device, amp=True, threads=args.threads,
                      resume=not args.no_resume)
    summary = train_mod.train_descriptors(spec, cfg, train_mod.command_line(), notes=args.notes)
    if is_main_process():        # the other torchrun ranks have no validation to report
        print(json.dumps({'best': summary['best'], 'wall_s': summary['wall_s']}, indent=2))
    if args.ship and is_main_process():
        import os
        train_mod.copy_weights(os.path.join(args.out, 'best.safetensors'), args.ship)
        print(f'shipped {args.ship}')
    return 0
