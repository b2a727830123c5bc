"""`corr_depth eval mono`: Motorcycle (zero-shot) and held-out synthetic depth metrics, the
LR-consistency ablation, speed at 384x256 and a figure, written as JSON."""
from ._args import positive_float, positive_int, size_hw_multiple_of_32
from .eval import add_figure_argument, add_json_argument, resolve_json


def register(subparsers):
    parser = subparsers.add_parser(
        'mono', help='evaluate the monocular model (AbsRel, SqRel, RMSE, RMSE log, deltas)',
        description='Metrics with median scaling and with least-squares scale-and-shift in '
                    'inverse depth, with and without the paper\'s post-processing, for the '
                    'LR-consistency model and its no-LR ablation.')
    parser.add_argument('--dataset', default='all', choices=('motorcycle', 'synthetic', 'all'))
    add_json_argument(parser, 'mono.json')
    add_figure_argument(parser, 'Motorcycle image, GT depth, prediction, error (none by '
                        'default with --dataset synthetic)')
    parser.add_argument('--max-depth-m', type=positive_float, default=None,
                        help='evaluate only GT depths up to this (and cap aligned predictions)')
    parser.add_argument('--weights', default='', help='LR model (default: shipped)')
    parser.add_argument('--ablation-weights', default=None,
                        help='no-LR model (default: shipped if present; "" to skip)')
    parser.add_argument('--input-size', default=None, type=size_hw_multiple_of_32,
                        help='network input WxH, e.g. 384x256 (default: the training size '
                             'from the weights metadata)')
    parser.add_argument('--synthetic-count', type=positive_int, default=200)
    parser.add_argument('--synthetic-cache', default='',
                        help='folder the held-out synthetic pairs are rendered into once and '
                             'read from later (default: runs/mono/cache_heldout_<HxW>_<count> '
                             'in the working folder)')
    parser.add_argument('--device', default='cpu', choices=('auto', 'cpu', 'cuda'),
                        help='cpu by default: the speed target is a CPU one')
    parser.add_argument('--no-speed', action='store_true')
    parser.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..core.memory import keep_freed_memory
    from ..core.mono.evaluate import run_evaluation, write_json
    from ..core.training import resolve_device
    from .eval import check_outputs, figure_path, write_figure
    keep_freed_memory()   # timed as the mono node runs (core/memory.py)
    resolve_json(args)
    datasets = ('motorcycle', 'synthetic') if args.dataset == 'all' else (args.dataset,)
    if args.figure and 'motorcycle' not in datasets:
        raise ValueError('--figure draws the Motorcycle image: use --dataset motorcycle or all')
    figure_out = figure_path(args) if 'motorcycle' in datasets else ''
    check_outputs(args, figure_out)
    report, figure = run_evaluation(
        datasets=datasets, weights=args.weights, ablation_weights=args.ablation_weights,
        input_size=args.input_size,
        max_depth_m=args.max_depth_m, synthetic_count=args.synthetic_count,
        synthetic_cache=args.synthetic_cache, device=str(resolve_device(args.device)),
        figure=bool(figure_out),
        speed=not args.no_speed)
    write_json(report, args.json)
    summary = {}
    for name, entry in report['models'].items():
        for dataset in ('motorcycle', 'synthetic'):
            if dataset in entry:
                for pp in ('no_pp', 'pp'):
                    m = entry[dataset][pp]['median']
                    summary[f'{name}/{dataset}/{pp}/median'] = {
                        'abs_rel': round(m['abs_rel'], 4), 'delta1': round(m['delta1'], 4)}
    if 'speed' in report:
        summary['speed_fps_384x256'] = round(report['speed']['forward_fps'], 2)
    print(json.dumps(summary, indent=2))
    print(f'wrote {args.json}')
    if figure is not None:     # after the JSON: a bad figure path must not lose the numbers
        write_figure(figure_out, figure)
    return 0
