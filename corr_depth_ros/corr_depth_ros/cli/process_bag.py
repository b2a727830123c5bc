"""`corr_depth process-bag IN.mcap OUT.mcap --pipeline stereo|mono|corr ...`"""
import argparse
import sys

from ..core.backends.learned import INPUT_SCALE_RANGE, PROBE_EVERY_RANGE
from ..core.descriptors import MATCH_THRESHOLD_RANGE
from ..core.mono import BASELINE_RANGE_M, POST_PROCESS_DEFAULT
from ..core.stereo_pipeline import (CONFIDENCE_THRESHOLD_RANGE, MAX_DEPTH_RANGE_M,
                                    MAX_DISPARITY_RANGE_PX)
from ._args import in_range


def register(subparsers):
    parser = subparsers.add_parser(
        'process-bag', help='run a pipeline over a rosbag2 MCAP file (no ROS runtime needed)',
        description='Reads IN.mcap, runs the pipeline with the same code as the nodes, writes '
                    'standard ROS 2 messages to OUT.mcap. Topics are the nodes\' names under '
                    '--namespace: stereo reads left|right/image_rect[/compressed] and '
                    'left|right/camera_info; mono and corr read image[/compressed] and '
                    'camera_info.')
    parser.add_argument('input', help='input rosbag2 MCAP: a .mcap file or a bag folder '
                        '(ros2 bag record -s mcap); sqlite3 bags: ros2 bag convert them first')
    parser.add_argument('output', type=_output_path, help='output .mcap file (overwritten)')
    parser.add_argument('--pipeline', default='stereo', choices=('stereo', 'mono', 'corr'))
    parser.add_argument('--namespace', default='', help='input topic namespace, e.g. /stereo')
    parser.add_argument('--output-prefix', default='', help='output namespace (default: --namespace)')
    parser.add_argument('--image-topic', default='',
                        help='mono/corr: the image topic (default: <namespace>/image); its '
                             'camera_info is the one beside it, e.g. /stereo/left/image_rect -> '
                             '/stereo/left/camera_info')
    parser.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'),
                        help='learned models\' device')
    parser.add_argument('--weights', default='', help='mono/corr (and stereo learned): weights '
                        'file, default: the shipped one; stereo onnx: the .onnx model')
    # The ranges of the nodes' parameters of the same names: what a node refuses is refused.
    parser.add_argument('--max-depth-m', type=in_range(float, *MAX_DEPTH_RANGE_M), default=0.0,
                        help='stereo/mono: pixels farther are invalid, in the depth\'s unit '
                             '(metres; relative units with --depth-mode relative; 0: no limit)')
    parser.add_argument('--slop-s', type=in_range(float, 0.0, 1.0), default=0.0,
                        help='stamp tolerance between the inputs, seconds (0, the default: '
                             'exactly equal stamps; the nodes\' slop_s for approximate '
                             'matching, e.g. 0.01 for a camera_info stamped apart from its '
                             'image)')
    stereo = parser.add_argument_group('stereo')
    stereo.add_argument('--backend', default='sgbm', choices=('sgbm', 'learned', 'onnx'))
    # The ranges of the node's max_disparity_px and confidence_threshold parameters.
    stereo.add_argument('--max-disparity-px', type=in_range(int, *MAX_DISPARITY_RANGE_PX),
                        default=0,
                        help='search range, px, as the node\'s max_disparity_px (0: the '
                             'backend\'s own)')
    stereo.add_argument('--confidence-threshold',
                        type=in_range(float, *CONFIDENCE_THRESHOLD_RANGE), default=0.0,
                        help='invalidate pixels whose confidence is below this (0: keep all)')
    stereo.add_argument('--input-scale', type=in_range(float, *INPUT_SCALE_RANGE), default=0.0,
                        help='learned: as the node\'s learned.input_scale (0: auto per pair, '
                             '1: as trained)')
    stereo.add_argument('--probe-every', type=in_range(int, *PROBE_EVERY_RANGE), default=1,
                        help='learned: as the node\'s learned.probe_every (default 1 here: '
                             'every pair probes, so each frame\'s output depends on that '
                             'frame alone; the node uses 5)')
    stereo.add_argument('--no-refine', action='store_true',
                        help='learned: skip the refiner, as the node\'s learned.refine false')
    stereo.add_argument('--sgbm', action='append', default=[], type=_sgbm_item,
                        metavar='KEY=VALUE',
                        help='an sgbm parameter as the node\'s sgbm.* ones, e.g. '
                             'num_disparities=128 or block_size=7 (repeatable)')
    stereo.add_argument('--onnx', action='append', default=[], type=_onnx_item,
                        metavar='KEY=VALUE',
                        help='an onnx parameter as the node\'s onnx.* ones, e.g. '
                             'input_width=640, mean=0.485,0.456,0.406 or '
                             'input_names=img_l,img_r (repeatable)')
    mono = parser.add_argument_group('mono')
    mono.add_argument('--depth-mode', default='metric', choices=('metric', 'relative'))
    mono.add_argument('--baseline-m', type=in_range(float, *BASELINE_RANGE_M), default=0.0,
                      help='training rig baseline for metric depth (0: from the weights)')
    mono.add_argument('--post-process', action=argparse.BooleanOptionalAction,
                      default=POST_PROCESS_DEFAULT,
                      help='mirrored-input averaging (default as the node\'s post_process)')
    corr = parser.add_argument_group('corr')
    corr.add_argument('--reference-image', default='', help='image file the pixels refer to')
    corr.add_argument('--reference-pixels', default='', help='"x,y;x,y" (x = column), pixels')
    corr.add_argument('--depth-topic', default='',
                      help='REP 118 depth topic registered to the image (e.g. /stereo/depth) for '
                           '3D points and grasp poses')
    corr.add_argument('--match-threshold', type=in_range(float, *MATCH_THRESHOLD_RANGE),
                      default=0.6)
    parser.add_argument('--no-progress', action='store_true')
    parser.set_defaults(func=run, option_defaults={
        dest: parser.get_default(dest) for dest in OPTION_SCOPE})


# Where each option takes effect: {dest: (pipelines, stereo backends or None for any)}. An
# option set away from its default outside its scope is refused rather than silently ignored.
OPTION_SCOPE = {
    'backend': (('stereo',), None), 'max_disparity_px': (('stereo',), None),
    'confidence_threshold': (('stereo',), None),
    'input_scale': (('stereo',), ('learned',)), 'probe_every': (('stereo',), ('learned',)),
    'no_refine': (('stereo',), ('learned',)), 'sgbm': (('stereo',), ('sgbm',)),
    'onnx': (('stereo',), ('onnx',)),
    'weights': (('stereo', 'mono', 'corr'), ('learned', 'onnx')),
    'device': (('stereo', 'mono', 'corr'), ('learned', 'onnx')),
    'max_depth_m': (('stereo', 'mono'), None), 'image_topic': (('mono', 'corr'), None),
    'depth_mode': (('mono',), None), 'baseline_m': (('mono',), None),
    'post_process': (('mono',), None),
    'reference_image': (('corr',), None), 'reference_pixels': (('corr',), None),
    'depth_topic': (('corr',), None), 'match_threshold': (('corr',), None),
}


def options_out_of_scope(args) -> list:
    """'--name applies to ...' for each option set (away from its default) where the chosen
    pipeline (and stereo backend) does not use it."""
    problems = []
    for dest, (pipelines, backends) in OPTION_SCOPE.items():
        if getattr(args, dest) == args.option_defaults[dest]:
            continue
        used = args.pipeline in pipelines and (
            args.pipeline != 'stereo' or backends is None or args.backend in backends)
        if not used:
            scope = ' or '.join(f'--pipeline {p}' + (
                f' --backend {"/".join(backends)}' if p == 'stereo' and backends else '')
                for p in pipelines)
            problems.append(f'--{dest.replace("_", "-")} applies to {scope}')
    if args.pipeline == 'mono' and args.depth_mode == 'relative' \
            and args.baseline_m != args.option_defaults['baseline_m']:
        # Relative depth is depth / the frame's median: no baseline enters it.
        problems.append('--baseline-m applies to --depth-mode metric')
    return problems


def run(args) -> int:
    from ..bag import PIPELINES
    common = dict(namespace=args.namespace, output_prefix=args.output_prefix,
                  max_depth_m=args.max_depth_m, slop_s=args.slop_s,
                  progress=not args.no_progress)
    problems = options_out_of_scope(args)
    if problems:
        print('process-bag: ' + '; '.join(problems), file=sys.stderr)
        return 2
    if args.pipeline != 'stereo':
        common['image_topic'] = args.image_topic
    if args.pipeline == 'stereo':
        params = None
        if args.sgbm:
            params = dict(args.sgbm)
        if args.backend == 'learned':
            params = {'device': args.device, 'weights_path': args.weights,
                      'input_scale': args.input_scale, 'refine': not args.no_refine,
                      'probe_every': args.probe_every}
        elif args.backend == 'onnx':
            if not args.weights:
                print('process-bag: --backend onnx needs the model: --weights MODEL.onnx', file=sys.stderr)
                return 2
            params = {'device': args.device, 'model_path': args.weights, **dict(args.onnx)}
        options = dict(backend=args.backend, backend_params=params,
                       max_disparity_px=args.max_disparity_px or None,
                       confidence_threshold=args.confidence_threshold)
    elif args.pipeline == 'mono':
        options = dict(weights_path=args.weights, depth_mode=args.depth_mode,
                       baseline_m=args.baseline_m, post_process=args.post_process,
                       device=args.device)
    else:
        options = dict(reference_image=args.reference_image,
                       reference_pixels=args.reference_pixels, depth_topic=args.depth_topic,
                       weights_path=args.weights, match_threshold=args.match_threshold,
                       device=args.device)
    try:
        counts = PIPELINES[args.pipeline](args.input, args.output, **common, **options)
    except (ValueError, OSError) as exc:
        from . import os_error_message
        message = os_error_message(exc) if isinstance(exc, OSError) else exc
        print(f'process-bag: {message}', file=sys.stderr)
        return 2
    unmatched, note = counts.get('unmatched', 0), ''
    if unmatched:
        pairing = f'within {args.slop_s:g} s' if args.slop_s else 'of the same stamp'
        note = f', {unmatched} without a partner {pairing} on every input'
    written = (f' -> {args.output}' if counts['sets'] else
               '; nothing written (an existing output is left as it was)')
    print(f'process-bag: {counts["sets"]} frames processed, {counts["errors"]} skipped'
          f'{note}{written}')
    return 0 if counts['sets'] > 0 else 1


def _output_path(text: str) -> str:
    """argparse type of OUTPUT: '' is refused here; it processed every frame, then failed to
    move the finished file into place."""
    if not text:
        raise argparse.ArgumentTypeError('the output path is empty: give a .mcap file path')
    return text


# --onnx KEY=VALUE: the onnx backend's options (the node's onnx.* parameters) and their types.
_ONNX_OPTIONS = {'input_width': int, 'input_height': int, 'mean': 'floats', 'std': 'floats',
                 'input_names': 'names', 'output_name': str, 'confidence_name': str}


def _onnx_item(text: str):
    """argparse type of --onnx: 'mean=0.5,0.5,0.5' -> ('mean', [0.5, 0.5, 0.5]); the backend
    checks the values against the model when it loads it."""
    key, sep, value = text.partition('=')
    if not sep or key not in _ONNX_OPTIONS:
        raise argparse.ArgumentTypeError(f'{text!r}: expected KEY=VALUE with KEY one of '
                                         f'{", ".join(sorted(_ONNX_OPTIONS))}')
    kind = _ONNX_OPTIONS[key]
    try:
        if kind == 'floats':
            return key, [float(v) for v in value.split(',')]
        if kind == 'names':
            return key, [v for v in value.split(',') if v]
        parsed = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: {key} takes '
                                         + ('numbers separated by commas' if kind == 'floats'
                                            else f'a {kind.__name__}')) from None
    if kind is int:
        from ..core.backends.onnx_backend import INPUT_SIZE_RANGE_PX
        low, high = INPUT_SIZE_RANGE_PX
        if not low <= parsed <= high:
            raise argparse.ArgumentTypeError(f'{text!r}: {key} must be in [{low}, {high}] '
                                             '(0: the model\'s own)')
    return key, parsed


def _sgbm_item(text: str):
    """argparse type of --sgbm: 'num_disparities=128' -> ('num_disparities', 128), typed as
    SgbmParams declares it and checked by its validate() (the cross-parameter p2 > p1 check
    is left to the backend, which sees them all)."""
    import dataclasses

    from ..core.backends.sgbm import SgbmParams
    types = {f.name: type(f.default) for f in dataclasses.fields(SgbmParams)}
    key, sep, value = text.partition('=')
    if not sep or key not in types:
        raise argparse.ArgumentTypeError(f'{text!r}: expected KEY=VALUE with KEY one of '
                                         f'{", ".join(sorted(types))}')
    kind = types[key]
    if kind is bool:
        if value.lower() not in ('true', 'false', '1', '0'):
            raise argparse.ArgumentTypeError(f'{text!r}: {key} is true or false')
        parsed = value.lower() in ('true', '1')
    else:
        try:
            parsed = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r}: {key} takes a {kind.__name__}') from None
    try:
        candidate = dataclasses.replace(SgbmParams(), **{key: parsed})
        candidate.check_ranges()
        candidate.validate(check_penalties=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f'{text!r}: {exc}') from None
    return key, parsed
