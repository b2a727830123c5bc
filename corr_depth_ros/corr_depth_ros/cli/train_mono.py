"""`corr_depth train mono`: self-supervised monocular depth (Godard et al., CVPR 2017)."""
import os
import shlex
import sys

from ..core.mono import BASELINE_RANGE_M
from ._args import in_range, multiple_of_32, non_negative_int, positive_float, positive_int


def register(subparsers):
    parser = subparsers.add_parser(
        'mono', help='self-supervised monocular depth from rectified pairs (no depth labels)',
        description='Train the monocular network on rectified stereo pairs with the '
                    'appearance + smoothness + left-right consistency loss. Only images are '
                    'used; synthetic pairs are rendered with one fixed rig (stored in the '
                    'weights metadata) so that metric depth has a baseline.')
    parser.add_argument('--data', default='synthetic',
                        help='"synthetic" (rendered and cached), "folder:PATH" (your own '
                             'rectified pairs, RectifiedPairFolder layout) or "bag:PATH" (a '
                             'rosbag2 MCAP recording of your rig: its pairs are extracted to '
                             'OUT_DIR/bag_pairs and its baseline read from the camera_info)')
    parser.add_argument('--bag-namespace', default='',
                        help='bag:PATH: the stereo topics\' namespace (<ns>/left/image_rect, ...)')
    parser.add_argument('--baseline-m', type=in_range(float, *BASELINE_RANGE_M), default=0.0,
                        help='folder:PATH or bag:PATH: your rig\'s baseline, metres, stored in '
                             'the weights for metric depth (for a bag it overrides the one its '
                             'camera_info gives; 0: a folder stores none, and the node then '
                             'needs baseline_m or relative depth). Synthetic pairs have their '
                             'own rig.')
    parser.add_argument('--out-dir', default='',
                        help='log.jsonl + checkpoint.pt (default runs/mono/lr, with --no-lr '
                             'runs/mono/nolr); rerunning resumes a run of the same options')
    parser.add_argument('--weights-out', default='',
                        help='safetensors file to write (default OUT_DIR/mono.safetensors)')
    parser.add_argument('--no-lr', action='store_true',
                        help='drop the left-right consistency term (the ablation)')
    parser.add_argument('--height', type=multiple_of_32, default=128,
                        help='training height, px (x32)')
    parser.add_argument('--width', type=multiple_of_32, default=192,
                        help='training width, px (x32)')
    parser.add_argument('--base-channels', type=int, default=16)
    parser.add_argument('--max-disparity-fraction', type=float, default=0.35)
    parser.add_argument('--train-count', type=positive_int, default=2400,
                        help='synthetic pairs to render (cached)')
    parser.add_argument('--cache-dir', default='', help='synthetic training cache directory')
    parser.add_argument('--val-cache-dir', default='',
                        help='validation cache with depth, rendered on first use from seeds of '
                             'its own (apart from training and from `eval mono`); default with '
                             '--select best on synthetic data: OUT_DIR/val_cache_HxW_N (on '
                             'your own --data, only a cache named here validates)')
    parser.add_argument('--val-images', type=non_negative_int, default=50,
                        help='validation images (0: no validation; the last step is written)')
    parser.add_argument('--select', choices=('best', 'last'), default='best',
                        help='weights to write: the step with the best validation AbsRel '
                             '(kept in OUT_DIR/best.safetensors) or the last step')
    parser.add_argument('--depth-hints', action='store_true',
                        help='add Depth Hints (Watson et al. 2019): SGBM disparities of each '
                             'training pair pull the prediction where they rebuild the view '
                             'better (no depth labels)')
    parser.add_argument('--smoothness-weight', type=float, default=0.1, help='a_ds')
    parser.add_argument('--lr-weight', type=float, default=1.0, help='a_lr')
    parser.add_argument('--float32', action='store_true',
                        help='store float32 tensors (default: float16, half the file size)')
    parser.add_argument('--steps', type=positive_int, default=3000)
    parser.add_argument('--batch-size', type=positive_int, default=8)
    parser.add_argument('--lr', type=positive_float, default=5e-4, help='learning rate')
    parser.add_argument('--warmup-steps', type=int, default=100)
    parser.add_argument('--val-every', type=positive_int, default=250)
    parser.add_argument('--checkpoint-every', type=positive_int, default=50)
    parser.add_argument('--num-workers', type=int, default=0)
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--seed', type=int, default=0)
    parser.set_defaults(func=run)


# 2: pairs whose images are not their camera_info's size are left out (version 1 wrote them).
EXTRACTION_VERSION = 2


def _check_earlier_extraction(folder: str) -> None:
    """FileExistsError if an extraction by an earlier version holds a pair whose left and
    right images differ in size (training failed on it part-way); read from the PNG headers."""
    import os

    def size(path):
        with open(path, 'rb') as f:
            head = f.read(24)       # signature, IHDR length and type, width, height
        return head[16:24]
    left = os.path.join(folder, 'left')
    for name in sorted(os.listdir(left)) if os.path.isdir(left) else []:
        right = os.path.join(folder, 'right', name)
        if os.path.isfile(right) and size(os.path.join(folder, 'left', name)) != size(right):
            raise FileExistsError(
                f'train mono: {folder} was extracted by an earlier version, which kept pairs '
                f'whose images differ in size ({name}); delete it (and the run\'s '
                'checkpoint.pt) to extract the bag again')


def _pairs_from_bag(bag_path: str, namespace: str, out_dir: str) -> dict:
    """The bag's rectified pairs as OUT_DIR/bag_pairs (extracted once; a resumed run reuses
    them) and where they came from, with the rig's baseline from the camera_info."""
    import json
    import os

    from ..bag import extract_stereo_pairs, normal_namespace
    folder = os.path.join(out_dir, 'bag_pairs')
    record = os.path.join(folder, 'source.json')
    if os.path.isfile(record):
        with open(record, encoding='utf-8') as f:
            source = json.load(f)
        # One bag and namespace however they are spelled ('cam', '/cam/'; a link to the bag).
        if (os.path.realpath(source['bag']), normal_namespace(source['namespace'])) != \
                (os.path.realpath(bag_path), normal_namespace(namespace)):
            raise FileExistsError(f'train mono: {folder} holds pairs of {source["bag"]} '
                                  f'(namespace {source["namespace"]!r}); give another --out-dir')
        if source.get('extraction', 1) < EXTRACTION_VERSION:
            _check_earlier_extraction(folder)
        print(f'train mono: reusing the {source["pairs"]} pairs extracted to {folder}')
        return source
    if os.path.isdir(folder):
        # No source.json: an extraction that did not finish (killed). Its pairs may be of
        # another bag; this folder is ours (OUT_DIR/bag_pairs), so it starts afresh.
        import shutil
        print(f'train mono: removing the unfinished extraction in {folder}')
        shutil.rmtree(folder)
    source = {'bag': os.path.abspath(bag_path), 'namespace': namespace, 'folder': folder,
              'extraction': EXTRACTION_VERSION,
              **extract_stereo_pairs(bag_path, folder, namespace=namespace)}
    with open(record, 'w', encoding='utf-8') as f:   # written last: marks a complete extraction
        json.dump(source, f, indent=2)
    print(f'train mono: {source["pairs"]} pairs from {source["bag"]}, rig baseline '
          f'{source["baseline_m"]:.4f} m (from its camera_info)'
          + (f'; right images resampled by the principal-point offset '
             f'{source["doffs_px_removed"]:.2f} px' if source.get('doffs_px_removed') else ''))
    return source


def run(args) -> int:
    import dataclasses

    from ..core.mono.train import MonoTrainSpec, run_signature, train_mono
    from ..core.training import TrainConfig, main_process_first, resume_state
    args.out_dir = args.out_dir or ('runs/mono/nolr' if args.no_lr else 'runs/mono/lr')
    data, baseline_m, source = args.data, args.baseline_m, None
    if data == 'synthetic' and baseline_m:
        print('train mono: --baseline-m is for your own pairs (folder:PATH or bag:PATH); '
              'synthetic pairs are rendered with their own rig, whose baseline is stored',
              file=sys.stderr)
        return 2
    bag = data.split(':', 1)[1] if data.startswith('bag:') else ''
    if bag:     # its pairs go to OUT_DIR/bag_pairs (_pairs_from_bag), read as a folder
        data = f'folder:{os.path.join(args.out_dir, "bag_pairs")}'
    val_cache_dir = args.val_cache_dir if args.val_images > 0 else ''
    if not val_cache_dir and args.select == 'best' and args.val_images > 0 \
            and args.data == 'synthetic':
        # "best" needs validation: without a cache named, render one beside the run. Only for
        # synthetic training: a run on a rig's own recordings is not judged on synthetic
        # scenes it never saw (name a --val-cache-dir to do that deliberately).
        val_cache_dir = os.path.join(
            args.out_dir, f'val_cache_{args.height}x{args.width}_{args.val_images}')
    if args.select == 'best' and not val_cache_dir:
        why = ('--val-images 0' if args.val_images == 0 else
               'training on your own data; --val-cache-dir names a validation cache')
        print(f'train mono: no validation ({why}), so the last step is written')
    spec = MonoTrainSpec(
        data=data, rig_baseline_m=baseline_m, data_source=source, height=args.height,
        width=args.width, base_channels=args.base_channels,
        max_disparity_fraction=args.max_disparity_fraction, use_lr=not args.no_lr,
        train_count=args.train_count, cache_dir=args.cache_dir, val_cache_dir=val_cache_dir,
        val_images=args.val_images, select=args.select, weights_out=args.weights_out,
        depth_hints=args.depth_hints,
        half=not args.float32,
        # `corr_depth ...` and `python -m corr_depth_ros.cli ...` take the same arguments.
        command='corr_depth ' + ' '.join(shlex.quote(a) for a in sys.argv[1:]),
        loss={'smoothness': args.smoothness_weight, 'left_right': args.lr_weight})
    cfg = TrainConfig(out_dir=args.out_dir, steps=args.steps, batch_size=args.batch_size,
                      lr=args.lr, warmup_steps=args.warmup_steps, val_every=args.val_every,
                      checkpoint_every=args.checkpoint_every, num_workers=args.num_workers,
                      seed=args.seed, device=args.device, threads=args.threads)
    if bag:
        # A run of other options in the folder is refused before the bag is extracted into it
        # (that took the extraction's time and wrote into the other run's folder).
        resume_state(cfg, run_signature(spec))
        with main_process_first(args.device):   # one torchrun rank extracts, the others reuse
            source = _pairs_from_bag(bag, args.bag_namespace, args.out_dir)
        spec = dataclasses.replace(spec, data_source=source,   # data: the folder above
                                   rig_baseline_m=baseline_m or float(source['baseline_m']))
    train_mono(spec, cfg)
    return 0
