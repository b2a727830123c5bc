"""From a rectified pair to everything the stereo node publishes (numpy; no ROS).

The node, the demo and bag processing all call :func:`run_stereo`, so they cannot drift apart.
"""
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .backends.base import StereoBackend
from .geometry import (StereoGeometry, depth_from_shifted_disparity, depth_to_points,
                       message_disparity, shifted_disparity)
from .shapes import check_shape

# Ranges of the disparity-search override and the confidence threshold, shared by the stereo
# node's parameters and `corr_depth process-bag`'s options.
MAX_DISPARITY_RANGE_PX = (0, 1024)
CONFIDENCE_THRESHOLD_RANGE = (0.0, 1.0)
# max_depth_m of the stereo and mono nodes and process-bag (0: no limit).
MAX_DEPTH_RANGE_M = (0.0, 10000.0)
# Published for invalid pixels, or min_disparity - 1 when that is lower (min_disparity below 0):
# DisparityImage says any value below min_disparity is invalid, and a negative search minimum
# (verged cameras) or a negative doffs (cx_right < cx_left) can put min_disparity at -1 or below.
INVALID_DISPARITY = -1.0


@dataclass
class StereoOutputs:
    """All per-frame outputs on the left image's pixel grid.

    disparity_px: (H, W) float32 backend disparity, no doffs, NaN where invalid.
    message_disparity_px: (H, W) float32 disparity + doffs (DisparityImage convention), invalid
        pixels -1 or, when min_disparity_px is below 0, min_disparity_px - 1 if that is lower
        (below it, as the message defines invalid).
    depth_m: (H, W) float32 metres, NaN invalid (REP 118). valid: (H, W) bool.
    points_m: (H, W, 3) float32 in the left optical frame, NaN invalid (None if not requested).
    confidence: (H, W) float32 in [0, 1] or None.
    valid_window: (x, y, width, height): the backend's computed window (StereoResult), else
        the bounding box of valid pixels.
    min_disparity_px, max_disparity_px: DisparityImage's min_disparity / max_disparity: the
    range the backend searched, plus doffs, as its definition and stereo_image_proc have it
    (a viewer scales colours by it, steady from frame to frame); for a backend that cannot
    say, the range of this frame's valid message disparities (0 if none).
    farthest_depth_m: the farthest depth the backend's search reaches, f * B / (lowest
        disparity searched + doffs); inf when that is 0 or below. Finite with cx_right >
        cx_left (doffs > 0) and a search from 0: farther surfaces have a negative image
        disparity, outside the search, and come out too near.
    """

    disparity_px: np.ndarray
    message_disparity_px: np.ndarray
    depth_m: np.ndarray
    valid: np.ndarray
    points_m: Optional[np.ndarray]
    confidence: Optional[np.ndarray]
    valid_window: Tuple[int, int, int, int]
    min_disparity_px: float = 0.0
    max_disparity_px: float = 0.0
    farthest_depth_m: float = math.inf


def valid_window(valid: np.ndarray) -> Tuple[int, int, int, int]:
    """Bounding box (x, y, width, height) of the True pixels; (0, 0, 0, 0) if none."""
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if rows.size == 0:
        return 0, 0, 0, 0
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def run_stereo(left_rgb: np.ndarray, right_rgb: np.ndarray, geometry: StereoGeometry,
               backend: StereoBackend, *, max_disparity_px: Optional[int] = None,
               confidence_threshold: float = 0.0, max_depth_m: float = 0.0,
               compute_points: bool = True) -> StereoOutputs:
    """Match, then derive depth and points.

    Args:
        left_rgb, right_rgb: (H, W, 3) uint8 rectified images; H, W must match ``geometry``.
        confidence_threshold: pixels with confidence below it become invalid (0 keeps all).
        max_depth_m: pixels farther than this become invalid (0 = no limit).
    """
    sizes = check_shape('left_rgb', left_rgb, ('H', 'W', 3))
    check_shape('right_rgb', right_rgb, ('H', 'W', 3), sizes)
    if (sizes['W'], sizes['H']) != (geometry.width, geometry.height):
        raise ValueError(f'image size {sizes["W"]}x{sizes["H"]} does not match camera_info '
                         f'{geometry.width}x{geometry.height}')
    result = backend.compute(left_rgb, right_rgb, max_disparity_px=max_disparity_px)
    # The per-frame passes over the image are kept few: this runs on every frame in the node,
    # after the backend and before anything is published (issue 2's overhead budget).
    valid = result.valid.copy()
    if result.confidence is not None and confidence_threshold > 0:
        valid &= result.confidence >= confidence_threshold
    # d + doffs: the DisparityImage convention, and what depth divides by.
    shifted = shifted_disparity(result.disparity_px, geometry.doffs_px)
    depth_m, valid = depth_from_shifted_disparity(shifted, geometry.fx, geometry.baseline_m, valid)
    if max_depth_m > 0:
        too_far = depth_m > max_depth_m  # NaN compares False
        depth_m[too_far] = np.nan
        valid &= ~too_far
    disparity = np.where(valid, result.disparity_px, np.float32(np.nan)).astype(np.float32,
                                                                                 copy=False)
    points = depth_to_points(depth_m, geometry.fx, geometry.fy, geometry.cx_left, geometry.cy) \
        if compute_points else None
    window = result.computed_window or valid_window(valid)
    low = high = 0.0
    if result.search_range_px is not None:
        low, high = (float(v + geometry.doffs_px) for v in result.search_range_px)
    elif window[2] > 0:
        # fmin/fmax skip NaN without nanmin's copy; rounding is monotonic, so adding doffs
        # after the reduction gives the same float32 as reducing the shifted values.
        low = float(np.fmin.reduce(disparity, axis=None) + np.float32(geometry.doffs_px))
        high = float(np.fmax.reduce(disparity, axis=None) + np.float32(geometry.doffs_px))
    return StereoOutputs(
        disparity_px=disparity,
        message_disparity_px=message_disparity(shifted, valid, min(INVALID_DISPARITY, low - 1.0)),
        depth_m=depth_m, valid=valid, points_m=points, confidence=result.confidence,
        valid_window=window, min_disparity_px=low, max_disparity_px=high,
        farthest_depth_m=farthest_depth_m(geometry, result.search_range_px))


def farthest_depth_m(geometry: StereoGeometry,
                     search_range_px: Optional[Tuple[float, float]]) -> float:
    """The farthest depth a disparity search reaches: ``f * B / (lowest + doffs)``, inf when
    that shifted disparity is 0 or below. A backend that does not say what it searched gives
    disparities >= 0 (the onnx backend's validity)."""
    lowest = search_range_px[0] if search_range_px is not None else 0.0
    shifted = lowest + geometry.doffs_px
    return geometry.fx * geometry.baseline_m / shifted if shifted > 0 else math.inf


def depth_reach_warning(geometry: StereoGeometry, farthest_m: float, backend_name: str,
                        min_disparity_option: str) -> str:
    """'' or what to tell a user whose cx_right > cx_left (doffs > 0) limits the depth reach:
    depths beyond f * B / doffs have a negative image disparity, which a search from 0 never
    finds, so those surfaces come out too near (stereo_image_proc has the same limit and the
    same remedy, a negative min_disparity). ``min_disparity_option``: how the user sets sgbm's
    min_disparity (the node's parameter, process-bag's option)."""
    if geometry.doffs_px <= 0 or not math.isfinite(farthest_m):
        return ''
    if backend_name == 'sgbm':
        remedy = (f'set {min_disparity_option} to -{math.ceil(geometry.doffs_px)} or lower '
                  '(and num_disparities up by as much to keep the near range)')
    else:
        remedy = (f'the {backend_name} backend searches from disparity 0: for farther scenes use '
                  f'sgbm with a negative {min_disparity_option}, or rectify with equal '
                  'principal points (cx_right = cx_left)')
    return (f'the right camera\'s principal point lies {geometry.doffs_px:.2f} px right of the '
            f'left\'s (cx_right - cx_left): the {backend_name} backend\'s disparity search '
            f'reaches depths up to {farthest_m:.2f} m only, and farther surfaces come out too '
            f'near; {remedy}')


def search_range_problem(backend: StereoBackend, max_disparity_px: Optional[int],
                         input_scale: Optional[float] = None) -> str:
    """'' or why ``max_disparity_px`` (None or 0: the backend's own range) is beyond what
    ``backend`` searches: the learned net's trained range (fixed by training, following
    ``input_scale``, the backend's current one when None); sgbm and onnx have none. The
    stereo node warns or refuses with it, process-bag warns before the first frame."""
    trained = getattr(backend, 'max_disparity_px', None)
    if input_scale is not None and hasattr(backend, 'max_disparity_at'):
        trained = backend.max_disparity_at(input_scale)
    if trained is None or not max_disparity_px or max_disparity_px <= trained:
        return ''
    return (f'max_disparity_px {max_disparity_px} is beyond the {backend.name} backend\'s '
            f'trained range ({trained} px)')


def confidence_unused_warning(out: StereoOutputs, backend_name: str, threshold: float,
                              option: str) -> str:
    """'' or what to tell a user whose confidence threshold (``option``: the node's parameter,
    process-bag's flag) a backend without confidence cannot apply."""
    if out.confidence is not None or threshold <= 0:
        return ''
    return (f'{option} {threshold:g} is not applied: the {backend_name} backend gives no '
            'confidence (an ONNX model without a confidence output); every pixel it outputs is '
            'kept')
