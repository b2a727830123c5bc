"""Training pairs for the descriptor net from the synthetic data engine, in one format.

Both sources become ``image_a``, ``image_b`` (3,H,W) float in [0,1], ``match_b_px`` (2,H,W)
float (x, y) in B of each A pixel, ``match_valid`` (1,H,W) bool (visible in B), and
``object_mask_a``/``object_mask_b`` (1,H,W) bool:

* multiview pairs (two views of one clutter scene, 10-70 degrees apart): DON's setting;
* rectified stereo pairs (match = (x - d, y)): small viewpoint changes like a robot's consecutive
  frames or a stereo rig, where descriptors must localise to a few pixels.

Rendering costs about 0.1 s per 256x192 pair on one core, more than a training step, so
:class:`PairPool` keeps a pool of rendered pairs and replaces a few per draw: each step still
sees fresh scenes, and augmentation (in :mod:`.augment`) makes the reused ones differ.
"""
import random
from typing import Dict, Optional

import torch
from torch.utils.data import Dataset

# Seeds at or above this are held out: training draws below it, evaluation at or above it.
HELD_OUT_SEED = 1_000_000_000
# A pool with seed s renders seeds s * SEEDS_PER_RUN + rank * seeds_per_rank(world) + n:
# ranks of a torchrun job draw disjoint pairs (a million each for up to 10 ranks; beyond that
# the run's ten million are shared out evenly, so jobs of up to 10 ranks render as before).
SEEDS_PER_RUN = 10_000_000
SEEDS_PER_RANK = 1_000_000


def seeds_per_rank(world_size: int) -> int:
    """How many seeds each rank of a ``world_size``-process job renders from."""
    if world_size < 1 or world_size > SEEDS_PER_RUN // 1000:
        raise ValueError(f'{world_size} processes: descriptor training shares its seeds among '
                         f'1 to {SEEDS_PER_RUN // 1000} processes')
    return min(SEEDS_PER_RANK, SEEDS_PER_RUN // world_size)


def multiview_sample(seed: int, height: int, width: int, config=None) -> Dict[str, torch.Tensor]:
    try:
        from ..synth import render_multiview_pair
    except ImportError:   # the package's public names are still being filled in
        from ..synth.multiview import render_multiview_pair
    s = render_multiview_pair(seed, height, width, config)
    match = s['match_b_px'].float()
    inside = ((match[0] >= 0) & (match[0] <= width - 1) & (match[1] >= 0) & (match[1] <= height - 1))
    valid = s['visible_in_b'].bool() & inside[None] & torch.isfinite(match).all(0, keepdim=True)
    return {'image_a': s['image_a'].float(), 'image_b': s['image_b'].float(),
            'match_b_px': torch.nan_to_num(match, nan=0.0), 'match_valid': valid,
            'object_mask_a': _object_mask(s, 'a'), 'object_mask_b': _object_mask(s, 'b')}


def _object_mask(sample, view: str) -> torch.Tensor:
    if f'object_mask_{view}' in sample:
        return sample[f'object_mask_{view}'].bool().reshape(1, *sample[f'image_{view}'].shape[-2:])
    return (sample[f'instance_{view}'] > 0).reshape(1, *sample[f'image_{view}'].shape[-2:])


def stereo_sample(seed: int, height: int, width: int, config=None) -> Dict[str, torch.Tensor]:
    try:
        from ..synth import render_stereo_pair
    except ImportError:   # the package's public names are still being filled in
        from ..synth.stereo import render_stereo_pair
    s = render_stereo_pair(seed, height, width, config)
    disparity = s['disparity_left_px'][0].float()
    xs = torch.arange(width, dtype=torch.float32).view(1, width).expand(height, width)
    ys = torch.arange(height, dtype=torch.float32).view(height, 1).expand(height, width)
    match = torch.stack([xs - disparity, ys])
    valid = (~s['occlusion_left'][0]) & torch.isfinite(disparity) & (match[0] >= 0)
    return {'image_a': s['left'].float(), 'image_b': s['right'].float(),
            'match_b_px': torch.nan_to_num(match, nan=0.0), 'match_valid': valid[None],
            'object_mask_a': (s['instance_left'] > 0).reshape(1, height, width),
            'object_mask_b': (s['instance_right'] > 0).reshape(1, height, width)}


def render_sample(kind: str, seed: int, height: int, width: int, config=None):
    if kind == 'multiview':
        return multiview_sample(seed, height, width, config)
    if kind == 'stereo':
        return stereo_sample(seed, height, width, config)
    raise ValueError(f'unknown pair kind {kind!r}; use multiview or stereo')


class PairPool(Dataset):
    """Map-style dataset over a pool of rendered pairs, refreshed as it is read.

    Args:
        length: nominal epoch length (the DataLoader's notion only).
        height, width: render size, pixels.
        pool_size: pairs kept; renew_per_item: pairs rendered per item read (0.5: every other).
        stereo_fraction: share of stereo pairs among rendered ones (rest multiview).
        seed: base of the training seeds (all below HELD_OUT_SEED).
    """

    def __init__(self, length: int, height: int, width: int, pool_size: int = 256,
                 renew_per_item: float = 0.5, stereo_fraction: float = 0.3, seed: int = 0,
                 config=None):
        if not 0.0 <= stereo_fraction <= 1.0:
            raise ValueError(f'stereo_fraction must be in [0, 1], got {stereo_fraction}')
        self.length, self.height, self.width = length, height, width
        self.stereo_fraction = stereo_fraction
        self.renew_per_item = renew_per_item
        self.config = config
        self.pool_size = pool_size
        self._seed = seed
        self._rng = random.Random(seed)
        self._next_seed = seed * SEEDS_PER_RUN
        self._credit = 0.0
        self.pool = []          # rendered on first read, after start_stream() if any
        self._made = []         # (seed, kind) of each pair in the pool: stream_state()
        self._oldest = 0

    def start_stream(self, rank: int = 0, items_read: int = 0, world_size: int = 1) -> None:
        """Continue the stream where a run with this seed stood on ``rank`` (of ``world_size``
        processes) after ``items_read`` reads (the training loop calls it; see training.fit):
        each rank renders its own range of seeds, and a resumed run renders the pairs that
        came next instead of the first ones again. Call before the first read. (0, 0, 1) is
        the constructor's stream.
        """
        if self.pool:
            raise RuntimeError('start_stream() must come before the first read')
        per_rank = seeds_per_rank(world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f'rank must be in [0, {world_size}), got {rank}')
        rendered_before = int(items_read * self.renew_per_item)   # beyond the first pool
        self._next_seed = self._seed * SEEDS_PER_RUN + rank * per_rank + rendered_before
        if (rank, items_read) != (0, 0):
            self._rng = random.Random(f'{self._seed}/{rank}/{items_read}')

    def stream_state(self) -> Dict:
        """Where the stream stands, in plain types (for a checkpoint, see training.fit): which
        pairs the pool holds (their seeds and kinds, re-rendered by :meth:`restore_stream`,
        not the images), the next seed, the renewal credit and the draw generator's state."""
        version, internal, gauss = self._rng.getstate()
        return {'made': [list(m) for m in self._made], 'oldest': self._oldest,
                'next_seed': self._next_seed, 'credit': self._credit,
                'rng': [version, list(internal), gauss]}

    def restore_stream(self, state: Dict) -> None:
        """Go on exactly where :meth:`stream_state` was taken (a run resumed with one process
        then draws what the uninterrupted one would have). Call before the first read."""
        if self.pool:
            raise RuntimeError('restore_stream() must come before the first read')
        version, internal, gauss = state['rng']
        self._rng.setstate((version, tuple(internal), gauss))
        self._made = [(int(seed), str(kind)) for seed, kind in state['made']]
        self._oldest, self._next_seed = int(state['oldest']), int(state['next_seed'])
        self._credit = float(state['credit'])
        self.pool = [render_sample(kind, seed, self.height, self.width, self.config)
                     for seed, kind in self._made]

    def _render(self, slot: int) -> Dict[str, torch.Tensor]:
        kind = 'stereo' if self._rng.random() < self.stereo_fraction else 'multiview'
        seed = self._next_seed
        self._next_seed += 1
        if seed >= HELD_OUT_SEED:
            raise RuntimeError('training seeds ran into the held-out range')
        made = (seed, kind)
        if slot < len(self._made):
            self._made[slot] = made
        else:
            self._made.append(made)
        return render_sample(kind, seed, self.height, self.width, self.config)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        if not self.pool:
            self._made = []
            self.pool = [self._render(slot) for slot in range(self.pool_size)]
        self._credit += self.renew_per_item
        while self._credit >= 1.0:
            self.pool[self._oldest] = self._render(self._oldest)
            self._oldest = (self._oldest + 1) % len(self.pool)
            self._credit -= 1.0
        return self.pool[self._rng.randrange(len(self.pool))]


def held_out_pairs(count: int, height: int, width: int, kind: str = 'multiview',
                   offset: int = 0, config=None):
    """``count`` evaluation pairs with seeds from HELD_OUT_SEED + offset (never trained on)."""
    return [render_sample(kind, HELD_OUT_SEED + offset + i, height, width, config)
            for i in range(count)]


def stack(samples) -> Dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def optional_import_check() -> Optional[str]:
    """None when the multiview generator is importable, else why not."""
    try:
        from ..synth.multiview import render_multiview_pair  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None
