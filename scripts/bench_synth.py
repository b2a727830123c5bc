#!/usr/bin/env python3
"""Benchmark of the synthetic data engine: stereo and multiview pairs per second.

    python scripts/bench_synth.py --size 320x240 --pairs 40 --json bench_output/synth.json

Renders on the CPU with torch's default thread count (or --threads), and on CUDA when one is
available. Each pair has its own seed, as in training. Then, on the CPU, the throughput of
--workers spawned processes with one torch thread each (default: one per core), which is how
training renders (data-loader workers, `corr_depth synth --workers`): many small tensor ops
scale poorly across threads in one process but well across processes. The load average before
and after is recorded: on a shared machine other processes slow the figures down, so read them
with it.
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
from corr_depth_ros.cli._args import size_hw  # noqa: E402


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


def _worker(kind, height, width, seeds, warmup, ready, start, results, first_warmup_seed):
    """One spawned process: warm up, wait for the common start, render its seeds."""
    import torch

    from corr_depth_ros.core.synth import render_multiview_pair, render_stereo_pair

    torch.set_num_threads(1)
    render = render_stereo_pair if kind == 'stereo' else render_multiview_pair
    for i in range(warmup):
        render(first_warmup_seed - i, height, width)
    ready.wait()
    start.wait()
    for seed in seeds:
        render(seed, height, width)
    results.put(time.perf_counter())


def bench_workers(kind, height, width, pairs, warmup, workers, first_seed=1000):
    """Pairs per second of ``workers`` processes rendering ``pairs`` seeds between them, timed
    from a common start (after imports and warm-up) to the last process finishing."""
    import multiprocessing

    workers = max(1, min(workers, pairs))     # a worker without seeds would have nothing to time
    context = multiprocessing.get_context('spawn')
    ready, start = context.Barrier(workers + 1), context.Event()
    results = context.Queue()
    seeds = list(range(first_seed + warmup, first_seed + warmup + pairs))
    procs = [context.Process(target=_worker, args=(kind, height, width, seeds[w::workers],
                                                   warmup, ready, start, results,
                                                   first_seed + warmup - 1))
             for w in range(workers)]
    for proc in procs:
        proc.start()
    # A worker that fails before the barrier (an import or a render error) must not leave this
    # process waiting for ever: wait until every worker is there, or one has ended.
    while ready.n_waiting < workers:
        if any(proc.exitcode is not None for proc in procs):
            for proc in procs:
                proc.terminate()
            raise RuntimeError('a render worker ended before the timed start (see its '
                               'traceback above)')
        time.sleep(0.05)
    ready.wait()
    begin = time.perf_counter()
    start.set()
    ends = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    seconds = max(ends) - begin
    return {'pairs': pairs, 'workers': workers, 'torch_threads_per_worker': 1,
            'seconds': seconds, 'pairs_per_s': pairs / seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', type=size_hw, default='320x240',
                        help='WIDTHxHEIGHT (default 320x240)')
    parser.add_argument('--pairs', type=int, default=40, help='timed pairs per case')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    parser.add_argument('--no-cuda', action='store_true', help='skip CUDA even if available')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='processes for the multi-process CPU case (0: skip it; default: '
                             'one per core)')
    parser.add_argument('--json', default=None, help='write the results here')
    args = parser.parse_args(argv)

    import torch

    from corr_depth_ros.core.synth import render_multiview_pair, render_stereo_pair
    from corr_depth_ros.core.synth.config import SYNTH_VERSION

    height, width = args.size
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
    if args.workers > 0:
        for kind in ('stereo', 'multiview'):
            result = bench_workers(kind, height, width, args.pairs, args.warmup, args.workers)
            result.update(device='cpu', kind=kind)
            report['results'].append(result)
            print(f'cpu   {kind:9s} {width}x{height}: {result["pairs_per_s"]:6.1f} pairs/s '
                  f'({result["workers"]} processes x 1 torch thread)', flush=True)
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
