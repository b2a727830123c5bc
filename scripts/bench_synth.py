#!/usr/bin/env python3
"""Benchmark of the synthetic data engine: stereo and multiview pairs per second.

    python scripts/bench_synth.py --size 320x240 --pairs 40 --json bench_output/synth.json

Renders on the CPU with torch's default thread count (or --threads), and on CUDA when one is
available. Each pair has its own seed, as in training. The load average before and after is
recorded: on a shared machine other processes slow the figures down, so read them with it.
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# Run from a source checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'corr_depth_ros'))


def _load():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def bench(render, height, width, pairs, warmup, device, first_seed=1000):
    import torch

    for i in range(warmup):
        render(first_seed + i, height, width, device=device)
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    times = []
    cpu_start = time.process_time()
    for i in range(pairs):
        start = time.perf_counter()
        sample = render(first_seed + warmup + i, height, width, device=device)
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del sample
    cpu_seconds = time.process_time() - cpu_start
    total = sum(times)
    times.sort()
    # Process CPU time per pair: with one torch thread it estimates the wall time on an idle
    # core even when other processes share the machine (summed over threads otherwise).
    return {'pairs': pairs, 'seconds': total, 'pairs_per_s': pairs / total,
            'ms_per_pair_mean': 1000 * total / pairs,
            'ms_per_pair_median': 1000 * times[len(times) // 2],
            'ms_per_pair_min': 1000 * times[0],
            'cpu_ms_per_pair': 1000 * cpu_seconds / pairs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', default='320x240', help='WIDTHxHEIGHT (default 320x240)')
    parser.add_argument('--pairs', type=int, default=40, help='timed pairs per case')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    parser.add_argument('--no-cuda', action='store_true', help='skip CUDA even if available')
    parser.add_argument('--json', default=None, help='write the results here')
    args = parser.parse_args(argv)

    import torch

    from corr_depth_ros.core.synth import render_multiview_pair, render_stereo_pair
    from corr_depth_ros.core.synth.config import SYNTH_VERSION
    from corr_depth_ros.core.synth.render import split_size

    height, width = split_size(args.size)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    devices = ['cpu']
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append('cuda')
    report = {'size': [width, height], 'synth_version': SYNTH_VERSION,
              'torch': torch.__version__, 'torch_threads': torch.get_num_threads(),
              'cpu_count': os.cpu_count(), 'platform': platform.platform(),
              'cuda_device': torch.cuda.get_device_name(0) if 'cuda' in devices else None,
              'load_avg_before': _load(), 'results': []}
    for device in devices:
        for kind, render in (('stereo', render_stereo_pair), ('multiview', render_multiview_pair)):
            result = bench(render, height, width, args.pairs, args.warmup, device)
            result.update(device=device, kind=kind)
            report['results'].append(result)
            print(f'{device:5s} {kind:9s} {width}x{height}: {result["pairs_per_s"]:6.1f} pairs/s '
                  f'(mean {result["ms_per_pair_mean"]:.1f} ms, median '
                  f'{result["ms_per_pair_median"]:.1f} ms, min {result["ms_per_pair_min"]:.1f} ms, '
                  f'process CPU {result["cpu_ms_per_pair"]:.1f} ms/pair)', flush=True)
    report['load_avg_after'] = _load()
    print(f'torch threads {report["torch_threads"]}, cpu_count {report["cpu_count"]}, '
          f'load average before {report["load_avg_before"]} after {report["load_avg_after"]}')
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
