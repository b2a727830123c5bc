"""Camera model from linear radiance to an 8-bit-like image in [0, 1].

Order follows a real camera: exposure and white balance, lens vignetting, optical blur (before
the sensor, so noise stays sharp), Poisson-like shot noise plus Gaussian read noise, clipping,
gamma encoding, and finally JPEG compression. Each camera of a pair gets its own parameters
when ``config.photometric_asymmetry`` is on (real stereo rigs differ in gain and exposure).
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..shapes import check_shape
from .config import SynthConfig
from .scene import Rng


@dataclass(frozen=True)
class CameraResponse:
    """Photometric parameters of one camera; 0 switches blur / JPEG off."""

    exposure: float
    colour_gain: Tuple[float, float, float]
    gamma: float
    vignetting: float  # fractional darkening at the image corner
    read_noise_std: float  # linear units
    shot_noise_scale: float  # noise variance per unit of signal
    blur_sigma_px: float
    jpeg_quality: int


def sample_camera_responses(rng: Rng, config: SynthConfig, count: int) -> List[CameraResponse]:
    """``count`` camera responses: a shared base plus per-camera asymmetry if configured."""
    exposure = rng.uniform(*config.exposure_range)
    gamma = rng.uniform(*config.gamma_range)
    gain = tuple(rng.uniform(*config.colour_gain_range, size=3))
    vignetting = rng.uniform(*config.vignetting_range)
    read_noise = rng.uniform(*config.read_noise_std_range) if config.noise else 0.0
    shot_noise = rng.uniform(*config.shot_noise_scale_range) if config.noise else 0.0
    blur = (rng.uniform(*config.blur_sigma_px_range)
            if config.blur and rng.bernoulli(config.blur_prob) else 0.0)
    jpeg = (rng.integer(*config.jpeg_quality_range)
            if config.jpeg and rng.bernoulli(config.jpeg_prob) else 0)
    responses = []
    for _ in range(count):
        if config.photometric_asymmetry:
            responses.append(CameraResponse(
                exposure=exposure * rng.uniform(*config.exposure_asymmetry_range),
                colour_gain=tuple(float(g) for g in rng.uniform(*config.colour_gain_range, size=3)),
                gamma=float(np.clip(gamma + rng.uniform(-0.1, 0.1), *config.gamma_range)),
                vignetting=vignetting, read_noise_std=read_noise, shot_noise_scale=shot_noise,
                blur_sigma_px=blur * rng.uniform(0.8, 1.0) if blur > 0 else 0.0,
                jpeg_quality=jpeg))
        else:
            responses.append(CameraResponse(exposure, tuple(float(g) for g in gain), gamma,
                                            vignetting, read_noise, shot_noise, blur, jpeg))
    return responses


def gaussian_blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (C,H,W), edge padding; sigma in pixels (<= 0: identity).

    Written as a sum of shifted slices: for these tiny kernels it is ~25x faster on CPU than a
    grouped (depthwise) conv2d and gives the same result."""
    if sigma_px <= 0:
        return image
    radius = max(1, int(math.ceil(3.0 * sigma_px)))
    weights = [math.exp(-0.5 * (i / sigma_px) ** 2) for i in range(-radius, radius + 1)]
    weights = [w / sum(weights) for w in weights]
    _, height, width = image.shape
    padded = F.pad(image[None], (radius, radius, radius, radius), mode='replicate')[0]
    rows = padded[:, :, 0:width] * weights[0]
    for i in range(1, 2 * radius + 1):
        rows.add_(padded[:, :, i:i + width], alpha=weights[i])
    out = rows[:, 0:height] * weights[0]
    for i in range(1, 2 * radius + 1):
        out.add_(rows[:, i:i + height], alpha=weights[i])
    return out


# Sensor noise is drawn as a window of a fixed pool of Gaussian samples at a random offset:
# the CPU generator needs ~0.8 ms per 320x240x3 draw, a slice of the pool a few microseconds.
# The two windows of a pair do overlap now and then (in about 15 % of 320x240 pairs, measured;
# more at larger sizes), but at a random shift in channel, row and column: the same noise then
# sits at unrelated pixels of the two views. Only a shift within one row of one channel would
# look like a disparity, and that has a chance of about 2 * width / 2**22 a pair (~1e-4).
_NOISE_POOL_SIZE = 1 << 22
_NOISE_POOL_SEED = 314159
_noise_pool: Dict[str, torch.Tensor] = {}


def gaussian_noise(rng: Rng, shape: Tuple[int, ...], device) -> torch.Tensor:
    """Standard normal samples of ``shape`` on ``device``, determined by ``rng``."""
    count = math.prod(shape)
    if count > _NOISE_POOL_SIZE // 4:  # big images: draw directly
        return torch.randn(shape, generator=rng.generator).to(device)
    key = str(torch.device(device))
    if key not in _noise_pool:
        generator = torch.Generator().manual_seed(_NOISE_POOL_SEED)
        _noise_pool[key] = torch.randn(_NOISE_POOL_SIZE, generator=generator).to(device)
    offset = rng.integer(0, _NOISE_POOL_SIZE - count)
    return _noise_pool[key][offset:offset + count].view(shape)


def jpeg_roundtrip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode (3,H,W) RGB in [0,1] as JPEG with OpenCV and decode it (8-bit result)."""
    import cv2  # heavy import kept local: only needed when JPEG is on

    rgb = (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    ok, buffer = cv2.imencode('.jpg', np.ascontiguousarray(rgb[..., ::-1]),
                              [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise RuntimeError('cv2.imencode failed to write a JPEG')
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    out = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).to(image.device)
    return out.permute(2, 0, 1).to(torch.float32) / 255.0


def apply_camera_response(radiance: torch.Tensor, response: CameraResponse,
                          rng: Rng) -> torch.Tensor:
    """Image (3,H,W) float32 in [0,1] from linear radiance (3,H,W).

    Noise is drawn from ``rng`` on the CPU and moved to the radiance's device, so that a seed
    gives the same noise on CPU and CUDA.
    """
    check_shape('radiance', radiance, (3, None, None))
    _, height, width = radiance.shape
    device = radiance.device
    gain = torch.tensor(response.colour_gain, dtype=torch.float32, device=device).view(3, 1, 1)
    x = radiance * (response.exposure * gain)
    if response.vignetting > 0:
        v = torch.linspace(-1.0, 1.0, height, device=device)[:, None]
        u = torch.linspace(-1.0, 1.0, width, device=device)[None, :]
        x = x * (1.0 - response.vignetting * 0.5 * (u * u + v * v))
    x = gaussian_blur(x, response.blur_sigma_px)
    if response.read_noise_std > 0 or response.shot_noise_scale > 0:
        normal = gaussian_noise(rng, (3, height, width), device)
        variance = response.shot_noise_scale * x.clamp_min(0.0) + response.read_noise_std ** 2
        x = x + torch.sqrt(variance) * normal
    x = x.clamp(0.0, 1.0) ** (1.0 / response.gamma)
    if response.jpeg_quality > 0:
        x = jpeg_roundtrip(x, response.jpeg_quality)
    return x.contiguous()
