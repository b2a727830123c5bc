"""Stage 2: the matching cost volume at the features' resolution (1/8 in model.py).

Group-wise correlation (GwcNet, Guo et al. CVPR 2019; FoundationStereo, Wen et al. CVPR 2025,
eq. 1): split the C feature channels into G groups and correlate each group separately,

    V_gwc(g, d, h, w) = < f_left,g(h, w), f_right,g(h, w - d) > / (C / G),

so the volume keeps G similarity measures per disparity instead of one (full correlation,
DispNetC) or 2C raw channels (concatenation, GC-Net). Where w - d falls outside the right image
there is no match candidate; those entries are 0, as in GwcNet.
"""
import torch
import torch.nn.functional as F

from ..shapes import check_shape

# Columns of left features per matrix product (at least D): see groupwise_correlation_volume.
_COLUMN_BLOCK = 32


def groupwise_correlation_volume(left_features: torch.Tensor, right_features: torch.Tensor,
                                 num_disparities: int, groups: int) -> torch.Tensor:
    """(B, C, H, W) left and right features -> (B, G, D, H, W) group-wise correlation.

    D = ``num_disparities`` candidates 0..D-1 in feature pixels (8 image pixels each at our
    feature stride); C must be divisible by ``groups``.
    """
    sizes = check_shape('left_features', left_features, ('B', 'C', 'H', 'W'))
    check_shape('right_features', right_features, ('B', 'C', 'H', 'W'), sizes)
    batch, channels, height, width = left_features.shape
    if channels % groups:
        raise ValueError(f'feature channels ({channels}) must be divisible by groups ({groups})')
    if num_disparities < 1:
        raise ValueError(f'num_disparities must be >= 1, got {num_disparities}')
    if torch.onnx.is_in_onnx_export():
        # ONNX has no strided views; the loop exports as slices.
        return _groupwise_correlation_loop(left_features, right_features, num_disparities,
                                           groups)
    # Batched matrix products per (image, group, row): the left features of a block of
    # columns x0..x1-1 (bw x C/G) times the right features those pixels can match, columns
    # x0-D+1..x1-1 (C/G x bw+D-1; zero columns stand in left of the image; the columns are
    # reversed), give M[x, j] = <left(x0 + x), right(x1-1-j)>. The D entries a left pixel
    # needs, right pixels x - d for d = 0..D-1, lie on consecutive columns j = bw-1-x+d, so
    # the block's volume is a strided view of M (no gather, no shifted copies). Blocks keep
    # the product at ~2x the multiply-adds of the band itself; one product over the whole row
    # grows as W^2. On the 2-core CPU (D=24, C=48, G=8; same values and gradients as the loop
    # below to float rounding, tested): 741x500 ~3 ms, 1920x1080 ~19 ms, 3840x2160 ~95 ms,
    # against ~11 / ~110 / ~450 ms for the former broadcast product over D shifted views.
    group_channels = channels // groups
    left_rows = (left_features * (1.0 / group_channels)).view(
        batch, groups, group_channels, height, width).permute(0, 1, 3, 4, 2)   # B G H W c
    right_padded = F.pad(right_features, (num_disparities - 1, 0))
    block = max(_COLUMN_BLOCK, num_disparities)
    volumes = []
    for x0 in range(0, width, block):
        x1 = min(width, x0 + block)
        span = x1 - x0
        right_rows = right_padded[..., x0:x1 + num_disparities - 1].flip(-1).reshape(
            batch, groups, group_channels, height, span + num_disparities - 1
        ).permute(0, 1, 3, 2, 4)                                            # B G H c bw+D-1
        # contiguous(): a no-op for matmul's usual output; the view below assumes the layout.
        products = torch.matmul(left_rows[:, :, :, x0:x1], right_rows).contiguous()
        stride_b, stride_g, stride_h, stride_x, _ = products.stride()
        # Entry (b, g, d, h, x) sits at M[b, g, h, x, bw-1-x+d]: the column step per x is
        # bw+D-2, per d 1. Columns past the image's left edge are the zero padding, so
        # pixels with x - d < 0 read 0, as GwcNet's volume has there.
        volumes.append(products.as_strided(
            (batch, groups, num_disparities, height, span),
            (stride_b, stride_g, 1, stride_h, stride_x - 1),
            products.storage_offset() + span - 1))
    if len(volumes) == 1:
        return volumes[0].contiguous()
    return torch.cat(volumes, dim=-1)                                        # (B, G, D, H, W)


def _groupwise_correlation_loop(left_features: torch.Tensor, right_features: torch.Tensor,
                                num_disparities: int, groups: int) -> torch.Tensor:
    """The same volume, one disparity at a time (for ONNX export; identical values)."""
    batch, channels, height, width = left_features.shape
    left_g = left_features.view(batch, groups, channels // groups, height, width)
    right_g = right_features.view(batch, groups, channels // groups, height, width)
    slices = []
    for d in range(num_disparities):
        if d == 0:
            corr = (left_g * right_g).mean(dim=2)
        elif d < width:
            # Left pixel w matches right pixel w - d; the first d columns have no candidate.
            corr = F.pad((left_g[..., d:] * right_g[..., :-d]).mean(dim=2), (d, 0))
        else:
            corr = left_g.new_zeros(batch, groups, height, width)
        slices.append(corr)
    return torch.stack(slices, dim=2)


# FoundationStereo's optional V_cat, beside V_gwc. Not used by StereoNet (its 2D aggregation
# takes the group-wise volume alone, for the CPU time budget; see README), kept tested for a
# larger network that would concatenate both.
def concatenation_volume(left_features: torch.Tensor, right_features: torch.Tensor,
                         num_disparities: int) -> torch.Tensor:
    """(B, c, H, W) reduced left/right features -> (B, 2c, D, H, W) concatenation volume
    (GC-Net, Kendall et al. ICCV 2017): left features next to the right features shifted by d,
    zeros where w - d is outside the right image. Use with few channels c: it grows as 2cD.
    """
    sizes = check_shape('left_features', left_features, ('B', 'C', 'H', 'W'))
    check_shape('right_features', right_features, ('B', 'C', 'H', 'W'), sizes)
    width = left_features.shape[-1]
    slices = []
    for d in range(num_disparities):
        shifted = right_features if d == 0 else torch.nn.functional.pad(
            right_features[..., :max(width - d, 0)], (min(d, width), 0))
        slices.append(torch.cat([left_features, shifted], dim=1))
    return torch.stack(slices, dim=2)
