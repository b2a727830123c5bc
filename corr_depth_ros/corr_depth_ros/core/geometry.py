"""Rectified-stereo and pinhole geometry (numpy). No ROS here.

Conventions
-----------
* Camera optical frame as REP 103/105: x right, y down, z forward, metres.
* Pixel (u, v) = (column, row), origin at the centre of the top-left pixel (as CameraInfo).
* Disparity d (pixels) of a left-image pixel: its match in the right image is at u - d.
* The two rectified cameras may have different principal points (Middlebury's ``doffs``):
  ``doffs_px = cx_right - cx_left`` and depth is ``Z = f * B / (d + doffs_px)``.
  stereo_image_proc publishes DisparityImage with the offset already added, so that its
  message definition ``Z = f * T / d`` holds; :func:`message_disparity` does the same.
* Invalid is explicit (REP 118): a non-positive or non-finite disparity gives NaN depth and a
  False validity flag, never an epsilon; an invalid 3D point is (NaN, NaN, NaN).
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .shapes import check_shape


# Focal lengths a real camera has, pixels. Outside them a calibration is broken, and depth or
# points computed with it overflow float32 (fx 1e30 gave +inf depth, fy 1e-9 +inf points,
# against REP 118's NaN-only invalid values).
FOCAL_RANGE_PX = (1e-3, 1e8)


def check_focal_lengths(fx: float, fy: float, what: str) -> None:
    """ValueError unless fx and fy are finite and within FOCAL_RANGE_PX."""
    low, high = FOCAL_RANGE_PX
    if not all(np.isfinite(v) and low <= v <= high for v in (fx, fy)):
        raise ValueError(f'{what} has no valid focal length (fx={fx}, fy={fy}; there is no '
                         f'usable focal length outside [{low:g}, {high:g}] px): is the camera '
                         'calibrated?')


@dataclass(frozen=True)
class StereoGeometry:
    """Intrinsics of a rectified pair, taken from the two cameras' projection matrices P.

    ``fx, fy, cx_left, cy``: left camera, pixels. ``cx_right``: right camera, pixels.
    ``baseline_m``: distance between the optical centres, metres (> 0).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx_left: float
    cy: float
    cx_right: float
    baseline_m: float

    @property
    def doffs_px(self) -> float:
        """Principal-point offset ``cx_right - cx_left``, pixels (Middlebury's doffs)."""
        return self.cx_right - self.cx_left

    @classmethod
    def from_projection_matrices(cls, p_left, p_right, width: int, height: int) -> 'StereoGeometry':
        """Build from the 3x4 rectified projection matrices (CameraInfo.p) of both cameras.

        The right camera's P carries ``Tx = -fx * B`` (CameraInfo docs; the left one Tx = 0),
        so ``B = (Tx_left - Tx_right) / fx``: the difference also holds for P matrices given
        relative to the rig's centre. Raises ValueError with a reason a user can act on when P
        cannot describe a rectified horizontal pair (zero focal length, no baseline, non-positive
        size, left and right P that differ in fx, fy, cy, Ty or Tz, a non-finite principal point).
        """
        p_left = np.asarray(p_left, dtype=np.float64).reshape(3, 4)
        p_right = np.asarray(p_right, dtype=np.float64).reshape(3, 4)
        if width <= 0 or height <= 0:
            raise ValueError(f'camera_info has a non-positive image size {width}x{height}')
        fx, fy = p_left[0, 0], p_left[1, 1]
        check_focal_lengths(fx, fy, 'left P')
        fx_right = p_right[0, 0]
        if not (np.isfinite(fx_right) and fx_right > 0):
            raise ValueError(f'right P has no valid focal length (fx={fx_right})')
        for side, p in (('left', p_left), ('right', p_right)):
            if not np.isfinite(p[:2, 2]).all():
                raise ValueError(f'{side} P has no valid principal point (cx={p[0, 2]}, '
                                 f'cy={p[1, 2]})')
        # A rectified pair shares its focal lengths and its rows (cy); only cx may differ.
        for name, left_value, right_value, tolerance in (
                ('fx', fx, fx_right, 1e-3 * fx), ('fy', fy, p_right[1, 1], 1e-3 * fy),
                ('cy', p_left[1, 2], p_right[1, 2], 0.5)):
            if not abs(left_value - right_value) <= tolerance:
                raise ValueError(f'left and right P differ in {name} ({left_value} and '
                                 f'{right_value}): the camera_infos are not of one rectified '
                                 'pair (publish the rectified P of a stereo calibration)')
        (tx_left, ty_left, tz_left), (tx, ty, tz) = p_left[:, 3], p_right[:, 3]
        if not np.isfinite([tx_left, ty_left, tz_left, tx, ty, tz]).all():
            raise ValueError(f'P has a non-finite translation column (left {p_left[:, 3]}, '
                             f'right {p_right[:, 3]})')
        tx_step, ty_step = tx_left - tx, ty_left - ty
        if tx_step == 0.0 and tx != 0.0:
            raise ValueError(f'left and right P have the same Tx ({tx}): the left camera_info '
                             'carries the right camera\'s P; the left camera\'s Tx is 0')
        if tx_step == 0.0:
            if ty_step != 0.0:
                raise ValueError(f'left and right P differ in Ty ({ty_left} and {ty}), not Tx: '
                                 'a vertical stereo pair, which this node does not take '
                                 '(rectify it as a horizontal pair, Tx = -fx * baseline)')
            raise ValueError(f'right P has Tx = {tx}, so the baseline is unknown: publish the '
                             'right camera_info of a stereo calibration (Tx = -fx * baseline)')
        # Rows line up at every depth only if the cameras are not offset along y or z
        # (CameraInfo: "For the right (second) camera of a horizontal stereo pair, Ty = 0";
        # "we assume Tz = 0"): a 0.1 % offset moves a 100 px disparity's rows by 0.1 px.
        if abs(ty_step) > 1e-3 * abs(tx_step):
            raise ValueError(f'left and right P differ in Ty ({ty_left} and {ty}): the cameras '
                             'are offset vertically, so rows do not line up (publish the P '
                             'of a horizontally rectified pair: Ty = 0)')
        baseline_m = tx_step / fx_right
        # Tz is in metres (P's third row is [0 0 1 Tz]); rounding in a computed P is no offset.
        if max(abs(tz_left), abs(tz)) > 1e-3 * abs(baseline_m):
            raise ValueError(f'P has Tz = {tz_left} (left), {tz} (right): a rectified pair has '
                             'Tz = 0 (publish the P of a rectified stereo calibration)')
        if baseline_m <= 0:
            raise ValueError(f'P gives a negative baseline ({baseline_m:.4f} m; left Tx = '
                             f'{tx_left}, right Tx = {tx}): are left and right swapped? Expected '
                             'the right camera\'s Tx = -fx * baseline < 0, the left\'s 0')
        return cls(width=int(width), height=int(height), fx=float(fx), fy=float(fy),
                   cx_left=float(p_left[0, 2]), cy=float(p_left[1, 2]),
                   cx_right=float(p_right[0, 2]), baseline_m=float(baseline_m))


def disparity_to_depth(disparity_px: np.ndarray, focal_px: float, baseline_m: float,
                       doffs_px: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Depth from disparity: ``Z = f * B / (d + doffs)``.

    Args:
        disparity_px: (H, W) float disparity of the left image, pixels, *without* doffs.
        focal_px: focal length fx, pixels. baseline_m: metres. doffs_px: cx_right - cx_left.
    Returns:
        depth_m (H, W) float32, metres, NaN where invalid; valid (H, W) bool.
    """
    check_shape('disparity_px', disparity_px, (None, None))
    return depth_from_shifted_disparity(shifted_disparity(disparity_px, doffs_px), focal_px,
                                        baseline_m)


def shifted_disparity(disparity_px: np.ndarray, doffs_px: float) -> np.ndarray:
    """``d + doffs`` as float32: what depth divides by and what DisparityImage carries."""
    return np.add(disparity_px, np.float32(doffs_px), dtype=np.float32)


def depth_from_shifted_disparity(shifted_px: np.ndarray, focal_px: float, baseline_m: float,
                                 valid: Optional[np.ndarray] = None
                                 ) -> Tuple[np.ndarray, np.ndarray]:
    """``Z = f * B / d`` for a float32 disparity that already includes doffs.

    ``valid`` (bool, updated in place when given) restricts the pixels converted; pixels whose
    shifted disparity is not finite and positive become invalid. Returns (depth_m, valid).
    """
    numerator = float(focal_px) * float(baseline_m)
    if not (np.isfinite(numerator) and 0 < numerator < np.finfo(np.float32).max):
        raise ValueError(f'focal length x baseline ({focal_px} px x {baseline_m} m) is beyond '
                         'float32: not a real camera')
    finite_positive = np.isfinite(shifted_px)
    # Above this the depth is finite in float32 (REP 118: invalid is NaN, never inf); for any
    # real camera it is ~1e-37 px, i.e. d > 0.
    finite_positive &= shifted_px > np.float32(numerator / np.finfo(np.float32).max)
    if valid is None:
        valid = finite_positive
    else:
        valid &= finite_positive
    depth_m = np.full(shifted_px.shape, np.nan, dtype=np.float32)
    np.divide(np.float32(numerator), shifted_px, out=depth_m, where=valid)
    return depth_m, valid


def message_disparity(shifted_px: np.ndarray, valid: np.ndarray,
                      invalid_value: float = -1.0) -> np.ndarray:
    """Disparity as stereo_msgs/DisparityImage carries it, from :func:`shifted_disparity`
    (doffs included, so ``Z = f*T/d`` holds). Invalid pixels get ``invalid_value`` (below
    min_disparity, as stereo_image_proc does). Returns (H, W) float32.
    """
    sizes = check_shape('shifted_px', shifted_px, ('H', 'W'))
    check_shape('valid', valid, ('H', 'W'), sizes)
    return np.where(valid, shifted_px, np.float32(invalid_value)).astype(np.float32, copy=False)


def _usable_depth(depth_m: np.ndarray) -> np.ndarray:
    """(H, W) depth as float32 with NaN wherever it is not positive and finite; the input
    itself (no copy) when it already is (REP 118 depth from our nodes: NaN invalid)."""
    depth = np.asarray(depth_m, dtype=np.float32)
    if depth.size == 0:
        return depth
    # fmin/fmax skip NaN without a copy: two cheap reductions spare the masked copy.
    low, high = np.fmin.reduce(depth, axis=None), np.fmax.reduce(depth, axis=None)
    if low > 0 and high < np.inf:  # False also when every pixel is NaN
        return depth
    usable = depth > 0  # NaN compares False
    usable &= depth < np.inf
    return np.where(usable, depth, np.float32(np.nan)).astype(np.float32, copy=False)


def _rays(height: int, width: int, fx: float, fy: float, cx: float, cy: float):
    """(1, W) x/z and (H, 1) y/z of the pixel rays, float32."""
    u = (np.arange(width, dtype=np.float32) - np.float32(cx)) / np.float32(fx)
    v = (np.arange(height, dtype=np.float32) - np.float32(cy)) / np.float32(fy)
    return u[None, :], v[:, None]


def depth_to_points(depth_m: np.ndarray, fx: float, fy: float, cx: float,
                    cy: float) -> np.ndarray:
    """Back-project a depth image into the camera optical frame (the nodes pack clouds from
    :func:`depth_to_point_planes` instead).

    Args:
        depth_m: (H, W) depth along z, metres; NaN (or <= 0) where invalid.
    Returns:
        (H, W, 3) float32 points (x, y, z) in metres; (NaN, NaN, NaN) where depth is invalid.
    """
    check_shape('depth_m', depth_m, (None, None))
    height, width = depth_m.shape
    out = np.empty((height, width, 3), dtype=np.float32)
    z = _usable_depth(depth_m)
    u, v = _rays(height, width, fx, fy, cx, cy)
    np.multiply(z, u, out=out[..., 0])
    np.multiply(z, v, out=out[..., 1])
    np.copyto(out[..., 2], z)
    return out


def depth_to_point_planes(depth_m: np.ndarray, fx: float, fy: float, cx: float,
                          cy: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`depth_to_points` as three contiguous (H, W) float32 planes (x, y, z), NaN where
    depth is invalid; z is ``depth_m`` itself (not a copy) when that is float32 with NaN as its
    only invalid value. For packing a cloud in one interleaving pass
    (PointCloud2Packer.pack_planes), where strided writes per field cost twice as much.
    """
    check_shape('depth_m', depth_m, (None, None))
    z = _usable_depth(depth_m)
    u, v = _rays(*z.shape, fx, fy, cx, cy)
    return z * u, z * v, z


def project_points(points_m: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Project (..., 3) camera-frame points to (..., 2) pixels (u, v); NaN for z <= 0 or NaN."""
    if points_m.shape[-1] != 3:
        raise ValueError(f'points_m: last dim must be 3 (x, y, z), got shape {points_m.shape}')
    z = points_m[..., 2]
    ok = np.isfinite(z) & (z > 0)
    safe_z = np.where(ok, z, np.nan)
    u = fx * points_m[..., 0] / safe_z + cx
    v = fy * points_m[..., 1] / safe_z + cy
    return np.stack([u, v], axis=-1)
