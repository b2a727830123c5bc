"""Photographs as a texture family (``photo``): real images' fine detail on synthetic geometry.

The procedural families in :mod:`.textures` are smooth next to a real scene's fine detail.
FlyingThings3D (Mayer et al., CVPR 2016) textured its random objects with photographs; this
family lets training do the same (``--photo-textures``). Measured at stop 22, fine-tuning the
shipped descriptor and stereo nets with it did not move their Motorcycle figures
(docs/results.md), so no shipped weights use it. The photographs are the natural images
scikit-image ships with its test data, so nothing is downloaded; the Middlebury Motorcycle
pair, the evaluation images, is never one of them (:data:`PHOTO_SETS` is checked against it).

A photo is still a *solid* texture, a function of the local 3D point, so one surface point has
the same colour in every view: it is projected along the local axis the point's face looks
along (triplanar mapping: a box's six faces, a plane's normal, the nearest axis of round
shapes) and tiled (period ``TILE_PX`` photo pixels, one texture unit spanning
``PHOTO_PX_PER_UNIT`` of them, times a per-material random frequency). Its luminance,
high-passed and normalised to zero mean and unit deviation, drives the blend between the
primitive's two palette colours like the other families' patterns. Anti-aliasing is a blurred
pyramid (mip levels at 1, 2, 4, ... photo pixels per image pixel) read trilinearly, and past
the coarsest level the pattern fades to its mean.
"""
import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..shapes import check_shape

# scikit-image's bundled natural images (no download), split so that a model can be validated
# on photographs it was not trained on. Never the Motorcycle pair: it is the evaluation data.
PHOTO_SETS: Dict[str, Tuple[str, ...]] = {
    'train': ('astronaut', 'brick', 'camera', 'cell', 'chelsea', 'coffee', 'grass', 'gravel',
              'hubble_deep_field', 'immunohistochemistry', 'moon', 'retina'),
    'validation': ('coins', 'page', 'rocket', 'clock'),
}
_EVALUATION_IMAGES = ('stereo_motorcycle', 'motorcycle')
TILE_PX = 256            # side of one photo tile (the texture's period), photo pixels
PHOTO_PX_PER_UNIT = 6.0  # photo pixels per texture unit (times the random frequency factor)
HIGH_PASS_SIGMA_PX = 12.0  # photo detail kept: features up to about this size
LEVELS = 5               # mip levels: 1, 2, 4, 8, 16 photo pixels per image pixel
_cache: Dict[str, torch.Tensor] = {}

for _name in sum(PHOTO_SETS.values(), ()):
    assert not any(_name.startswith(bad) for bad in _EVALUATION_IMAGES), _name


def _load_grey(name: str) -> np.ndarray:
    """One scikit-image photo as float64 luminance, the largest centred square."""
    import skimage.data
    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float64)
    if image.ndim == 3:
        image = image[..., :3] @ np.array([0.299, 0.587, 0.114])
    side = min(image.shape)
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    return image[top:top + side, left:left + side]


def _blur_periodic(tile: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a tile seen as periodic (wrapped around, no border effects)."""
    import cv2
    pad = tile.shape[0] // 2
    return cv2.GaussianBlur(np.pad(tile, pad, mode='wrap'), (0, 0), sigma_px)[pad:-pad, pad:-pad]


def _tile_levels(name: str) -> np.ndarray:
    """(LEVELS, TILE_PX + 1, TILE_PX + 1) float32: the photo's mip levels, zero mean and unit
    deviation at level 0, each closed by a copy of its first row and column (seamless wrap for
    align_corners sampling)."""
    import cv2
    grey = cv2.resize(_load_grey(name), (TILE_PX, TILE_PX), interpolation=cv2.INTER_AREA)
    # High-pass (minus a wide Gaussian), so that every photo brings fine detail rather than its
    # broad shading, which a surface's lighting provides anyway.
    grey = grey - _blur_periodic(grey, HIGH_PASS_SIGMA_PX)
    grey = (grey - grey.mean()) / max(grey.std(), 1e-6)
    # Level k: a Gaussian of sigma ~ half its footprint of 2^k photo pixels.
    levels = [grey] + [_blur_periodic(grey, 0.5 * 2.0 ** level) for level in range(1, LEVELS)]
    return np.stack([np.pad(level, ((0, 1), (0, 1)), mode='wrap')
                     for level in levels]).astype(np.float32)


def photo_atlas(photo_set: str, device='cpu') -> torch.Tensor:
    """(1, 1, photos * LEVELS * (TILE_PX + 1), TILE_PX + 1): every tile of the set stacked
    vertically, photo-major, level-minor. Cached per set and device."""
    if photo_set not in PHOTO_SETS:
        raise ValueError(f'unknown photo set {photo_set!r}; choose from {sorted(PHOTO_SETS)}')
    key = f'{photo_set}:{torch.device(device)}'
    if key not in _cache:
        tiles = np.concatenate([_tile_levels(name) for name in PHOTO_SETS[photo_set]])
        atlas = torch.from_numpy(tiles.reshape(1, 1, -1, TILE_PX + 1))
        _cache[key] = atlas.to(device).contiguous()
    return _cache[key]


def axis_weights(size: np.ndarray, cylinder: Optional[np.ndarray] = None) -> np.ndarray:
    """(P,3) primitive half sizes -> (P,3) weights whose largest ``(|p_i| + eps) * w_i`` names
    the face a local point lies on (boxes, rooms; the nearest axis of ellipsoids): the inverse
    sizes, 0 along unbounded axes, large along a plane's zero thickness. ``cylinder`` (P,) bool
    marks cylinders, whose z weight is negated: :func:`triplanar_uv` then projects along z on
    their caps only (by the nearest axis, the side's top and bottom quarters took the cap's
    projection, parallel to the side, and were smeared into streaks)."""
    check_shape('size', size, ('P', 3))
    with np.errstate(divide='ignore'):
        weights = np.nan_to_num(1.0 / np.asarray(size, np.float64), posinf=1e6)
    if cylinder is not None:
        weights[np.asarray(cylinder, bool), 2] *= -1.0
    return weights


def triplanar_uv(q: torch.Tensor, point_local: torch.Tensor,
                 weights: torch.Tensor) -> torch.Tensor:
    """Texture coordinates (3,N) -> (2,N): the two components across the face axis (triplanar
    mapping), so a photo is never smeared along a surface that is parallel to its projection.
    ``weights`` (3,N) from :func:`axis_weights`; a negative z weight (a cylinder) picks the z
    face only where the point is on the cap (|z| at the half height, to float rounding)."""
    check_shape('q', q, (3, 'N'))
    score = (point_local.abs() + 1e-6) * weights.abs()
    cap_only = weights[2] < 0
    on_cap = score[2] >= 1.0 - 1e-4
    score[2] = torch.where(cap_only, torch.where(on_cap, torch.full_like(score[2], math.inf),
                                                 torch.zeros_like(score[2])), score[2])
    face = score.argmax(0)  # 0: project along x, read (y, z); 1: (z, x); 2: (x, y)
    u = torch.where(face == 0, q[1], torch.where(face == 1, q[2], q[0]))
    v = torch.where(face == 0, q[2], torch.where(face == 1, q[0], q[1]))
    return torch.stack([u, v])


def sample_photo(uv: torch.Tensor, photo: torch.Tensor, footprint: torch.Tensor,
                 photo_set: str) -> torch.Tensor:
    """Photo luminance at texture coordinates ``uv`` (2,N) (triplanar_uv), anti-aliased.

    Args:
        photo: (N,) photo index into the set (float, whole numbers).
        footprint: (N,) texture units covered by one image pixel.
    Returns (N,) zero-mean values, about unit deviation where the photo is seen sharply.
    """
    check_shape('uv', uv, (2, 'N'))
    atlas = photo_atlas(photo_set, uv.device)
    side = TILE_PX + 1
    count = len(PHOTO_SETS[photo_set])
    u = uv[0] * PHOTO_PX_PER_UNIT
    v = uv[1] * PHOTO_PX_PER_UNIT
    u.sub_(torch.floor(u * (1.0 / TILE_PX)).mul_(TILE_PX))
    v.sub_(torch.floor(v * (1.0 / TILE_PX)).mul_(TILE_PX))
    level = torch.log2((footprint * PHOTO_PX_PER_UNIT).clamp_min(1.0)).clamp_(max=LEVELS - 1)
    level0 = torch.floor(level).clamp_(max=LEVELS - 2)
    weight = level - level0
    tile = photo.clamp(0, count - 1) * LEVELS + level0
    n = uv.shape[1]
    rows_scale = 2.0 / (count * LEVELS * side - 1)
    grid = torch.empty((1, 2, n, 2), dtype=uv.dtype, device=uv.device)
    torch.mul(u, 2.0 / TILE_PX, out=grid[0, 0, :, 0]).sub_(1.0)
    grid[0, 1, :, 0] = grid[0, 0, :, 0]
    torch.addcmul(v, tile, torch.tensor(float(side), dtype=uv.dtype, device=uv.device),
                  out=grid[0, 0, :, 1]).mul_(rows_scale).sub_(1.0)
    torch.add(grid[0, 0, :, 1], side * rows_scale, out=grid[0, 1, :, 1])  # the next level
    lookups = F.grid_sample(atlas, grid, mode='bilinear', padding_mode='border',
                            align_corners=True)[0, 0]  # (2, N)
    values = torch.lerp(lookups[0], lookups[1], weight)
    # Past the coarsest level (16 photo pixels per image pixel) the detail averages out.
    beyond = (footprint * (PHOTO_PX_PER_UNIT / 2.0 ** (LEVELS - 1))).clamp_min(1.0)
    return values / beyond
