"""Stage 3: cost aggregation with a light 2D hourglass over disparity-as-channels.

Why 2D and not GwcNet's 3D hourglass: the speed target is <= 100 ms per 741x500 pair on a
2-core CPU, which measures ~12-25 G multiply-adds/s for 3x3 convolutions (so ~1.5 G in all).
Even at 1/8 resolution with 24 disparities the volume has 24 x 64 x 96 ~ 150 k cells, and a
GwcNet-sized 3D stack (3x3x3, 32 channels, ~10 layers) costs ~40 G there. Folding
(group, disparity) into channels and aggregating with 2D convolutions (DispNetC, Mayer et al.
CVPR 2016; the 2D variant of MobileStereoNet, Shamsafar et al. WACV 2022) costs ~0.3 G, at the
price of weaker regularisation along the disparity axis. For the same reason the volume is
built at 1/8 rather than 1/4 resolution (a 1/4 volume of 8 x 48 x 128 x 188 floats is 37 MB:
just reading it once takes ~40 ms here).
"""
from typing import Sequence, Tuple

import torch
from torch import nn

from ..shapes import check_shape
from .features import conv_bn_relu


def _up(in_ch: int, out_ch: int) -> nn.Sequential:
    # Transposed convolution (k=4, s=2, p=1) exactly doubles H and W (inputs are padded to the
    # network's multiple) and exports to ONNX without resize-mode ambiguities.
    return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class Hourglass2d(nn.Module):
    """(B, in_channels, h, w) flattened cost volume + context -> matching costs.

    Returns ``cost`` (B, D, h, w) (lower = better match), ``cost_coarse`` (B, ceil(D/2), h/2,
    w/2) for deep supervision, and ``features`` (B, c0, h, w), the decoder features that guide
    the upsampling. h and w must be multiples of 4.
    """

    def __init__(self, *, in_channels: int, num_disparities: int,
                 channels: Sequence[int] = (48, 64, 96)):
        super().__init__()
        c0, c1, c2 = channels
        self.num_disparities = num_disparities
        self.enter = nn.Sequential(conv_bn_relu(in_channels, c0, kernel=1), conv_bn_relu(c0, c0))
        self.down1 = nn.Sequential(conv_bn_relu(c0, c1, stride=2), conv_bn_relu(c1, c1))
        self.down2 = nn.Sequential(conv_bn_relu(c1, c2, stride=2), conv_bn_relu(c2, c2))
        self.up1 = _up(c2, c1)
        self.fuse1 = conv_bn_relu(2 * c1, c1)
        self.up0 = _up(c1, c0)
        self.fuse0 = conv_bn_relu(2 * c0, c0)
        self.cost_head = nn.Conv2d(c0, num_disparities, 3, 1, 1)
        self.coarse_head = nn.Conv2d(c1, (num_disparities + 1) // 2, 3, 1, 1)

    def forward(self, volume: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        check_shape('volume', volume, (None, None, None, None))
        x0 = self.enter(volume)                       # volume resolution
        x1 = self.down1(x0)                           # 1/2 of it
        x2 = self.down2(x1)                           # 1/4 of it
        y1 = self.fuse1(torch.cat([self.up1(x2), x1], dim=1))
        y0 = self.fuse0(torch.cat([self.up0(y1), x0], dim=1))
        return self.cost_head(y0), self.coarse_head(y1), y0
