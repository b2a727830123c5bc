"""3D points and grasp poses at matched pixels, from a REP 118 depth image.

The surface normal at a pixel is the direction of least variance (PCA, i.e. the total-least-
squares plane; Hoppe et al., SIGGRAPH 1992) of the valid 3D points in a window around it,
oriented towards the camera. The grasp approaches along -normal: the pose's z axis points into
the surface, as a gripper's approach axis does in the usual tool-frame convention. Frames are
the camera optical frame (REP 103: x right, y down, z forward), metres.
"""
from typing import Dict, Optional, Tuple

import numpy as np

from ..shapes import check_shape


# fx, fy, cx, cy in pixels: the camera_info's P (K where P is all zero), as the depth was
# back-projected with (geometry.depth_to_points).
Intrinsics = Tuple[float, float, float, float]

# The steepest surface, seen from the camera, that the normal fit follows: window points whose
# depth differs from the centre's by more than tan(MAX_SLANT_DEG) times their sideways distance
# belong to another surface (an occluding edge, the background behind an object) and are left
# out. A depth step is then not fitted as a wall seen edge-on.
MAX_SLANT_DEG = 80.0
_MAX_SLANT_TAN = float(np.tan(np.radians(MAX_SLANT_DEG)))


def _nearest_pixel(pixel_xy):
    return int(round(float(pixel_xy[0]))), int(round(float(pixel_xy[1])))


def point_at(points_m: np.ndarray, pixel_xy, intrinsics: Intrinsics) -> np.ndarray:
    """(H,W,3) points, (x, y) sub-pixel -> (3,) point; NaN if invalid/outside.

    The depth is the nearest pixel's; x and y lie on the ray through (x, y) itself (pixel
    centres at integer coordinates, as camera_info has them), so the point projects back onto
    the sub-pixel match rather than onto the pixel it was rounded to.
    """
    check_shape('points_m', points_m, (None, None, 3))
    height, width = points_m.shape[:2]
    col, row = _nearest_pixel(pixel_xy)
    nan = np.full(3, np.nan, dtype=np.float32)
    if not (0 <= col < width and 0 <= row < height):
        return nan
    depth = float(points_m[row, col, 2])
    if not (np.isfinite(depth) and depth > 0):
        return nan
    fx, fy, cx, cy = (float(value) for value in intrinsics)
    return np.array([(float(pixel_xy[0]) - cx) * depth / fx,
                     (float(pixel_xy[1]) - cy) * depth / fy, depth], dtype=np.float32)


def fit_normal(points_m: np.ndarray, pixel_xy, radius_px: int = 5,
               min_points: int = 6) -> Tuple[np.ndarray, str]:
    """Unit surface normal (3,) at a pixel, pointing towards the camera; NaN + reason if unfit.

    Args:
        points_m: (H,W,3) camera-frame points, metres, NaN where depth is invalid.
        pixel_xy: (x, y) pixel. radius_px: half-size of the square window, pixels.
        min_points: fewest valid points on the pixel's surface for a fit.
    Returns:
        (normal, reason): reason is '' on success.
    """
    check_shape('points_m', points_m, (None, None, 3))
    height, width = points_m.shape[:2]
    col, row = _nearest_pixel(pixel_xy)
    nan = np.full(3, np.nan, dtype=np.float32)
    if not (0 <= col < width and 0 <= row < height):
        return nan, f'pixel ({col}, {row}) is outside the {width}x{height} depth image'
    centre = points_m[row, col].astype(np.float64)
    centre_depth = float(centre[2])
    if not (np.isfinite(centre_depth) and centre_depth > 0):
        return nan, 'no valid depth at the pixel to fit a surface normal around'
    window = points_m[max(0, row - radius_px):row + radius_px + 1,
                      max(0, col - radius_px):col + radius_px + 1].astype(np.float64)
    # Sideways distance of each window point from the centre, at the centre's depth: the
    # angle between their rays (x/z, y/z, exact whatever the depth) times that depth.
    with np.errstate(invalid='ignore', divide='ignore'):
        offset = window[..., :2] / window[..., 2:3] - centre[:2] / centre_depth
        sideways_m = centre_depth * np.hypot(offset[..., 0], offset[..., 1])
        same_surface = (np.all(np.isfinite(window), axis=2)
                        & (np.abs(window[..., 2] - centre_depth) <= _MAX_SLANT_TAN * sideways_m))
    window = window[same_surface]
    if len(window) < min_points:
        return nan, (f'only {len(window)} valid depth points of the pixel\'s surface within '
                     f'{radius_px} px (need {min_points}) to fit a surface normal')
    centred = window - window.mean(axis=0)
    # The right singular vector of the smallest singular value is the plane normal.
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    if singular[1] <= 1e-9:
        return nan, 'the depth points around the pixel are collinear: no unique surface normal'
    normal = vt[-1]
    if np.dot(normal, window.mean(axis=0)) > 0:     # orient towards the camera (the origin)
        normal = -normal
    return (normal / np.linalg.norm(normal)).astype(np.float32), ''


def approach_rotation(approach: np.ndarray, x_hint: Optional[np.ndarray] = None) -> np.ndarray:
    """3x3 rotation whose z column is ``approach`` (unit) and whose x column is as close as
    possible to ``x_hint`` (default: the camera's x axis; the y axis when nearly parallel)."""
    z = np.asarray(approach, dtype=np.float64)
    z = z / np.linalg.norm(z)
    hint = np.array([1.0, 0.0, 0.0]) if x_hint is None else np.asarray(x_hint, dtype=np.float64)
    if abs(np.dot(hint, z)) > 0.95:
        hint = np.array([0.0, 1.0, 0.0])
    x = hint - np.dot(hint, z) * z
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def rotation_to_quaternion_xyzw(rotation: np.ndarray) -> np.ndarray:
    """3x3 rotation -> quaternion (x, y, z, w), as geometry_msgs/Quaternion orders it.

    Uses ``tf_transformations`` where a ROS install has it (the common ROS convention, xyzw);
    otherwise ``transforms3d``, which returns (w, x, y, z) and is reordered here.
    """
    check_shape('rotation', rotation, (3, 3))
    try:
        import tf_transformations
    except ImportError:
        tf_transformations = None
    if tf_transformations is not None:
        matrix = np.eye(4)
        matrix[:3, :3] = rotation
        quat = np.asarray(tf_transformations.quaternion_from_matrix(matrix), dtype=np.float64)
    else:
        from transforms3d.quaternions import mat2quat
        w, x, y, z = mat2quat(rotation)
        quat = np.array([x, y, z, w], dtype=np.float64)
    if quat[3] < 0:   # one canonical sign (w >= 0), whichever library produced it
        quat = -quat
    return quat


def grasp_at(points_m: np.ndarray, pixel_xy, intrinsics: Intrinsics,
             radius_px: int = 5) -> Dict[str, object]:
    """Grasp pose at a pixel: position = the 3D point, z axis = -normal (into the surface).

    ``intrinsics``: (fx, fy, cx, cy) the depth was back-projected with.

    Returns dict: ``position`` (3,) metres (NaN if no point), ``quaternion_xyzw`` (4,) (NaN if no
    normal), ``normal`` (3,), ``reason`` ('' when both exist).
    """
    position = point_at(points_m, pixel_xy, intrinsics)
    if not np.all(np.isfinite(position)):
        nan4 = np.full(4, np.nan)
        return {'position': position, 'quaternion_xyzw': nan4, 'normal': np.full(3, np.nan),
                'reason': 'no valid depth at the matched pixel'}
    normal, reason = fit_normal(points_m, pixel_xy, radius_px)
    if reason:
        return {'position': position, 'quaternion_xyzw': np.full(4, np.nan), 'normal': normal,
                'reason': reason}
    quat = rotation_to_quaternion_xyzw(approach_rotation(-normal))
    return {'position': position, 'quaternion_xyzw': quat, 'normal': normal, 'reason': ''}
