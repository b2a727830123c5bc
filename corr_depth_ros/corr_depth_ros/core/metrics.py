"""Accuracy metrics for disparity (pixels) over ground-truth-valid pixels."""
from typing import Dict, Optional, Sequence

import numpy as np

from .shapes import check_shape


def disparity_metrics(pred_px: np.ndarray, gt_px: np.ndarray, mask: Optional[np.ndarray] = None,
                      thresholds_px: Sequence[float] = (1.0, 2.0, 4.0)) -> Dict[str, float]:
    """End-point error (mean |pred - gt|) and bad-t percentages over pixels with finite GT.

    Dense evaluation: a non-finite prediction (a hole) at a GT-valid pixel counts as a
    prediction of 0 px, so holes are errors, never skipped; ``holes_pct`` says how many.
    Args: (H, W) arrays in pixels; ``mask`` (H, W) bool restricts the evaluated pixels.
    """
    sizes = check_shape('pred_px', pred_px, ('H', 'W'))
    check_shape('gt_px', gt_px, ('H', 'W'), sizes)
    evaluate = np.isfinite(gt_px)
    if mask is not None:
        check_shape('mask', mask, ('H', 'W'), sizes)
        evaluate &= mask
    count = int(evaluate.sum())
    if count == 0:
        raise ValueError('no ground-truth-valid pixels to evaluate')
    pred = pred_px[evaluate].astype(np.float64)
    gt = gt_px[evaluate].astype(np.float64)
    missing = ~np.isfinite(pred)
    # A hole is as wrong as predicting zero disparity.
    error = np.abs(np.where(missing, 0.0, pred) - gt)
    out = {'epe_px': float(error.mean()), 'pixels': count,
           'holes_pct': float(100.0 * missing.mean())}
    for t in thresholds_px:
        out[f'bad_{t:g}_pct'] = float(100.0 * (error > t).mean())
    return out
