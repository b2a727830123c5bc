"""Evaluation of stereo backends on Middlebury Motorcycle and held-out synthetic pairs.

Every backend sees the same pairs in the same run. Metrics are dense, over all pixels with
ground truth (occluded ones included): a pixel the backend leaves invalid counts as a
prediction of 0 px (see core/metrics.py), so a sparse backend cannot look better by skipping
hard pixels. Runtime is the median wall time of ``compute`` over several warm runs per pair.
"""
import time
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from ..backends.base import StereoBackend
from ..colormap import colourise
from ..metrics import disparity_metrics
from ..shapes import check_shape

DENSE_NOTE = ('dense: every pixel with ground truth is scored, occluded pixels included; '
              'pixels a backend marks invalid count as a 0 px prediction (holes are errors)')


def motorcycle_pairs(scale: float = 1.0) -> List[Dict[str, np.ndarray]]:
    """The Motorcycle pair (741x500) as a one-item list, optionally resized by ``scale``.
    Disparity scales with the image width; GT is resized with nearest neighbour so that no
    pixel mixes foreground and background (NaN stays NaN)."""
    from ..motorcycle import load_motorcycle
    data = load_motorcycle()
    left, right, gt = data['left'], data['right'], data['disparity_px']
    if scale != 1.0:
        size = (int(round(left.shape[1] * scale)), int(round(left.shape[0] * scale)))
        left = cv2.resize(left, size, interpolation=cv2.INTER_AREA)
        right = cv2.resize(right, size, interpolation=cv2.INTER_AREA)
        gt = cv2.resize(gt, size, interpolation=cv2.INTER_NEAREST) * (size[0] / data['left'].shape[1])
    return [{'name': f'motorcycle@{scale:g}', 'left': left, 'right': right,
             'disparity_px': gt.astype(np.float32)}]


def synthetic_pairs(count: int, height: int, width: int, seed: int) -> List[Dict[str, np.ndarray]]:
    """``count`` rendered pairs (uint8 RGB, GT disparity with NaN where none) with sample seeds
    ``seed + index``: use seeds training never saw (training renders sample seeds
    (seed * 1e6) * 1000003 + index, validation 9e8 * 1000003 + index; the default evaluation
    seed 950_000_000 is apart from both)."""
    from ..synth.stereo import render_stereo_pair
    pairs = []
    for i in range(count):
        sample = render_stereo_pair(seed + i, height, width)

        def to_uint8(image):
            return np.ascontiguousarray(
                (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8))
        gt = sample['disparity_left_px'][0].numpy().astype(np.float32)
        gt = np.where(np.isfinite(gt) & (gt > 0), gt, np.nan).astype(np.float32)
        pairs.append({'name': f'synthetic#{seed + i}', 'left': to_uint8(sample['left']),
                      'right': to_uint8(sample['right']), 'disparity_px': gt})
    return pairs


def depth_edge_mask(gt_px: np.ndarray) -> np.ndarray:
    """(H,W) GT disparity (NaN = none) -> (H,W) bool: pixels within 3 px of a GT disparity step
    over 1 px between neighbours (depth edges, as train stereo --edge-weight weighs them)."""
    import torch

    from .train import disparity_edge_band
    return disparity_edge_band(torch.from_numpy(gt_px.astype(np.float32))[None, None])[0, 0].numpy()


class _PixelWeighted:
    """Sums of per-pair metrics weighted by their pixel counts -> means over all pixels."""

    def __init__(self):
        self.totals: Dict[str, float] = {}
        self.pixels = 0

    def add(self, metrics: Dict[str, float]) -> None:
        for key, value in metrics.items():
            if key != 'pixels':
                self.totals[key] = self.totals.get(key, 0.0) + value * metrics['pixels']
        self.pixels += metrics['pixels']

    def means(self) -> Dict[str, float]:
        return {**{k: v / self.pixels for k, v in self.totals.items()}, 'pixels': self.pixels} \
            if self.pixels else {'pixels': 0}


def evaluate_backend(backend: StereoBackend, pairs: Sequence[Dict[str, np.ndarray]], *,
                     repeats: int = 3) -> Dict[str, object]:
    """Run ``backend`` on every pair; pixel-weighted metrics over all pairs, median runtime.

    Returns {'epe_px', 'bad_1_pct', 'bad_2_pct', 'bad_4_pct', 'holes_pct', 'pixels',
    'by_region': {'depth_edges': {...}, 'elsewhere': {...}, 'depth_edge_share_pct'} (the same
    metrics split by :func:`depth_edge_mask`, and the edges' share of the GT pixels),
    'runtime_ms_median', 'runtime_ms_runs', 'per_pair': [...],
    'predictions': [(H, W) ...]}.
    """
    overall = _PixelWeighted()
    regions = {'depth_edges': _PixelWeighted(), 'elsewhere': _PixelWeighted()}
    per_pair, predictions, runs_ms = [], [], []
    for pair in pairs:
        sizes = check_shape('left', pair['left'], ('H', 'W', 3))
        check_shape('disparity_px', pair['disparity_px'], ('H', 'W'), sizes)
        backend.compute(pair['left'], pair['right'])                 # warm-up
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            result = backend.compute(pair['left'], pair['right'])
            times.append(1000.0 * (time.perf_counter() - start))
        runs_ms.extend(times)
        prediction = np.where(result.valid, result.disparity_px, np.nan).astype(np.float32)
        metrics = disparity_metrics(prediction, pair['disparity_px'])
        entry = {'name': pair['name'], **metrics, 'runtime_ms_median': float(np.median(times))}
        if getattr(backend, 'last_input_scale', None) is not None:
            entry['input_scale'] = backend.last_input_scale     # learned: the scale it ran at
        per_pair.append(entry)
        predictions.append(prediction)
        overall.add(metrics)
        edges = depth_edge_mask(pair['disparity_px'])
        for name, mask in (('depth_edges', edges), ('elsewhere', ~edges)):
            if (mask & np.isfinite(pair['disparity_px'])).any():
                regions[name].add(disparity_metrics(prediction, pair['disparity_px'], mask))
    by_region = {name: r.means() for name, r in regions.items()}
    by_region['depth_edge_share_pct'] = 100.0 * by_region['depth_edges']['pixels'] / overall.pixels
    return {**overall.means(), 'by_region': by_region,
            'runtime_ms_median': float(np.median(runs_ms)),
            'runtime_ms_runs': [round(t, 2) for t in runs_ms], 'per_pair': per_pair,
            'predictions': predictions}


def error_figure(left_rgb: np.ndarray, gt_px: np.ndarray,
                 predictions: Dict[str, np.ndarray], max_error_px: float = 4.0) -> np.ndarray:
    """One RGB panel per row: left | GT | prediction | |error| (0..max_error_px, grey = no GT)
    for each named prediction; all disparities share the GT's colour range. -> (h, w, 3) uint8."""
    sizes = check_shape('left_rgb', left_rgb, ('H', 'W', 3))
    check_shape('gt_px', gt_px, ('H', 'W'), sizes)
    finite = gt_px[np.isfinite(gt_px)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    gt_colour = colourise(gt_px, vmin, vmax)
    rows = []
    for name, pred in predictions.items():
        error = np.abs(np.where(np.isfinite(pred), pred, 0.0) - gt_px)
        panels = [left_rgb, gt_colour, colourise(pred, vmin, vmax),
                  # Grey where there is no GT: inferno's zero error is black already.
                  colourise(error, 0.0, max_error_px, invalid_rgb=(128, 128, 128),
                            colormap=cv2.COLORMAP_INFERNO)]
        row = np.concatenate(panels, axis=1).copy()
        for i, label in enumerate(('left', 'ground truth', f'{name}', f'{name} |error| 0-{max_error_px:g}px')):
            cv2.putText(row, label, (8 + i * left_rgb.shape[1], 22), cv2.FONT_HERSHEY_SIMPLEX,
                        0.6, (255, 255, 255), 2, cv2.LINE_AA)
        rows.append(row)
    return np.concatenate(rows, axis=0)


def strip_predictions(report: Dict[str, object]) -> Dict[str, object]:
    """The report without the (large) prediction arrays, ready for JSON."""
    return {k: v for k, v in report.items() if k != 'predictions'}


def environment(threads: Optional[int] = None) -> Dict[str, object]:
    import os
    import platform
    info = {'cpu_count': os.cpu_count(), 'platform': platform.platform(),
            'load_average_1min_at_start': os.getloadavg()[0]}
    try:
        import torch
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    cuda=torch.cuda.is_available())
    except ImportError:
        pass
    if threads is not None:
        info['requested_threads'] = threads
    return info
