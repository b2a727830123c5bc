"""Differentiable horizontal warping of rectified views (Godard et al. 2017, Sec. 3.1).

A bilinear sampler (Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015) along the
rows only: rectified views differ by a horizontal shift, so the sampling grid keeps each pixel's
row and moves its column by the disparity. Disparities are fractions of the image width.

Sign convention (core/geometry.py): a left pixel at column x sees the same point as the right
pixel at ``x - d_left``; a right pixel at x matches the left pixel at ``x + d_right``.
"""
import torch
import torch.nn.functional as F

from ..shapes import check_shape


def sample_along_rows(source: torch.Tensor, disparity_frac: torch.Tensor, sign: float) -> torch.Tensor:
    """Sample ``source`` at column ``x + sign * d * W`` of every pixel (bilinear, edge clamped).

    Args:
        source: (B,C,H,W) image or map to sample from.
        disparity_frac: (B,1,H,W) disparity of the *target* view, fraction of the width W.
        sign: -1 to reconstruct the left view from the right (``x - d_left``), +1 to
            reconstruct the right view from the left (``x + d_right``).
    Returns:
        (B,C,H,W) the target view reconstructed from ``source``.

    Samples outside the image read the border column ('border' padding, as the paper's
    sampler), which keeps gradients finite where the match left the image.
    """
    sizes = check_shape('source', source, ('B', None, 'H', 'W'))
    check_shape('disparity_frac', disparity_frac, ('B', 1, 'H', 'W'), sizes)
    batch, _, height, width = source.shape
    # Normalised coordinates with align_corners=False: pixel x sits at (2x + 1) / W - 1, so a
    # shift of d * W pixels is exactly 2 * d in normalised units, independent of W.
    xs = (2.0 * torch.arange(width, device=source.device, dtype=source.dtype) + 1.0) / width - 1.0
    ys = (2.0 * torch.arange(height, device=source.device, dtype=source.dtype) + 1.0) / height - 1.0
    grid_x = xs.view(1, 1, width) + sign * 2.0 * disparity_frac[:, 0]
    grid_y = ys.view(1, height, 1).expand(batch, height, width)
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(source, grid, mode='bilinear', padding_mode='border', align_corners=False)


def reconstruct_left(right: torch.Tensor, disparity_left_frac: torch.Tensor) -> torch.Tensor:
    """I~l(x) = Ir(x - d_l): the left view rebuilt from the right one, (B,C,H,W)."""
    return sample_along_rows(right, disparity_left_frac, -1.0)


def reconstruct_right(left: torch.Tensor, disparity_right_frac: torch.Tensor) -> torch.Tensor:
    """I~r(x) = Il(x + d_r): the right view rebuilt from the left one, (B,C,H,W)."""
    return sample_along_rows(left, disparity_right_frac, +1.0)
