"""The GPU figures the issues ask for, in one run: on a machine with CUDA,

    python scripts/bench_gpu.py --json bench_output/gpu.json

measures, on the shipped weights, (1) learned stereo at 741x500 (Middlebury Motorcycle): the
backend end to end (numpy pair in, disparity out, as the node calls it: probing for the input
scale every ``learned.probe_every``-th pair, the node's default) and the bare network
on tensors already on the GPU (the ">= 60 pairs/s on a GPU" figure), in float16 (the node's
default on CUDA) and float32, with the Motorcycle EPE of each so a broken half path shows;
(2) mono depth frames/s at 384x256, single pass and with pp; (3) descriptor frames/s at 640x480
with the node's scales; (4) a short `train stereo` run (mixed precision as fit() chooses it:
bfloat16 or float16 + GradScaler) and its steps/s; (5) our ONNX export run by onnxruntime
(CUDA provider when it starts). Each section is timed with the device synchronised, and a
section that fails records its error and the others still run (GPU time is scarce); the JSON is
written after every section, so a run stopped by a time limit keeps what it measured.

Without CUDA it runs the same on the CPU (``--device cpu``, what the test does with tiny
counts), which is how it is checked on the project's development machine.

It needs no ROS: only torch, numpy, opencv, scikit-image (the Motorcycle pair), safetensors,
tqdm and onnx/onnxruntime (the onnx section). On a GPU machine without this repository's
setup (no network, no .venv), run it from the repository root as

    PYTHONPATH=corr_depth_ros python3 scripts/bench_gpu.py --json OUT/gpu.json

(checked that way with a venv that has no ROS in it).
"""
import argparse
import json
import os
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine_info, save_json, timing_summary, write_result  # noqa: E402

from corr_depth_ros.cli._args import positive_int  # noqa: E402

SECTIONS = ('stereo', 'mono', 'descriptors', 'train', 'onnx')


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _timed(call, device, repeats, warmup=2):
    """bench_common.timing_summary of ``call()`` with the device synchronised around each run,
    plus ``per_s`` (runs per second at the median)."""
    for _ in range(warmup):
        call()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - start)
    summary = timing_summary(times)
    return {**summary, 'per_s': 1000.0 / summary['median_ms']}


def environment(device):
    info = {'torch': torch.__version__, 'device': str(device), **machine_info()}
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=list(torch.cuda.get_device_capability(device)),
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    try:
        import onnxruntime as ort
        info['onnxruntime'] = ort.__version__
        info['onnxruntime_providers'] = ort.get_available_providers()
    except ImportError:
        info['onnxruntime'] = None
    return info


def bench_stereo(device, repeats):
    from corr_depth_ros.core.backends.learned import STREAM_PROBE_EVERY, LearnedBackend
    from corr_depth_ros.core.metrics import disparity_metrics
    from corr_depth_ros.core.stereo_net.evaluate import motorcycle_pairs
    pair = motorcycle_pairs()[0]
    out = {}
    for half in ((True, False) if device.type == 'cuda' else (False,)):
        backend = LearnedBackend(device=str(device), half=half, probe_every=STREAM_PROBE_EVERY)
        end_to_end = _timed(lambda: backend.compute(pair['left'], pair['right']), device,
                            repeats)
        entry = {'probe_every': backend.probe_every, 'end_to_end': end_to_end}
        left, right = backend.input_tensor(pair['left']), backend.input_tensor(pair['right'])
        with torch.inference_mode():
            entry['network_only'] = _timed(lambda: backend.model(left, right), device, repeats)
        result = backend.compute(pair['left'], pair['right'])
        metrics = disparity_metrics(np.where(result.valid, result.disparity_px, np.nan),
                                    pair['disparity_px'])
        entry['motorcycle'] = {k: metrics[k] for k in ('epe_px', 'bad_2_pct')}
        out['float16' if half else 'float32'] = entry
    out['size'] = '741x500'
    out['target'] = '>= 60 pairs/s on a GPU (issue 4): network_only.per_s'
    return out


def bench_mono(device, repeats):
    from corr_depth_ros.core.mono.evaluate import measure_speed
    from corr_depth_ros.core.mono.inference import load_mono_model
    model, _ = load_mono_model(device=device)
    return measure_speed(model, device, repeats=repeats)


def bench_descriptors(device, repeats):
    from corr_depth_ros.core.descriptors.network import (DEFAULT_SCALES, compute_descriptors,
                                                         load_descriptor_net)
    from corr_depth_ros.core.memory import RecyclingPool
    model, _ = load_descriptor_net(device=device)
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pool = RecyclingPool()
    with torch.inference_mode():
        timing = _timed(lambda: compute_descriptors(model, image, device, pool=pool), device,
                        repeats)
    return {'size': '640x480', 'scales': list(DEFAULT_SCALES), 'descriptors': timing,
            'target': '>= 10 frames/s (issue 6, CPU)'}


def bench_train(device, steps):
    from corr_depth_ros.core.stereo_net.train import train_stereo_net
    from corr_depth_ros.core.training import TrainConfig, mixed_precision
    use_amp, dtype, scaled = mixed_precision(True, device)
    with tempfile.TemporaryDirectory() as out_dir:
        # Logged a third of the way and at the end: the rate between those two records leaves
        # out set-up, the first steps' warm-up and the final checkpoint and validation.
        cfg = TrainConfig(out_dir=out_dir, steps=steps, batch_size=4, val_every=10 ** 9,
                          checkpoint_every=10 ** 9, log_every=max(1, steps // 3),
                          warmup_steps=1,
                          num_workers=min(4, os.cpu_count() or 1) if device.type == 'cuda' else 0,
                          device=device.type)
        start = time.perf_counter()
        result = train_stereo_net(cfg, height=256, width=320, val_count=1)
        seconds = time.perf_counter() - start
        with open(os.path.join(out_dir, 'log.jsonl'), encoding='utf-8') as f:
            records = [r for r in map(json.loads, f) if r.get('event') == 'train']
    first, last = records[0], records[-1]
    timed_steps = last['step'] - first['step']
    steps_per_s = timed_steps / (last['elapsed_s'] - first['elapsed_s']) if timed_steps else \
        last['step'] / last['elapsed_s']
    return {'steps': steps, 'batch_size': 4, 'size': '320x256', 'seconds_total': seconds,
            'steps_per_s': steps_per_s,
            'steps_per_s_note': f'steps {first["step"]}-{last["step"]} (set-up, warm-up and the '
                                'final checkpoint and validation left out)',
            'final_loss': result.get('loss'),
            'autocast': use_amp, 'autocast_dtype': str(dtype) if use_amp else None,
            'grad_scaler': scaled, 'weights': 'a fresh network (a speed check, not a model)',
            'note': 'on-the-fly rendering included; a pool (`--data`) trains faster'}


def bench_onnx(device, repeats):
    from corr_depth_ros.core.backends.learned import DEFAULT_WEIGHTS
    from corr_depth_ros.core.backends.onnx_backend import OnnxStereoBackend
    from corr_depth_ros.core.stereo_net.evaluate import motorcycle_pairs
    from corr_depth_ros.core.stereo_net.export import export_stereo_onnx
    from corr_depth_ros.core.stereo_net import build_stereo_net, ARCH
    from corr_depth_ros.core.training import load_weights
    pair = motorcycle_pairs()[0]
    model, _ = load_weights(DEFAULT_WEIGHTS, build_stereo_net, expected_arch=ARCH)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'stereo.onnx')
        parity = export_stereo_onnx(model, path, height=500, width=741)
        # 'auto': onnxruntime's CUDA provider where the installed onnxruntime has one and it
        # starts (onnxruntime-gpu), else its CPU provider; the JSON records which ran.
        backend = OnnxStereoBackend(path, device='auto')
        timing = _timed(lambda: backend.compute(pair['left'], pair['right']), device, repeats)
    return {'parity': parity, 'providers': backend.providers, 'end_to_end': timing}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='auto', choices=('auto', 'cuda', 'cpu'))
    parser.add_argument('--repeats', type=positive_int, default=20)
    parser.add_argument('--train-steps', type=positive_int, default=30)
    parser.add_argument('--sections', default=','.join(SECTIONS),
                        help=f'comma list of {", ".join(SECTIONS)}')
    parser.add_argument('--json', default='bench_output/gpu.json')
    args = parser.parse_args(argv)
    from corr_depth_ros.core.training import resolve_device
    device = resolve_device(args.device)
    sections = [s for s in args.sections.split(',') if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f'unknown sections {sorted(unknown)}; choose from {SECTIONS}')
    result = {'benchmark': 'models on the GPU (or the CPU)', 'environment': environment(device)}
    runners = {'stereo': lambda: bench_stereo(device, args.repeats),
               'mono': lambda: bench_mono(device, args.repeats),
               'descriptors': lambda: bench_descriptors(device, args.repeats),
               'train': lambda: bench_train(device, args.train_steps),
               'onnx': lambda: bench_onnx(device, args.repeats)}
    failed = False
    for name in sections:
        start = time.perf_counter()
        try:
            result[name] = runners[name]()
        except Exception as exc:  # noqa: BLE001 - record it and measure the rest
            failed = True
            result[name] = {'error': f'{type(exc).__name__}: {exc}',
                            'traceback': traceback.format_exc(limit=8)}
        result[name]['section_s'] = round(time.perf_counter() - start, 1)
        print(f'{name}: done in {result[name]["section_s"]} s'
              + (' (failed)' if 'error' in result[name] else ''), file=sys.stderr)
        save_json(result, args.json)     # a run killed later keeps this section
    write_result(result, args.json)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
