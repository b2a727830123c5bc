"""The composed network: features -> group-wise correlation -> 2D hourglass -> soft-argmin ->
convex upsampling (-> optional 1/4-resolution local refinement, ``refine_channels`` > 0).
Build it with :func:`build_stereo_net` (keyword-only, so the weights file can store the call
as its config and rebuild exactly this network).
"""
from typing import Dict, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..inference_prep import CHANNELS_LAST
from ..shapes import check_shape
from .aggregation import Hourglass2d
from .cost_volume import groupwise_correlation_volume
from .features import FeatureExtractor
from .refinement import ConvexUpsampler, LocalRefiner
from .regression import (argmax_candidates, cost_to_probability, peak_confidence,
                         soft_argmin_disparity)

ARCH = 'stereo_gwc2d_v1'   # bump when a change makes old weights incompatible
FEATURE_STRIDE = 8         # cost volume resolution: see aggregation.py for why 1/8
DIVISIBILITY = 32          # 1/8 features, then two stride-2 levels in the hourglass


class StereoNet(nn.Module):
    """(B, 3, H, W) left and right RGB in [0, 1], rectified -> dict with
    ``disparity`` (B, 1, H, W) in pixels of the left image (no doffs, >= 0) and
    ``confidence`` (B, 1, H, W) in [0, 1]. Any H, W: inputs are padded to a multiple of
    :data:`DIVISIBILITY` on the bottom and right and the outputs cropped back.
    In training mode the dict also holds ``disparity_coarse`` and ``disparity_coarser``
    (B, 1, H, W), the coarser predictions bilinearly upsampled, for multi-scale supervision.
    """

    def __init__(self, *, max_disparity_px: int = 192, feature_channels: int = 48,
                 groups: int = 8, feature_blocks: int = 1,
                 aggregation_channels: Sequence[int] = (32, 48, 64),
                 regression_radius: int = 2, refine_channels: int = 0, refine_radius: int = 2):
        super().__init__()
        if max_disparity_px % FEATURE_STRIDE or max_disparity_px <= 0:
            raise ValueError(f'max_disparity_px must be a positive multiple of {FEATURE_STRIDE}, '
                             f'got {max_disparity_px}')
        self.max_disparity_px = max_disparity_px
        self.num_disparities = max_disparity_px // FEATURE_STRIDE
        self.groups = groups
        self.regression_radius = regression_radius
        self.divisibility = DIVISIBILITY
        # The factory's keyword arguments, as stored in weights files (JSON-friendly types).
        self.config = {'max_disparity_px': max_disparity_px, 'feature_channels': feature_channels,
                       'groups': groups, 'feature_blocks': feature_blocks,
                       'aggregation_channels': [int(c) for c in aggregation_channels],
                       'regression_radius': regression_radius}
        if refine_channels:
            # Only when used, so that files written before the refiner existed keep their
            # config (and identity) and still load strictly.
            self.config['refine_channels'] = refine_channels
            if refine_radius != 2:
                self.config['refine_radius'] = refine_radius
        self.features = FeatureExtractor(channels=feature_channels, blocks=feature_blocks)
        self.aggregation = Hourglass2d(
            in_channels=groups * self.num_disparities + feature_channels,
            num_disparities=self.num_disparities, channels=tuple(aggregation_channels))
        self.upsampler = ConvexUpsampler(guide_channels=aggregation_channels[0] + feature_channels,
                                         factor=FEATURE_STRIDE)
        self.refiner = (LocalRefiner(feature_channels=self.features.quarter_channels,
                                     hidden=refine_channels, radius=refine_radius)
                        if refine_channels else None)
        self.base_frozen = False

    def searched_max_disparity_px(self, refine: bool = True) -> float:
        """The largest disparity the network looks at, full-resolution pixels: its last
        cost-volume candidate, (num_disparities - 1) x FEATURE_STRIDE (``max_disparity_px`` is
        the training bound one step past it: 192 -> 184; soft-argmin and convex upsampling
        stay within the candidates), plus, when the refiner runs, its search past the estimate
        (its largest offset, quarter-resolution pixels x 4: refine_radius 2 -> 8 px)."""
        top = float((self.num_disparities - 1) * FEATURE_STRIDE)
        if refine and self.refiner is not None:
            top += 4.0 * max(self.refiner.offsets)
        return top

    def freeze_base(self) -> None:
        """Train only the refiner: every other parameter stops requiring gradients and the
        base stays in eval mode (its BatchNorm statistics fixed) even under ``train()``."""
        if self.refiner is None:
            raise ValueError('freeze_base needs a refiner (refine_channels > 0)')
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name.startswith('refiner.'))
        self.base_frozen = True
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.base_frozen:
            for name, child in self.named_children():
                if name != 'refiner':
                    child.eval()
        return self

    def forward(self, left: torch.Tensor, right: torch.Tensor,
                refine: bool = True) -> Dict[str, torch.Tensor]:
        """``refine`` False skips the refiner for this call (the learned backend's probe pass)."""
        sizes = check_shape('left', left, ('B', 3, 'H', 'W'))
        check_shape('right', right, ('B', 3, 'H', 'W'), sizes)
        height, width = left.shape[-2:]
        pad_h = (-height) % self.divisibility
        pad_w = (-width) % self.divisibility
        batch = left.shape[0]
        # 1. Shared 1/8 features for both images in one pass (one batch of 2B), the images
        #    padded on the bottom/right only, so pixel (0, 0) and every disparity stay where
        #    they are. Convolutions run channels-last (oneDNN's native CPU layout, see
        #    inference_prep); the correlation and the convex upsampling's element-wise work stay
        #    NCHW: on channels-last tensors their sums and copies took ~4x as long. 741x500 on
        #    the 2-core CPU, with inference_prep's weights: 93-110 -> 78-81 ms per forward.
        # The padded left image in [0, 1] also guides the upsampling (step 5).
        left_padded = F.pad(left, (0, pad_w, 0, pad_h), mode='replicate') \
            if pad_h or pad_w else left
        if torch.onnx.is_in_onnx_export():
            # Plain operators for the graph (normalized_batch writes into slices).
            right_padded = F.pad(right, (0, pad_w, 0, pad_h), mode='replicate') \
                if pad_h or pad_w else right
            feats, quarter = self.features(torch.cat([left_padded, right_padded], dim=0)
                                           .contiguous(memory_format=CHANNELS_LAST),
                                           with_quarter=True)
        else:
            pair = self.features.normalized_batch((left, right), height + pad_h, width + pad_w)
            feats, quarter = self.features(pair, with_quarter=True, normalized=True)
        feats = feats.contiguous()
        left_f, right_f = feats[:batch], feats[batch:]
        # 2. Group-wise correlation volume (B, G, D, h, w), folded to (B, G*D, h, w), plus the
        #    left features as context for textureless regions.
        volume = groupwise_correlation_volume(left_f, right_f, self.num_disparities, self.groups)
        volume = torch.cat([volume.flatten(1, 2), left_f], dim=1)
        # 3. Aggregation.
        cost, cost_coarse, decoder_f = (t.contiguous() for t in self.aggregation(
            volume.contiguous(memory_format=CHANNELS_LAST)))
        # 4. Regression at 1/8: disparity in candidates, confidence from the distribution.
        probability = cost_to_probability(cost)
        radius = 0 if self.training else self.regression_radius
        peak = argmax_candidates(probability)                     # shared by both
        disparity_c = soft_argmin_disparity(probability, radius, peak)
        confidence_c = peak_confidence(probability, peak=peak)
        # 5. Convex upsampling to full resolution (disparity scaled to full-res pixels).
        up = self.upsampler(torch.cat([disparity_c * FEATURE_STRIDE, confidence_c], dim=1),
                            torch.cat([decoder_f, left_f], dim=1), left_padded)
        disparity = up[:, :1]
        if self.refiner is not None and refine:
            # 6. Local refinement at 1/4 (padded size; cropped below with the rest).
            disparity = self.refiner(disparity, quarter)
        out = {'disparity': disparity[..., :height, :width],
               'confidence': up[:, 1:, :height, :width].clamp(0.0, 1.0)}
        if self.training and self.refiner is not None:
            out['disparity_unrefined'] = up[:, :1, :height, :width]
        if self.training and not self.base_frozen:
            full = (left_padded.shape[-2], left_padded.shape[-1])
            coarse = F.interpolate(disparity_c * FEATURE_STRIDE, size=full, mode='bilinear',
                                    align_corners=False)
            coarser = soft_argmin_disparity(cost_to_probability(cost_coarse)) * 2 * FEATURE_STRIDE
            coarser = F.interpolate(coarser, size=full, mode='bilinear', align_corners=False)
            out['disparity_coarse'] = coarse[..., :height, :width]
            out['disparity_coarser'] = coarser[..., :height, :width]
        return out


def build_stereo_net(*, max_disparity_px: int = 192, feature_channels: int = 48, groups: int = 8,
                     feature_blocks: int = 1, aggregation_channels: Sequence[int] = (32, 48, 64),
                     regression_radius: int = 2, refine_channels: int = 0,
                     refine_radius: int = 2) -> StereoNet:
    """Keyword-only factory; its arguments are the ``config`` stored in the weights file.

    max_disparity_px: the training range at full resolution, pixels (multiple of 8; 192 -> 24
    candidates at 1/8, 0 to 184 px: see StereoNet.searched_max_disparity_px).
    feature_channels must be divisible by ``groups``.
    regression_radius: candidates each side of the peak used by the inference soft-argmin
    (0: full soft-argmin, as in training).
    refine_channels: width of the 1/4-resolution local refiner (refinement.LocalRefiner);
    0 = none. refine_radius: its search, quarter-resolution pixels each side (2: +-8 px).
    """
    if feature_channels % groups:
        raise ValueError(f'feature_channels ({feature_channels}) must be divisible by groups ({groups})')
    if len(aggregation_channels) != 3:
        raise ValueError(f'aggregation_channels needs 3 entries, got {aggregation_channels}')
    return StereoNet(max_disparity_px=max_disparity_px, feature_channels=feature_channels,
                     groups=groups, feature_blocks=feature_blocks,
                     aggregation_channels=tuple(int(c) for c in aggregation_channels),
                     regression_radius=regression_radius, refine_channels=refine_channels,
                     refine_radius=refine_radius)
