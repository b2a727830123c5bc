"""``corr_depth synth {stereo,multiview}``: write a synthetic dataset and its contact sheet.

Example::

    corr_depth synth stereo --out datasets/synth_stereo --count 1000 --size 320x240 --seed 0
    corr_depth synth multiview --out datasets/synth_mv --count 500 --workers 2

Heavy imports (torch, cv2) happen inside :func:`run` so that ``corr_depth --help`` stays fast.
"""
from ._args import non_negative_float, non_negative_int, positive_int, size_hw

KINDS = ('stereo', 'multiview')


def register(subparsers) -> None:
    """Add the ``synth`` command (sub-commands ``stereo`` and ``multiview``)."""
    parser = subparsers.add_parser(
        'synth', help='write a procedural synthetic dataset (stereo or two-view)',
        description='Render random cluttered scenes with exact ground truth and write them '
                    'to disk (format: core/synth/FORMAT.md), plus contact_sheet.png.')
    kinds = parser.add_subparsers(dest='synth_kind', metavar='KIND', required=True)
    for kind, help_text in (
            ('stereo', 'rectified pairs with disparity, depth, occlusion and instance GT'),
            ('multiview', 'two posed views with depth, correspondences and visibility GT')):
        sub = kinds.add_parser(kind, help=help_text, description=help_text)
        sub.add_argument('--out', required=True, help='output directory')
        sub.add_argument('--count', type=positive_int, default=100,
                         help='number of samples (default: 100)')
        sub.add_argument('--size', type=size_hw, default=(240, 320), metavar='WxH',
                         help='image size WIDTHxHEIGHT (default: 320x240)')
        sub.add_argument('--seed', type=non_negative_int, default=0,
                         help='dataset seed; sample i uses seed*1000003+i (default: 0)')
        sub.add_argument('--workers', type=non_negative_int, default=0,
                         help='render processes; 0 renders in this process (default: 0)')
        sub.add_argument('--device', default='cpu', help="torch device, e.g. 'cuda' (default: cpu)")
        sub.add_argument('--layout', default=None,
                         choices=('tabletop', 'chaotic', 'fronto_plane'),
                         help='force one scene layout (default: random per sample)')
        sub.add_argument('--clean', action='store_true',
                         help='no photometric nuisances (asymmetry, specular, noise, blur, JPEG)')
        sub.add_argument('--photo-textures', type=non_negative_float, default=0.0,
                         metavar='WEIGHT',
                         help="add the 'photo' texture family (scikit-image's photographs) at "
                              'this weight; the procedural weights sum to 1 (default: 0, off)')
        sub.add_argument('--photo-set', default='train', choices=('train', 'validation'),
                         help='photographs to draw from (validation: ones training never sees)')
        sub.add_argument('--contact-sheet-rows', type=non_negative_int, default=6,
                         help='samples drawn on contact_sheet.png; 0 for none (default: 6)')
        sub.add_argument('--overwrite', action='store_true',
                         help='write into a directory that already holds a dataset')
        sub.add_argument('--no-progress', action='store_true', help='no progress bar')
        sub.set_defaults(func=run, synth_kind=kind)


def run(args) -> int:
    """Execute a parsed ``synth`` command; returns the process exit code."""
    import sys

    from ..core.synth import SynthConfig, write_dataset
    from . import check_output

    config = SynthConfig()
    if args.photo_set != 'train' and args.photo_textures == 0:
        print('corr_depth synth: error: --photo-set needs --photo-textures WEIGHT > 0',
              file=sys.stderr)
        return 2
    if args.photo_textures > 0:
        config = config.with_photos(args.photo_textures, args.photo_set)
    if args.clean:
        config = config.clean()
    height, width = args.size
    try:
        check_output(args.out, '--out', folder=True)
        root = write_dataset(args.out, args.synth_kind, args.count, height, width, seed=args.seed,
                             config=config, workers=args.workers, device=args.device,
                             layout=args.layout, progress=not args.no_progress,
                             contact_sheet_rows=args.contact_sheet_rows,
                             overwrite=args.overwrite)
    except ValueError as exc:
        print(f'corr_depth synth: error: {exc}', file=sys.stderr)
        return 2
    print(f'wrote {args.count} {args.synth_kind} samples to {root}'
          + (f' (contact sheet: {root / "contact_sheet.png"})' if args.contact_sheet_rows else ''))
    return 0
