"""The paper's post-processing "pp" (Godard et al. 2017, Sec. 4.2).

The left disparity of a single pass has a ramp of wrong values at the image's left border
(there, the left view sees things the right view does not, and the network can only guess)
and at occlusion boundaries. Running the network on the mirrored image moves those artefacts
to the other side; mirroring that prediction back and blending the two keeps the good side of
each: the leftmost 5 % of the columns come only from the mirrored pass, the rightmost 5 % only
from the direct pass, and everything in between is the mean.
"""
from typing import Callable

import torch

from ..shapes import check_shape

EDGE_FRACTION = 0.05  # width of the one-sided bands at each border (the paper's 5 %)


def edge_weights(width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(W,) weight of the *mirrored* pass per column: 1 in the left band, 0 in the right band,
    0.5 in between; the direct pass gets 1 minus it."""
    columns = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    weight = torch.full((width,), 0.5, device=device, dtype=dtype)
    weight[columns < EDGE_FRACTION] = 1.0
    weight[columns > 1.0 - EDGE_FRACTION] = 0.0
    return weight


def post_process_disparity(disparity: torch.Tensor, disparity_of_mirrored: torch.Tensor
                           ) -> torch.Tensor:
    """Blend a direct and a mirrored prediction.

    Args:
        disparity: (B,1,H,W) left disparity predicted from the image.
        disparity_of_mirrored: (B,1,H,W) left disparity predicted from the horizontally
            mirrored image, still in mirrored column order (it is mirrored back here).
    Returns:
        (B,1,H,W) blended disparity, same unit as the inputs.
    """
    sizes = check_shape('disparity', disparity, ('B', 1, 'H', 'W'))
    check_shape('disparity_of_mirrored', disparity_of_mirrored, ('B', 1, 'H', 'W'), sizes)
    mirrored_back = disparity_of_mirrored.flip(-1)
    weight = edge_weights(sizes['W'], disparity.device, disparity.dtype).view(1, 1, 1, -1)
    return weight * mirrored_back + (1.0 - weight) * disparity


def predict_with_post_process(predict_left: Callable[[torch.Tensor], torch.Tensor],
                              image: torch.Tensor) -> torch.Tensor:
    """Run ``predict_left`` ((B,3,H,W) -> (B,1,H,W) left disparity) on the image and on its
    mirror in one batch and blend (:func:`post_process_disparity`)."""
    check_shape('image', image, (None, 3, None, None))
    both = predict_left(torch.cat([image, image.flip(-1)], dim=0))
    direct, mirrored = both.chunk(2, dim=0)
    return post_process_disparity(direct, mirrored)
