"""Lambertian + Blinn-Phong shading of one view, in linear radiance.

The light is directional and fixed in the world, so the diffuse term of a surface point is the
same in every view; the specular term depends on the viewing direction (real view-dependent
appearance that a matcher must tolerate) and can be switched off for exact GT checks.
"""
import numpy as np
import torch

from ..shapes import check_shape
from .raycast import pixel_rays
from .scene import Scene


def shade(scene: Scene, albedo: torch.Tensor, normal_cam: torch.Tensor, primitive: torch.Tensor,
          K: np.ndarray, R_world_from_cam: np.ndarray, specular: bool = True) -> torch.Tensor:
    """Linear radiance (3,H,W) float32, >= 0 (may exceed 1 before exposure/clipping).

    Args:
        albedo: (3,H,W) linear albedo in [0,1].
        normal_cam: (3,H,W) unit normals in the camera optical frame, facing the camera.
        primitive: (H,W) int64 primitive index per pixel (-1 = nothing hit).
        K: (3,3) intrinsics, pixels. R_world_from_cam: (3,3) camera orientation.
        specular: add the Blinn-Phong highlight (view-dependent).
    """
    sizes = check_shape('albedo', albedo, (3, 'H', 'W'))
    check_shape('normal_cam', normal_cam, (3, 'H', 'W'), sizes)
    check_shape('primitive', primitive, ('H', 'W'), sizes)
    device = albedo.device
    # Everything per pixel is written with Python-float coefficients and broadcast 1D rays:
    # no (3,H,W) temporaries for the view and half vectors.
    lx, ly, lz = (float(v) for v in np.asarray(R_world_from_cam).T @ scene.light_dir_world)
    n_dot_l = (normal_cam[0] * lx).add_(normal_cam[1], alpha=ly).add_(normal_cam[2], alpha=lz)
    n_dot_l.clamp_min_(0.0)
    radiance = albedo * (n_dot_l * scene.light_intensity).add_(scene.ambient)
    if not specular:
        return radiance
    height, width = primitive.shape
    xn, yn = pixel_rays(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]),
                        height, width, device)
    xn, yn = xn[None, :], yn[:, None]
    inv_ray_length = torch.rsqrt((xn * xn + 1.0) + yn * yn)  # rays are (x_n, y_n, 1)
    # Unit view vector v = -ray / |ray|; Blinn-Phong half vector h = (v + l) / |v + l|, so
    # n.h = (n.v + n.l) / sqrt(2 + 2 v.l) for unit l and v.
    n_dot_v = (normal_cam[0] * xn).addcmul_(normal_cam[1], yn).add_(normal_cam[2])
    n_dot_v.mul_(inv_ray_length).neg_()
    v_dot_l = ((xn * lx) + (yn * ly + lz)).mul_(inv_ray_length).neg_()
    n_dot_h = (n_dot_v + n_dot_l).mul_(torch.rsqrt(v_dot_l.mul_(2.0).add_(2.0).clamp_min_(1e-6)))
    table = torch.as_tensor(np.stack([scene.specular_strength, scene.shininess]),
                            dtype=torch.float32, device=device)
    per_pixel = table.index_select(1, primitive.reshape(-1).clamp_min(0)).reshape(2, height, width)
    lit = torch.gt(n_dot_l, 0.0, out=torch.empty_like(n_dot_l))
    # n.h <= 1 for unit vectors, but where the view looks straight against the light (v.l near
    # -1) the formula divides two vanishing numbers; unclamped, (n.h)^shininess overflowed to
    # inf, and inf * 0 gave NaN pixels (seen: 6081 pixels of one multiview sample).
    highlight = n_dot_h.clamp_(0.0, 1.0).pow_(per_pixel[1]).mul_(per_pixel[0]).mul_(lit)
    return radiance.add_(highlight.mul_(scene.light_intensity))
