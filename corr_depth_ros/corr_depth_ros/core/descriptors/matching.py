"""Best matches of reference descriptors in a descriptor image (Dense Object Nets' look-up).

DON finds a reference pixel in a new image as the arg-min of the descriptor L2 distance over the
whole image, and calls it "found" when that distance is under a threshold (the authors' tools
used a fixed threshold). We add two things a robot needs:

* a confidence in [0, 1]: ``1 - (d_best + tau) / (d_second + tau)``, Lowe's ratio test (IJCV
  2004) softened by ``tau`` (descriptor units) so that an exact match with an equally exact
  twin elsewhere is still ambiguous. ``d_second`` is the best distance *outside* ``exclusion_px``
  of the best match, so a smooth descriptor field is not mistaken for ambiguity. Near 1 = the
  match is far better than anything else in the image; near 0 = another place fits as well;
* sub-pixel positions from a parabola through the squared distances of the arg-min and its
  neighbours (exact where the descriptor field is locally linear, as bilinear upsampling makes it).

All distances are Euclidean (not squared), in descriptor units.
"""
from typing import Dict, Optional

import numpy as np
import torch

from ..shapes import check_shape


def pixel_norms2(descriptors: torch.Tensor) -> torch.Tensor:
    """(D,H,W) descriptor image -> (H*W,) squared L2 norm of every pixel's descriptor.

    Accumulated channel by channel: ``flat.pow(2).sum(0)`` makes a (D,H*W) temporary and
    reduces over the leading axis, ~6x slower on CPU (38 vs 7 ms for D=64 at 640x480). Compute
    it once per descriptor image and pass it to :func:`squared_distances` for every chunk.
    """
    flat = descriptors.reshape(descriptors.shape[0], -1)
    norms2 = torch.zeros(flat.shape[1], dtype=flat.dtype, device=flat.device)
    for channel in flat:
        norms2.addcmul_(channel, channel)
    return norms2


def squared_distances(reference: torch.Tensor, descriptors: torch.Tensor,
                      norms2: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N,D) reference descriptors vs a (D,H,W) descriptor image -> (N,H,W) squared L2 distances.

    Uses |a|^2 + |b|^2 - 2 a.b (one fused matrix product); clamped at 0 against rounding.
    ``norms2``: :func:`pixel_norms2` of ``descriptors`` when the caller has it already.
    """
    sizes = check_shape('reference', reference, ('N', 'D'))
    check_shape('descriptors', descriptors, ('D', 'H', 'W'), sizes)
    flat = descriptors.reshape(sizes['D'], -1)
    if norms2 is None:
        norms2 = pixel_norms2(descriptors)
    base = reference.pow(2).sum(1, keepdim=True) + norms2[None]
    dist2 = torch.addmm(base, reference, flat, alpha=-2.0)
    return dist2.clamp_min_(0.0).reshape(sizes['N'], *descriptors.shape[1:])


def _parabola_offset(minus: torch.Tensor, centre: torch.Tensor, plus: torch.Tensor) -> torch.Tensor:
    curvature = minus - 2.0 * centre + plus
    offset = 0.5 * (minus - plus) / torch.where(curvature > 0, curvature, torch.ones_like(curvature))
    return torch.where(curvature > 0, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))


def subpixel_minimum(cost: torch.Tensor, row: torch.Tensor, col: torch.Tensor):
    """(N,H,W) cost maps and the whole-pixel (row, col) of each one's minimum -> (x, y), each
    (N,), refined by a parabola through the minimum and its neighbours, in x and in y apart (at
    most +-0.5 px). Border pixels and fits that are not convex stay put."""
    check_shape('cost', cost, ('N', 'H', 'W'))
    n, height, width = cost.shape
    rows_n = torch.arange(n, device=cost.device)
    centre = cost[rows_n, row, col]
    left = cost[rows_n, row, (col - 1).clamp_min(0)]
    right = cost[rows_n, row, (col + 1).clamp_max(width - 1)]
    up = cost[rows_n, (row - 1).clamp_min(0), col]
    down = cost[rows_n, (row + 1).clamp_max(height - 1), col]
    x, y = col.to(cost.dtype), row.to(cost.dtype)
    inner_x = (col > 0) & (col < width - 1)
    inner_y = (row > 0) & (row < height - 1)
    x = x + torch.where(inner_x, _parabola_offset(left, centre, right), torch.zeros_like(x))
    y = y + torch.where(inner_y, _parabola_offset(up, centre, down), torch.zeros_like(y))
    return x, y


def _argmin_rows(values: torch.Tensor) -> torch.Tensor:
    """(N,M) -> (N,) int64 index of each row's minimum (the first one on ties).

    On the CPU through numpy: torch's row-wise argmin took 4.4 ms for 10 rows of a 640x480
    image on the 2-core CPU, numpy's 0.8 ms (a third of a 10-pixel request, see
    find_best_matches). Same semantics: both return the first minimum.
    """
    if values.device.type == 'cpu':
        return torch.from_numpy(values.detach().numpy().argmin(axis=1))
    return values.argmin(dim=1)


# Bytes of one chunk of distance maps in find_best_matches (it holds about two at a time).
CHUNK_BYTES = 128 * 1024 * 1024


def find_best_matches(reference: torch.Tensor, descriptors: torch.Tensor,
                      exclusion_px: float = 8.0, subpixel: bool = True,
                      chunk: int = 64, tau: float = 0.1,
                      norms2: Optional[torch.Tensor] = None) -> Dict[str, np.ndarray]:
    """Arg-min-L2 matches of reference descriptors in a descriptor image.

    Args:
        reference: (N,D) descriptors of the reference pixels.
        descriptors: (D,H,W) descriptor image of the image searched (the whole image).
        exclusion_px: half-size of the square around the best match that is ignored when
            finding the runner-up, pixels.
        subpixel: refine positions by a parabola fit in x and in y (at most +-0.5 px).
        chunk: most reference descriptors processed at once; fewer on large images, so that a
            chunk's distance maps stay within CHUNK_BYTES (64 at 640x480; a 200-pixel request
            on a 12-megapixel image took GBs with 64).
        tau: softening of the confidence's ratio test, descriptor units (> 0).
        norms2: :func:`pixel_norms2` of ``descriptors`` if the caller keeps it with the image
            (a server answering several requests per frame); computed here otherwise.
    Returns:
        dict of numpy arrays: ``match_px`` (N,2) float32 (x, y) pixels; ``distance`` (N,) L2;
        ``second_distance`` (N,) best L2 outside the exclusion window (inf if none);
        ``confidence`` (N,) in [0, 1].
    """
    sizes = check_shape('reference', reference, ('N', 'D'))
    check_shape('descriptors', descriptors, ('D', 'H', 'W'), sizes)
    height, width = descriptors.shape[1:]
    reference = reference.to(descriptors.device, descriptors.dtype)
    out = {'match_px': [], 'distance': [], 'second_distance': []}
    if norms2 is None:
        norms2 = pixel_norms2(descriptors)
    check_shape('norms2', norms2, (height * width,))
    chunk = max(1, min(chunk, CHUNK_BYTES // (4 * height * width)))
    for start in range(0, sizes['N'], chunk):
        dist2 = squared_distances(reference[start:start + chunk], descriptors, norms2)
        n = dist2.shape[0]
        best = _argmin_rows(dist2.view(n, -1))
        row = torch.div(best, width, rounding_mode='floor')
        col = best % width
        rows_n = torch.arange(n, device=dist2.device)
        best_d2 = dist2[rows_n, row, col]
        if subpixel:
            # Parabola through the squared distances: where the descriptor field is locally
            # linear (it is bilinearly upsampled) they are exactly quadratic in the offset,
            # while the distances themselves form a cone whose parabola fit is pulled towards
            # the whole pixel (up to ~0.09 px).
            x, y = subpixel_minimum(dist2, row, col)
        else:
            x, y = col.to(dist2.dtype), row.to(dist2.dtype)
        # Runner-up: the minimum outside a (2r+1)^2 square around the best match. Blanking only
        # that window in place costs O(r^2) per reference instead of a full-image mask.
        radius = int(np.ceil(exclusion_px))
        for i, (r, c) in enumerate(zip(row.tolist(), col.tolist())):
            dist2[i, max(0, r - radius):r + radius + 1, max(0, c - radius):c + radius + 1] = \
                float('inf')
        # amin, not min(dim=1): the values alone, without the index pass (~6x faster on CPU).
        second_d2 = dist2.view(n, -1).amin(dim=1)
        out['match_px'].append(torch.stack([x, y], dim=1))
        out['distance'].append(best_d2.sqrt())
        out['second_distance'].append(second_d2.sqrt())
    result = {k: torch.cat(v).cpu().numpy().astype(np.float32) for k, v in out.items()}
    result['confidence'] = match_confidence(result['distance'], result['second_distance'], tau)
    return result


def match_confidence(distance: np.ndarray, second_distance: np.ndarray,
                     tau: float = 0.1) -> np.ndarray:
    """Softened ratio-test confidence ``1 - (d_best + tau) / (d_second + tau)``, clipped to [0, 1].

    Args: (N,) best and runner-up L2 distances; tau > 0 in descriptor units. A runner-up of
    inf (no pixel outside the exclusion window: an image smaller than it) gives 0: with nothing
    to compare against, a match is not known to be unambiguous (it read 1 on a uniform image).
    """
    if tau <= 0:
        raise ValueError(f'tau must be > 0, got {tau}')
    distance = np.asarray(distance, dtype=np.float64)
    second = np.asarray(second_distance, dtype=np.float64)
    with np.errstate(invalid='ignore'):
        ratio = (distance + tau) / (second + tau)
    return np.where(np.isfinite(second), np.clip(1.0 - ratio, 0.0, 1.0), 0.0).astype(np.float32)


def descriptor_heatmap(reference: torch.Tensor, descriptors: torch.Tensor,
                       sigma: float, norms2: Optional[torch.Tensor] = None) -> np.ndarray:
    """exp(-d / sigma) over the image for one reference descriptor, as DON's heatmap tools show.

    Args: reference (D,) ; descriptors (D,H,W); sigma > 0 in descriptor units; norms2: the
    image's :func:`pixel_norms2` if the caller keeps it.
    Returns: (H,W) float32 in (0, 1], 1 where the descriptor equals the reference.
    """
    if sigma <= 0:
        raise ValueError(f'sigma must be > 0, got {sigma}')
    check_shape('reference', reference, (descriptors.shape[0],))
    dist = squared_distances(reference[None].to(descriptors.device, descriptors.dtype),
                             descriptors, norms2)[0].sqrt_()
    return torch.exp(-dist / sigma).cpu().numpy().astype(np.float32)


def descriptors_at(descriptors: torch.Tensor, pixels_xy: np.ndarray) -> torch.Tensor:
    """(D,H,W) descriptor image, (N,2) pixels (x, y) -> (N,D) descriptors (bilinear).

    Raises ValueError for a pixel outside [0, W-1] x [0, H-1] (say which, so a caller can tell
    the user).
    """
    from .loss import sample_descriptors
    check_shape('descriptors', descriptors, (None, None, None))
    pixels_xy = check_pixels_inside(pixels_xy, *descriptors.shape[1:])
    return sample_descriptors(descriptors, torch.from_numpy(pixels_xy).to(descriptors.device))


def check_pixels_inside(pixels_xy, height: int, width: int) -> np.ndarray:
    """(N,2) pixels (x, y) as float32, or ValueError naming the first outside [0, W-1] x
    [0, H-1]."""
    pixels_xy = np.asarray(pixels_xy, dtype=np.float32).reshape(-1, 2)
    bad = ~((pixels_xy[:, 0] >= 0) & (pixels_xy[:, 0] <= width - 1) &
            (pixels_xy[:, 1] >= 0) & (pixels_xy[:, 1] <= height - 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f'pixel {i} ({pixels_xy[i, 0]:g}, {pixels_xy[i, 1]:g}) is outside the '
                         f'{width}x{height} image (x must be in [0, {width - 1}], '
                         f'y in [0, {height - 1}])')
    return pixels_xy
