"""From a single image to disparity and depth.

Disparity comes out of the network as a fraction of the image width (network.py), which is
what makes one model usable at any resolution; the image is resized to the model's input size
(as the paper resizes to 512x256) and the disparity map resized back.

Two kinds of depth:

* ``metric``: ``Z = fx * B / (d_frac * W)`` metres (``core.geometry.disparity_to_depth``), with
  ``fx`` the *camera's* focal length in pixels, ``W`` its image width and ``B`` the baseline of
  the rig the network was trained on (weights metadata ``training_rig.baseline_m``): the
  network learned disparities that rig would have seen. Only meaningful for scenes whose scale
  resembles the training data; monocular depth has no other source of scale.
* ``relative``: ``depth / median(depth)`` over the frame's valid pixels, i.e.
  ``median(d) / d``: unitless, 1.0 is the frame's median depth, 2.0 twice as far. Scale-free,
  so it is what to use on an unknown camera; it is *not* metres.

Invalid (non-positive or non-finite disparity) is NaN with a False validity flag (REP 118).
"""
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import disparity_to_depth
from ..shapes import check_shape
from .network import DIVISIBILITY
from .postprocess import predict_with_post_process

DEPTH_MODES = ('metric', 'relative')


def image_to_tensor(image_rgb8: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 RGB -> (1,3,H,W) float32 in [0,1]."""
    check_shape('image_rgb8', image_rgb8, (None, None, 3))
    if image_rgb8.dtype != np.uint8:
        raise ValueError(f'image_rgb8 must be uint8, got {image_rgb8.dtype}')
    # A read-only array (a decoded bag message) is copied: torch warns on those.
    return torch.from_numpy(np.require(image_rgb8, requirements=('C', 'W'))).permute(
        2, 0, 1)[None].float() / 255.0


@torch.no_grad()
def predict_disparity(model: torch.nn.Module, image: torch.Tensor, input_size: Tuple[int, int],
                      post_process: bool = False) -> torch.Tensor:
    """Left-view disparity of ``image``.

    Args:
        model: a MonoDisparityNet (eval mode) on the device of ``image``.
        image: (B,3,H,W) float in [0,1], any size.
        input_size: (height, width) the image is resized to; multiples of 32.
        post_process: blend with the mirrored image's prediction (postprocess.py; 2x cost).
    Returns:
        (B,1,H,W) disparity as a fraction of the image width (unchanged by resizing).
    """
    check_shape('image', image, (None, 3, None, None))
    in_h, in_w = input_size
    if in_h % DIVISIBILITY or in_w % DIVISIBILITY or in_h <= 0 or in_w <= 0:
        raise ValueError(f'input_size {in_w}x{in_h} must be positive multiples of {DIVISIBILITY}')
    height, width = image.shape[-2:]
    resized = image
    if (height, width) != (in_h, in_w):
        resized = F.interpolate(image, size=(in_h, in_w), mode='bilinear', align_corners=False,
                                antialias=True)

    def left_only(batch):
        return model(batch)[0][:, 0:1]

    if post_process:
        disparity = predict_with_post_process(left_only, resized)
    else:
        disparity = left_only(resized)
    if (height, width) != (in_h, in_w):
        disparity = F.interpolate(disparity, size=(height, width), mode='bilinear',
                                  align_corners=False)
    return disparity


def metric_depth(disparity_frac: np.ndarray, fx_px: float, width_px: int, baseline_m: float
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """``Z = fx * B / (d_frac * W)``: (H,W) depth in metres (NaN invalid) and validity (H,W).

    Args: disparity_frac (H,W) fraction of the width; fx_px the camera focal length, pixels;
    width_px the camera image width, pixels; baseline_m the *training* rig's baseline, metres.
    """
    check_shape('disparity_frac', disparity_frac, (None, None))
    if not (np.isfinite(fx_px) and fx_px > 0):
        raise ValueError(f'fx_px must be a positive focal length, got {fx_px}')
    if not (np.isfinite(baseline_m) and baseline_m > 0):
        raise ValueError(f'baseline_m must be > 0, got {baseline_m}')
    if width_px <= 0:
        raise ValueError(f'width_px must be > 0, got {width_px}')
    disparity_px = disparity_frac.astype(np.float32) * np.float32(width_px)
    return disparity_to_depth(disparity_px, fx_px, baseline_m)


def relative_depth(disparity_frac: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Unitless depth ``median(d) / d`` (1.0 = the frame's median depth), NaN invalid; and
    validity (H,W). All pixels invalid gives all NaN."""
    check_shape('disparity_frac', disparity_frac, (None, None))
    disparity = disparity_frac.astype(np.float32)
    valid = np.isfinite(disparity) & (disparity > 0)
    out = np.full(disparity.shape, np.nan, dtype=np.float32)
    if valid.any():
        median = np.float32(np.median(disparity[valid]))
        np.divide(median, disparity, out=out, where=valid)
    return out, valid


def disparity_to_depth_mode(disparity_frac: np.ndarray, mode: str, *, fx_px: Optional[float] = None,
                            width_px: Optional[int] = None, baseline_m: Optional[float] = None
                            ) -> Tuple[np.ndarray, np.ndarray]:
    """Dispatch on ``mode`` ('metric' needs fx_px, width_px and baseline_m)."""
    if mode == 'metric':
        if fx_px is None or width_px is None or baseline_m is None:
            raise ValueError('metric depth needs fx_px, width_px and baseline_m')
        return metric_depth(disparity_frac, fx_px, width_px, baseline_m)
    if mode == 'relative':
        return relative_depth(disparity_frac)
    raise ValueError(f'unknown depth mode {mode!r}; choose from {DEPTH_MODES}')


# --- weights --------------------------------------------------------------------------------
SHIPPED_WEIGHTS = 'mono_lr_small.safetensors'
SHIPPED_ABLATION_WEIGHTS = 'mono_nolr_small.safetensors'


def shipped_weights_path(name: str = SHIPPED_WEIGHTS) -> str:
    """Path of a weights file shipped inside the package (``corr_depth_ros/weights/``)."""
    import os
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), 'weights', name)


def load_mono_model(path: str = '', device='cpu', fuse: bool = True):
    """(model in eval mode on ``device``, header) from a weights file ('' = shipped).

    ``fuse`` folds batch norm into the convolutions (same output, faster); the result is for
    inference only.
    """
    from ..inference_prep import prepare_for_inference
    from ..training import load_weights
    from .network import ARCH, build_mono_net
    model, header = load_weights(path or shipped_weights_path(), build_mono_net,
                                 expected_arch=ARCH)
    # Channels-last weights, like the activations (network.py): no weight reorder per call.
    return prepare_for_inference(model, device, fuse=fuse), header


def input_size_from_header(header) -> Tuple[int, int]:
    """The (height, width) the model was trained at (weights metadata), the default input."""
    height, width = header.get('metadata', {}).get('input_size_hw', (128, 192))
    return int(height), int(width)


def baseline_from_header(header) -> float:
    """The training rig's baseline, metres (weights metadata), the metric-mode default;
    ValueError saying what the metadata lacks."""
    rig = header.get('metadata', {}).get('training_rig') or {}
    if 'baseline_m' not in rig:
        raise ValueError('the weights metadata has no training_rig.baseline_m')
    try:
        baseline_m = float(rig['baseline_m'])
    except (TypeError, ValueError):
        baseline_m = float('nan')
    if not (np.isfinite(baseline_m) and baseline_m > 0):
        raise ValueError(f'the weights metadata has training_rig.baseline_m = '
                         f'{rig["baseline_m"]!r}, not a baseline')
    return baseline_m


def resolve_baseline_m(given_m: float, header, option: str) -> float:
    """Metric mode's baseline, metres: ``given_m`` when > 0, else the weights' training rig's
    (the node and process-bag alike). ValueError when neither, saying how to give one
    (``option``: the node's parameter, process-bag's flag)."""
    if given_m > 0:
        return float(given_m)
    try:
        return baseline_from_header(header)
    except ValueError as exc:
        raise ValueError(f'metric depth needs a baseline and {exc}: give {option} or use '
                         'relative depth') from None


def mask_beyond(depth: np.ndarray, max_depth: float) -> np.ndarray:
    """``depth`` with pixels farther than ``max_depth`` (> 0; 0: no limit) made NaN, in place:
    the mono node's and process-bag's max_depth_m, in the depth's own unit."""
    if max_depth > 0:
        depth[~(depth <= max_depth)] = np.nan
    return depth


def estimate_depth(model, image_rgb8: np.ndarray, fx_px: float, *, mode: str,
                   baseline_m: Optional[float], input_size: Tuple[int, int],
                   post_process: bool = False, device='cpu'
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One camera frame to depth: the whole per-frame path of the ROS node, without ROS.

    Args:
        image_rgb8: (H,W,3) uint8 RGB (rectified). fx_px: camera focal length, pixels.
        mode: 'metric' (metres, needs ``baseline_m`` of the training rig) or 'relative'
            (unitless, 1.0 = the frame's median depth); see the module docstring.
    Returns:
        depth (H,W) float32 (NaN invalid), valid (H,W) bool, disparity (H,W) float32 as a
        fraction of the width.
    """
    if mode not in DEPTH_MODES:
        raise ValueError(f'unknown depth mode {mode!r}; choose from {DEPTH_MODES}')
    image = image_to_tensor(image_rgb8).to(device)
    disparity_frac = predict_disparity(model, image, input_size, post_process)[0, 0].cpu().numpy()
    depth, valid = disparity_to_depth_mode(disparity_frac, mode, fx_px=fx_px,
                                           width_px=image_rgb8.shape[1], baseline_m=baseline_m)
    return depth, valid, disparity_frac
