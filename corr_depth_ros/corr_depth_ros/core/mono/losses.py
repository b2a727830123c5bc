"""Self-supervised training loss of Godard et al., CVPR 2017, Sec. 3.2 (Eq. 1-4).

Per output scale s and for both views (left and right):

    C_s = a_ap * (C_ap^l + C_ap^r) + a_ds * (C_ds^l + C_ds^r) + a_lr * (C_lr^l + C_lr^r)

* appearance (Eq. 2): ``alpha * (1 - SSIM(I, I~)) / 2 + (1 - alpha) * |I - I~|``, alpha = 0.85,
  with I~ the other view sampled with the predicted disparity (3x3 SSIM, as the paper);
* disparity smoothness (Eq. 3): ``|dx d| exp(-|dx I|) + |dy d| exp(-|dy I|)`` (edge-aware:
  disparity may jump where the image does);
* left-right consistency (Eq. 4): ``|d_l(x) - d_r(x - d_l(x))|`` and its mirror for d_r.

Optional (``LossWeights.hints`` > 0): Depth Hints (Watson, Firman, Brostow, Turmukhambetov,
"Self-Supervised Monocular Depth Hints", ICCV 2019). The photometric loss only sees a few
pixels around the current estimate (bilinear sampling), so a net can settle on a wrong depth
that no small step improves. A classical stereo matcher run on the same training pair
(SGBM, ``data.stereo_hints``) proposes a disparity h per pixel; where h rebuilds the view
better than the prediction d, ``log(1 + |d - h|)`` (pixels) pulls d towards it. Still no depth
label: the hint comes from the two images, and it is used only where the images prefer it.

No depth label appears anywhere: the right image is the only supervision of the left
disparity. Images are area-downsampled to each output's resolution, as in the paper. Following
the authors' implementation, the smoothness weight is divided by 2^s at scale s, since
disparity gradients (fractions of the width) grow as the map gets coarser.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..shapes import check_shape
from .warp import reconstruct_left, reconstruct_right, sample_along_rows

# SSIM stabilisers for images in [0, 1]: (0.01 * L)^2 and (0.03 * L)^2 with L = 1 (Wang et al.
# 2004), as used by the paper.
_SSIM_C1 = 0.01 ** 2
_SSIM_C2 = 0.03 ** 2


@dataclass(frozen=True)
class LossWeights:
    """Weights of Eq. 1 (the paper's values); ``use_lr = False`` is the no-LR ablation."""

    appearance: float = 1.0      # a_ap
    smoothness: float = 0.1      # a_ds
    left_right: float = 1.0      # a_lr
    hints: float = 0.0           # Depth Hints weight (0: off, the paper's loss)
    alpha: float = 0.85          # SSIM vs L1 balance in the appearance term
    use_lr: bool = True


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of two (B,C,H,W) images in [0,1] over 3x3 windows; (B,C,H,W) in [-1, 1].

    Windows are mean-filtered (not Gaussian), with reflection padding so the map keeps the
    input size; identical inputs give exactly 1 everywhere.
    """
    sizes = check_shape('x', x, ('B', 'C', 'H', 'W'))
    check_shape('y', y, ('B', 'C', 'H', 'W'), sizes)
    x = F.pad(x, (1, 1, 1, 1), mode='reflect')
    y = F.pad(y, (1, 1, 1, 1), mode='reflect')
    mu_x = F.avg_pool2d(x, 3, 1)
    mu_y = F.avg_pool2d(y, 3, 1)
    sigma_x = F.avg_pool2d(x * x, 3, 1) - mu_x * mu_x
    sigma_y = F.avg_pool2d(y * y, 3, 1) - mu_y * mu_y
    sigma_xy = F.avg_pool2d(x * y, 3, 1) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + _SSIM_C1) * (2 * sigma_xy + _SSIM_C2)
    denominator = (mu_x * mu_x + mu_y * mu_y + _SSIM_C1) * (sigma_x + sigma_y + _SSIM_C2)
    return numerator / denominator


def appearance_error(image: torch.Tensor, reconstruction: torch.Tensor, alpha: float = 0.85
                     ) -> torch.Tensor:
    """Eq. 2 per pixel, ``alpha * (1 - SSIM) / 2 + (1 - alpha) * |I - I~|`` averaged over the
    channels: (B,1,H,W), >= 0."""
    sizes = check_shape('image', image, ('B', 'C', 'H', 'W'))
    check_shape('reconstruction', reconstruction, ('B', 'C', 'H', 'W'), sizes)
    dissimilarity = ((1.0 - ssim(image, reconstruction)) / 2.0).clamp(0.0, 1.0)
    l1 = (image - reconstruction).abs()
    return (alpha * dissimilarity + (1.0 - alpha) * l1).mean(dim=1, keepdim=True)


def appearance_loss(image: torch.Tensor, reconstruction: torch.Tensor, alpha: float = 0.85
                    ) -> torch.Tensor:
    """Eq. 2: mean of ``alpha * (1 - SSIM) / 2 + (1 - alpha) * |I - I~|``; scalar, >= 0."""
    return appearance_error(image, reconstruction, alpha).mean()


def hint_loss(disparity: torch.Tensor, target: torch.Tensor, source: torch.Tensor,
              hint_px: torch.Tensor, prediction_error: torch.Tensor, sign: float,
              alpha: float = 0.85) -> torch.Tensor:
    """Depth Hints (Watson et al. 2019, Eq. 5) for one view at one output scale: mean over all
    pixels of ``log(1 + |d - h|)`` (pixels of this scale) where the hint h exists and rebuilds
    ``target`` from ``source`` with a lower appearance error than the prediction d; 0 elsewhere.

    Args (all at this scale's resolution): disparity (B,1,H,W) fractions of width; target and
    source (B,3,H,W) in [0,1]; hint_px (B,1,H,W) pixels of this scale, NaN = no hint;
    prediction_error (B,1,H,W) the prediction's ``appearance_error`` (computed by the caller
    for the appearance term anyway); sign as in ``warp.sample_along_rows`` (-1: target is the
    left view).
    """
    sizes = check_shape('target', target, ('B', 3, 'H', 'W'))
    for name, value in (('disparity', disparity), ('hint_px', hint_px),
                        ('prediction_error', prediction_error)):
        check_shape(name, value, ('B', 1, 'H', 'W'), sizes)
    width = target.shape[-1]
    valid = torch.isfinite(hint_px)
    hint = torch.where(valid, hint_px, torch.zeros_like(hint_px))
    with torch.no_grad():
        error_hint = appearance_error(target, sample_along_rows(source, hint / width, sign), alpha)
        use = valid & (error_hint < prediction_error.detach())
    return (torch.log1p((disparity * width - hint).abs()) * use).mean()


def hint_pyramid(hint_px: torch.Tensor, num_scales: int) -> List[torch.Tensor]:
    """[hint, hint/2, ...]: one pixel of each 2^s x 2^s block (no averaging across depth edges
    or NaN), in pixels of that scale (divided by 2^s). The pixel taken is the one at offset
    2^(s-1) in the block, within half a fine pixel of the block's centre (2^s - 1) / 2, where
    the area-downsampled image pyramid has its sample; the block's first pixel would sit
    (2^s - 1) / 2 fine pixels off it (3.5 at scale 3), biasing hints on slanted surfaces.
    (H,W) must be multiples of 2^(num_scales-1), as the network's input sizes are."""
    return [hint_px[..., (2 ** s) // 2::2 ** s, (2 ** s) // 2::2 ** s] / 2 ** s
            for s in range(num_scales)]


def smoothness_loss(disparity: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Eq. 3, edge-aware: mean ``|dx d| e^{-|dx I|} + |dy d| e^{-|dy I|}``; scalar, >= 0.

    Args: disparity (B,1,H,W) (any unit; fractions of width here), image (B,C,H,W) in [0,1]
    (the image gradient is averaged over channels).
    """
    sizes = check_shape('disparity', disparity, ('B', 1, 'H', 'W'))
    check_shape('image', image, ('B', None, 'H', 'W'), sizes)
    disp_dx = (disparity[..., :, 1:] - disparity[..., :, :-1]).abs()
    disp_dy = (disparity[..., 1:, :] - disparity[..., :-1, :]).abs()
    image_dx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(1, keepdim=True)
    image_dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True)
    return (disp_dx * torch.exp(-image_dx)).mean() + (disp_dy * torch.exp(-image_dy)).mean()


def left_right_consistency_loss(disparity_left: torch.Tensor, disparity_right: torch.Tensor
                                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 for both views: mean ``|d_l - d_r(x - d_l)|`` and mean ``|d_r - d_l(x + d_r)|``.

    Args: (B,1,H,W) disparities, fractions of the width. Returns two scalars (left, right).
    """
    sizes = check_shape('disparity_left', disparity_left, ('B', 1, 'H', 'W'))
    check_shape('disparity_right', disparity_right, ('B', 1, 'H', 'W'), sizes)
    right_seen_from_left = sample_along_rows(disparity_right, disparity_left, -1.0)
    left_seen_from_right = sample_along_rows(disparity_left, disparity_right, +1.0)
    return ((disparity_left - right_seen_from_left).abs().mean(),
            (disparity_right - left_seen_from_right).abs().mean())


def image_pyramid(image: torch.Tensor, num_scales: int) -> List[torch.Tensor]:
    """[image, image/2, ...] (B,C,H/2^s,W/2^s), area-downsampled."""
    pyramid = [image]
    for _ in range(1, num_scales):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2))
    return pyramid


def monodepth_loss(disparities: Sequence[torch.Tensor], left: torch.Tensor, right: torch.Tensor,
                   weights: LossWeights = LossWeights(),
                   hints: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
                   ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Eq. 1 summed over the scales of the network output.

    Args:
        disparities: list of (B,2,H/2^s,W/2^s), s = 0.., finest first; channel 0 left-view,
            channel 1 right-view disparity, fractions of width (network.py).
        left, right: (B,3,H,W) rectified pair in [0,1].
        hints: (left, right) (B,1,H,W) hint disparities in pixels, NaN = none; used at every
            scale (subsampled, ``hint_pyramid``) when ``weights.hints`` > 0.
    Returns:
        (total loss scalar, {'appearance', 'smoothness', 'left_right'[, 'hints']} detached
        scalars).
    """
    if weights.hints > 0 and hints is None:
        raise ValueError('weights.hints > 0 needs hint disparities (data.stereo_hints)')
    sizes = check_shape('left', left, ('B', 3, 'H', 'W'))
    check_shape('right', right, ('B', 3, 'H', 'W'), sizes)
    lefts = image_pyramid(left, len(disparities))
    rights = image_pyramid(right, len(disparities))
    terms = {'appearance': 0.0, 'smoothness': 0.0, 'left_right': 0.0}
    if weights.hints > 0:
        terms['hints'] = 0.0
        hint_lefts = hint_pyramid(hints[0], len(disparities))
        hint_rights = hint_pyramid(hints[1], len(disparities))
    for scale, (disparity, left_s, right_s) in enumerate(zip(disparities, lefts, rights)):
        check_shape(f'disparities[{scale}]', disparity,
                    (sizes['B'], 2, left_s.shape[-2], left_s.shape[-1]))
        disp_left, disp_right = disparity[:, 0:1], disparity[:, 1:2]
        left_est = reconstruct_left(right_s, disp_left)
        right_est = reconstruct_right(left_s, disp_right)
        error_left = appearance_error(left_s, left_est, weights.alpha)
        error_right = appearance_error(right_s, right_est, weights.alpha)
        terms['appearance'] = terms['appearance'] + error_left.mean() + error_right.mean()
        terms['smoothness'] = terms['smoothness'] + (
            smoothness_loss(disp_left, left_s) + smoothness_loss(disp_right, right_s)) / 2 ** scale
        if weights.use_lr:
            lr_left, lr_right = left_right_consistency_loss(disp_left, disp_right)
            terms['left_right'] = terms['left_right'] + lr_left + lr_right
        if weights.hints > 0:
            terms['hints'] = terms['hints'] + (
                hint_loss(disp_left, left_s, right_s, hint_lefts[scale], error_left, -1.0,
                          weights.alpha)
                + hint_loss(disp_right, right_s, left_s, hint_rights[scale], error_right, +1.0,
                            weights.alpha))
    total = (weights.appearance * terms['appearance'] + weights.smoothness * terms['smoothness']
             + (weights.left_right * terms['left_right'] if weights.use_lr else 0.0)
             + (weights.hints * terms['hints'] if weights.hints > 0 else 0.0))
    logs = {k: (v.detach() if torch.is_tensor(v) else torch.tensor(float(v)))
            for k, v in terms.items()}
    return total, logs
