"""Training pairs for the self-supervised monocular model: a rendered cache and augmentation.

Only the two images of a rectified pair are used for training (Godard et al., CVPR 2017: the
right image supervises the disparity predicted from the left one); the synthetic renderer's
depth is kept in the cache solely for held-out evaluation and never reaches the loss.

The fixed training rig
----------------------
The network predicts disparity as a fraction of the image width, so the images alone define
training. Metric depth, though, needs ``Z = fx * B / d_px`` with the *training* baseline: every
pair is therefore rendered with one baseline and one ``fx / width`` (:data:`TRAINING_RIG`),
stored in the weights' metadata and used by :mod:`.inference`. (The synthetic scenes still have
a random global scale, so metric output from one image is only as good as the scale prior the
network learns; ``relative`` mode and median scaling are the honest comparisons.)

Rendering costs ~0.1-0.4 s per pair on one CPU core, far more than a training step of the small
network, so pairs are rendered once into a cache directory (uint8 ``.npy`` arrays + meta.json)
and the two ablation runs share it.
"""
import functools
import json
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch

# The rig every training pair is rendered with; see the module docstring.
TRAINING_RIG = {'baseline_m': 0.1, 'fx_over_width': 0.8}
# Largest disparity in a training scene, as a fraction of the width (the renderer scales each
# scene to reach it). The photometric loss only sees a few pixels around the current estimate,
# so a network that starts near zero never finds disparities of 0.2-0.35 W (the stereo
# generator's default range): trained with it, the net collapsed to a constant 0.017 W. 0.12 W
# covers indoor scenes like Motorcycle (at most 0.08 W) and KITTI's near range.
MAX_DISPARITY_FRACTION = 0.12
# Tabletop scenes only. A single image has depth cues only where the world has structure: a
# supporting plane receding to the horizon, objects resting on it, occlusions. The "chaotic"
# layout (objects of random size floating at random depths) has none by construction; with half
# the pairs chaotic the network's depth stayed uncorrelated with the truth after 700 steps,
# while the same network fitted tabletop pairs within 100.
MONO_LAYOUTS = ('tabletop',)
CACHE_FORMAT = 'corr_depth_mono_cache-1'


def training_synth_config(base=None):
    """The SynthConfig of the training pairs: the default ranges with the rig fixed."""
    import dataclasses
    from ..synth.config import SynthConfig
    base = SynthConfig() if base is None else base
    return dataclasses.replace(
        base, baseline_m_range=(TRAINING_RIG['baseline_m'],) * 2,
        fx_over_width_range=(TRAINING_RIG['fx_over_width'],) * 2,
        max_disparity_frac=MAX_DISPARITY_FRACTION,
        layouts=MONO_LAYOUTS, layout_weights=(1.0,) * len(MONO_LAYOUTS))


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3,H,W) float in [0,1] -> (H,W,3) uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def build_synthetic_cache(root: str, count: int, height: int, width: int, *, first_seed: int = 0,
                          config=None, with_depth: bool = False, progress: bool = True) -> str:
    """Render ``count`` pairs (seeds ``first_seed ..``) into ``root``; reuse a complete cache.

    Writes ``left.npy``/``right.npy`` (N,H,W,3) uint8 and, with ``with_depth`` (evaluation
    caches only), ``depth_left_m.npy`` (N,H,W) float32 (NaN = nothing hit) and ``fx_px.npy``.
    Returns ``root``. Rendering resumes where a killed run stopped (``done.txt``).
    """
    from ..synth.stereo import render_stereo_pair
    config = training_synth_config() if config is None else config
    meta = {'format': CACHE_FORMAT, 'count': count, 'height': height, 'width': width,
            'first_seed': first_seed, 'with_depth': with_depth, 'synth_config': config.to_dict()}
    try:
        from ..synth.config import SYNTH_VERSION
        meta['synth_version'] = SYNTH_VERSION
    except ImportError:  # pragma: no cover - older engine
        pass
    os.makedirs(root, exist_ok=True)
    meta_path = os.path.join(root, 'meta.json')
    if os.path.isfile(meta_path):
        with open(meta_path, encoding='utf-8') as f:
            old = json.load(f)
        layout = ('format', 'count', 'height', 'width', 'first_seed', 'with_depth')
        if any(old.get(k) != meta[k] for k in layout):
            raise ValueError(f'{root} holds a different cache ({meta_path}); use another directory')
        if old.get('synth_config') != meta['synth_config'] or \
                old.get('synth_version') != meta.get('synth_version'):
            # The renderer evolves while caches stay valid training data: reuse it, and let the
            # cache's own meta.json (which the weights metadata copies) say what rendered it.
            print(f'note: {root} was rendered with another synth config/version than the current '
                  'one; reusing it (its meta.json records what rendered it)')
        meta = old
    else:
        with open(meta_path, 'w', encoding='utf-8') as f:
            json.dump(meta, f, indent=2)
    shape = (count, height, width, 3)
    done_path = os.path.join(root, 'done.txt')
    if _complete(root, done_path, {'left': shape, 'right': shape, **(
            {'depth_left_m': shape[:3], 'fx_px': (count,)} if with_depth else {})}):
        return root     # nothing to render: opened for writing, a read-only cache was refused
    arrays = {name: np.lib.format.open_memmap(os.path.join(root, f'{name}.npy'),
                                              mode='r+' if os.path.isfile(os.path.join(root, f'{name}.npy')) else 'w+',
                                              dtype=np.uint8, shape=shape)
              for name in ('left', 'right')}
    if with_depth:
        for name, shp in (('depth_left_m', shape[:3]), ('fx_px', (count,))):
            path = os.path.join(root, f'{name}.npy')
            arrays[name] = np.lib.format.open_memmap(
                path, mode='r+' if os.path.isfile(path) else 'w+', dtype=np.float32, shape=shp)
    done = int(open(done_path, encoding='utf-8').read()) if os.path.isfile(done_path) else 0
    iterator = range(done, count)
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, initial=done, total=count, desc='render', dynamic_ncols=True)
    for index in iterator:
        sample = render_stereo_pair(first_seed + index, height, width, config)
        arrays['left'][index] = _to_uint8(sample['left'])
        arrays['right'][index] = _to_uint8(sample['right'])
        if with_depth:
            arrays['depth_left_m'][index] = sample['depth_left_m'][0].numpy()
            arrays['fx_px'][index] = float(sample['K'][0, 0])
        if (index + 1) % 50 == 0 or index + 1 == count:
            for array in arrays.values():
                array.flush()
            with open(done_path, 'w', encoding='utf-8') as f:
                f.write(str(index + 1))
    return root


def _complete(root: str, done_path: str, shapes: Dict[str, Tuple[int, ...]]) -> bool:
    """Whether the cache in ``root`` is fully rendered with arrays of ``shapes`` (name ->
    shape), read without opening anything for writing."""
    try:
        with open(done_path, encoding='utf-8') as f:
            if int(f.read()) < shapes['left'][0]:
                return False
        return all(np.load(os.path.join(root, f'{name}.npy'), mmap_mode='r').shape == shape
                   for name, shape in shapes.items())
    except (OSError, ValueError):
        return False       # missing, truncated or not an array: rendered (again) below


def load_cache(root: str) -> Dict[str, np.ndarray]:
    """The arrays of a complete cache (memory-mapped) and its ``meta``."""
    with open(os.path.join(root, 'meta.json'), encoding='utf-8') as f:
        meta = json.load(f)
    done_path = os.path.join(root, 'done.txt')
    done = int(open(done_path, encoding='utf-8').read()) if os.path.isfile(done_path) else 0
    if done < meta['count']:
        raise ValueError(f'cache {root} is incomplete ({done}/{meta["count"]} pairs rendered)')
    out = {'meta': meta}
    for name in ('left', 'right', 'depth_left_m', 'fx_px'):
        path = os.path.join(root, f'{name}.npy')
        if os.path.isfile(path):
            out[name] = np.load(path, mmap_mode='r')
    return out


def augment_pair(left: torch.Tensor, right: torch.Tensor,
                 generator: Optional[torch.Generator] = None):
    """Godard et al.'s augmentation of one (3,H,W) [0,1] pair: with p = 0.5 mirror the pair
    (flip both and swap them, so the new left is the mirrored right and the geometry stays a
    valid left/right rig), then with p = 0.5 the same random gamma [0.8, 1.2], brightness
    [0.5, 2.0] and per-channel colour [0.8, 1.2] on both views."""
    def uniform(lo, hi, size=()):
        return lo + (hi - lo) * torch.rand(size, generator=generator)
    if float(uniform(0, 1)) < 0.5:
        left, right = right.flip(-1), left.flip(-1)
    if float(uniform(0, 1)) < 0.5:
        gamma = uniform(0.8, 1.2)
        brightness = uniform(0.5, 2.0)
        colour = uniform(0.8, 1.2, (3, 1, 1))
        left = (left ** gamma * brightness * colour).clamp(0, 1)
        right = (right ** gamma * brightness * colour).clamp(0, 1)
    return left, right


# Depth Hints search range, fraction of the width: above the training scenes' largest disparity
# (MAX_DISPARITY_FRACTION) with room for a user's closer scenes.
HINT_SEARCH_FRACTION = 0.2


def stereo_hints(left: torch.Tensor, right: torch.Tensor,
                 search_fraction: float = HINT_SEARCH_FRACTION):
    """Depth Hints (Watson et al., ICCV 2019; losses.hint_loss) for one (3,H,W) [0,1] pair:
    SGBM disparities of the left and of the right view, each (1,H,W) float32 pixels with NaN
    where SGBM found no reliable match (no hole filling). The right view's comes from the
    mirrored pair (flip both, swap), on which it is a left-view disparity.

    Computed from the (augmented) images themselves, never from rendered depth.
    """
    width = left.shape[-1]
    matcher = _hint_matcher(max(16, int(np.ceil(search_fraction * width / 16.0)) * 16))

    def left_view(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
        result = matcher.compute(_to_uint8(a), _to_uint8(b))
        return np.where(result.valid, result.disparity_px, np.nan).astype(np.float32)

    hint_left = left_view(left, right)
    hint_right = left_view(right.flip(-1), left.flip(-1))[:, ::-1]
    return (torch.from_numpy(np.ascontiguousarray(hint_left))[None],
            torch.from_numpy(np.ascontiguousarray(hint_right))[None])


@functools.lru_cache(maxsize=4)
def _hint_matcher(num_disparities: int):
    # One matcher per search range and process (each data-loader worker has its own), not one
    # per training item: it keeps its OpenCV StereoSGBM object between calls.
    from ..backends.sgbm import SgbmBackend
    return SgbmBackend(fill_holes=False, num_disparities=num_disparities)


def pair_item(left: torch.Tensor, right: torch.Tensor, augment: bool, hints: bool):
    """The training item of one (3,H,W) [0,1] pair: augmented (``augment_pair``), then with
    'hint_left_px'/'hint_right_px' from the augmented images when ``hints``."""
    if augment:
        left, right = augment_pair(left, right)
    item = {'left': left, 'right': right}
    if hints:
        item['hint_left_px'], item['hint_right_px'] = stereo_hints(left, right)
    return item


class PairArrayDataset(torch.utils.data.Dataset):
    """(left, right) pairs from (N,H,W,3) uint8 arrays as ``{'left','right'}`` (3,H,W) float32
    in [0,1], augmented when ``augment``, with SGBM Depth Hints when ``hints``. No rendered depth
    is ever returned: training is self-supervised."""

    def __init__(self, left: np.ndarray, right: np.ndarray, augment: bool = True,
                 hints: bool = False):
        if left.shape != right.shape or left.ndim != 4 or left.shape[-1] != 3:
            raise ValueError(f'left/right must be equal (N,H,W,3) arrays, got {left.shape} '
                             f'and {right.shape}')
        self.left, self.right, self.augment, self.hints = left, right, augment, hints

    def __len__(self) -> int:
        return len(self.left)

    def __getitem__(self, index: int):
        left = torch.from_numpy(np.array(self.left[index])).permute(2, 0, 1).float() / 255.0
        right = torch.from_numpy(np.array(self.right[index])).permute(2, 0, 1).float() / 255.0
        return pair_item(left, right, self.augment, self.hints)
