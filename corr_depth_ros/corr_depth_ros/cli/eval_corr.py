"""`corr_depth eval corr`: dense correspondences (descriptor net vs SIFT vs patch NCC)."""
from ._args import positive_int, size_hw
from .eval import add_figure_argument, add_json_argument, resolve_json


def _baselines(text: str):
    import argparse
    names = [n.strip() for n in text.split(',') if n.strip()]
    unknown = sorted(set(names) - {'sift', 'ncc'})
    if unknown:
        raise argparse.ArgumentTypeError(f'unknown baseline(s) {unknown}: use sift, ncc or ""')
    return ','.join(names)


def register(subparsers):
    p = subparsers.add_parser('corr', help='dense correspondences: descriptor net vs baselines')
    p.add_argument('--dataset', choices=('motorcycle', 'synthetic'), default='motorcycle')
    p.add_argument('--weights', default='', help='descriptor weights (default: shipped)')
    add_json_argument(p, 'corr_<dataset>.json')
    add_figure_argument(p, 'matches drawn side by side, coloured by error')
    p.add_argument('--queries', type=positive_int, default=1000, help='query pixels (per pair)')
    p.add_argument('--pairs', type=positive_int, default=10, help='synthetic: held-out pairs')
    p.add_argument('--size', type=size_hw, default='320x240', help='synthetic: WIDTHxHEIGHT')
    p.add_argument('--kind', choices=('multiview', 'stereo'), default='multiview',
                   help='synthetic: pair kind')
    p.add_argument('--split', choices=('held-out', 'train'), default='held-out',
                   help='synthetic: held-out seeds (the benchmark) or the first training seeds '
                        '(a `--seed 0` training run rendered these seeds first, some of them '
                        'as stereo rather than multiview pairs): the same score on both means '
                        'the net underfits rather than fails to generalise')
    p.add_argument('--queries-on', choices=('visible', 'objects'), default='visible',
                   help='synthetic: query among all A pixels visible in B (the benchmark), or '
                        "only among those on objects (Dense Object Nets' setting: grasp points "
                        'lie on objects, while most of a scene is weakly textured floor and '
                        'wall); B is searched whole either way')
    p.add_argument('--baselines', default='sift,ncc', type=_baselines,
                   help='comma list of sift,ncc ("" for none)')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--scales', default='',
                   help='descriptor image scales, comma list starting with 1 (default: the '
                        "node's, 1,0.5; 1 alone is one pass)")
    p.add_argument('--benchmark', action='store_true',
                   help='add a speed section: descriptor frames/s and 10-pixel request latency '
                        'at 640x480')
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os

    import torch

    from ..core.descriptors import evaluate as ev
    from ..core.memory import keep_freed_memory
    from .eval import check_outputs, figure_path, write_figure
    keep_freed_memory()   # timed as the correspondence node runs (core/memory.py)
    resolve_json(args)
    figure_out = figure_path(args)
    check_outputs(args, figure_out)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from ..core.descriptors.network import DEFAULT_SCALES, check_scales
    model, header = ev.load_model(args.weights)
    scales = check_scales(args.scales.split(',')) if args.scales else DEFAULT_SCALES
    methods = {'descriptor_net':
               lambda a, b, q, t: ev.match_descriptor_net(model, a, b, q, t, scales)}
    for name in filter(None, args.baselines.split(',')):
        methods[name] = {'sift': ev.match_sift, 'ncc': ev.match_ncc}[name]


    raws, figure_args = [], None
    if args.dataset == 'motorcycle':
        from ..core.motorcycle import load_motorcycle
        from ..core.training import DEPTH_EDGE_STEP_PX
        data = load_motorcycle()
        visible = ev.visible_in_right(data['disparity_px'])
        queries, truth = ev.motorcycle_queries(data['disparity_px'], args.queries, args.seed,
                                               visible)
        _, raw = ev.evaluate_pair(methods, data['left'], data['right'], queries, truth)
        raws.append(raw)
        figure_args = (data['left'], data['right'], queries, truth, raw)
        protocol = ('Middlebury Motorcycle (scikit-image, 741x500): left (x,y) -> right (x-d,y) '
                    'from GT disparity; whole right image searched; queries sampled among left '
                    'pixels with GT that are visible in the right view (forward-warp z-buffer on '
                    'the left GT, tolerance 1 px).')
        # Where the methods fail: queries by distance to the nearest depth edge, where a
        # descriptor's context holds another surface that moves differently between views.
        distance = ev.depth_edge_distance_px(data['disparity_px'])[
            queries[:, 1].astype(int), queries[:, 0].astype(int)]
        extra = {'visible_query_pool': int(visible.sum()),
                 'by_depth_edge_distance': {
                     'definition': f'distance (px) from the query to the nearest pair of '
                                   f'neighbours whose GT disparities differ by more than '
                                   f'{DEPTH_EDGE_STEP_PX:g} px',
                     **{name: ev.pck_by_edge_distance(r[1], distance) for name, r in raw.items()}}}
    else:
        from ..core.descriptors.data import HELD_OUT_SEED, render_sample
        from ..core.synth.contact_sheet import to_uint8_rgb
        height, width = args.size
        first_seed = HELD_OUT_SEED + ev.SYNTHETIC_TEST_OFFSET if args.split == 'held-out' else 0
        skipped = []
        for i in range(args.pairs):
            pair = render_sample(args.kind, first_seed + i, height, width)
            valid = pair['match_valid'][0].numpy()
            if args.queries_on == 'objects':
                valid = valid & pair['object_mask_a'][0].numpy()
                if not valid.any():
                    skipped.append(first_seed + i)   # no object of A is visible in B
                    continue
            queries = ev.sample_queries(valid, args.queries, args.seed + i)
            rows, cols = queries[:, 1].astype(int), queries[:, 0].astype(int)
            truth = pair['match_b_px'][:, rows, cols].t().numpy()
            a, b = to_uint8_rgb(pair['image_a']), to_uint8_rgb(pair['image_b'])
            _, raw = ev.evaluate_pair(methods, a, b, queries, truth)
            raws.append(raw)
            if figure_args is None:
                figure_args = (a, b, queries, truth, raw)
        protocol = (f'{args.split} synthetic {args.kind} pairs (seeds {first_seed} + i, '
                    f'i < {args.pairs}), {width}x{height}; '
                    f'queries among A pixels visible in B'
                    f'{" that lie on objects" if args.queries_on == "objects" else ""}; '
                    'whole image B searched.')
        extra = {'queries_on': args.queries_on}
        if skipped:
            extra['pairs_without_object_queries'] = skipped
    results = ev.merge_raw(raws)
    report = {'dataset': args.dataset, 'protocol': protocol, 'results': results,
              'weights': args.weights or 'shipped', 'weights_identity': header.get('identity'),
              'weights_config': header.get('config'), 'descriptor_scales': list(scales),
              'threads': torch.get_num_threads(),
              'baseline_settings': {
                  'sift': f'upright, OpenCV keypoint size {ev.SIFT_KEYPOINT_SIZE_PX:g} px, dense '
                          '1-px grid in B',
                  'ncc': f'{ev.NCC_PATCH_PX}x{ev.NCC_PATCH_PX} grey patch, TM_CCOEFF_NORMED '
                         'over all of B',
                  'chosen_on': 'synthetic validation stereo pairs, PCK@3 (core/descriptors/'
                               'evaluate.py), not on the evaluation data'},
              **extra}
    if args.benchmark:
        import cv2

        from ..core.motorcycle import load_motorcycle
        image = cv2.resize(load_motorcycle()['left'], (640, 480), interpolation=cv2.INTER_AREA)
        report['speed'] = ev.benchmark(model, image, scales=scales)
        print('speed:', report['speed'])
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=2)
    for name, r in results.items():
        print(f'{name:15s} PCK@1 {r["pck@1"]:.3f}  @3 {r["pck@3"]:.3f}  @5 {r["pck@5"]:.3f}  '
              f'@10 {r["pck@10"]:.3f}  median {r["median_error_px"]:.2f} px  '
              f'FP {r["mean_fraction_false_positives"]:.4f}  ({r["seconds"]:.1f} s)')
        by_edge = report.get('by_depth_edge_distance', {}).get(name)
        if by_edge:
            print(' ' * 16 + 'PCK@3 by distance to a depth edge: ' + ', '.join(
                f'{bin_name} {b["pck@3"]:.3f} ({b["queries"]})' for bin_name, b in by_edge.items()
                if b['pck@3'] is not None))
    if figure_out and figure_args is not None:
        a, b, queries, truth, raw = figure_args
        matches, errors = raw['descriptor_net'][0], raw['descriptor_net'][1]
        write_figure(figure_out, ev.draw_matches(a, b, queries, matches, errors, truth))
    return 0
