"""torch Datasets that render synthetic samples on the fly (no disk).

Item ``i`` of a dataset with ``seed`` is rendered from ``sample_seed(seed, i)``, the same seed
the writer uses, so an on-the-fly dataset and its copy on disk hold the same samples. Items are
dicts of tensors and Python numbers, so the default ``collate_fn`` batches them.

Rendering is CPU-bound: with a DataLoader, use workers and ``torch.set_num_threads(1)`` in
``worker_init_fn`` so that the workers do not oversubscribe the cores.
"""
from typing import Dict, Optional

from torch.utils.data import Dataset

from .config import SynthConfig
from .io import sample_seed
from .multiview import render_multiview_pair
from .render import check_request
from .stereo import render_stereo_pair


class _SyntheticDataset(Dataset):
    _render = None

    def __init__(self, length: int, height: int, width: int, seed: int = 0,
                 config: Optional[SynthConfig] = None, layout: Optional[str] = None,
                 device='cpu'):
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ValueError(f'length must be an int >= 0, got {length!r}')
        self.config = check_request(int(seed), height, width, config, layout)
        if length and sample_seed(seed, length - 1) >= 2 ** 63:
            raise ValueError(f'seed {seed} is too large for {length} samples: sample seeds '
                             f'seed*1000003+i must stay below 2**63')
        self.length, self.height, self.width = length, int(height), int(width)
        self.seed, self.layout, self.device = int(seed), layout, device

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Dict[str, object]:
        if not -self.length <= index < self.length:
            raise IndexError(f'index {index} out of range for {self.length} samples')
        index = index % self.length
        return type(self)._render(sample_seed(self.seed, index), self.height, self.width,
                                  self.config, layout=self.layout, device=self.device)


class SyntheticStereoDataset(_SyntheticDataset):
    """``length`` rectified stereo samples of :func:`render_stereo_pair`, rendered on access."""

    _render = staticmethod(render_stereo_pair)


class SyntheticMultiViewDataset(_SyntheticDataset):
    """``length`` two-view samples of :func:`render_multiview_pair`, rendered on access."""

    _render = staticmethod(render_multiview_pair)
