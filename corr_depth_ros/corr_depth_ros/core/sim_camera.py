"""A synthetic rectified stereo camera: a fixed rig moving through procedural scenes (no ROS).

Used by ``sim_stereo_camera_node`` (the embedded default input of the demo and launch files).
Unlike the training generator, which draws a new rig for every sample, a camera has fixed
intrinsics and baseline, so the published CameraInfo stays constant. Each scene is held for
``frames_per_scene`` frames while the rig drifts sideways and forward along a smooth path
(a slow hand-held motion), then a new scene is drawn.
"""
import math
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional

import numpy as np
import torch

from .geometry import StereoGeometry
from .synth.config import SynthConfig
from .synth.imaging import sample_camera_responses
from .synth.raycast import raycast
from .synth.render import depth_with_nan, render_image
from .synth.scene import Rng, sample_scene


class FrameCancelled(Exception):
    """Raised by :meth:`SimStereoCamera.frame` when its ``cancelled`` callable says stop."""


@dataclass(frozen=True)
class SimRig:
    """The camera: image size (pixels), focal length (pixels), baseline (metres)."""

    width: int = 640
    height: int = 480
    fx_px: float = 525.0
    baseline_m: float = 0.12
    max_disparity_frac: float = 0.2   # scenes are scaled so no disparity exceeds this * width

    def geometry(self) -> StereoGeometry:
        cx = (self.width - 1) / 2.0
        cy = (self.height - 1) / 2.0
        return StereoGeometry(width=self.width, height=self.height, fx=self.fx_px, fy=self.fx_px,
                              cx_left=cx, cy=cy, cx_right=cx, baseline_m=self.baseline_m)


class SimStereoCamera:
    """Renders frame ``i`` of an endless deterministic stream (given the seed).

    ``frame(i)`` -> dict with ``left``, ``right`` (H, W, 3) uint8 RGB, ``disparity_px`` and
    ``depth_m`` (H, W) float32 ground truth of the left view (NaN where nothing was hit).
    """

    def __init__(self, rig: SimRig = SimRig(), seed: int = 0, frames_per_scene: int = 30,
                 motion_m: float = 0.05, config: Optional[SynthConfig] = None, device: str = 'cpu'):
        if rig.width < 16 or rig.height < 16 or rig.fx_px <= 0 or rig.baseline_m <= 0:
            raise ValueError(f'invalid sim rig {rig}')
        if frames_per_scene < 1:
            raise ValueError('frames_per_scene must be >= 1')
        self.rig = rig
        self.seed = int(seed)
        self.frames_per_scene = int(frames_per_scene)
        self.motion_m = float(motion_m)
        self.device = torch.device(device)
        self.config = replace(config or SynthConfig(), max_disparity_frac=rig.max_disparity_frac)
        self._scene_index = None
        self._scene = None

    def _load_scene(self, index: int):
        rig = self.rig
        rng = Rng(self.seed * 1_000_003 + index)
        geo = rig.geometry()
        K = np.array([[rig.fx_px, 0, geo.cx_left], [0, rig.fx_px, geo.cy], [0, 0, 1.0]])
        layout = self.config.layouts[rng.choice(self.config.layout_weights)]
        scene, (pose,) = sample_scene(rng, self.config, layout, rig.fx_px, geo.cx_left, geo.cy,
                                      rig.width, rig.height, num_cameras=1,
                                      camera_margin_m=rig.baseline_m + 2 * self.motion_m)
        # As the training generator does: scale the scene about the camera so that the nearest
        # surface stays within the disparity range (the image is unchanged by the scaling).
        hits = raycast(scene, K, pose, rig.height, rig.width, self.device)
        min_depth_m = rig.fx_px * rig.baseline_m / (self.config.max_disparity_frac * rig.width)
        nearest = float(hits.depth_m.min())
        if nearest < min_depth_m * 1.5:
            scene = scene.scaled(min_depth_m * 1.5 / nearest, pose[:3, 3])
        responses = sample_camera_responses(rng, self.config, 2)
        self._scene_index = index
        self._scene = (scene, pose, K, responses, rng)

    def frame(self, i: int, cancelled: Optional[Callable[[], bool]] = None
              ) -> Dict[str, np.ndarray]:
        """Frame ``i``. ``cancelled`` (e.g. a stop event's ``is_set``) is asked between the
        stages (scene, each view's raycast and shading), and FrameCancelled raised once it says
        yes: a camera thread asked to stop then leaves within one stage, not one frame, which
        on a loaded machine can take seconds (a thread still inside torch when the interpreter
        exits aborts the process)."""
        def check():
            if cancelled is not None and cancelled():
                raise FrameCancelled(f'frame {i} cancelled')
        check()
        index, step = divmod(int(i), self.frames_per_scene)
        if index != self._scene_index:
            self._load_scene(index)
            check()
        scene, pose0, K, (resp_left, resp_right), rng = self._scene
        rig = self.rig
        # Smooth sideways / forward drift in the camera frame.
        phase = 2 * math.pi * step / self.frames_per_scene
        offset = self.motion_m * np.array([math.sin(phase), 0.3 * math.sin(2 * phase),
                                           0.5 * (1 - math.cos(phase))])
        pose_left = pose0.copy()
        pose_left[:3, 3] += pose0[:3, :3] @ offset
        pose_right = pose_left.copy()
        pose_right[:3, 3] += rig.baseline_m * pose_left[:3, 0]
        hits_left = raycast(scene, K, pose_left, rig.height, rig.width, self.device)
        check()
        hits_right = raycast(scene, K, pose_right, rig.height, rig.width, self.device)
        check()
        frame_rng = Rng(self.seed * 7_919 + int(i))  # sensor noise differs frame to frame
        left = render_image(scene, hits_left, K, pose_left, self.config, resp_left, frame_rng)
        check()
        right = render_image(scene, hits_right, K, pose_right, self.config, resp_right, frame_rng)
        depth = depth_with_nan(hits_left)[0].cpu().numpy().astype(np.float32)

        def to_uint8(image):
            return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return {'left': np.ascontiguousarray(to_uint8(left)),
                'right': np.ascontiguousarray(to_uint8(right)),
                'depth_m': depth, 'disparity_px': rig.fx_px * rig.baseline_m / depth}
