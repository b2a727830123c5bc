"""OpenCV StereoSGBM backend with scanline hole filling (dense output)."""
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from ..shapes import check_shape
from .base import StereoBackend, StereoResult

_MODES = {'sgbm': cv2.STEREO_SGBM_MODE_SGBM, 'hh': cv2.STEREO_SGBM_MODE_HH,
          'sgbm_3way': cv2.STEREO_SGBM_MODE_SGBM_3WAY, 'hh4': cv2.STEREO_SGBM_MODE_HH4}


def sgbm_window(height: int, width: int, min_disparity: int, num_disparities: int,
                block_size: int) -> Tuple[int, int, int, int]:
    """(x, y, width, height) of the pixels SGBM computes from a whole search range and a whole
    block: a column needs its largest disparity to stay inside the right image (x >= min +
    num - 1 plus half a block), the block must fit at the other edges, and the smallest
    disparity (when positive) cuts the right edge. stereo_image_proc publishes the same
    region as DisparityImage.valid_window. Pixels outside it are only hole-filled."""
    border = block_size // 2
    left = max(0, min_disparity + num_disparities - 1 + border)
    right = width - (border + min_disparity if min_disparity >= 0 else max(border, -min_disparity))
    return left, border, max(0, right - left), max(0, height - 2 * border)


# The stereo node's sgbm.* parameter ranges; SgbmParams.check_ranges checks them for
# `corr_depth process-bag --sgbm KEY=VALUE`, so that it refuses what the node refuses. (validate
# does not: the mono trainer's Depth Hints matcher searches 0.2 x width, past 512 on images wider
# than 2560 px.)
SGBM_RANGES = {'min_disparity': (-256, 256), 'num_disparities': (16, 512), 'block_size': (1, 31),
               'p1': (0, 100000), 'p2': (0, 400000), 'disp12_max_diff': (-1, 512),
               'pre_filter_cap': (0, 255), 'uniqueness_ratio': (0, 100),
               'speckle_window_size': (0, 10000), 'speckle_range': (0, 64)}


@dataclass(frozen=True)
class SgbmParams:
    """StereoSGBM parameters (OpenCV names in snake_case). P1/P2 = 0 means the usual
    8*C*block^2 and 32*C*block^2 with C = 1 channel (we match on grey images)."""

    min_disparity: int = 0
    num_disparities: int = 64
    block_size: int = 5
    p1: int = 0
    p2: int = 0
    disp12_max_diff: int = 1
    pre_filter_cap: int = 63
    uniqueness_ratio: int = 10
    speckle_window_size: int = 100
    speckle_range: int = 2
    mode: str = 'sgbm_3way'
    fill_holes: bool = True

    def validate(self, check_penalties: bool = True) -> None:
        """ValueError with the reason for an invalid set. ``check_penalties`` False leaves out
        the p2 > p1 check, which needs p1, p2 and block_size together (a command line that
        gives them one by one checks each alone, then the whole set)."""
        if self.num_disparities <= 0 or self.num_disparities % 16:
            raise ValueError(f'num_disparities must be a positive multiple of 16, got {self.num_disparities}')
        if self.block_size < 1 or self.block_size % 2 == 0:
            raise ValueError(f'block_size must be odd and >= 1, got {self.block_size}')
        if self.mode not in _MODES:
            raise ValueError(f'mode must be one of {sorted(_MODES)}, got {self.mode!r}')
        # Compared as the matcher uses them (0 = the default); OpenCV would otherwise quietly
        # raise P2 to P1 + 1, e.g. for p1 = 0 (200 at block 5) and p2 = 100.
        p1, p2 = self.penalties()
        if check_penalties and p2 <= p1:
            raise JointSettingsError(f'p2 must be greater than p1: they are {p2} and {p1} as used '
                             f'(set {self.p2} and {self.p1}; 0 means 32 and 8 x block_size^2)')
        for field in ('disp12_max_diff', 'pre_filter_cap', 'uniqueness_ratio',
                      'speckle_window_size', 'speckle_range', 'p1', 'p2'):
            if getattr(self, field) < (-1 if field == 'disp12_max_diff' else 0):
                raise ValueError(f'{field} must be non-negative, got {getattr(self, field)}')

    def check_ranges(self) -> None:
        """ValueError unless every field lies in SGBM_RANGES (the stereo node's parameter
        ranges)."""
        for field, (low, high) in SGBM_RANGES.items():
            if not low <= getattr(self, field) <= high:
                raise ValueError(f'{field} must be in [{low}, {high}], got {getattr(self, field)}')

    def penalties(self) -> Tuple[int, int]:
        """(P1, P2) as the matcher uses them: p1 / p2, or 8 / 32 x block_size^2 when 0."""
        area = self.block_size * self.block_size
        return self.p1 or 8 * area, self.p2 or 32 * area

    def search_count(self, max_disparity_px: Optional[int] = None) -> int:
        """OpenCV's numDisparities: ``num_disparities``, or with ``max_disparity_px`` the
        range from ``min_disparity`` up to it, in OpenCV's multiples of 16: the candidates
        min_disparity .. min_disparity + count - 1 reach at least max_disparity_px - 1 (so 64
        from 0 searches 64 candidates, 0..63, as stereo_image_proc's range of 64 does), and any
        past max_disparity_px are marked invalid by :meth:`SgbmBackend.compute`."""
        if max_disparity_px is None:
            return self.num_disparities
        if max_disparity_px <= self.min_disparity:
            raise JointSettingsError(f'max_disparity_px ({max_disparity_px}) must be greater than '
                             f'sgbm.min_disparity ({self.min_disparity})')
        return max(16, -(-(max_disparity_px - self.min_disparity) // 16) * 16)


class JointSettingsError(ValueError):
    """Settings each valid alone but not together (p2 > p1; max_disparity_px above
    min_disparity)."""


def fill_disparity_holes(disparity_px: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill invalid pixels along each scanline with the smaller of the nearest valid
    disparities to the left and right.

    Holes in SGBM output are mostly occlusions, and an occluded pixel belongs to the farther
    (smaller-disparity) surface, hence the minimum (the Middlebury-style background fill).
    Rows with no valid pixel stay as they are. (H, W) float32 -> (H, W) float32.
    """
    sizes = check_shape('disparity_px', disparity_px, ('H', 'W'))
    check_shape('valid', valid, ('H', 'W'), sizes)
    height, width = disparity_px.shape
    out = np.array(disparity_px, dtype=np.float32)
    holes = np.flatnonzero(~valid)  # flat indices; only these are looked up (~15 % on SGBM output)
    if holes.size == 0:
        return out
    cols = np.arange(width, dtype=np.int32)
    # Column of the nearest valid pixel at or left of each pixel (-1: none) and, on the
    # mirrored rows, at or right of it (width: none). int32 and flat lookups: this runs on
    # every frame, and the int64 2-D fancy-indexing version took 2.5x as long.
    left_idx = np.where(valid, cols, np.int32(-1))
    np.maximum.accumulate(left_idx, axis=1, out=left_idx)
    right_mirrored = np.where(valid[:, ::-1], cols[::-1], np.int32(width))
    np.minimum.accumulate(right_mirrored, axis=1, out=right_mirrored)
    row_start = holes - holes % width
    left = left_idx.reshape(-1)[holes]
    right = right_mirrored.reshape(-1)[row_start + (width - 1) - (holes - row_start)]
    flat = disparity_px.reshape(-1)
    inf = np.float32(np.inf)
    left_val = np.where(left >= 0, flat[row_start + np.maximum(left, 0)], inf)
    right_val = np.where(right < width, flat[row_start + np.minimum(right, width - 1)], inf)
    filled = np.minimum(left_val, right_val)
    found = np.isfinite(filled)  # a row without any valid pixel keeps its values
    out.reshape(-1)[holes[found]] = filled[found]
    return out


class SgbmBackend(StereoBackend):
    """Semi-global matching (Hirschmüller 2008) through OpenCV, on grey images."""

    name = 'sgbm'

    def __init__(self, **params: Any):
        self._params = SgbmParams()
        # The matcher and the (parameters, search range) it was built for, swapped together:
        # a node changes parameters on its executor thread while a frame runs on its worker.
        self._matcher = (None, None)
        self._lock = threading.Lock()
        self.set_params(**params)

    def get_params(self) -> Dict[str, Any]:
        return asdict(self._params)

    def set_params(self, **params: Any) -> None:
        with self._lock:
            unknown = set(params) - set(asdict(self._params))
            if unknown:
                raise ValueError(f'unknown sgbm parameter(s) {sorted(unknown)}')
            candidate = replace(self._params, **params)
            candidate.validate()
            self._params = candidate    # the matcher is rebuilt for it on the next frame

    def _get_matcher(self, p: SgbmParams, num_disparities: int):
        """A matcher for parameters ``p`` (one frame's snapshot) and this search range."""
        key = (p, num_disparities)
        with self._lock:
            built_for, matcher = self._matcher
        if built_for == key:
            return matcher
        p1, p2 = p.penalties()
        matcher = cv2.StereoSGBM_create(
            minDisparity=p.min_disparity, numDisparities=num_disparities,
            blockSize=p.block_size, P1=p1, P2=p2,
            disp12MaxDiff=p.disp12_max_diff, preFilterCap=p.pre_filter_cap,
            uniquenessRatio=p.uniqueness_ratio, speckleWindowSize=p.speckle_window_size,
            speckleRange=p.speckle_range, mode=_MODES[p.mode])
        with self._lock:
            if self._params is p:       # not superseded while it was built
                self._matcher = (key, matcher)
        return matcher

    def compute(self, left_rgb: np.ndarray, right_rgb: np.ndarray,
                max_disparity_px: Optional[int] = None) -> StereoResult:
        sizes = check_shape('left_rgb', left_rgb, ('H', 'W', 3))
        check_shape('right_rgb', right_rgb, ('H', 'W', 3), sizes)
        params = self._params           # one snapshot for the whole frame
        # max_disparity_px is the largest disparity wanted, as for the learned backends: the
        # search runs from min_disparity up to it (not that many disparities from min).
        num_disparities = params.search_count(max_disparity_px)
        width = sizes['W']
        if params.min_disparity + num_disparities >= width or params.min_disparity <= -width:
            # OpenCV would fail with an assertion, or try to allocate exabytes.
            raise ValueError(f'the disparity search range ({num_disparities} px from '
                             f'{params.min_disparity}) does not fit an image {width} px wide: '
                             'lower max_disparity_px or sgbm.num_disparities')
        left_grey = cv2.cvtColor(left_rgb, cv2.COLOR_RGB2GRAY)
        right_grey = cv2.cvtColor(right_rgb, cv2.COLOR_RGB2GRAY)
        raw = self._get_matcher(params, num_disparities).compute(left_grey, right_grey)
        # OpenCV returns fixed point with 4 fractional bits; invalid is minDisparity - 1 (scaled).
        disparity_px = raw.astype(np.float32) / 16.0
        valid = raw > (params.min_disparity - 1) * 16
        top = params.min_disparity + num_disparities - 1
        beyond = None
        if max_disparity_px is not None:
            # The range is rounded up to a multiple of 16: what lies past the requested
            # maximum is invalid, never copied into a hole, and not filled itself (a near
            # object would take the background's disparity).
            beyond = raw > max_disparity_px * 16
            valid &= ~beyond
            top = min(top, max_disparity_px)
        # The first num_disparities columns have no full search range: OpenCV marks them invalid.
        confidence = valid.astype(np.float32)
        if params.fill_holes:
            disparity_px = fill_disparity_holes(disparity_px, valid)
            valid = np.isfinite(disparity_px) & (disparity_px >= params.min_disparity) \
                & np.any(valid, axis=1, keepdims=True)
            if beyond is not None:
                valid &= ~beyond
        searched = (float(params.min_disparity), float(top))
        return StereoResult(disparity_px=disparity_px, valid=valid, confidence=confidence,
                            search_range_px=searched,
                            computed_window=sgbm_window(sizes['H'], width, params.min_disparity,
                                                        num_disparities, params.block_size))
