"""Stage 5: edge-aware upsampling from 1/8 to full resolution.

Convex upsampling (RAFT, Teed & Deng ECCV 2020): each full-resolution pixel is a convex
combination of the 3x3 coarse neighbours around its parent cell, with weights predicted from
the left image. Unlike bilinear upsampling it can keep a depth edge sharp where the image has
one, and it runs entirely at 1/8 resolution, which is why we use it instead of a
full-resolution residual refiner (~1 G multiply-adds per 3x3 16-channel layer at 741x500).
The guidance includes the left image itself, rearranged by pixel-unshuffle into 3 x 8 x 8
channels per 1/8 cell, so the weights can follow image edges at full-resolution precision.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..inference_prep import CHANNELS_LAST
from ..shapes import check_shape
from .features import conv_bn_relu


def convex_upsample(values: torch.Tensor, mask_logits: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, K, h, w) coarse values and (B, 9*factor^2, h, w) weight logits ->
    (B, K, h*factor, w*factor). Values are combined as they are: scale disparities to
    full-resolution pixels before calling.
    """
    sizes = check_shape('values', values, ('B', None, 'h', 'w'))
    check_shape('mask_logits', mask_logits, ('B', 9 * factor * factor, 'h', 'w'), sizes)
    batch, channels, height, width = values.shape
    # Softmax over the 9 neighbours, written out so that the weighted sum can run one
    # neighbour at a time: 9 multiply-adds on (B, f*f, h, w) slices per value channel
    # instead of a (B, K, 9, f, f, h, w) broadcast product (28 MB at 741x500 with K = 2) and a
    # strided reduction over it. Same values and gradients to float rounding (tested).
    logits = mask_logits.view(batch, 9, factor * factor, height, width)
    # exp in place on the shifted copy: one (B, 9, f*f, h, w) temporary instead of two
    # (14 MB each at 741x500). The max is detached: the weights do not depend on the shift, so
    # neither do their gradients, and autograd need not keep ``logits`` for amax.
    weights = (logits - logits.amax(dim=1, keepdim=True).detach()).exp_()
    total = weights.sum(dim=1)                                           # (B, f*f, h, w)
    # Replicate padding: a border pixel's missing neighbours repeat it instead of pulling the
    # value towards 0 (RAFT's zero padding biases border disparities low). Nine shifted slices
    # in unfold's (row-major 3x3) order; plain slicing also exports cleanly to ONNX.
    padded = F.pad(values, (1, 1, 1, 1), mode='replicate')
    neighbours = [padded[:, :, dy:dy + height, dx:dx + width]
                  for dy in range(3) for dx in range(3)]
    channels_up = []
    for channel in range(channels):
        weighted = weights[:, 0] * neighbours[0][:, channel:channel + 1]
        for k in range(1, 9):
            # In place: autograd keeps addcmul's factors, not the sum, so this is safe.
            weighted.addcmul_(weights[:, k], neighbours[k][:, channel:channel + 1])
        channels_up.append(weighted.div_(total))
    up = torch.stack(channels_up, dim=1).view(batch, channels, factor, factor, height, width)
    up = up.permute(0, 1, 4, 2, 5, 3)                                    # (B, K, h, f, w, f)
    return up.reshape(batch, channels, height * factor, width * factor)


class ConvexUpsampler(nn.Module):
    """Predicts the convex weights from guidance at 1/``factor`` resolution and applies them.

    ``forward(values (B, K, h, w), guidance (B, guide_channels, h, w), image (B, 3, h*f, w*f))``
    -> (B, K, h*f, w*f); ``image`` in [0, 1] (already normalised or not: only edges matter).
    """

    def __init__(self, *, guide_channels: int, factor: int = 8, hidden: int = 64):
        super().__init__()
        self.factor = factor
        # The wide 9*f*f-channel output layer is 1x1: as a 3x3 layer it alone would cost
        # ~2 G multiply-adds at 741x500; one narrow 3x3 layer gives the spatial context.
        self.mask_head = nn.Sequential(
            conv_bn_relu(guide_channels + 3 * factor * factor, hidden, kernel=1),
            conv_bn_relu(hidden, hidden),
            nn.Conv2d(hidden, 9 * factor * factor, 1))

    def forward(self, values: torch.Tensor, guidance: torch.Tensor,
                image: torch.Tensor) -> torch.Tensor:
        # pixel_unshuffle (channel c*f*f + i*f + j holds pixel (i, j) of colour c in each f x f
        # cell), written as a view whose strides are already channels-last, the layout the
        # head's convolutions want: ~2 ms at 741x500 where pixel_unshuffle and a conversion
        # took ~4.
        batch, colours, height, width = image.shape
        f = self.factor
        pixels = image.reshape(batch, colours, height // f, f, width // f, f).permute(
            0, 2, 4, 1, 3, 5).reshape(batch, height // f, width // f, colours * f * f).permute(
            0, 3, 1, 2)
        # The narrow layers run channels-last (model.py); the wide 9*f*f-channel 1x1 output
        # layer runs in NCHW, the layout the softmax and weighted sum want: a channels-last
        # convolution followed by a transpose cost 3x as much (741x500 on the 2-core CPU:
        # ~12 ms vs ~3.5 ms). Its weight is re-strided to NCHW (inference_prep made it
        # channels-last), or oneDNN would pick channels-last again.
        hidden = self.mask_head[:-1](torch.cat(
            [guidance.contiguous(memory_format=CHANNELS_LAST), pixels], dim=1).contiguous(
            memory_format=CHANNELS_LAST)).contiguous()
        last = self.mask_head[-1]
        # The 0.25 scale keeps the initial weights near uniform (RAFT does the same), so early
        # training behaves like smooth upsampling instead of random neighbour picking. Applied
        # to the layer's weight and bias rather than to its 576-channel output (~2 ms less).
        weight = 0.25 * last.weight.flatten(1)[:, :, None, None]
        logits = F.conv2d(hidden, weight, 0.25 * last.bias)
        return convex_upsample(values, logits, self.factor)


class LocalRefiner(nn.Module):
    """Stage 6 (optional): a residual correction of the full-resolution disparity, predicted at
    1/4 resolution from a local correlation around the current estimate.

    The 1/8 cost volume spaces its candidates 8 px apart, so the soft-argmin's sub-pixel part
    is interpolated from a coarse distribution; on the held-out synthetic pairs the median error
    is 1-3 px at every disparity. Cascade and coarse-to-fine stereo (StereoNet, Khamis et al.
    ECCV 2018; CasStereo, Gu et al. CVPR 2020; HITNet, Tankovich et al. CVPR 2021) correct such
    an estimate with a narrow search at a finer level. Here: the right image's 1/4 features
    (the feature stem's, computed anyway) are read at ``x - d/4 - o`` for offsets ``o`` of
    -r..r quarter-pixels in half steps (``radius`` r = 2: +-8 px at full resolution, 2 px
    apart), correlated with the left features, and four small convolutions (dilations 1, 2, 4,
    1) turn the correlations, the left features and the estimate into a residual, bilinearly
    upsampled and added.

    The last layer starts at zero, so an untrained refiner returns its input exactly: it can
    be trained on top of frozen stereo weights (``StereoNet.freeze_base``). Cost at 741x500:
    ~0.15 G multiply-adds, against ~1.5 G for the rest of the network.
    """

    def __init__(self, *, feature_channels: int, hidden: int = 16, projected: int = 16,
                 radius: int = 2):
        super().__init__()
        if radius < 1:
            raise ValueError(f'refiner radius must be >= 1 quarter-pixel, got {radius}')
        # Offsets in quarter-resolution pixels, half a pixel apart.
        self.offsets = tuple(0.5 * k for k in range(-2 * radius, 2 * radius + 1))
        self.project = nn.Conv2d(feature_channels, projected, 1)
        num_offsets = len(self.offsets)
        self.head = nn.Sequential(
            conv_bn_relu(num_offsets + projected + 1, hidden),
            conv_bn_relu(hidden, hidden, dilation=2), conv_bn_relu(hidden, hidden, dilation=4),
            conv_bn_relu(hidden, hidden),
            nn.Conv2d(hidden, 1, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def local_correlation(self, left_q: torch.Tensor, right_q: torch.Tensor,
                          disparity_q: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) projected features, (B, 1, h, w) disparity in 1/4-res pixels ->
        (B, len(offsets), h, w): mean over channels of left(x) * right(x - d - o), the right
        features linearly interpolated along the row and 0 outside the image (what a bilinear
        ``grid_sample`` with zero padding gives, at a fraction of its cost).

        Interpolation is linear in the right features, so the correlation at a fractional
        shift is the interpolation of the correlations at the two integer shifts around it:
        2r+2 integer shifts around floor(d) serve all 4r+1 offsets (radius 2: six for nine).
        The integer shifts read whole pixels (all C channels, contiguous in channels-last
        memory) with one ``index_select`` instead of a per-channel ``gather`` over NCHW, and the
        output comes out channels-last, the layout the head's convolutions want.
        """
        sizes = check_shape('left_q', left_q, ('B', 'C', 'h', 'w'))
        check_shape('right_q', right_q, ('B', 'C', 'h', 'w'), sizes)
        check_shape('disparity_q', disparity_q, ('B', 1, 'h', 'w'), sizes)
        batch, channels, height, width = left_q.shape
        device, dtype = left_q.device, left_q.dtype
        base = torch.floor(disparity_q)
        fraction = disparity_q - base
        lowest = math.floor(min(self.offsets))
        count = math.floor(max(self.offsets)) + 2 - lowest      # radius 2: shifts -2 .. 3
        shifts = torch.arange(lowest, lowest + count, device=device)
        # Source column of every pixel for every integer shift around floor(d): (B, h, w, S).
        source = (torch.arange(width, device=device).view(1, 1, width, 1)
                  - base.long().reshape(batch, height, width, 1) - shifts)
        inside = ((source >= 0) & (source < width)).to(dtype)
        # Row of the (B*h*w, C) pixel-major right features that each sample reads.
        rows = (torch.arange(batch * height, device=device).view(batch, height, 1, 1) * width
                + source.clamp(0, width - 1)).view(-1)
        right_rows = right_q.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
        sampled = right_rows.index_select(0, rows).view(batch, height, width, count, channels)
        left_rows = left_q.permute(0, 2, 3, 1).reshape(batch, height, width, 1, channels)
        integer = (sampled * left_rows).sum(-1).mul_(1.0 / channels).mul_(inside)  # (B,h,w,S)
        # Each offset interpolates the two integer shifts around d + o. Clamped: a fraction
        # just under 1 plus the largest offset can round up to the next integer in float32;
        # the weight then takes the last shift in full.
        offsets = torch.tensor(self.offsets, dtype=dtype, device=device)
        total = fraction.reshape(batch, height, width, 1) + offsets          # (B, h, w, K)
        below = (torch.floor(total) - lowest).clamp(0, count - 2)
        weight = total - (below + lowest)
        below = below.long()
        out = ((1.0 - weight) * torch.gather(integer, 3, below)
               + weight * torch.gather(integer, 3, below + 1))
        return out.permute(0, 3, 1, 2)

    def forward(self, disparity: torch.Tensor, quarter: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) disparity in full-resolution pixels and (2B, C, H/4, W/4) stem features,
        the left images' then the right images' (as the feature pass stacks them) ->
        (B, 1, H, W) refined disparity, >= 0."""
        sizes = check_shape('disparity', disparity, ('B', 1, 'H', 'W'))
        batch = sizes['B']
        check_shape('quarter', quarter, (2 * batch, None, None, None))
        factor = disparity.shape[-1] // quarter.shape[-1]
        disparity_q = F.avg_pool2d(disparity, factor) / factor
        # Projected straight from the stacked (channels-last) stem output, and kept
        # channels-last: the correlation reads whole pixels.
        projected = self.project(quarter)
        left_p, right_p = projected[:batch], projected[batch:]
        correlation = self.local_correlation(left_p, right_p, disparity_q)
        # Disparity input scaled to ~unit range (1/4-res pixels / 16), for the convolutions.
        x = torch.cat([correlation, left_p, disparity_q / 16.0], dim=1)
        residual = self.head(x.contiguous(memory_format=CHANNELS_LAST)).contiguous()
        residual = F.interpolate(residual * factor, size=disparity.shape[-2:], mode='bilinear',
                                 align_corners=False)
        return (disparity + residual).clamp_min(0.0)
