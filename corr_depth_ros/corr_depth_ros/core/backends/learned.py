"""Backend ``learned``: our GwcNet-style network (core/stereo_net) with the shipped weights.

Trade-off against ``sgbm``: dense, smooth output with a per-pixel confidence and better
behaviour on weak texture once trained enough, but it needs torch, it answers only disparities
it was trained on (hence the input scale below) and it is slower on a CPU; on a GPU it runs in
half precision.

Input scale. The network only knows the disparities it was trained on: the synthetic pairs
keep every disparity under 0.35 x the image width (core/synth/config.max_disparity_frac), i.e.
0-112 px at the 320x256 training size, and past that its error grows fast. A 640x480 camera
with near objects sees 200 px and more. So by default (``input_scale`` 0, "auto") the backend
first runs the network on a small copy of the pair (``AUTO_PROBE_SCALE`` of its size, without
the refiner), takes the 99th percentile of that disparity, and then runs it on the pair shrunk
so that this percentile lands at ``AUTO_TARGET_PX`` (scale within ``AUTO_SCALE_RANGE``, rounded
down to 1/8); the disparity is resized back and rescaled. The probe and the target were chosen
on synthetic validation pairs at 320x256, 640x480 and 752x496 (seeds of their own, never the
evaluation pairs; docs/results.md, "Stereo"). Enlarging far scenes (scales above 1)
helped there too, a little, but costs time by the square of the scale, so auto stops at 1
(the 100 ms CPU budget for a 741x500 pair); a fixed ``input_scale`` skips the probe, and one
above 1 enlarges.

Streams (``probe_every`` N > 1, the stereo node's default). Consecutive frames of a camera
mostly keep their disparities, and the network's own full output estimates them better than
the probe does. So after a pair whose output calls for the scale it ran at, the next pairs of
the same size run at that scale without a probe, until N - 1 have done so; a pair whose output
calls for another scale (something came nearer or moved away), a new size or a new setting
sends the next pair through the probe again. A scene that changes at once runs one pair at the
previous scale, and if that pair's output does not show the change (the network can
under-read disparities beyond its range), the stream keeps the scale until the periodic probe.
``probe_every`` 1 probes every pair (evaluations of unrelated pairs).
"""
import math
import numbers
import os
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np

from ..shapes import check_shape
from .base import StereoBackend, StereoResult

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), 'weights')
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, 'stereo_gwc_small.safetensors')

AUTO_SCALE = 0.0            # input_scale value meaning "choose per pair"
AUTO_PROBE_SCALE = 0.375    # the probe pass's size, a fraction of the pair's (~1/7 of the pixels)
AUTO_TARGET_PX = 70.0       # where the probe's 99th-percentile disparity is put, network pixels
AUTO_SCALE_RANGE = (0.375, 1.0)
SCALE_STEP = 0.125          # chosen scales are multiples of this (stable sizes frame to frame)
INPUT_SCALE_RANGE = (0.0, 4.0)   # the input_scale parameter's range (0 = auto)
MIN_NETWORK_SIDE_PX = 32    # no resized side below this (the network's padding multiple)
PROBE_EVERY_RANGE = (1, 1000)   # the probe_every parameter's range (1 = every pair)
STREAM_PROBE_EVERY = 5      # the stereo node's default: a camera stream's pairs are alike


def choose_input_scale(probe_disparity_px: np.ndarray) -> float:
    """The auto input scale for a pair whose disparity (pixels of the full-size pair) the probe
    pass estimated: AUTO_TARGET_PX / its 99th percentile, within AUTO_SCALE_RANGE, rounded down
    to a multiple of SCALE_STEP."""
    finite = probe_disparity_px[np.isfinite(probe_disparity_px)]
    p99 = float(np.percentile(finite, 99)) if finite.size else 0.0
    low, high = AUTO_SCALE_RANGE
    scale = min(high, AUTO_TARGET_PX / p99) if p99 > 0 else high
    return max(low, math.floor(scale / SCALE_STEP + 1e-9) * SCALE_STEP)


def _floor_scale(scale: float, height: int, width: int) -> float:
    """``scale``, raised where it would make a side shorter than MIN_NETWORK_SIDE_PX (never
    above 1 for that reason)."""
    return max(scale, min(1.0, MIN_NETWORK_SIDE_PX / min(height, width)))


def check_input_scale(value: float) -> Optional[str]:
    """Why ``value`` is not a usable input_scale, or None."""
    low, high = INPUT_SCALE_RANGE
    if not (low <= value <= high) or not math.isfinite(value):
        return f'input_scale must be in [{low:g}, {high:g}] (0: auto), got {value}'
    return None


class LearnedBackend(StereoBackend):
    """Runs :class:`~corr_depth_ros.core.stereo_net.StereoNet` on a rectified pair.

    Args:
        weights_path: safetensors file written by ``save_weights`` ('' = the shipped weights).
        device: 'auto' (CUDA when available), 'cpu' or 'cuda'.
        half: float16 inference; None = on CUDA only (CPU float16 convolutions are slow).
        threads: torch CPU threads (0 = leave torch's setting alone).
        refine: run the weights' local refiner when they have one (False: faster, coarser).
        input_scale: resize the pair by this factor for the network (disparity rescaled back);
            0 = auto, per pair (see the module docstring). Changeable with set_params.
        probe_every: auto on a stream: probe only every N-th pair while the scale holds (see
            the module docstring); 1 = every pair. Changeable with set_params.
    Raises FileNotFoundError / ValueError when the weights are missing or of another model,
    so callers (the node) can fall back to another backend.
    """

    name = 'learned'
    # DisparityImage.delta_d: the network regresses float disparities (soft-argmin), so there
    # is no quantisation step; 1/64 px is well below its accuracy and tells consumers that
    # sub-pixel values are meaningful.
    float_step_px = 1.0 / 64.0

    def __init__(self, weights_path: str = '', device: str = 'auto', half: Optional[bool] = None,
                 threads: int = 0, refine: bool = True, input_scale: float = AUTO_SCALE,
                 probe_every: int = 1):
        import torch
        from ..stereo_net import ARCH, build_stereo_net
        from ..inference_prep import prepare_for_inference
        from ..training import load_weights, resolve_device
        self._torch = torch
        self.weights_path = weights_path or DEFAULT_WEIGHTS
        self.device = resolve_device(device)
        if threads > 0:
            torch.set_num_threads(threads)
        model, header = load_weights(self.weights_path, build_stereo_net, expected_arch=ARCH)
        self.header = header
        if not refine:
            # The refiner only adds a residual to the network's own estimate: without it the
            # output is the base network's (stereo_net/refinement.LocalRefiner).
            model.refiner = None
        self.half = self.device.type == 'cuda' if half is None else bool(half)
        if self.half:
            # float16 output: its spacing is 1/8 px between 128 and 256 px of disparity (1/32
            # from 32 to 64), so a finer delta_d would promise steps the values do not have.
            self.float_step_px = 1.0 / 8.0
        model = prepare_for_inference(model, self.device)
        self.model = model.half() if self.half else model
        self.network_max_disparity_px = int(self.model.max_disparity_px)   # the training bound
        # What the network searches at the size it runs at, and so DisparityImage's
        # max_disparity (the largest disparity searched, as stereo_image_proc's min + num - 1):
        # the last candidate, 184 px for 192, plus the refiner's search when it runs (8 px).
        self.network_searched_px = self.model.searched_max_disparity_px()
        self.input_scale = AUTO_SCALE
        self.last_input_scale: Optional[float] = None   # the scale the latest pair ran at
        self.probe_every = 1
        self.probes = 0                      # probe passes run (for tests and benchmarks)
        # (height, width, scale) the next pair of a stream may run at without a probe.
        self._stream_scale: Optional[Tuple[int, int, float]] = None
        self._pairs_since_probe = 0
        # Bumped by set_params (ROS parameter thread): a compute that started before a change
        # (worker thread) must not store its stream scale after it.
        self._settings_generation = 0
        self.set_params(input_scale=input_scale, probe_every=probe_every)

    @property
    def max_disparity_px(self) -> int:
        """The widest range this backend can answer, pixels of the input pair."""
        return self.max_disparity_at(self.input_scale)

    def max_disparity_at(self, input_scale: float) -> int:
        """The widest range at that ``input_scale`` setting: the network's search range at the
        smallest scale it may then run at."""
        smallest = AUTO_SCALE_RANGE[0] if input_scale == AUTO_SCALE else input_scale
        return int(self.network_searched_px / smallest)

    @property
    def disparity_step_px(self) -> float:
        """DisparityImage.delta_d: the output's step, widened when the pair ran shrunk (its
        disparity is multiplied back by up to 1/0.375)."""
        return self.float_step_px / min(1.0, self.last_input_scale or 1.0)

    def set_params(self, **params: Any) -> None:
        unknown = sorted(set(params) - {'input_scale', 'probe_every'})
        if unknown:
            raise ValueError(f'learned backend has no runtime parameters {unknown}')
        if 'probe_every' in params:
            every = params['probe_every']
            low, high = PROBE_EVERY_RANGE
            whole = isinstance(every, numbers.Integral) and not isinstance(every, bool)
            if not whole or not low <= every <= high:
                raise ValueError(f'probe_every must be a whole number in [{low}, {high}] '
                                 f'(1: probe every pair), got {every!r}')
        if 'input_scale' in params:
            value = float(params['input_scale'])
            problem = check_input_scale(value)
            if problem:
                raise ValueError(problem)
            self.input_scale = value
        if 'probe_every' in params:
            self.probe_every = int(params['probe_every'])
        self._settings_generation += 1
        self._stream_scale = None    # the next pair probes afresh

    def get_params(self) -> Dict[str, Any]:
        return {'weights_path': self.weights_path, 'device': str(self.device), 'half': self.half,
                'max_disparity_px': self.max_disparity_px,
                'refine': self.model.refiner is not None, 'input_scale': self.input_scale,
                'probe_every': self.probe_every}

    def input_tensor(self, image: np.ndarray):
        """(H, W, 3) uint8 RGB -> the network's (1, 3, H, W) input in [0, 1] on its device, in
        its dtype."""
        torch = self._torch
        # A read-only array (a decoded bag message) is copied: torch warns on those.
        tensor = torch.from_numpy(np.require(image, requirements=('C', 'W'))).to(self.device)
        # uint8 times a Python float is float32 in one pass (no separate conversion).
        return (tensor.permute(2, 0, 1)[None] * (1.0 / 255.0)).to(
            torch.float16 if self.half else torch.float32)

    def infer(self, left_rgb: np.ndarray, right_rgb: np.ndarray, refine: bool = True):
        """(H, W, 3) uint8 pair -> ((H, W) float32 disparity px, (H, W) float32 confidence);
        ``refine`` False skips the refiner for this pair."""
        torch = self._torch
        to_tensor = self.input_tensor

        with torch.inference_mode():
            out = None
            try:
                out = self.model(to_tensor(left_rgb), to_tensor(right_rgb), refine)
            except torch.OutOfMemoryError:
                # Often passing: another process holding GPU memory for a while, or memory
                # fragmented by a larger frame. Try this frame once more before the caller (the
                # node) gives up on the backend and falls back to sgbm; the retry runs after
                # this block, once the traceback (and with it the failed pass's tensors) is
                # gone, not while it still holds them.
                pass
            if out is None:
                # No empty_cache(): the caching allocator already returns its free blocks and
                # retries before it raises out-of-memory.
                out = self.model(to_tensor(left_rgb), to_tensor(right_rgb), refine)
        disparity = out['disparity'][0, 0].float().cpu().numpy()
        confidence = out['confidence'][0, 0].float().cpu().numpy()
        return disparity, confidence

    def _infer_at(self, left_rgb: np.ndarray, right_rgb: np.ndarray, scale: float,
                  refine: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """The network on the pair resized by ``scale``: (disparity in pixels of the given
        pair, confidence), both on the resized grid."""
        height, width = left_rgb.shape[:2]
        size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
        if size == (width, height):
            return self.infer(left_rgb, right_rgb, refine)
        # Area averaging when shrinking (no aliasing), bilinear when enlarging.
        interpolation = cv2.INTER_AREA if size[0] < width else cv2.INTER_LINEAR
        disparity, confidence = self.infer(
            cv2.resize(left_rgb, size, interpolation=interpolation),
            cv2.resize(right_rgb, size, interpolation=interpolation), refine)
        disparity *= width / size[0]      # disparity scales with the image width
        return disparity, confidence

    def compute(self, left_rgb: np.ndarray, right_rgb: np.ndarray,
                max_disparity_px: Optional[int] = None) -> StereoResult:
        sizes = check_shape('left_rgb', left_rgb, ('H', 'W', 3))
        check_shape('right_rgb', right_rgb, ('H', 'W', 3), sizes)
        height, width = left_rgb.shape[:2]
        if min(height, width) < MIN_NETWORK_SIDE_PX:
            # Padded up to the network's multiple, a smaller pair is mostly padding: it gave
            # disparities many times the image width, all marked valid (a 1x1 image, 26x).
            raise ValueError(f'the learned backend needs images of at least '
                             f'{MIN_NETWORK_SIDE_PX} px on each side, got {width}x{height}')
        setting = self.input_scale     # once: set_params may change it from another thread
        generation = self._settings_generation
        if setting != AUTO_SCALE:
            scale = _floor_scale(setting, height, width)
            disparity, confidence = self._infer_at(left_rgb, right_rgb, scale)
        else:
            stream = self._stream_scale
            if stream is not None and stream[:2] == (height, width) \
                    and self._pairs_since_probe < self.probe_every - 1:
                scale = stream[2]
                self._pairs_since_probe += 1
            else:
                # The probe skips the refiner (a +-8 px local correction: the percentile hardly
                # moves, ~4 ms saved); a pair that stays at the probe's size is run again
                # with it.
                probe = _floor_scale(AUTO_PROBE_SCALE, height, width)
                disparity, _ = self._infer_at(left_rgb, right_rgb, probe, refine=False)
                self.probes += 1
                self._pairs_since_probe = 0
                scale = _floor_scale(choose_input_scale(disparity), height, width)
            disparity, confidence = self._infer_at(left_rgb, right_rgb, scale)
            # A stream keeps the scale while the output itself calls for it (module docstring);
            # not after a settings change made while this pair ran.
            # Every other row and column: the percentile is the same to a fraction of a
            # pixel, for a third of its time (1-4 ms at 741x500 on the full map, 0.4-1 here).
            steady = self.probe_every > 1 and generation == self._settings_generation \
                and _floor_scale(choose_input_scale(disparity[::2, ::2]), height, width) == scale
            self._stream_scale = (height, width, scale) if steady else None
        # The network's search spans its range at the width it ran at.
        top = int(self.network_searched_px * width / disparity.shape[1])
        if disparity.shape != (height, width):
            disparity = cv2.resize(disparity, (width, height), interpolation=cv2.INTER_LINEAR)
            confidence = cv2.resize(confidence, (width, height), interpolation=cv2.INTER_LINEAR)
        self.last_input_scale = scale
        valid = np.isfinite(disparity) & (disparity >= 0)
        if max_disparity_px is not None:
            # The search range is fixed by training; a smaller requested range invalidates
            # pixels beyond it rather than changing the network.
            valid &= disparity <= max_disparity_px
            top = min(top, max_disparity_px)
        return StereoResult(disparity_px=disparity.astype(np.float32), valid=valid,
                            confidence=confidence.astype(np.float32),
                            search_range_px=(0.0, float(top)))
