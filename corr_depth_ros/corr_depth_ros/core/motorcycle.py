"""The Middlebury 2014 Motorcycle pair that scikit-image ships (quarter resolution, 741x500).

Evaluation data only: never use these images as training textures.
Calibration from ``skimage.data.stereo_motorcycle``'s docstring (valid for the down-sampled
images): f = 994.978 px, cx = 311.193 px, cy = 254.877 px, principal-point dx = 31.086 px
(cx_right - cx_left, Middlebury's doffs), baseline = 193.001 mm.
"""
from typing import Dict

import numpy as np

from .geometry import StereoGeometry

FOCAL_PX = 994.978
CX_LEFT_PX = 311.193
CY_PX = 254.877
DOFFS_PX = 31.086
BASELINE_M = 0.193001


def motorcycle_geometry(width: int = 741, height: int = 500) -> StereoGeometry:
    return StereoGeometry(width=width, height=height, fx=FOCAL_PX, fy=FOCAL_PX,
                          cx_left=CX_LEFT_PX, cy=CY_PX, cx_right=CX_LEFT_PX + DOFFS_PX,
                          baseline_m=BASELINE_M)


def projection_matrices():
    """(P_left, P_right) as 3x4 arrays, as a calibrated stereo driver would publish them."""
    p_left = np.array([[FOCAL_PX, 0, CX_LEFT_PX, 0], [0, FOCAL_PX, CY_PX, 0], [0, 0, 1, 0]])
    p_right = p_left.copy()
    p_right[0, 2] = CX_LEFT_PX + DOFFS_PX
    p_right[0, 3] = -FOCAL_PX * BASELINE_M
    return p_left, p_right


def load_motorcycle() -> Dict[str, object]:
    """Return ``left``, ``right`` (500, 741, 3) uint8 RGB, ``disparity_px`` (500, 741) float32
    ground truth without doffs (NaN where Middlebury has none: it stores +inf), ``geometry``."""
    from skimage.data import stereo_motorcycle  # test/eval dependency only
    left, right, disparity = stereo_motorcycle()
    disparity = np.asarray(disparity, dtype=np.float32).copy()
    disparity[~np.isfinite(disparity)] = np.nan
    return {'left': np.ascontiguousarray(left), 'right': np.ascontiguousarray(right),
            'disparity_px': disparity, 'geometry': motorcycle_geometry(left.shape[1], left.shape[0])}
