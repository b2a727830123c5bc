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


def point_at(points_m: np.ndarray, pixel_xy) -> np.ndarray:
    """(H,W,3) points, (x, y) pixel -> (3,) point at the nearest pixel; NaN if invalid/outside."""
    check_shape('points_m', points_m, (None, None, 3))
    height, width = points_m.shape[:2]
    col, row = int(round(float(pixel_xy[0]))), int(round(float(pixel_xy[1])))
    if not (0 <= col < width and 0 <= row < height):
        return np.full(3, np.nan, dtype=np.float32)
    point = points_m[row, col].astype(np.float32)
    return point if np.all(np.isfinite(point)) else np.full(3, np.nan, dtype=np.float32)


def fit_normal(points_m: np.ndarray, pixel_xy, radius_px: int = 5,
               min_points: int = 6) -> Tuple[np.ndarray, str]:
    """Unit surface normal (3,) at a pixel, pointing towards the camera; NaN + reason if unfit.

    Args:
        points_m: (H,W,3) camera-frame points, metres, NaN where depth is invalid.
        pixel_xy: (x, y) pixel. radius_px: half-size of the square window, pixels.
        min_points: fewest valid points for a fit.
    Returns:
        (normal, reason): reason is '' on success.
    """
    check_shape('points_m', points_m, (None, None, 3))
    height, width = points_m.shape[:2]
    col, row = int(round(float(pixel_xy[0]))), int(round(float(pixel_xy[1])))
    nan = np.full(3, np.nan, dtype=np.float32)
    if not (0 <= col < width and 0 <= row < height):
        return nan, f'pixel ({col}, {row}) is outside the {width}x{height} depth image'
    window = points_m[max(0, row - radius_px):row + radius_px + 1,
                      max(0, col - radius_px):col + radius_px + 1].reshape(-1, 3)
    window = window[np.all(np.isfinite(window), axis=1)].astype(np.float64)
    if len(window) < min_points:
        return nan, (f'only {len(window)} valid depth points within {radius_px} px '
                     f'(need {min_points}) to fit a surface normal')
    centred = window - window.mean(axis=0)
    # The right singular vector of the smallest singular value is the plane normal.
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    if singular[1] <= 1e-9:
        return nan, 'the depth points around the pixel are collinear: no unique surface normal'
    normal = vt[-1]
    centre = window.mean(axis=0)
    if np.dot(normal, centre) > 0:     # orient towards the camera (at the origin)
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


def grasp_at(points_m: np.ndarray, pixel_xy, radius_px: int = 5) -> Dict[str, object]:
    """Grasp pose at a pixel: position = the 3D point, z axis = -normal (into the surface).

    Returns dict: ``position`` (3,) metres (NaN if no point), ``quaternion_xyzw`` (4,) (NaN if no
    normal), ``normal`` (3,), ``reason`` ('' when both exist).
    """
    position = point_at(points_m, pixel_xy)
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
