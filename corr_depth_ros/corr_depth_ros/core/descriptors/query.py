"""One correspondence query, without ROS: reference descriptors in, matches with 3D points and
grasp poses out. correspondence_node's service and `corr_depth process-bag --pipeline corr`
both call :func:`match_references`, so they cannot drift apart.
"""
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from . import grasp, matching


@dataclass
class Match:
    """The best match of one reference pixel in a live frame.

    match_px: (2,) (x, y) pixels in the live image; distance: descriptor L2 distance;
    confidence in [0, 1]; found: distance within the threshold, a 3D point exists and a
    grasp pose could be fitted there; reason: why not found ('' when found);
    position_m: (3,) camera-frame point, metres, NaN without depth;
    quaternion_xyzw: (4,) grasp orientation (z axis = approach = -surface normal), NaN if none.
    """

    match_px: np.ndarray
    distance: float
    confidence: float
    found: bool
    reason: str
    position_m: np.ndarray
    quaternion_xyzw: np.ndarray


def match_references(reference_descriptors, frame_descriptors: torch.Tensor,
                     points_m: Optional[np.ndarray], *,
                     intrinsics: Optional[grasp.Intrinsics] = None, match_threshold: float,
                     normal_radius_px: int, no_depth_reason: str = 'no depth image',
                     frame_norms2: Optional[torch.Tensor] = None) -> List[Match]:
    """Find each reference descriptor in a frame (Dense Object Nets: arg-min of L2 distance).

    Args:
        reference_descriptors: (N, D) array or tensor. frame_descriptors: (D, H, W) tensor.
        points_m: (H, W, 3) camera-frame points of the frame (metres, NaN invalid), or None.
        intrinsics: (fx, fy, cx, cy) the points were back-projected with; needed with points.
        match_threshold: largest descriptor distance that counts as found.
        normal_radius_px: half-size of the depth window for the surface normal.
        no_depth_reason: the reason given when ``points_m`` is None.
        frame_norms2: matching.pixel_norms2 of ``frame_descriptors``, if already computed.
    """
    if points_m is not None and intrinsics is None:
        raise ValueError('match_references: points_m given without the intrinsics they were '
                         'back-projected with')
    reference = torch.as_tensor(np.ascontiguousarray(reference_descriptors)
                                if isinstance(reference_descriptors, np.ndarray)
                                else reference_descriptors)
    best = matching.find_best_matches(reference, frame_descriptors, norms2=frame_norms2)
    matches = []
    for i in range(reference.shape[0]):
        match_xy = np.asarray(best['match_px'][i], dtype=np.float32)
        distance = float(best['distance'][i])
        reasons = []
        if distance > match_threshold:
            reasons.append(f'descriptor distance {distance:.3f} > match_threshold '
                           f'{match_threshold:.3f} (not seen, or looks different)')
        if points_m is None:
            pose = {'position': np.full(3, np.nan, np.float32),
                    'quaternion_xyzw': np.full(4, np.nan, np.float32), 'reason': no_depth_reason}
        else:
            pose = grasp.grasp_at(points_m, match_xy, intrinsics, normal_radius_px)
        if not np.all(np.isfinite(pose['position'])):
            reasons.append(pose['reason'] or 'no valid 3D point')
        elif pose['reason']:
            reasons.append(f'grasp pose: {pose["reason"]}')
        matches.append(Match(match_px=match_xy, distance=distance,
                             confidence=float(best['confidence'][i]), found=not reasons,
                             reason='; '.join(reasons),
                             position_m=np.asarray(pose['position'], np.float32),
                             quaternion_xyzw=np.asarray(pose['quaternion_xyzw'], np.float32)))
    return matches
