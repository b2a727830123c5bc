"""`corr_depth process-bag IN.mcap OUT.mcap --pipeline stereo ...`"""


def register(subparsers):
    parser = subparsers.add_parser(
        'process-bag', help='run a pipeline over a rosbag2 MCAP file (no ROS runtime needed)',
        description='Reads IN.mcap, runs the pipeline with the same code as the nodes, writes '
                    'standard ROS 2 messages to OUT.mcap.')
    parser.add_argument('input', help='input rosbag2 .mcap file')
    parser.add_argument('output', help='output .mcap file (overwritten)')
    parser.add_argument('--pipeline', default='stereo', help='stereo (more as models land)')
    parser.add_argument('--namespace', default='', help='input topic namespace, e.g. /stereo')
    parser.add_argument('--output-prefix', default='', help='output namespace (default: --namespace)')
    parser.add_argument('--backend', default='sgbm', help='stereo backend')
    parser.add_argument('--max-depth-m', type=float, default=0.0)
    parser.add_argument('--no-progress', action='store_true')
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..bag import PIPELINES
    if args.pipeline not in PIPELINES:
        print(f'unknown pipeline {args.pipeline!r}; available: {", ".join(sorted(PIPELINES))}')
        return 2
    counts = PIPELINES[args.pipeline](
        args.input, args.output, namespace=args.namespace, output_prefix=args.output_prefix,
        backend=args.backend, max_depth_m=args.max_depth_m, progress=not args.no_progress)
    print(f'process-bag: {counts["sets"]} frames processed, {counts["errors"]} skipped -> {args.output}')
    return 0 if counts['sets'] > 0 else 1
