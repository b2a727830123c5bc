"""Solid (3D) procedural textures, evaluated at the hit point in the object's own frame.

Because the texture is a function of the *local 3D point*, one surface point has the same
albedo in every view: the property that stereo and dense-correspondence ground truth relies on.

Texture coordinates are ``q = p_local * freq + offset`` (texture units). Families:

* ``constant``: one colour (textureless, a hard case for matching).
* ``fbm``: fractal noise, sigmoid-contrasted between the two palette colours.
* ``stripes``: ``sin(2 pi (dir . q + warp * noise))``, hard or soft edges (wood/marble if warped).
* ``checker``: 3D checkerboard, one cell per texture unit (repetitive, a hard case).
* ``blobs``: thresholded smooth noise (spots, camouflage).
* ``dots``: a lattice of spheres (repetitive).
* ``photo``: photographs, triplanar-mapped (fine real detail; see photos.py).

Noise comes from a fixed, tileable 3D fBm volume made once per device by spectral synthesis
(filtered white noise, FFT), sampled trilinearly (two bilinear ``grid_sample`` lookups in a 2D
atlas of its slices): one batched lookup instead of hashing lattice corners per octave. Its
seed is fixed, so it is the same function for every sample and every process; samples differ
by their per-object offset and frequency.

Anti-aliasing: a pixel covers about ``fw = depth / fx * freq`` texture units. Hard edges are
softened to about one pixel, patterns finer than a pixel fade to their mean, and the noise
blends towards a low-pass copy of the volume, so that far or small surfaces do not turn into
per-pixel random colours that no view could match.
"""
import math
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..shapes import check_shape
from .photos import axis_weights, sample_photo, triplanar_uv
from .raycast import dot3, length3, pixel_rays
from .scene import (CONTRAST, CYLINDER, DOT_RADIUS, PHOTO, SOFTNESS, TEXTURE_CODES, THRESHOLD,
                    WARP, Scene)

# 32^3 voxels x 4 channels is ~0.6 MB: it stays in cache, and grid_sample's cost grows with
# the channel count, so two noise fields (plus their low-passed copies) is the budget.
_NOISE_SIZE = 32  # voxels per side of the tileable volume
_NOISE_PERIOD = 4.0  # texture units spanned by one period of the volume
_NOISE_SEED = 20240611
# Amplitude spectrum ~ k^-alpha per channel: 0 rough fBm (patterns, luminance), 1 smoother
# field (blobs, colour variation).
_NOISE_ALPHA = (1.6, 2.3)
_LOW_PASS_CYCLES = 3.0  # per volume period, for the anti-aliased copy
# Gaussian prefilter of the camera (pixel area + lens), pixels: sets how fast fine periodic
# patterns lose contrast.
_PREFILTER_SIGMA_PX = 0.6
_noise_cache: Dict[str, torch.Tensor] = {}


def noise_volume(device='cpu') -> torch.Tensor:
    """Tileable noise volume (1, 4, S+1, S+1, S+1) float32: 2 channels at full band, then the
    same 2 low-passed. Zero mean, unit standard deviation at full band. Cached per device."""
    key = str(torch.device(device))
    if key not in _noise_cache:
        generator = torch.Generator().manual_seed(_NOISE_SEED)
        n = _NOISE_SIZE
        white = torch.randn(len(_NOISE_ALPHA), n, n, n, generator=generator, dtype=torch.float64)
        spectrum = torch.fft.fftn(white, dim=(1, 2, 3))
        k1 = torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)  # integer cycles per period
        k = torch.sqrt(k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + k1[None, None, :] ** 2)
        k[0, 0, 0] = math.inf  # no DC: the pattern mean comes from the palette
        channels, low = [], []
        for c, alpha in enumerate(_NOISE_ALPHA):
            field = torch.fft.ifftn(spectrum[c] * k ** -alpha).real
            scale = field.std()
            channels.append(field / scale)
            low_pass = torch.exp(-(k / _LOW_PASS_CYCLES) ** 2)
            low.append(torch.fft.ifftn(spectrum[c] * k ** -alpha * low_pass).real / scale)
        volume = torch.stack(channels + low)
        # Repeat the first slice at the end of each axis so that align_corners=True trilinear
        # sampling wraps around seamlessly.
        volume = torch.cat([volume, volume[:, :1]], dim=1)
        volume = torch.cat([volume, volume[:, :, :1]], dim=2)
        volume = torch.cat([volume, volume[:, :, :, :1]], dim=3)
        _noise_cache[key] = volume[None].to(device=device, dtype=torch.float32).contiguous()
    return _noise_cache[key]


def _noise_atlas(device) -> torch.Tensor:
    """The noise volume's z slices stacked vertically: (1, 4, (S+1)^2, S+1), row z*(S+1) + y.

    Trilinear lookups become two bilinear ``grid_sample`` lookups in this 2D atlas (slices
    z0 and z0 + 1) and one lerp: PyTorch's CPU 2D sampler is vectorised, the 3D one is not
    (measured 4-5x faster per lookup at 320x240, same values up to float rounding)."""
    key = 'atlas:' + str(torch.device(device))
    if key not in _noise_cache:
        volume = noise_volume(device)
        _noise_cache[key] = volume.reshape(1, volume.shape[1], -1, volume.shape[-1]).contiguous()
    return _noise_cache[key]


def sample_noise(q: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
    """Two noise channels at texture coordinates ``q`` (3,N), anti-aliased for a pixel
    footprint (N,) in texture units. Returns (2,N) float32, about unit variance when sharp."""
    check_shape('q', q, (3, 'N'))
    atlas = _noise_atlas(q.device)
    side = _NOISE_SIZE + 1  # samples per axis, the wrapped copy included
    n = q.shape[1]
    u = q * (_NOISE_SIZE / _NOISE_PERIOD)  # voxel units
    u = u.sub_(torch.floor(u * (1.0 / _NOISE_SIZE)).mul_(_NOISE_SIZE))  # wrap into [0, S)
    z0 = torch.floor(u[2]).clamp_(max=_NOISE_SIZE - 1)
    weight_z = u[2] - z0
    # Normalised atlas coordinates (align_corners=True): x -> columns, z0*(S+1) + y -> rows;
    # the second half of the points reads slice z0 + 1, one slice (S+1 rows) further down.
    grid = torch.empty((1, 2, n, 2), dtype=q.dtype, device=q.device)
    torch.mul(u[0], 2.0 / _NOISE_SIZE, out=grid[0, 0, :, 0]).sub_(1.0)
    grid[0, 1, :, 0] = grid[0, 0, :, 0]
    rows_scale = 2.0 / (side * side - 1)
    torch.addcmul(u[1], z0, torch.tensor(float(side), dtype=q.dtype, device=q.device),
                  out=grid[0, 0, :, 1]).mul_(rows_scale).sub_(1.0)
    torch.add(grid[0, 0, :, 1], side * rows_scale, out=grid[0, 1, :, 1])
    lookups = F.grid_sample(atlas, grid, mode='bilinear', padding_mode='border',
                            align_corners=True)[0]  # (4, 2, N)
    values = torch.lerp(lookups[:, 0], lookups[:, 1], weight_z)  # (4, N) trilinear
    voxels_per_pixel = footprint * (_NOISE_SIZE / _NOISE_PERIOD)
    # The full band reaches the grid Nyquist (0.5 cycle/voxel): fully low-passed by 2 voxels
    # per pixel.
    blend = ((voxels_per_pixel - 0.5) / 1.5).clamp(0.0, 1.0)
    mixed = values[:2] + blend * (values[2:] - values[:2])
    # Beyond the low-passed level, keep fading like the camera prefilter would (its dominant
    # frequency is about 0.6 cycle per texture unit).
    return mixed * _attenuation(0.6 * footprint)


def _soft_sign(wave: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """Square wave from a unit-amplitude periodic ``wave``, with a transition ``edge`` wide
    (in units of the wave's value): edge >= 1 keeps the sinusoid, larger edges lower contrast."""
    return (wave / edge).clamp(-1.0, 1.0)


def _attenuation(cycles_per_pixel: torch.Tensor) -> torch.Tensor:
    """Contrast left of a sinusoid after the camera's pixel/lens prefilter (Gaussian)."""
    scaled = (math.pi * _PREFILTER_SIGMA_PX) * cycles_per_pixel
    return torch.exp(-2.0 * scaled * scaled)


def albedo(scene: Scene, primitive: torch.Tensor, point_local: torch.Tensor,
           depth_m: torch.Tensor, K: np.ndarray,
           normal_cam: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Linear albedo (3,H,W) in [0,1] of every pixel, from its primitive's solid texture.

    Args:
        primitive: (H,W) int64 primitive index (-1 = nothing hit: gets primitive 0's texture).
        point_local: (3,H,W) hit point in the primitive's frame, metres.
        depth_m: (H,W) depth, metres (for the anti-aliasing footprint).
        K: (3,3) intrinsics, pixels (fx = fy).
        normal_cam: optional (3,H,W) unit normals in the camera frame; with them the footprint
            grows on surfaces seen at a grazing angle (foreshortening).
    """
    sizes = check_shape('primitive', primitive, ('H', 'W'))
    check_shape('point_local', point_local, (3, 'H', 'W'), sizes)
    check_shape('depth_m', depth_m, ('H', 'W'), sizes)
    height, width = primitive.shape
    device = point_local.device
    idx = primitive.reshape(-1).clamp_min(0)
    present = set(int(v) for v in np.unique(scene.texture))
    columns = [scene.texture_freq_per_m[:, None], scene.texture_offset, scene.texture_dir,
               scene.texture_params, scene.palette.reshape(-1, 6), scene.colour_jitter[:, None],
               (scene.texture[:, None] == np.arange(len(TEXTURE_CODES))[None, :])]
    if TEXTURE_CODES['photo'] in present:
        columns.append(axis_weights(scene.size, scene.kind == CYLINDER))
    px = torch.as_tensor(np.concatenate(columns, axis=1).T, dtype=torch.float32,
                         device=device).index_select(1, idx)
    freq, offset, direction = px[0], px[1:4], px[4:7]
    params = px[7:7 + scene.texture_params.shape[1]]
    rest = px[7 + scene.texture_params.shape[1]:]
    c0, c1 = rest[0:3], rest[3:6]
    jitter = rest[6]
    is_family = rest[7:7 + len(TEXTURE_CODES)]  # one-hot texture family
    photo_weights = rest[7 + len(TEXTURE_CODES):]  # (3, N) axis_weights, when photos are present

    p = point_local.reshape(3, -1)
    q = torch.addcmul(offset, p, freq)
    # Texture units covered by one pixel: depth / fx metres across, stretched by 1 / cos of the
    # viewing angle (capped, the stretch is along one direction only).
    depth = depth_m.reshape(-1)
    fx = float(K[0, 0])
    footprint = depth.clamp_max(1e30) * freq
    footprint.mul_(1.0 / fx)
    if normal_cam is not None:
        check_shape('normal_cam', normal_cam, (3, 'H', 'W'), sizes)
        footprint = footprint / _view_cosine(normal_cam, K).reshape(-1)
    # The noise lookup is the most expensive step: do it only for pixels whose texture uses
    # it (noise families, warped stripes, colour variation).
    family_of = scene.texture
    uses_noise = ((family_of == TEXTURE_CODES['fbm']) | (family_of == TEXTURE_CODES['blobs'])
                  | ((family_of == TEXTURE_CODES['stripes']) & (scene.texture_params[:, WARP] > 0))
                  | (scene.colour_jitter > 0))
    if uses_noise.all():
        noise = sample_noise(q, footprint)
    else:
        noise = torch.zeros((2, q.shape[1]), dtype=q.dtype, device=device)
        if uses_noise.any():
            needed = torch.as_tensor(uses_noise, device=device).index_select(0, idx)
            selected = torch.nonzero(needed).reshape(-1)
            noise.index_copy_(1, selected, sample_noise(q.index_select(1, selected),
                                                        footprint.index_select(0, selected)))
    softness = params[SOFTNESS]
    pattern = torch.zeros_like(freq)
    two_pi = 2.0 * math.pi

    def add(code, value):
        # Blend with the one-hot family weight (torch.where is ~20x slower on CPU).
        pattern.addcmul_(is_family[code], value)

    # Hard edges are ~2 pixels wide (the transition of _soft_sign spans 2 * edge / slope) and
    # periodic patterns lose contrast as their frequency nears a pixel, as behind a real lens;
    # otherwise a sub-pixel shift between the views changes the sampled colour.
    if TEXTURE_CODES['fbm'] in present:
        add(TEXTURE_CODES['fbm'], torch.sigmoid(params[CONTRAST] * noise[0]))
    if TEXTURE_CODES['stripes'] in present:
        phase = dot3(direction, q) + params[WARP] * noise[0]
        edge = torch.maximum(softness, two_pi * footprint)
        stripes = _soft_sign(torch.sin(two_pi * phase), edge) * _attenuation(footprint)
        add(TEXTURE_CODES['stripes'], 0.5 + 0.5 * stripes)
    if TEXTURE_CODES['checker'] in present:
        edge = torch.maximum(softness, math.pi * footprint)
        waves = _soft_sign(torch.sin(math.pi * q), edge)
        cells = waves[0] * waves[1] * waves[2] * _attenuation(0.7 * footprint)
        add(TEXTURE_CODES['checker'], 0.5 + 0.5 * cells)
    if TEXTURE_CODES['blobs'] in present:
        add(TEXTURE_CODES['blobs'],
            torch.sigmoid(2.0 * params[CONTRAST] * (noise[1] - params[THRESHOLD])))
    if TEXTURE_CODES['dots'] in present:
        radius = params[DOT_RADIUS]
        cell = q - torch.floor(q)
        cell.sub_(0.5)  # offset from the nearest lattice cell centre, in [-0.5, 0.5)
        distance = length3(cell)
        edge = torch.maximum(0.5 * softness * radius, 2.0 * footprint)
        dots = (0.5 + (radius - distance) / edge).clamp(0.0, 1.0)
        # Fade towards the covered fraction (on a planar section, the sphere volume fraction).
        mean = (4.0 / 3.0 * math.pi) * radius * radius * radius
        add(TEXTURE_CODES['dots'], mean + _attenuation(footprint) * (dots - mean))

    if TEXTURE_CODES['photo'] in present:
        code = TEXTURE_CODES['photo']
        selected = torch.nonzero(is_family[code] > 0).reshape(-1)
        uv = triplanar_uv(q.index_select(1, selected), p.index_select(1, selected),
                          photo_weights.index_select(1, selected))
        values = sample_photo(uv, params[PHOTO].index_select(0, selected),
                              footprint.index_select(0, selected), scene.photo_set)
        pattern.index_add_(0, selected, (0.5 + 0.3 * values).clamp_(0.0, 1.0))

    colour = torch.addcmul(c0, c1 - c0, pattern)
    # Low-amplitude colour variation (dirt, unevenness) on the noise families.
    colour[0].addcmul_(jitter, noise[1] + 0.3 * noise[0])
    colour[1].addcmul_(jitter, noise[1] - 0.3 * noise[0])
    colour[2].addcmul_(jitter, noise[1])
    return colour.clamp_(0.02, 0.98).reshape(3, height, width)


def _view_cosine(normal_cam: torch.Tensor, K: np.ndarray) -> torch.Tensor:
    """|cos| of the angle between normal and viewing ray, (H,W), floored at 0.25 (the stretch
    is along one direction only, so blurring by the full 1/cos would over-smooth)."""
    _, height, width = normal_cam.shape
    xn, yn = pixel_rays(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]),
                        height, width, normal_cam.device)
    xn, yn = xn[None, :], yn[:, None]
    cosine = (normal_cam[0] * xn + normal_cam[1] * yn + normal_cam[2]) \
        / torch.sqrt(xn * xn + yn * yn + 1.0)
    return cosine.abs().clamp_min(0.25)
