"""Stage 5: edge-aware upsampling from 1/8 to full resolution.

Convex upsampling (RAFT, Teed & Deng ECCV 2020): each full-resolution pixel is a convex
combination of the 3x3 coarse neighbours around its parent cell, with weights predicted from
the left image. Unlike bilinear upsampling it can keep a depth edge sharp where the image has
one, and it runs entirely at 1/8 resolution, which is why we use it instead of a
full-resolution residual refiner (~1 G multiply-adds per 3x3 16-channel layer at 741x500).
The guidance includes the left image itself, rearranged by pixel-unshuffle into 3 x 8 x 8
channels per 1/8 cell, so the weights can follow image edges at full-resolution precision.
"""
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
    weights = torch.softmax(mask_logits.view(batch, 1, 9, factor, factor, height, width), dim=2)
    # Replicate padding: a border pixel's missing neighbours repeat it instead of pulling the
    # value towards 0 (RAFT's zero padding biases border disparities low). Nine shifted slices
    # in unfold's (row-major 3x3) order; plain slicing also exports cleanly to ONNX.
    padded = F.pad(values, (1, 1, 1, 1), mode='replicate')
    neighbours = torch.stack([padded[:, :, dy:dy + height, dx:dx + width]
                              for dy in range(3) for dx in range(3)], dim=2)
    neighbours = neighbours.view(batch, channels, 9, 1, 1, height, width)
    up = (weights * neighbours).sum(dim=2)                               # (B, K, f, f, h, w)
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
        pixels = F.pixel_unshuffle(image, self.factor)
        # The narrow layers run channels-last (model.py); the wide 9*f*f-channel 1x1 output
        # layer runs in NCHW, the layout the softmax and weighted sum want: a channels-last
        # convolution followed by a transpose cost 3x as much (741x500 on the 2-core CPU:
        # ~12 ms vs ~3.5 ms). Its weight is re-strided to NCHW (inference_prep made it
        # channels-last), or oneDNN would pick channels-last again.
        hidden = self.mask_head[:-1](torch.cat([guidance, pixels], dim=1).contiguous(
            memory_format=CHANNELS_LAST)).contiguous()
        last = self.mask_head[-1]
        weight = last.weight.flatten(1)[:, :, None, None]
        logits = F.conv2d(hidden, weight, last.bias)
        # The 0.25 scale keeps the initial weights near uniform (RAFT does the same), so early
        # training behaves like smooth upsampling instead of random neighbour picking.
        return convex_upsample(values, 0.25 * logits, self.factor)
