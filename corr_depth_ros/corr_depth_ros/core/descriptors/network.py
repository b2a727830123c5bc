"""Descriptor network: image (B,3,H,W) in [0,1] -> dense descriptor image (B,D,H,W).

Dense Object Nets (Florence, Manuelli, Tedrake, CoRL 2018) use a fully convolutional ResNet-34
with D = 3; on a 2-core CPU that is far too slow for 10 frames/s at 640x480, so this is a small
U-Net-style encoder/decoder (Ronneberger et al., MICCAI 2015): four stride-2 stages give a
receptive field of about 150 px (context to tell repeated texture apart), and a decoder with
skip connections brings the detail back. About 1.4 GMAC per 640x480 frame at base_channels=16. The decoder stops at 1/2 resolution and the
descriptor image is bilinearly upsampled to full resolution: a full-resolution convolution costs
four times as much as a half-resolution one and, in our tests, buys little localisation
(bilinear interpolation of smooth descriptors already gives sub-pixel argmin positions).
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..memory import empty_huge
from ..shapes import check_shape

# The input is padded to a multiple of this (four stride-2 stages), then cropped back.
DIVISIBLE_BY = 16

# Input normalisation (images in [0,1]); fixed so that weights carry no data statistics.
_MEAN = (0.45, 0.45, 0.45)
_STD = (0.25, 0.25, 0.25)


def _conv_relu(in_ch: int, out_ch: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    # No batch norm: at 640x480 on a CPU its extra pass over every feature map cost ~10% of
    # the frame time, and a net this shallow trains well without it.
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2),
                         nn.ReLU(inplace=True))


class _Residual(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (He et al., CVPR 2016)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return F.relu(x + self.body(x))


class DescriptorNet(nn.Module):
    """Fully convolutional descriptor network; see the module docstring for the design."""

    def __init__(self, *, descriptor_dim: int, base_channels: int, normalize: bool):
        super().__init__()
        if descriptor_dim < 1:
            raise ValueError(f'descriptor_dim must be >= 1, got {descriptor_dim}')
        if base_channels < 4:
            raise ValueError(f'base_channels must be >= 4, got {base_channels}')
        self.descriptor_dim = int(descriptor_dim)
        self.base_channels = int(base_channels)
        self.normalize = bool(normalize)
        c = self.base_channels
        widths = [c, 2 * c, 4 * c, 6 * c]           # channels at 1/2, 1/4, 1/8, 1/16
        self.register_buffer('mean', torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        # Encoder. Compute is spent where pixels are few: one conv at 1/2 (the most expensive
        # resolution), two at 1/4 and 1/8, a residual block at 1/16 for context.
        self.down = nn.ModuleList([
            _conv_relu(3, widths[0], stride=2),
            nn.Sequential(_conv_relu(widths[0], widths[1], stride=2), _conv_relu(widths[1], widths[1])),
            nn.Sequential(_conv_relu(widths[1], widths[2], stride=2), _conv_relu(widths[2], widths[2])),
            nn.Sequential(_conv_relu(widths[2], widths[3], stride=2), _Residual(widths[3])),
        ])
        # Decoder (1/8, 1/4, 1/2): upsample, concatenate the skip, mix with a cheap 1x1 conv,
        # then a 3x3 conv for spatial detail (at 1/2 the head's 3x3 plays that role).
        self.up = nn.ModuleList()
        in_ch = widths[3]
        for level in (2, 1, 0):
            layers = [_conv_relu(in_ch + widths[level], widths[level], kernel=1)]
            if level > 0:
                layers.append(_conv_relu(widths[level], widths[level]))
            self.up.append(nn.Sequential(*layers))
            in_ch = widths[level]
        self.head = nn.Conv2d(in_ch, self.descriptor_dim, 3, padding=1)

    def config(self) -> dict:
        """The keyword arguments of :func:`build_descriptor_net` that rebuild this network."""
        return {'descriptor_dim': self.descriptor_dim, 'base_channels': self.base_channels,
                'normalize': self.normalize}

    def forward_low(self, image: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) float image in [0,1] -> (B,D,Hp/2,Wp/2) descriptors at half the padded
        input size (Hp, Wp: H, W rounded up to DIVISIBLE_BY), unit length if normalize:
        :meth:`forward` before its final upsampling."""
        check_shape('image', image, (None, 3, None, None))
        height, width = image.shape[-2:]
        pad_h = (-height) % DIVISIBLE_BY
        pad_w = (-width) % DIVISIBLE_BY
        # (image - mean) / std in one pass.
        x = torch.addcmul(-self.mean / self.std, image, 1.0 / self.std)
        if pad_h or pad_w:
            # Replicate, not zeros: a black border would be a feature the net could latch onto.
            x = F.pad(x, (0, pad_w, 0, pad_h), mode='replicate')
        # Channels-last (NHWC) is the layout oneDNN's CPU convolutions run natively; in NCHW
        # each convolution reorders its input and output. Measured at 640x480 on the 2-core
        # CPU: 51 -> 21 ms per pass with the weights channels-last too (load_descriptor_net).
        x = x.contiguous(memory_format=torch.channels_last)
        # 1. encoder
        skips = []
        for stage in self.down:
            x = stage(x)
            skips.append(x)
        # 2. decoder with skips, back to 1/2 resolution
        for fuse, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode='bilinear', align_corners=False)
            x = fuse(torch.cat([x, skip], dim=1))
        # 3. descriptors at 1/2 resolution; unit length there, where it is 4x cheaper (bilinear
        #    interpolation between neighbouring unit vectors shortens them by < 1% where the
        #    descriptor field is smooth, and matching uses distances, not norms)
        x = self.head(x)
        return F.normalize(x, dim=1) if self.normalize else x

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) float image in [0,1] -> (B,D,H,W) descriptors (unit length if normalize)."""
        low = self.forward_low(image)
        height, width = image.shape[-2:]
        # 4. upsampled to the padded full size (twice the low size), cropped to the input
        return F.interpolate(low, size=(2 * low.shape[-2], 2 * low.shape[-1]),
                             mode='bilinear', align_corners=False)[..., :height, :width]


def build_descriptor_net(*, descriptor_dim: int, base_channels: int,
                         normalize: bool) -> DescriptorNet:
    """Keyword-only factory (the weights file stores exactly these arguments)."""
    return DescriptorNet(descriptor_dim=descriptor_dim, base_channels=base_channels,
                         normalize=normalize)


# Image scales the descriptors are computed at and concatenated (see compute_descriptors).
# Chosen on held-out synthetic validation pairs (12 multi-view pairs 320x240, PCK@3): (1,) 0.060,
# (1, 0.75) 0.076, (1, 0.5) 0.072, (1, 0.75, 0.5) 0.077. The half-size pass has a quarter of
# the pixels: (1, 0.5) measured 1.5-1.9x one pass at 640x480 (the extra full-size upsampling
# included; 10.8-12.8 against 17.7-24 frames/s on the 2-core CPU); more scales cost more than
# the 10 frames/s target leaves there.
DEFAULT_SCALES = (1.0, 0.5)


def check_scales(scales) -> tuple:
    """``scales`` as a tuple of floats in (0, 1], distinct, starting with 1.0 (the full-resolution
    pass keeps the localisation); ValueError otherwise."""
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ValueError(f'descriptor scales must be a list of numbers, got {scales!r}') from None
    if not values or values[0] != 1.0 or len(set(values)) != len(values) \
            or not all(0.0 < s <= 1.0 for s in values):
        raise ValueError(f'descriptor scales must start with 1.0 and be distinct values in '
                         f'(0, 1], got {list(values)}')
    return values


@torch.no_grad()
def compute_descriptors(model: nn.Module, image_rgb8, device=None,
                        scales=DEFAULT_SCALES, pool=None) -> torch.Tensor:
    """(H,W,3) uint8 RGB numpy image -> (D*len(scales),H,W) float32 descriptors (eval mode).

    ``pool``: a core.memory.RecyclingPool to take the output buffer from; it gets the buffer
    back once the returned tensor is garbage (keep no views of it beyond it). Without a pool
    the output is fresh memory.

    With several ``scales`` the image is also described downscaled (antialiased bilinear
    resize), each descriptor image is upsampled to (H,W), and they are concatenated and divided
    by sqrt(len(scales)), so unit descriptors stay about unit length and distance thresholds keep
    their meaning. The coarser passes see more context per pixel, which tells apart repeated
    and weakly textured surfaces that one pass confuses (multi-scale features, as in SIFT's
    pyramid or D2-Net's multiscale mode). Measured with the shipped D=32 net on Motorcycle:
    PCK@3 0.791 -> 0.833 with (1, 0.5) (docs/results.md).
    """
    check_shape('image_rgb8', image_rgb8, (None, None, 3))
    scales = check_scales(scales)
    device = device or next(model.parameters()).device
    # Images decoded from a message buffer are read-only views; torch wants writable memory.
    pixels = image_rgb8 if image_rgb8.flags.writeable else np.array(image_rgb8)
    image = torch.from_numpy(pixels).to(device).permute(2, 0, 1)[None].float() / 255.0
    height, width = image.shape[-2:]
    dim = model.descriptor_dim
    # Every pass's half-resolution output is upsampled straight into its slice of one output
    # tensor: at 640x480 each fresh full-size (D,H,W) temporary costs ~10 ms of page faults
    # alone on this CPU, and concatenating afterwards would copy everything once more. The
    # output cannot be reused blindly (the node serves requests from the previous one while
    # the next is computed): with a ``pool`` it is reused once the previous result is gone
    # (the node), otherwise it is fresh, mapped with huge pages (core/memory.py).
    shape = (dim * len(scales), height, width)
    buffer = pool.take(shape, dtype=image.dtype, device=image.device) if pool is not None \
        else empty_huge(shape, dtype=image.dtype, device=device)
    out = buffer[None]
    weight = 1.0 / len(scales) ** 0.5
    for i, scale in enumerate(scales):
        if scale == 1.0:
            small = image
        else:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            small = F.interpolate(image, size=size, mode='bilinear', antialias=True,
                                  align_corners=False)
        # NCHW again before upsampling: the bilinear kernel writing into an NCHW slice is
        # 5x slower from a channels-last source (8 vs 42 ms at D=32, 640x480).
        low = model.forward_low(small).contiguous()
        if weight != 1.0:
            low.mul_(weight)
        # forward() maps output pixel y of the pass to (y + 0.5) / 2 - 0.5 on `low`; output
        # pixel Y of the full image is pass pixel (Y + 0.5) * h / H - 0.5. Composed: one
        # bilinear upsampling with the scale factor 2 H / h (align_corners=False semantics),
        # which also crops away the padding. For the full-size pass (h = H) this is exactly
        # what forward() does.
        factors = (2.0 * height / small.shape[-2], 2.0 * width / small.shape[-1])
        target = out[:, i * dim:(i + 1) * dim]
        if all(f.is_integer() for f in factors):
            upsample_bilinear_into(low, (int(factors[0]), int(factors[1])), target)
        else:
            torch.ops.aten.upsample_bilinear2d.out(low, [height, width], False, *factors,
                                                   out=target)
    descriptors = out[0]  # a view: the pool's owner object, distinct from the buffer
    if pool is not None:
        pool.recycle_when_gone(descriptors, buffer)
    return descriptors


def _upsample_axis(src: torch.Tensor, factor: int, dim: int, out: torch.Tensor) -> None:
    """Writes ``src`` bilinearly upsampled by the integer ``factor`` along ``dim`` into ``out``
    (same shape but for ``dim``, where it has at most factor * n entries: the rest is cropped).

    align_corners=False semantics, as F.interpolate: output index Y samples the source at
    (Y + 0.5) / factor - 0.5, clamped to the first and last source entries. The outputs Y with
    the same Y mod factor (a phase) all sit at the same fraction between two source entries,
    so each phase is one lerp of two shifted source slices written into a strided view.
    """
    n, m = src.shape[dim], out.shape[dim]
    for phase in range(factor):
        count = len(range(phase, m, factor))
        if count == 0:
            continue
        index = [slice(None)] * out.dim()
        index[dim] = slice(phase, m, factor)
        dst = out[tuple(index)]
        offset = (phase + 0.5) / factor - 0.5  # in (-0.5, 0.5)
        if offset < 0:
            # Between src[j - 1] and src[j]; the first output lies before src[0]: clamped.
            dst.narrow(dim, 0, 1).copy_(src.narrow(dim, 0, 1))
            if count > 1:
                torch.lerp(src.narrow(dim, 0, count - 1), src.narrow(dim, 1, count - 1),
                           1.0 + offset, out=dst.narrow(dim, 1, count - 1))
        else:
            # Between src[j] and src[j + 1]; outputs past src[n - 1] are clamped to it.
            inner = min(count, n - 1)
            if inner > 0:
                torch.lerp(src.narrow(dim, 0, inner), src.narrow(dim, 1, inner), offset,
                           out=dst.narrow(dim, 0, inner))
            if count > inner:
                tail = dst.narrow(dim, inner, count - inner)
                tail.copy_(src.narrow(dim, n - 1, 1).expand_as(tail))


def upsample_bilinear_into(low: torch.Tensor, factors, out: torch.Tensor) -> torch.Tensor:
    """(B,C,h,w) -> ``out`` (B,C,H,W) with H <= fy * h, W <= fx * w: ``low`` upsampled by the
    integer ``factors`` (fy, fx) and cropped, exactly as
    ``F.interpolate(low, scale_factor=factors, mode='bilinear', align_corners=False)[..., :H, :W]``
    (to float rounding); returns ``out``. No autograd (``out=`` writes).

    Why not that call: on the 2-core CPU ATen's bilinear kernel wrote a 640x480 D=32 output
    at ~1 GB/s (21-25 ms per descriptor pass into a reused buffer). Separably, columns then
    rows, each phase one vectorised lerp, it takes about half (10-12 ms). compute_descriptors
    as a whole, same-process A/B with fresh outputs: 131 -> 119 ms at 640x480, 359 -> 318 ms at
    1280x720. Values: test_descriptors.
    """
    check_shape('low', low, ('B', 'C', None, None))
    factor_y, factor_x = (int(f) for f in factors)
    if factor_y < 1 or factor_x < 1:
        raise ValueError(f'upsampling factors must be integers >= 1, got {factors}')
    height, width = out.shape[-2:]
    if out.shape[:2] != low.shape[:2] or not (0 < height <= factor_y * low.shape[-2]) \
            or not (0 < width <= factor_x * low.shape[-1]):
        raise ValueError(f'out {tuple(out.shape)} does not fit {tuple(low.shape)} upsampled '
                         f'by {factor_y}x{factor_x}')
    # Columns first, on the h rows of the small image; then the rows, each written whole.
    # The scratch is fresh memory each call (20 MB for a 640x480 D=32 pass): huge pages fault
    # it in ~2x faster than 4 KiB ones (the helper's docstring in core/memory.py).
    columns = empty_huge(tuple(low.shape[:-1]) + (width,), dtype=low.dtype, device=low.device)
    _upsample_axis(low, factor_x, 3, columns)
    _upsample_axis(columns, factor_y, 2, out)
    return out


def load_descriptor_net(weights=None, device='cpu'):
    """(model in eval mode, weights header) from a safetensors file written by
    core.training.save_weights; ``weights`` None or '' loads the shipped file.

    Raises FileNotFoundError (with the path) or ValueError (not a descriptor-net file).
    """
    from ..inference_prep import prepare_for_inference
    from ..training import load_weights
    from . import default_weights_path
    from .references import ARCH
    path = weights or default_weights_path()
    model, header = load_weights(path, build_descriptor_net, expected_arch=ARCH,
                                 map_location=str(device))
    # Channels-last weights spare every convolution a weight reorder (see forward_low).
    return prepare_for_inference(model, device), header
