"""`corr_depth eval stereo --backend learned --backend sgbm --dataset motorcycle --json out.json`"""
import json
import os

from ..core.backends.learned import INPUT_SCALE_RANGE
from ._args import in_range, positive_float, positive_int, size_hw
from .eval import add_figure_argument, add_json_argument, resolve_json


def register(subparsers):
    p = subparsers.add_parser('stereo', help='stereo backends on Motorcycle or held-out synthetic data')
    p.add_argument('--backend', action='append', choices=('learned', 'sgbm', 'onnx'),
                   help='repeat to compare backends in one run (default: learned and sgbm)')
    p.add_argument('--dataset', default='motorcycle', choices=('motorcycle', 'synthetic'))
    p.add_argument('--scale', type=positive_float, default=1.0, help='resize Motorcycle by this factor')
    p.add_argument('--count', type=positive_int, default=8, help='synthetic pairs')
    p.add_argument('--size', type=size_hw, default='256x192', help='synthetic size, WIDTHxHEIGHT')
    p.add_argument('--seed', type=int, default=950_000_000,
                   help='first synthetic seed (disjoint from training and validation seeds)')
    p.add_argument('--weights', default='', help='learned: safetensors (default: shipped)')
    p.add_argument('--no-refine', action='store_true',
                   help="learned: skip the weights' local refiner (the node's learned.refine)")
    p.add_argument('--input-scale', type=in_range(float, *INPUT_SCALE_RANGE), default=0.0,
                   help='learned: resize pairs by this factor for the network (the node\'s '
                        'learned.input_scale; 0 = auto per pair, 1 = as trained)')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    p.add_argument('--onnx-model', default='', help='onnx: model path')
    p.add_argument('--onnx-size', type=size_hw, default=None,
                   help='onnx: fixed input WIDTHxHEIGHT (default: the model\'s own)')
    p.add_argument('--onnx-mean', default='0,0,0')
    p.add_argument('--onnx-std', default='1,1,1')
    p.add_argument('--repeats', type=positive_int, default=5, help='timed runs per pair (after 1 warm-up)')
    p.add_argument('--threads', type=int, default=2, help='torch / onnxruntime CPU threads')
    add_json_argument(p, 'stereo_<dataset>.json')
    add_figure_argument(p, 'left, GT, prediction, error of the first pair')
    p.set_defaults(func=run)


def run(args) -> int:
    import cv2

    from ..core.memory import keep_freed_memory
    # Timed as the nodes run: they keep freed memory for the next frame (core/memory.py);
    # without it every forward pass faults its buffers in afresh (~+25-35 ms per pair here).
    memory_kept = keep_freed_memory()
    from ..core.backends import create_backend
    from ..core.stereo_net.evaluate import (DENSE_NOTE, environment, error_figure,
                                            evaluate_backend, motorcycle_pairs, strip_predictions,
                                            synthetic_pairs)
    from .eval import check_outputs, figure_path, write_figure
    backends = args.backend or ['learned', 'sgbm']
    resolve_json(args)
    if 'onnx' in backends and not args.onnx_model:
        raise ValueError('--backend onnx needs --onnx-model PATH (e.g. from corr_depth export-onnx)')
    figure_out = figure_path(args)
    check_outputs(args, figure_out)
    if args.dataset == 'motorcycle':
        pairs = motorcycle_pairs(args.scale)
    else:
        height, width = args.size
        pairs = synthetic_pairs(args.count, height, width, args.seed)
    cv2.setNumThreads(args.threads)
    reports = {}
    for name in backends:
        if name == 'learned':
            backend = create_backend('learned', weights_path=args.weights, device=args.device,
                                     refine=not args.no_refine, input_scale=args.input_scale,
                                     threads=args.threads)
        elif name == 'onnx':
            height, width = args.onnx_size or (0, 0)
            backend = create_backend('onnx', model_path=args.onnx_model, input_width=width,
                                     input_height=height, device=args.device, threads=args.threads,
                                     mean=[float(v) for v in args.onnx_mean.split(',')],
                                     std=[float(v) for v in args.onnx_std.split(',')])
        else:
            backend = create_backend(name)
        reports[name] = evaluate_backend(backend, pairs, repeats=args.repeats)
        reports[name]['params'] = {k: str(v) for k, v in backend.get_params().items()}
        if name == 'learned':
            reports[name]['weights_metadata'] = backend.header.get('metadata', {})
        r = reports[name]
        print(f'{name:8s} {args.dataset}: EPE {r["epe_px"]:.3f} px, bad-1 {r["bad_1_pct"]:.2f} %, '
              f'bad-2 {r["bad_2_pct"]:.2f} %, bad-4 {r["bad_4_pct"]:.2f} %, holes '
              f'{r["holes_pct"]:.2f} %, {r["runtime_ms_median"]:.1f} ms/pair (median)')
        regions = r['by_region']
        print(' ' * 9 + ', '.join(
            f'{label} EPE {regions[k]["epe_px"]:.3f} px, bad-2 {regions[k]["bad_2_pct"]:.2f} %'
            for k, label in (('depth_edges', f'depth edges ({regions["depth_edge_share_pct"]:.1f}'
                                             ' % of the pixels):'), ('elsewhere', 'elsewhere:'))
            if regions[k]['pixels']))
    out = {'dataset': args.dataset, 'pairs': [p['name'] for p in pairs],
           'image_size_wh': [int(pairs[0]['left'].shape[1]), int(pairs[0]['left'].shape[0])],
           'metric_note': DENSE_NOTE,
           'environment': {**environment(args.threads), 'keep_freed_memory': memory_kept},
           'backends': {k: strip_predictions(v) for k, v in reports.items()}}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w', encoding='utf-8') as f:
        json.dump(out, f, indent=2)
        f.write('\n')
    print(f'wrote {args.json}')
    if figure_out:
        panel = error_figure(pairs[0]['left'], pairs[0]['disparity_px'],
                             {k: v['predictions'][0] for k, v in reports.items()})
        write_figure(figure_out, panel)
    return 0
