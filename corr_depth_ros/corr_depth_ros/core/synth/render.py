"""Steps shared by the stereo and multiview generators: arguments, intrinsics, appearance."""
from typing import Optional

import numpy as np
import torch

from .config import LAYOUTS, SynthConfig
from .imaging import CameraResponse, apply_camera_response
from .raycast import Hits
from .scene import Rng, Scene
from .shading import shade
from .textures import albedo


def check_request(seed, height, width, config: Optional[SynthConfig],
                  layout: Optional[str]) -> SynthConfig:
    """Validate the public arguments of a generator; return the config to use."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f'seed must be an int, got {seed!r}')
    if not 0 <= int(seed) < 2 ** 63:
        raise ValueError(f'seed must be in [0, 2**63), got {seed}')
    for name, value in (('height', height), ('width', width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f'{name} must be an int number of pixels, got {value!r}')
        if value < 2:
            raise ValueError(f'{name} must be >= 2 pixels, got {value}')
    config = SynthConfig() if config is None else config
    if not isinstance(config, SynthConfig):
        raise ValueError(f'config must be a SynthConfig, got {type(config).__name__}')
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f'unknown layout {layout!r}; choose from {LAYOUTS}')
    return config


def pick_layout(rng: Rng, config: SynthConfig, layout: Optional[str]) -> str:
    """The requested layout, or one drawn from the config. Always consumes one draw, so that
    forcing a layout does not shift the rest of the sample's random stream."""
    drawn = config.layouts[rng.choice(config.layout_weights)]
    return drawn if layout is None else layout


def sample_intrinsics(rng: Rng, config: SynthConfig, height: int, width: int) -> np.ndarray:
    """K (3,3) float64, pixels: fx = fy = U(fx_over_width_range) * width, principal point near
    the centre (pixel-centre convention: the centre of a W-wide image is at (W - 1) / 2)."""
    focal = rng.uniform(*config.fx_over_width_range) * width
    jitter = config.principal_point_jitter_frac
    cx = (width - 1) / 2.0 + rng.uniform(-jitter, jitter) * width
    cy = (height - 1) / 2.0 + rng.uniform(-jitter, jitter) * height
    return np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])


def instance_map(scene: Scene, hits: Hits) -> torch.Tensor:
    """(1,H,W) int64 instance id per pixel: 0 = background or nothing hit."""
    # Shift by one so that primitive -1 (no hit) reads the leading 0.
    table = torch.as_tensor(np.concatenate([[0], scene.instance]), device=hits.primitive.device)
    index = (hits.primitive + 1).reshape(-1)
    return table.index_select(0, index).reshape(1, *hits.primitive.shape)


def render_image(scene: Scene, hits: Hits, K: np.ndarray, pose: np.ndarray,
                 config: SynthConfig, response: CameraResponse, rng: Rng) -> torch.Tensor:
    """(3,H,W) float32 image in [0,1] of one view from its geometry buffers."""
    colour = albedo(scene, hits.primitive, hits.point_local, hits.depth_m, K, hits.normal_cam)
    radiance = shade(scene, colour, hits.normal_cam, hits.primitive, K, pose[:3, :3],
                     specular=config.specular)
    # A pixel that hit nothing would show primitive 0's colour; it cannot happen, since every
    # layout puts its cameras inside the room.
    return apply_camera_response(radiance, response, rng)


def depth_with_nan(hits: Hits) -> torch.Tensor:
    """(1,H,W) float32 depth, metres; NaN where nothing was hit (REP 118: invalid is NaN)."""
    depth = hits.depth_m
    # inf - inf is NaN and finite - finite is 0: adds NaN exactly where nothing was hit
    # (arithmetic instead of torch.where, which is ~20x slower on CPU).
    return (depth + (depth - depth))[None]


def resolve_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError('device is cuda but torch.cuda.is_available() is False')
    return device

