"""Stage 1: a shared (siamese) feature extractor at 1/8 resolution.

The same weights see the left and the right image, so a feature difference means an
appearance difference, which the correlation in ``cost_volume.py`` turns into a matching cost.
"""
from typing import Sequence

import torch
from torch import nn

from ..shapes import check_shape

# ImageNet statistics: a common, harmless normalisation for images in [0, 1]; the weights file
# records it implicitly through the architecture name.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3,
                 dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride, dilation * (kernel // 2),
                                   dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (He et al. 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.body(x))


class FeatureExtractor(nn.Module):
    """(B, 3, H, W) RGB in [0, 1] -> (B, C, H/8, W/8) matching features.

    Three stride-2 convolutions reach 1/8 resolution before any wide layer. Measured on the
    project's 2-core CPU, a 3x3 convolution runs at ~12-25 G multiply-adds/s, so the <= 100 ms
    target allows ~1.5 G for the whole network: 1/4-resolution matching features with residual
    blocks alone cost ~0.9 G for the two images (see ``aggregation.py`` for the volume).
    H and W must be multiples of 8 (``model.py`` pads).
    """

    def __init__(self, *, channels: int = 48, blocks: int = 1):
        super().__init__()
        quarter = max(8, channels // 2)
        self.stem = nn.Sequential(conv_bn_relu(3, 16, stride=2),            # 1/2
                                  conv_bn_relu(16, quarter, stride=2),      # 1/4
                                  conv_bn_relu(quarter, channels, stride=2))  # 1/8
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])
        # A plain projection with no ReLU, so that correlations can be negative.
        self.head = nn.Conv2d(channels, channels, 1)
        self.register_buffer('mean', torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def quarter_channels(self) -> int:
        """Channels of the 1/4-resolution stem output (``forward(..., with_quarter=True)``)."""
        return self.stem[1][0].out_channels

    def normalized_batch(self, images: Sequence[torch.Tensor], height: int,
                         width: int) -> torch.Tensor:
        """Images (B, 3, h, w) in [0, 1], all the same shape -> their concatenation along the
        batch, normalised and replicate-padded on the bottom and right to (height, width):
        (len(images) * B, 3, height, width), channels-last, for ``forward(normalized=True)``.

        Equal to ``torch.cat([F.pad(i, ..., 'replicate') for i in images])`` made channels-last
        and normalised, in one pass per image plus the padding: those five passes took ~8 ms
        for a 741x500 pair on the 2-core CPU, this ~3.7. No autograd through the images
        (``out=`` writes; images never need gradients). model.py uses the plain version when
        exporting to ONNX.
        """
        sizes = check_shape('images[0]', images[0], ('B', 3, 'h', 'w'))
        for image in images[1:]:
            check_shape('images', image, ('B', 3, 'h', 'w'), sizes)
        batch, h, w = sizes['B'], sizes['h'], sizes['w']
        if height < h or width < w:
            raise ValueError(f'cannot pad {w}x{h} images to {width}x{height}')
        ref = images[0]
        # (N, H, W, 3) memory is the channels-last layout of (N, 3, H, W).
        out = torch.empty((len(images) * batch, height, width, 3), dtype=ref.dtype,
                          device=ref.device)
        scale = (1.0 / self.std).view(1, 1, 1, 3).to(ref.dtype)
        shift = (-self.mean / self.std).view(1, 1, 1, 3).to(ref.dtype)
        for i, image in enumerate(images):
            torch.addcmul(shift, image.permute(0, 2, 3, 1), scale,
                          out=out[i * batch:(i + 1) * batch, :h, :w])
        if height > h:
            out[:, h:, :w] = out[:, h - 1:h, :w]
        if width > w:
            out[:, :, w:] = out[:, :, w - 1:w]
        return out.permute(0, 3, 1, 2)

    def forward(self, image: torch.Tensor, with_quarter: bool = False,
                normalized: bool = False):
        """-> (B, C, H/8, W/8) features, or with ``with_quarter`` a tuple of those and the
        stem's (B, quarter_channels, H/4, W/4) output (free: it is computed on the way).
        ``image`` is RGB in [0, 1], or already normalised with ``normalized``
        (:meth:`normalized_batch`)."""
        check_shape('image', image, (None, 3, None, None))
        # (image - mean) / std as one pass over the pair instead of two (~2 ms at 741x500).
        x = image if normalized else torch.addcmul(-self.mean / self.std, image, 1.0 / self.std)
        quarter = self.stem[:2](x)
        features = self.head(self.blocks(self.stem[2](quarter)))
        return (features, quarter) if with_quarter else features
