"""Encoder-decoder that predicts left AND right disparity from the left image alone.

Godard, Mac Aodha, Brostow, "Unsupervised Monocular Depth Estimation with Left-Right
Consistency", CVPR 2017 (arXiv:1609.03677), Sec. 3.1-3.3. As in the paper:

* fully convolutional, ELU activations, skip connections from encoder to decoder;
* disparity at four scales (full, 1/2, 1/4, 1/8 of the input), each ``max_disparity_fraction *
  sigmoid(conv)``, in units of *fractions of the image width* (so one model works at any input
  size); the coarser disparity is upsampled and fed to the next finer decoder stage;
* two channels per scale: channel 0 is the left-view disparity (its match in the right image
  is at ``x - d * W``), channel 1 the right-view disparity (match in the left image at
  ``x + d * W``). Only the left image is an input; the right disparity exists so that the
  left-right consistency loss (``losses.py``) can be formed.

Unlike the paper's VGG/ResNet encoders (31-58 M parameters) this one has ~1 M parameters and
~0.5 GMAC at 384x256 with ``base_channels`` 16, so that it runs at >= 15 frames/s at 384x256 on a
two-core CPU. The input size must be a multiple of :data:`DIVISIBILITY` (five stride-2 stages);
inference (``inference.predict_disparity``) resizes images to the trained input size.
"""
import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ..shapes import check_shape

DIVISIBILITY = 32  # 2**5: the encoder halves the resolution five times
ARCH = 'mono_lr_net-2'
# Initial disparity (fraction of width) of the untrained heads: the order of the median training
# disparity (0.067 W in the tabletop training scenes, data.MAX_DISPARITY_FRACTION = 0.12). At the
# coarsest output (1/8, 32 px wide at 256) the photometric loss reaches about one pixel around
# the estimate: started at 0.02 W (1.5 px short there) the net stayed at a median of 0.018 W.
INITIAL_DISPARITY_FRACTION = 0.05


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    # Zero padding rather than the paper's reflection padding: on CPU the padding op alone
    # cost ~12 % of the forward pass, and the loss sees the border through 'border' sampling.
    # Batch norm (not in the paper, whose encoders are pretrained or trained for days): trained
    # from scratch for ~1k CPU steps, the plain network kept a near-constant disparity map.
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                                   bias=False),
                         nn.BatchNorm2d(out_channels),
                         nn.ELU(inplace=True))


class _EncoderStage(nn.Module):
    """Halve the resolution, then (optionally) one more 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int, extra_conv: bool = True):
        super().__init__()
        self.down = _conv(in_channels, out_channels, stride=2)
        self.conv = _conv(out_channels, out_channels) if extra_conv else nn.Identity()

    def forward(self, x):
        return self.conv(self.down(x))


class _DecoderStage(nn.Module):
    """The paper's "upconv" (3x3 conv + nearest x2), then concatenate the skip features (and
    the upsampled coarser disparity) and fuse with a 3x3 convolution. The upconv's convolution
    runs *before* the upsampling, at a quarter of the pixels: same receptive field role, 4x
    cheaper, which is what makes 15 frames/s on two CPU cores reachable."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int):
        super().__init__()
        self.up = _conv(in_channels, out_channels)
        self.fuse = _conv(out_channels + skip_channels, out_channels)

    def forward(self, x, skip):
        x = F.interpolate(self.up(x), size=skip.shape[-2:], mode='nearest')
        return self.fuse(torch.cat([x, skip], dim=1))


class _DisparityHead(nn.Module):
    def __init__(self, in_channels: int, max_disparity_fraction: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 2, 3, padding=1)
        self.max_disparity_fraction = max_disparity_fraction
        # Start near a typical disparity instead of sigmoid(0) = half the maximum (~67 px at
        # 192 px width): the photometric loss only has a local gradient (bilinear sampling), so
        # a start far from every true match gave no usable signal and training stalled there.
        start = min(INITIAL_DISPARITY_FRACTION / max_disparity_fraction, 0.5)
        nn.init.constant_(self.conv.bias, math.log(start / (1.0 - start)))

    def forward(self, x):
        # In the weights' precision even under mixed precision (autocast): a bfloat16 disparity
        # has 8 significant bits, which moved the training loss's photometric warp by up to
        # ~0.4 px at 384 px width (the descriptor loss samples in float32 for the same reason).
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.max_disparity_fraction * torch.sigmoid(
                self.conv(x.to(self.conv.weight.dtype)))


class MonoDisparityNet(nn.Module):
    """Left image (B,3,H,W) in [0,1] -> list of 4 disparities (B,2,H/2^s,W/2^s), s = 0..3
    (finest first); channel 0 left-view, channel 1 right-view disparity, fractions of width."""

    def __init__(self, *, base_channels: int = 16, max_disparity_fraction: float = 0.35):
        super().__init__()
        c = base_channels
        enc = [c, 2 * c, 4 * c, 8 * c, 8 * c]          # 1/2 .. 1/32
        dec = [c // 2, c, c, 2 * c, 4 * c]             # 1/1 .. 1/16 (decoder is the costly half)
        self.max_disparity_fraction = max_disparity_fraction
        self.encoder = nn.ModuleList()
        previous = 3
        for level, width in enumerate(enc):
            # A single convolution at 1/2 resolution: the extra one there cost 10 % of the net.
            self.encoder.append(_EncoderStage(previous, width, extra_conv=level > 0))
            previous = width
        # Decoder, coarse to fine; stages at 1/4, 1/2, 1/1 also take the coarser disparity (+2).
        self.dec4 = _DecoderStage(enc[4], dec[4], enc[3])            # -> 1/16
        self.dec3 = _DecoderStage(dec[4], dec[3], enc[2])            # -> 1/8
        self.dec2 = _DecoderStage(dec[3], dec[2], enc[1] + 2)        # -> 1/4
        self.dec1 = _DecoderStage(dec[2], dec[1], enc[0] + 2)        # -> 1/2
        self.dec0 = _DecoderStage(dec[1], dec[0], 2)                 # -> 1/1
        self.heads = nn.ModuleList([_DisparityHead(w, max_disparity_fraction)
                                    for w in (dec[0], dec[1], dec[2], dec[3])])

    def forward(self, left: torch.Tensor) -> List[torch.Tensor]:
        sizes = check_shape('left', left, (None, 3, 'H', 'W'))
        if sizes['H'] % DIVISIBILITY or sizes['W'] % DIVISIBILITY:
            raise ValueError(f'left: size {sizes["W"]}x{sizes["H"]} is not a multiple of '
                             f'{DIVISIBILITY}; resize it first (inference.predict_disparity does)')
        # 1. Encoder: features at 1/2 .. 1/32. Centre the input so ELU sees both signs.
        #    Channels-last (NHWC) is oneDNN's native CPU layout: NCHW makes every convolution
        #    reorder its input and output (384x256 on the 2-core CPU: 20 -> 15 ms per frame).
        skips = []
        x = (left - 0.5).contiguous(memory_format=torch.channels_last)
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        e1, e2, e3, e4, _ = skips
        # 2. Decoder with skips; disparity at 1/8, 1/4, 1/2, 1/1, each refined from the last.
        x = self.dec4(x, e4)
        x = self.dec3(x, e3)
        disp3 = self.heads[3](x)
        x = self.dec2(x, torch.cat([e2, _up2(disp3)], 1))
        disp2 = self.heads[2](x)
        x = self.dec1(x, torch.cat([e1, _up2(disp2)], 1))
        disp1 = self.heads[1](x)
        x = self.dec0(x, _up2(disp1))
        disp0 = self.heads[0](x)
        return [disp0, disp1, disp2, disp3]


def _up2(disparity: torch.Tensor) -> torch.Tensor:
    # Fractions of width need no rescaling when the resolution changes.
    return F.interpolate(disparity, scale_factor=2, mode='bilinear', align_corners=False)


def build_mono_net(*, base_channels: int = 16, max_disparity_fraction: float = 0.35,
                   arch: str = ARCH) -> MonoDisparityNet:
    """Keyword-only factory; its arguments are what a weights file stores as ``config``.

    ``max_disparity_fraction``: the largest disparity the sigmoid can express, as a fraction
    of the image width (the paper uses 0.3; the synthetic renderer caps disparity at 0.35).
    """
    if arch != ARCH:
        raise ValueError(f'unknown mono architecture {arch!r}; this code builds {ARCH!r}')
    if not 4 <= base_channels <= 128:
        raise ValueError(f'base_channels must be in [4, 128], got {base_channels}')
    if not 0 < max_disparity_fraction <= 1:
        raise ValueError(f'max_disparity_fraction must be in (0, 1], got {max_disparity_fraction}')
    return MonoDisparityNet(base_channels=base_channels,
                            max_disparity_fraction=max_disparity_fraction)
