"""Colourised images for people (RViz, PNGs): disparity, depth, confidence, heatmaps."""
from typing import Optional

import cv2
import numpy as np


def colourise(values: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None,
              invalid_rgb=(0, 0, 0), colormap: int = cv2.COLORMAP_TURBO) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 RGB with a perceptual colour map; NaN/inf -> invalid_rgb.

    vmin/vmax default to the 2nd/98th percentiles of the finite values (robust to outliers).
    """
    finite = np.isfinite(values)
    out = np.empty(values.shape + (3,), dtype=np.uint8)
    out[:] = invalid_rgb
    if not finite.any():
        return out
    lo = np.percentile(values[finite], 2) if vmin is None else vmin
    hi = np.percentile(values[finite], 98) if vmax is None else vmax
    scale = 255.0 / max(hi - lo, 1e-12)
    grey = np.clip((np.where(finite, values, lo) - lo) * scale, 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(grey, colormap)
    out[finite] = bgr[finite][:, ::-1]
    return out
