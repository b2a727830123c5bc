"""Benchmark of the monocular model (``corr_depth eval mono``): accuracy, ablation, speed.

* Middlebury Motorcycle, zero-shot (never seen in training). Ground-truth depth from the GT
  disparity and the calibration, ``Z = f * B / (d + doffs)`` (``core.geometry``).
* Held-out synthetic pairs (seeds from 10,000,000 on; training uses 0 .. N-1), rendered with the
  training rig, so the raw metric numbers are meaningful there too.
* Every model is scored with two alignments (metrics.py: 'median' and 'scale_shift_inv') and
  unaligned ('raw', metric mode with the baseline the weights record, as the node's metric
  mode; left out for weights that record none), with and without the paper's
  post-processing ('pp' / 'no_pp').
* The ablation: the LR-consistency model and the one trained without that term, in one run.
* Speed: frames/s of one forward pass (and of pp) at 384x256 on this machine's CPU threads.
"""
import json
import os
import platform
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ..geometry import disparity_to_depth
from .data import TRAINING_RIG, build_synthetic_cache, load_cache, training_synth_config
from .inference import (SHIPPED_ABLATION_WEIGHTS, SHIPPED_WEIGHTS, baseline_from_header,
                        input_size_from_header, load_mono_model, metric_depth, predict_disparity,
                        shipped_weights_path)
from .metrics import depth_metrics, mean_metrics

HELDOUT_FIRST_SEED = 10_000_000
SPEED_SIZE_HW = (256, 384)


def motorcycle_ground_truth() -> Dict[str, Any]:
    """Left image (H,W,3) uint8, GT depth (H,W) metres (NaN = no GT) and the geometry."""
    from ..motorcycle import load_motorcycle
    data = load_motorcycle()
    geometry = data['geometry']
    depth_m, _ = disparity_to_depth(data['disparity_px'], geometry.fx, geometry.baseline_m,
                                    geometry.doffs_px)
    return {'left': data['left'], 'depth_m': depth_m, 'fx_px': geometry.fx}


def _to_tensor(image_rgb8: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image_rgb8)).permute(2, 0, 1)[None].float().div(255).to(device)


def predict_depth_m(model, image_rgb8: np.ndarray, fx_px: float, input_size: Tuple[int, int],
                    post_process: bool, device, baseline_m: Optional[float]) -> np.ndarray:
    """Metric-mode depth (H,W) of one image, metres, with ``baseline_m`` the training rig's
    baseline (the weights' ``training_rig.baseline_m``, as the node's metric mode uses; None:
    the synthetic rig's, for figures that do not depend on it)."""
    disparity = predict_disparity(model, _to_tensor(image_rgb8, device), input_size, post_process)
    depth_m, _ = metric_depth(disparity[0, 0].cpu().numpy(), fx_px, image_rgb8.shape[1],
                              baseline_m or TRAINING_RIG['baseline_m'])
    return depth_m


def weights_baseline_m(header) -> Optional[float]:
    """The baseline metric mode uses for these weights, or None when they record none (then
    only the scale-invariant alignments mean anything: 'raw' is left out of the report)."""
    try:
        return baseline_from_header(header)
    except ValueError:
        return None


def _metrics(pred_m, gt_m, max_depth_m, with_raw: bool) -> Dict[str, Any]:
    metrics = depth_metrics(pred_m, gt_m, max_depth_m)
    if not with_raw:
        del metrics['raw']
    return metrics


def evaluate_motorcycle(model, input_size, device, max_depth_m: Optional[float],
                        baseline_m: Optional[float] = TRAINING_RIG['baseline_m']
                        ) -> Dict[str, Any]:
    """Metrics with and without pp; ``baseline_m`` None: the weights record no rig, 'raw' is
    left out (the alignments do not depend on the baseline)."""
    gt = motorcycle_ground_truth()
    out = {}
    for pp in (False, True):
        pred = predict_depth_m(model, gt['left'], gt['fx_px'], input_size, pp, device,
                               baseline_m)
        out['pp' if pp else 'no_pp'] = _metrics(pred, gt['depth_m'], max_depth_m,
                                                baseline_m is not None)
    return out


def heldout_cache(root: str, count: int, height: int, width: int) -> Dict[str, Any]:
    build_synthetic_cache(root, count, height, width, first_seed=HELDOUT_FIRST_SEED,
                          config=training_synth_config(), with_depth=True, progress=False)
    return load_cache(root)


def evaluate_synthetic(model, arrays, input_size, device, max_depth_m: Optional[float],
                       baseline_m: Optional[float] = TRAINING_RIG['baseline_m']
                       ) -> Dict[str, Any]:
    """As :func:`evaluate_motorcycle`, averaged over the held-out pairs."""
    out = {}
    for pp in (False, True):
        per_image = []
        for index in range(len(arrays['left'])):
            image = np.array(arrays['left'][index])
            pred = predict_depth_m(model, image, float(arrays['fx_px'][index]), input_size, pp,
                                   device, baseline_m)
            per_image.append(_metrics(pred, np.array(arrays['depth_left_m'][index]),
                                      max_depth_m, baseline_m is not None))
        out['pp' if pp else 'no_pp'] = mean_metrics(per_image)
    return out


def measure_speed(model, device, size_hw=SPEED_SIZE_HW, repeats: int = 20) -> Dict[str, Any]:
    """Frames/s of the bare network (one 1x3xHxW forward) and of predict_disparity with pp,
    with one CPU thread and with torch's default thread count (on a shared, busy CPU two
    OpenMP threads can be slower than one, so both are reported)."""
    image = torch.rand(1, 3, *size_hw, device=device)
    default_threads = torch.get_num_threads()
    result: Dict[str, Any] = {
        'size_wh': [size_hw[1], size_hw[0]], 'device': str(device),
        'cpu': platform.processor() or platform.machine(), 'cpu_count': os.cpu_count(),
        'load_average_1min_before': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None,
        'statistic': 'median over repeats (the machine is shared); best_* is the fastest run'}
    thread_counts = sorted({1, default_threads}) if device.type == 'cpu' else [default_threads]
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            entry = {}
            with torch.inference_mode():
                for label, call in (('forward', lambda: model(image)),
                                    ('pp', lambda: predict_disparity(model, image, size_hw, True))):
                    for _ in range(3):
                        call()
                    if device.type == 'cuda':
                        torch.cuda.synchronize()     # the warm-up's queued work is not timed
                    times = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        call()
                        if device.type == 'cuda':
                            torch.cuda.synchronize()
                        times.append(time.perf_counter() - start)
                    entry[f'{label}_fps'] = float(1.0 / np.median(times))
                    entry[f'{label}_best_fps'] = float(1.0 / np.min(times))
            result[f'threads_{threads}'] = entry
    finally:
        torch.set_num_threads(default_threads)
    best = max(result[f'threads_{t}']['forward_fps'] for t in thread_counts)
    result['forward_fps'] = best
    return result


def make_figure(image_rgb8: np.ndarray, gt_m: np.ndarray, pred_m: np.ndarray,
                title: str) -> np.ndarray:
    """RGB image of four panels: image | GT depth | median-scaled prediction | |error| / GT."""
    import cv2

    from ..colormap import colourise
    valid = np.isfinite(gt_m) & (gt_m > 0) & np.isfinite(pred_m)
    scaled = pred_m * (np.median(gt_m[valid]) / np.median(pred_m[valid]))
    lo, hi = np.percentile(gt_m[valid], [2, 98])
    error = np.where(valid, np.abs(scaled - gt_m) / gt_m, np.nan)
    panels = [image_rgb8, colourise(gt_m, lo, hi), colourise(scaled, lo, hi),
              colourise(error, 0.0, 0.3)]
    labels = ['image', f'GT depth {lo:.2f}-{hi:.2f} m', 'predicted (median-scaled)',
              'abs rel error 0-0.3']
    tiles = []
    for panel, label in zip(panels, labels):
        tile = np.array(panel, order='C')      # a copy: the labels must not mark the caller's image
        cv2.putText(tile, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
        tiles.append(tile)
    top = np.concatenate(tiles[:2], axis=1)
    bottom = np.concatenate(tiles[2:], axis=1)
    canvas = np.concatenate([top, bottom], axis=0)
    cv2.putText(canvas, title, (8, canvas.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                (255, 255, 255), 2)
    return canvas


def run_evaluation(*, datasets=('motorcycle', 'synthetic'), weights: str = '',
                   ablation_weights: Optional[str] = None, input_size: Optional[Tuple[int, int]] = None,
                   max_depth_m: Optional[float] = None, synthetic_count: int = 200,
                   synthetic_cache: str = '', device: str = 'cpu', figure: bool = False,
                   speed: bool = True) -> Tuple[Dict[str, Any], Optional[np.ndarray]]:
    """The whole benchmark as one JSON-ready dict (see the module docstring), and with
    ``figure`` the Motorcycle figure (RGB; :func:`make_figure`), else None."""
    from ..training import resolve_device
    device = resolve_device(device)
    weights = weights or shipped_weights_path(SHIPPED_WEIGHTS)
    if ablation_weights is None:
        candidate = shipped_weights_path(SHIPPED_ABLATION_WEIGHTS)
        ablation_weights = candidate if os.path.isfile(candidate) and not weights.endswith(
            SHIPPED_ABLATION_WEIGHTS) else ''
    runs = {'lr': weights}
    if ablation_weights:
        runs['no_lr'] = ablation_weights
    report: Dict[str, Any] = {
        'benchmark': 'corr_depth eval mono',
        'alignments': {'raw': 'metric mode with the baseline the weights record (as the node), '
                              'no alignment; absent for weights that record none',
                       'median': 'depth * median(gt)/median(pred) (then capped at max depth)',
                       'scale_shift_inv': 'least-squares scale and shift of inverse depth; aligned '
                                          'depth capped at max depth, or without one at the '
                                          'image\'s farthest ground truth (flatters it)'},
        'post_processing': {'no_pp': 'single pass', 'pp': 'mirrored-input averaging (Godard 2017)'},
        'max_depth_m': max_depth_m, 'models': {}}
    first_model = None
    for name, path in runs.items():
        model, header = load_mono_model(path, device)
        size = input_size or input_size_from_header(header)
        baseline_m = weights_baseline_m(header)
        entry: Dict[str, Any] = {'weights': path, 'identity': header.get('identity'),
                                 'loss': header.get('metadata', {}).get('loss'),
                                 'input_size_hw': list(size), 'baseline_m': baseline_m}
        if 'motorcycle' in datasets:
            entry['motorcycle'] = evaluate_motorcycle(model, size, device, max_depth_m,
                                                      baseline_m)
        if 'synthetic' in datasets:
            height, width = input_size_from_header(header)
            cache = synthetic_cache or os.path.join(
                'runs', 'mono', f'cache_heldout_{height}x{width}_{synthetic_count}')
            try:
                arrays = heldout_cache(cache, synthetic_count, height, width)
            except OSError as exc:
                # Rendered into the working folder by default, which may not be writable.
                raise ValueError(f'the held-out synthetic pairs cannot be cached in {cache} '
                                 f'({exc.strerror or exc}): give --synthetic-cache a folder '
                                 'this user can write') from exc
            entry['synthetic'] = {'first_seed': HELDOUT_FIRST_SEED, 'count': synthetic_count,
                                  'size_hw': [height, width],
                                  **evaluate_synthetic(model, arrays, size, device, max_depth_m,
                                                       baseline_m)}
        report['models'][name] = entry
        if first_model is None:
            first_model = (model, size)
    # What the alignments alone achieve: a constant depth map (no information at all). A model
    # has learned something only where it beats this row.
    baseline: Dict[str, Any] = {}
    if 'motorcycle' in datasets:
        gt = motorcycle_ground_truth()['depth_m']
        baseline['motorcycle'] = depth_metrics(np.ones_like(gt), gt, max_depth_m)
    if 'synthetic' in datasets:
        baseline['synthetic'] = mean_metrics([
            depth_metrics(np.ones_like(np.array(d)), np.array(d), max_depth_m)
            for d in arrays['depth_left_m']])
    report['baseline_constant_depth'] = baseline
    if speed:
        report['speed'] = measure_speed(first_model[0], device)
    canvas = None
    if figure:
        if 'motorcycle' not in datasets:
            raise ValueError('the figure shows the Motorcycle image: evaluate it too')
        model, size = first_model
        gt = motorcycle_ground_truth()
        pred = predict_depth_m(model, gt['left'], gt['fx_px'], size, True, device,
                               None)      # drawn median-scaled: any baseline
        metrics = report['models']['lr']['motorcycle']['pp']['median']
        canvas = make_figure(gt['left'], gt['depth_m'], pred,
                             f'Motorcycle zero-shot, pp: AbsRel {metrics["abs_rel"]:.3f}, '
                             f'd1 {metrics["delta1"]:.3f}')
    return report, canvas


def write_json(report: Dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=2)
        f.write('\n')
