"""Monocular depth metrics (Eigen et al., NeurIPS 2014) and the two scale alignments.

A monocular network's depth has an unknown scale, so it is aligned to the ground truth before
the errors are measured, in one of two standard ways (the JSON names say which):

* ``median``: depth times ``median(gt) / median(pred)`` (Zhou et al., CVPR 2017, and every
  self-supervised paper since);
* ``scale_shift_inv``: least-squares scale ``a`` and shift ``b`` of the *inverse* depth,
  ``min sum (a / pred + b - 1 / gt)^2`` (Ranftl et al., MiDaS, TPAMI 2020), then depth =
  ``1 / (a / pred + b)``; fitted inverse depths below ``1 / max_depth_m`` are clamped there
  (without ``max_depth_m``: below the inverse of the image's farthest ground truth), so no
  aligned depth is negative or beyond the evaluated range. Without a fixed cap this uses the
  ground truth to cut over-estimates, which flatters this secondary metric (held-out
  synthetic, LR model: AbsRel 0.217 so, 0.285 clamping only fitted inverse depths <= 0);
  median scaling is never capped so.

Metrics use the pixels with finite, positive GT (and ``<= max_depth_m`` when given); a
non-finite prediction at such a pixel is counted in ``holes_pct`` and excluded (the mono net is
dense, so holes only come from a broken input).
"""
from typing import Dict, Optional, Tuple

import numpy as np

from ..shapes import check_shape


def _pixels(pred_m: np.ndarray, gt_m: np.ndarray, max_depth_m: Optional[float]
            ) -> Tuple[np.ndarray, np.ndarray, int]:
    sizes = check_shape('pred_m', pred_m, ('H', 'W'))
    check_shape('gt_m', gt_m, ('H', 'W'), sizes)
    evaluate = np.isfinite(gt_m) & (gt_m > 0)
    if max_depth_m is not None and max_depth_m > 0:
        evaluate &= gt_m <= max_depth_m
    if not evaluate.any():
        raise ValueError('no ground-truth-valid pixels to evaluate')
    holes = int((evaluate & ~(np.isfinite(pred_m) & (pred_m > 0))).sum())
    evaluate &= np.isfinite(pred_m) & (pred_m > 0)
    if not evaluate.any():
        raise ValueError('the prediction has no valid pixel where the ground truth is valid')
    return pred_m[evaluate].astype(np.float64), gt_m[evaluate].astype(np.float64), holes


def error_metrics(pred_m: np.ndarray, gt_m: np.ndarray) -> Dict[str, float]:
    """Eigen metrics of already-aligned 1-D positive depth arrays (same unit)."""
    ratio = np.maximum(pred_m / gt_m, gt_m / pred_m)
    return {
        'abs_rel': float(np.mean(np.abs(pred_m - gt_m) / gt_m)),
        'sq_rel': float(np.mean((pred_m - gt_m) ** 2 / gt_m)),
        'rmse': float(np.sqrt(np.mean((pred_m - gt_m) ** 2))),
        'rmse_log': float(np.sqrt(np.mean((np.log(pred_m) - np.log(gt_m)) ** 2))),
        'delta1': float(np.mean(ratio < 1.25)),
        'delta2': float(np.mean(ratio < 1.25 ** 2)),
        'delta3': float(np.mean(ratio < 1.25 ** 3)),
    }


def median_scale(pred_m: np.ndarray, gt_m: np.ndarray) -> float:
    """``median(gt) / median(pred)`` of 1-D positive arrays."""
    return float(np.median(gt_m) / np.median(pred_m))


def fit_scale_shift_inverse(pred_m: np.ndarray, gt_m: np.ndarray) -> Tuple[float, float]:
    """Least-squares ``(a, b)`` with ``a / pred + b ~= 1 / gt`` (1-D positive arrays)."""
    x = 1.0 / pred_m
    y = 1.0 / gt_m
    design = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(a), float(b)


def depth_metrics(pred_m: np.ndarray, gt_m: np.ndarray, max_depth_m: Optional[float] = None
                  ) -> Dict[str, Dict[str, float]]:
    """All metrics of one (H,W) prediction against (H,W) GT depth (NaN = no GT).

    Returns ``{'raw': ..., 'median': {..., 'scale'}, 'scale_shift_inv': {..., 'scale',
    'shift'}, 'pixels', 'holes_pct'}``; 'raw' is the unaligned prediction (metric mode).
    """
    pred, gt, holes = _pixels(pred_m, gt_m, max_depth_m)
    # Median-scaled predictions are capped at max_depth_m when one is given (a fixed cap for the
    # dataset, like KITTI's 80 m), never at this image's own ground-truth maximum: that would
    # use the answer to cut every over-estimate off (it did until stop 17, flattering AbsRel).
    cap_m = float(max_depth_m) if max_depth_m is not None and max_depth_m > 0 else None
    scale = median_scale(pred, gt)
    a, b = fit_scale_shift_inverse(pred, gt)
    # The fitted inverse depth can reach 0 or below (the affine fit extrapolates): it is floored
    # at the inverse of the cap, or without one of this image's farthest ground truth, as
    # MiDaS-style evaluations floor it at the dataset's range (synthetic scenes have a random
    # scale, so the range is per image). A fixed far value instead would let a handful of
    # pixels dominate the mean. Only this secondary metric is floored so.
    inverse = np.maximum(a / pred + b, 1.0 / (cap_m or float(gt.max())))
    median_scaled = pred * scale if cap_m is None else np.minimum(pred * scale, cap_m)
    return {
        'raw': error_metrics(pred, gt),
        'median': {**error_metrics(median_scaled, gt), 'scale': scale},
        'scale_shift_inv': {**error_metrics(1.0 / inverse, gt), 'scale': a, 'shift': b},
        'pixels': int(gt.size),
        'holes_pct': float(100.0 * holes / (gt.size + holes)),
    }


def mean_metrics(per_image) -> Dict[str, Dict[str, float]]:
    """Average each metric over images (each image weighted equally, as KITTI protocols do)."""
    out: Dict[str, Dict[str, float]] = {}
    for group in [g for g in ('raw', 'median', 'scale_shift_inv') if g in per_image[0]]:
        keys = per_image[0][group].keys()
        out[group] = {k: float(np.mean([m[group][k] for m in per_image])) for k in keys}
    out['images'] = len(per_image)
    return out
