"""Backend ``learned``: our GwcNet-style network (core/stereo_net) with the shipped weights.

Trade-off against ``sgbm``: dense, smooth output with a per-pixel confidence and better
behaviour on weak texture once trained enough, but it needs torch, it is limited to the search
range it was trained with (192 px) and it is slower on a CPU; on a GPU it runs in half precision.
"""
import os
from typing import Any, Dict, Optional

import numpy as np

from ..shapes import check_shape
from .base import StereoBackend, StereoResult

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), 'weights')
DEFAULT_WEIGHTS = os.path.join(WEIGHTS_DIR, 'stereo_gwc_small.safetensors')


class LearnedBackend(StereoBackend):
    """Runs :class:`~corr_depth_ros.core.stereo_net.StereoNet` on a rectified pair.

    Args:
        weights_path: safetensors file written by ``save_weights`` ('' = the shipped weights).
        device: 'auto' (CUDA when available), 'cpu' or 'cuda'.
        half: float16 inference; None = on CUDA only (CPU float16 convolutions are slow).
        threads: torch CPU threads (0 = leave torch's setting alone).
        refine: run the weights' local refiner when they have one (False: faster, coarser).
    Raises FileNotFoundError / ValueError when the weights are missing or of another model,
    so callers (the node) can fall back to another backend.
    """

    name = 'learned'
    # DisparityImage.delta_d: the network regresses float disparities (soft-argmin), so there
    # is no quantisation step; 1/64 px is well below its accuracy and tells consumers that
    # sub-pixel values are meaningful.
    disparity_step_px = 1.0 / 64.0

    def __init__(self, weights_path: str = '', device: str = 'auto', half: Optional[bool] = None,
                 threads: int = 0, refine: bool = True):
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
            self.disparity_step_px = 1.0 / 8.0
        model = prepare_for_inference(model, self.device)
        self.model = model.half() if self.half else model
        self.max_disparity_px = int(self.model.max_disparity_px)

    def get_params(self) -> Dict[str, Any]:
        return {'weights_path': self.weights_path, 'device': str(self.device), 'half': self.half,
                'max_disparity_px': self.max_disparity_px,
                'refine': self.model.refiner is not None}

    def input_tensor(self, image: np.ndarray):
        """(H, W, 3) uint8 RGB -> the network's (1, 3, H, W) input in [0, 1] on its device, in
        its dtype."""
        torch = self._torch
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        # uint8 times a Python float is float32 in one pass (no separate conversion).
        return (tensor.permute(2, 0, 1)[None] * (1.0 / 255.0)).to(
            torch.float16 if self.half else torch.float32)

    def infer(self, left_rgb: np.ndarray, right_rgb: np.ndarray):
        """(H, W, 3) uint8 pair -> ((H, W) float32 disparity px, (H, W) float32 confidence)."""
        torch = self._torch
        to_tensor = self.input_tensor

        with torch.inference_mode():
            out = None
            try:
                out = self.model(to_tensor(left_rgb), to_tensor(right_rgb))
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
                out = self.model(to_tensor(left_rgb), to_tensor(right_rgb))
        disparity = out['disparity'][0, 0].float().cpu().numpy()
        confidence = out['confidence'][0, 0].float().cpu().numpy()
        return disparity, confidence

    def compute(self, left_rgb: np.ndarray, right_rgb: np.ndarray,
                max_disparity_px: Optional[int] = None) -> StereoResult:
        sizes = check_shape('left_rgb', left_rgb, ('H', 'W', 3))
        check_shape('right_rgb', right_rgb, ('H', 'W', 3), sizes)
        disparity, confidence = self.infer(left_rgb, right_rgb)
        valid = np.isfinite(disparity) & (disparity >= 0)
        top = self.max_disparity_px
        if max_disparity_px is not None:
            # The search range is fixed by training; a smaller requested range invalidates
            # pixels beyond it rather than changing the network.
            valid &= disparity <= max_disparity_px
            top = min(top, max_disparity_px)
        return StereoResult(disparity_px=disparity.astype(np.float32), valid=valid,
                            confidence=confidence.astype(np.float32),
                            search_range_px=(0.0, float(top)))
