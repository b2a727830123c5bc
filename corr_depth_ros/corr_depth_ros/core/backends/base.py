"""The stereo backend interface."""
import copy
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np


@dataclass
class StereoResult:
    """Output of a stereo backend for one rectified pair (left image's pixel grid).

    disparity_px: (H, W) float32, pixels, *without* the principal-point offset (doffs);
        dense when the backend fills holes. Meaningless where ``valid`` is False.
    valid: (H, W) bool, pixels whose disparity the backend stands behind.
    confidence: (H, W) float32 in [0, 1], or None when the backend has no notion of it.
    search_range_px: (min, max) disparity the backend searched (no doffs), or None when it
        cannot say; DisparityImage's min_disparity / max_disparity are this range.
    computed_window: (x, y, width, height) where the matcher has its whole search range and
        window inside the images (DisparityImage.valid_window, as stereo_image_proc fills it),
        or None: then the bounding box of ``valid``. Hole filling may extend outside it.
    """

    disparity_px: np.ndarray
    valid: np.ndarray
    confidence: Optional[np.ndarray] = None
    search_range_px: Optional[Tuple[float, float]] = None
    computed_window: Optional[Tuple[int, int, int, int]] = None


class StereoBackend:
    """Base class. Subclasses implement :meth:`compute` and may accept runtime parameters."""

    name = 'base'

    def compute(self, left_rgb: np.ndarray, right_rgb: np.ndarray,
                max_disparity_px: Optional[int] = None) -> StereoResult:
        """Match a rectified pair: (H, W, 3) uint8 RGB each -> :class:`StereoResult`."""
        raise NotImplementedError

    def set_params(self, **params: Any) -> None:
        """Change parameters at runtime; ValueError (with the reason) if one is invalid."""
        if params:
            raise ValueError(f'{self.name} backend has no runtime parameters {sorted(params)}')

    def get_params(self) -> Dict[str, Any]:
        return {}

    def with_params(self, **params: Any) -> 'StereoBackend':
        """This backend with ``params`` changed, as a new object (sharing the model); ``self``
        is left as it is. A node swaps the new one in under the lock it reads its own settings
        with, so a frame runs with one consistent set: the backend's and the node's (e.g.
        max_disparity_px against sgbm.min_disparity) from the same moment."""
        changed = copy.copy(self)
        changed.set_params(**params)
        return changed
