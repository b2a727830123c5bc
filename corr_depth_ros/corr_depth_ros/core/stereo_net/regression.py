"""Stage 4: from matching costs to a disparity and a confidence per pixel.

Soft-argmin (GC-Net, Kendall et al. ICCV 2017): p_d = softmax(-cost)_d and the disparity is
sum_d d p_d, differentiable and sub-pixel. Where the distribution is multi-modal (edges,
occlusions) the full expectation lands between the modes, so at inference we can restrict it to
a window around the arg-max (as in the "top-k"/local regressions of CFNet, Shen et al. CVPR 2021,
and ACVNet): ``radius`` > 0.
"""
from typing import Optional

import torch

from ..shapes import check_shape


def cost_to_probability(cost: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) costs (lower = better) -> (B, D, H, W) probabilities over disparities."""
    check_shape('cost', cost, (None, None, None, None))
    return torch.softmax(-cost, dim=1)


def argmax_candidates(probability: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) -> (B, 1, H, W) int64 index of the largest probability (the first on ties).

    ``max(dim=1).indices``, not ``argmax(dim=1)``: the same indices, but on the CPU the arg-max
    kernel over the strided candidate axis took 1.6 ms at 741x500 (1/8: 24 x 64 x 96), max 0.3.
    """
    return probability.max(dim=1, keepdim=True).indices


def _window_around_peak(probability: torch.Tensor, radius: int, peak: Optional[torch.Tensor]):
    """(probabilities of the 2r+1 candidates around the arg-max, 0 beyond the ends; their
    candidate indices), both (B, 2r+1, H, W). ``peak``: argmax_candidates(probability) when
    the caller has it already."""
    num = probability.shape[1]
    if peak is None:
        peak = argmax_candidates(probability)
    offsets = torch.arange(-radius, radius + 1, device=probability.device).view(1, -1, 1, 1)
    index = peak + offsets                                               # (B, 2r+1, H, W)
    inside = (index >= 0) & (index < num)
    window = torch.gather(probability, 1, index.clamp(0, num - 1)) * inside.to(probability.dtype)
    return window, index


def soft_argmin_disparity(probability: torch.Tensor, radius: int = 0,
                          peak: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, D, H, W) probabilities over candidates 0..D-1 -> (B, 1, H, W) expected disparity,
    in candidate units (multiply by the feature stride for image pixels).

    radius = 0: expectation over all D candidates (training). radius r > 0: expectation over the
    2r+1 candidates around the arg-max (``peak``, computed when not given), renormalised.
    """
    check_shape('probability', probability, (None, None, None, None))
    num = probability.shape[1]
    if radius <= 0:
        candidates = torch.arange(num, dtype=probability.dtype, device=probability.device)
        return (probability * candidates.view(1, num, 1, 1)).sum(dim=1, keepdim=True)
    weights, index = _window_around_peak(probability, radius, peak)
    total = weights.sum(dim=1, keepdim=True)
    # total >= p(peak) >= 1/D > 0, so the division is always defined.
    return (weights * index.to(probability.dtype)).sum(dim=1, keepdim=True) / total


def peak_confidence(probability: torch.Tensor, radius: int = 1,
                    peak: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, D, H, W) probabilities -> (B, 1, H, W) confidence in [0, 1]: the probability mass
    within ``radius`` candidates of the arg-max (``peak``, computed when not given). 1 = a
    single sharp mode; ~ (2r+1)/D = flat. Mass near the peak rather than the peak alone, so a
    correct sub-pixel match split between two neighbouring candidates still scores high.
    """
    check_shape('probability', probability, (None, None, None, None))
    mass, _ = _window_around_peak(probability, radius, peak)
    return mass.sum(dim=1, keepdim=True).clamp(0.0, 1.0)


def entropy_confidence(probability: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) probabilities -> (B, 1, H, W) 1 - H(p) / log(D), in [0, 1]."""
    check_shape('probability', probability, (None, None, None, None))
    num = probability.shape[1]
    if num < 2:
        return torch.ones_like(probability[:, :1])
    entropy = -(probability * torch.log(probability.clamp_min(1e-12))).sum(dim=1, keepdim=True)
    return (1.0 - entropy / torch.log(torch.tensor(float(num)))).clamp(0.0, 1.0)
