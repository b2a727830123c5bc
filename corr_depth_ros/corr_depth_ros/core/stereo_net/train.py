"""Training of the stereo network on on-the-fly synthetic pairs.

Loss: smooth L1 (Huber with a 1 px knee, as GC-Net/GwcNet/PSMNet use) between predicted and
ground-truth disparity on every pixel with valid ground truth inside the search range,
occluded pixels included (the network has to guess them at test time too), summed over the
full-resolution output and the two coarser predictions (multi-scale deep supervision, GwcNet).

Augmentation (applied to training pairs only):
  * photometric asymmetry: brightness, contrast, gamma, per-channel gain and noise drawn
    independently for the left and the right image half of the time, as real rigs have
    mismatched exposure and white balance (CREStereo, Li et al. CVPR 2022; RAFT-Stereo);
  * occluding patches: a rectangle of the right image replaced by its mean colour, which
    teaches the network to rely on context where a match does not exist (HSMNet, Yang et al.
    CVPR 2019, and CREStereo's "eraser").
"""
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Optional, Tuple

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from ..seeding import seeded_generator
from ..shapes import check_shape
from ..training import (DEPTH_EDGE_STEP_PX, BestWeights, TrainConfig, fit, load_weights, path_key,
                        save_weights, source_note, step_band, train_config_dict, unwrap,
                        validation_metrics)
from .model import ARCH, DIVISIBILITY, build_stereo_net

# Dataset base seeds (a sample's own seed is synth.io.sample_seed(base, index) = base * 1_000_003
# + index, so different bases never share a sample): training uses cfg.seed * 1_000_000, the
# held-out validation set and the BatchNorm calibration set of --ship use these two, which
# --seed 900 and 800 would therefore reproduce (refused).
VALIDATION_SEED_BASE = 900_000_000
CALIBRATION_SEED_BASE = 800_000_000
MULTISCALE_WEIGHTS = {'disparity': 1.0, 'disparity_coarse': 0.6, 'disparity_coarser': 0.4}
# Depth edges for --edge-weight and eval stereo: the pixels within 3 px of a GT disparity step
# over training.DEPTH_EDGE_STEP_PX (where the net's error concentrates, on synthetic and real
# pairs alike).
EDGE_RADIUS_PX = 3


@dataclass(frozen=True)
class AugmentConfig:
    asymmetric_prob: float = 0.5       # photometric changes drawn separately for each image
    brightness: float = 0.25           # additive, +-
    contrast: Tuple[float, float] = (0.7, 1.3)
    gamma: Tuple[float, float] = (0.75, 1.35)
    channel_gain: float = 0.12         # multiplicative per RGB channel, +-
    noise_std: Tuple[float, float] = (0.0, 0.03)
    patch_prob: float = 0.5
    patch_size_frac: Tuple[float, float] = (0.05, 0.25)   # of the image width / height
    # Geometric flips that keep a valid rectified pair (they need the right-view disparity):
    # mirroring swaps the roles of the cameras (left' = flip(right), right' = flip(left),
    # GT = flip(disparity_right)); a vertical flip keeps the epipolar lines horizontal.
    mirror_prob: float = 0.5
    vflip_prob: float = 0.2
    # Spatial scale (off unless asked for; the shipped weights' fine-tuning used 0.8 of the
    # pairs, 0.8-1.4: see their metadata): with this probability the pair and its disparity
    # are resized by a factor drawn log-uniformly from scale_range and cropped to the
    # training size at a random place (RAFT-Stereo's and
    # FoundationStereo's training scale their crops the same way). Above 1: larger objects and
    # disparities than the renderer's 0.35 x width; below 1 (a pool larger than the training
    # size): finer structure, more depth edges per cell of the 1/8 cost volume.
    scale_prob: float = 0.0
    scale_range: Tuple[float, float] = (1.0, 1.6)


# Run-signature fields newer than some checkpoints, with the values the code before them
# implicitly had: scale augmentation (08fe5fc) did not exist, i.e. it was off. The range is the
# one a run without --scale-aug stores (an unused range given with probability 0 is refused,
# though that run would train the same: the cautious side). Literal values, not AugmentConfig's
# defaults, which may change without changing what the old runs did.
SIGNATURE_ADDED_LATER = {'augment.scale_prob': 0.0, 'augment.scale_range': (1.0, 1.6)}


AUGMENT_SEED_OFFSET = 2 ** 60   # augmentation streams, apart from every render seed


def photometric(image: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """(3, H, W) RGB in [0, 1] -> the same with random brightness/contrast/gamma/gain/noise."""
    check_shape('image', image, (3, None, None))

    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    gamma = uniform(*cfg.gamma)
    out = image.clamp(0, 1) ** gamma
    mean = out.mean()
    out = (out - mean) * uniform(*cfg.contrast) + mean + uniform(-cfg.brightness, cfg.brightness)
    gain = 1.0 + (torch.rand(3, 1, 1, generator=gen) * 2 - 1) * cfg.channel_gain
    out = out * gain
    sigma = uniform(*cfg.noise_std)
    if sigma > 0:
        out = out + sigma * torch.randn(out.shape, generator=gen)
    return out.clamp(0, 1)


def occluding_patch(image: torch.Tensor, gen: torch.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """(3, H, W) image -> copy with one random rectangle set to the image's mean colour."""
    _, height, width = image.shape
    frac_w = cfg.patch_size_frac[0] + (cfg.patch_size_frac[1] - cfg.patch_size_frac[0]) * float(
        torch.rand((), generator=gen))
    frac_h = cfg.patch_size_frac[0] + (cfg.patch_size_frac[1] - cfg.patch_size_frac[0]) * float(
        torch.rand((), generator=gen))
    pw, ph = max(1, int(frac_w * width)), max(1, int(frac_h * height))
    x0 = int(torch.randint(0, width - pw + 1, (), generator=gen))
    y0 = int(torch.randint(0, height - ph + 1, (), generator=gen))
    out = image.clone()
    out[:, y0:y0 + ph, x0:x0 + pw] = image.mean(dim=(1, 2), keepdim=True)
    return out


def augment_pair(left: torch.Tensor, right: torch.Tensor, seed: int,
                 cfg: AugmentConfig = AugmentConfig()) -> Tuple[torch.Tensor, torch.Tensor]:
    """Augment one (3, H, W) pair, deterministically for a given seed (reproducible runs)."""
    gen = seeded_generator(seed)
    if float(torch.rand((), generator=gen)) < cfg.asymmetric_prob:
        left, right = photometric(left, gen, cfg), photometric(right, gen, cfg)
    else:
        both = photometric(torch.cat([left, right], dim=2), gen, cfg)
        left, right = both[..., :left.shape[-1]], both[..., left.shape[-1]:]
    if float(torch.rand((), generator=gen)) < cfg.patch_prob:
        right = occluding_patch(right, gen, cfg)
    return left.contiguous(), right.contiguous()


def rescale_and_crop(left: torch.Tensor, right: torch.Tensor, disparity: torch.Tensor,
                     gen: torch.Generator, scale_range: Tuple[float, float],
                     out_hw: Optional[Tuple[int, int]] = None):
    """(3, H, W), (3, H, W), (1, H, W) -> the same at ``out_hw`` (default (H, W)): resized by a
    factor drawn log-uniformly from ``scale_range`` (raised where needed so the result still
    covers ``out_hw``; images bilinear, disparity nearest, so no value mixes two surfaces, and
    multiplied by the factor), then cropped at a random place."""
    _, height, width = left.shape
    out_h, out_w = out_hw or (height, width)
    low, high = (math.log(v) for v in scale_range)
    factor = math.exp(low + (high - low) * float(torch.rand((), generator=gen)))
    factor = max(factor, out_h / height, out_w / width)
    size = (max(out_h, round(height * factor)), max(out_w, round(width * factor)))
    if size != (height, width):
        images = F.interpolate(torch.stack([left, right]), size=size, mode='bilinear',
                               align_corners=False)
        left, right = images[0], images[1]
        disparity = F.interpolate(disparity[None], size=size,
                                  mode='nearest-exact')[0] * (size[1] / width)
    return random_crop((left, right, disparity), gen, (out_h, out_w))


def random_crop(tensors, gen: Optional[torch.Generator], out_hw: Tuple[int, int]):
    """The same (out_h, out_w) window of each (C, H, W) tensor: at a random place, or centred
    when ``gen`` is None."""
    height, width = tensors[0].shape[-2:]
    out_h, out_w = out_hw
    if gen is None:
        y0, x0 = (height - out_h) // 2, (width - out_w) // 2
    else:
        y0 = int(torch.randint(0, height - out_h + 1, (), generator=gen))
        x0 = int(torch.randint(0, width - out_w + 1, (), generator=gen))
    return tuple(t[:, y0:y0 + out_h, x0:x0 + out_w] for t in tensors)


class _RenderedStereo(Dataset):
    """Fallback for an engine without ``SyntheticStereoDataset``: sample i = render(seed + i)."""

    def __init__(self, length: int, height: int, width: int, seed: int = 0, config=None):
        self.length, self.height, self.width, self.seed, self.config = length, height, width, seed, config

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        from ..synth.stereo import render_stereo_pair
        return render_stereo_pair(self.seed + index, self.height, self.width, self.config)


def synthetic_stereo_dataset(length: int, height: int, width: int, seed: int, config=None):
    try:
        from ..synth import SyntheticStereoDataset
    except ImportError:
        return _RenderedStereo(length, height, width, seed, config)
    return SyntheticStereoDataset(length, height, width, seed=seed, config=config)


class StereoTrainingSet(Dataset):
    """Synthetic pairs -> {'left', 'right' (3, H, W) in [0, 1], 'disparity_px' (1, H, W) with NaN
    where there is no ground truth}; augmented unless ``augment`` is None.

    ``length`` (default: the base's length) may exceed the base: item i is base[i % len(base)]
    with augmentation drawn from seed i, so a fixed pool on disk is seen with new flips and
    photometric changes on every pass.
    """

    def __init__(self, base: Dataset, augment: Optional[AugmentConfig] = AugmentConfig(),
                 seed: int = 0, length: Optional[int] = None,
                 crop_hw: Optional[Tuple[int, int]] = None):
        self.base, self.augment, self.seed = base, augment, seed
        self.length = len(base) if length is None else int(length)
        self.crop_hw = crop_hw

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        sample = self.base[index % len(self.base)]
        left, right = sample['left'].float(), sample['right'].float()
        disparity = sample['disparity_left_px'].float().clone()
        if self.augment is not None:
            # Offset by 2**60: with --seed 0 the item seeds would equal the renderer's sample
            # seeds (seed * 1000003 + index), and the same integer seeds the same stream.
            gen = seeded_generator(AUGMENT_SEED_OFFSET + self.seed * 7_919 + index)
            flips = torch.rand(2, generator=gen)
            if 'disparity_right_px' in sample and float(flips[0]) < self.augment.mirror_prob:
                left, right = right.flip(-1), left.flip(-1)
                disparity = sample['disparity_right_px'].float().flip(-1)
            if float(flips[1]) < self.augment.vflip_prob:
                left, right, disparity = left.flip(-2), right.flip(-2), disparity.flip(-2)
            if float(torch.rand((), generator=gen)) < self.augment.scale_prob:
                left, right, disparity = rescale_and_crop(left, right, disparity, gen,
                                                          self.augment.scale_range, self.crop_hw)
        if self.crop_hw is not None and tuple(left.shape[-2:]) != tuple(self.crop_hw):
            # A pool larger than the training size: a random window (centred unaugmented).
            left, right, disparity = random_crop((left, right, disparity),
                                                 gen if self.augment is not None else None,
                                                 self.crop_hw)
        if self.augment is not None:
            # The photometric stream gets a seed of its own, drawn from this item's generator:
            # re-seeding with the item's seed would replay the draws above, so that every mirrored
            # pair also got asymmetric photometry, every flipped one a low gamma, and so on.
            left, right = augment_pair(left, right, int(torch.randint(0, 2 ** 62, (), generator=gen)),
                                       self.augment)
        return {'left': left.contiguous(), 'right': right.contiguous(),
                'disparity_px': disparity.contiguous()}


def stereo_folder_dataset(root: str, height: int, width: int) -> Dataset:
    """A stereo dataset written by ``corr_depth synth stereo`` (core/synth/FORMAT.md), checked
    to hold samples of at least ``height`` x ``width`` (StereoTrainingSet crops larger ones)."""
    from ..synth.io import SyntheticFolderDataset
    data = SyntheticFolderDataset(root)
    if data.kind != 'stereo':
        raise ValueError(f'{root} holds {data.kind} samples; stereo training needs stereo pairs')
    shape = tuple(data[0]['left'].shape[-2:])
    if shape[0] < height or shape[1] < width:
        raise ValueError(f'{root} holds {shape[1]}x{shape[0]} pairs, smaller than the '
                         f'{width}x{height} --size asks for (larger pools are cropped)')
    return data


def disparity_edge_band(disparity_px: torch.Tensor, step_px: float = DEPTH_EDGE_STEP_PX,
                        radius_px: int = EDGE_RADIUS_PX) -> torch.Tensor:
    """(B,1,H,W) ground-truth disparity (NaN / <= 0 = none) -> (B,1,H,W) bool: pixels within
    ``radius_px`` of a disparity step larger than ``step_px`` between neighbours: depth edges,
    and also surfaces so steeply slanted that their disparity changes that fast."""
    known = torch.isfinite(disparity_px) & (disparity_px > 0)
    return step_band(disparity_px, known, step_px, radius_px)


def stereo_loss(outputs: Dict[str, torch.Tensor], disparity_gt_px: torch.Tensor,
                max_disparity_px: float,
                weights: Dict[str, float] = MULTISCALE_WEIGHTS,
                edge_weight: float = 1.0) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Multi-scale smooth L1 over valid ground truth.

    outputs: the network's dict, each (B, 1, H, W) pixels; disparity_gt_px (B, 1, H, W), NaN or
    <= 0 = no ground truth; pixels at or beyond ``max_disparity_px`` are left out (the network
    cannot represent them). ``edge_weight`` > 1 weighs pixels near depth edges
    (disparity_edge_band) that much more, the mean taken over the weights. Returns (scalar
    loss, logs with per-scale losses and the full-res EPE).
    """
    sizes = check_shape('disparity_gt_px', disparity_gt_px, ('B', 1, 'H', 'W'))
    check_shape('disparity', outputs['disparity'], ('B', 1, 'H', 'W'), sizes)
    valid = torch.isfinite(disparity_gt_px) & (disparity_gt_px > 0) & \
        (disparity_gt_px < max_disparity_px)
    gt = torch.where(valid, disparity_gt_px, torch.zeros_like(disparity_gt_px))
    count = valid.sum().clamp_min(1)
    pixel_weight = valid.float()
    if edge_weight != 1.0:
        pixel_weight = pixel_weight * (1.0 + (edge_weight - 1.0)
                                       * disparity_edge_band(disparity_gt_px).float())
    weight_sum = pixel_weight.sum().clamp_min(1.0)
    total = disparity_gt_px.new_zeros(())
    logs = {}
    for key, weight in weights.items():
        if key not in outputs:
            continue
        per_pixel = F.smooth_l1_loss(outputs[key], gt, reduction='none', beta=1.0)
        term = (per_pixel * pixel_weight).sum() / weight_sum
        total = total + weight * term
        logs[f'loss_{key}'] = float(term.detach())
    with torch.no_grad():
        logs['epe_px'] = float(((outputs['disparity'] - gt).abs() * valid).sum() / count)
    return total, logs


def make_loss_fn(max_disparity_px: float, edge_weight: float = 1.0):
    def loss_fn(model, batch):
        outputs = model(batch['left'], batch['right'])
        return stereo_loss(outputs, batch['disparity_px'], max_disparity_px,
                           edge_weight=edge_weight)
    return loss_fn


def validation_set(count: int, height: int, width: int, config=None) -> Dict[str, torch.Tensor]:
    """A fixed held-out synthetic set (seeds from VALIDATION_SEED_BASE, never trained on),
    stacked: left/right (N, 3, H, W), disparity_px (N, 1, H, W)."""
    data = StereoTrainingSet(synthetic_stereo_dataset(count, height, width,
                                                      VALIDATION_SEED_BASE, config), augment=None)
    items = [data[i] for i in range(count)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def evaluate_on_set(model, data: Dict[str, torch.Tensor], batch_size: int = 4) -> Dict[str, float]:
    """EPE and bad-1/2 % of ``model`` (eval mode) over valid GT pixels of a stacked set."""
    device = next(unwrap(model).parameters()).device
    errors = []
    with torch.no_grad():
        for i in range(0, data['left'].shape[0], batch_size):
            pred = model(data['left'][i:i + batch_size].to(device),
                         data['right'][i:i + batch_size].to(device))['disparity'].cpu()
            gt = data['disparity_px'][i:i + batch_size]
            valid = torch.isfinite(gt) & (gt > 0)
            # A non-finite prediction is an error, not a pixel that passes every threshold
            # (NaN > 1 is False: NaN batch norm statistics once read as 0 % bad pixels).
            errors.append(torch.nan_to_num((pred - gt)[valid].abs(), nan=math.inf))
    err = torch.cat(errors)
    return {'epe_px': float(err.mean()), 'bad_1_pct': float(100 * (err > 1).float().mean()),
            'bad_2_pct': float(100 * (err > 2).float().mean())}


def train_stereo_net(cfg: TrainConfig, *, height: int, width: int,
                     net_config: Optional[Dict[str, Any]] = None, val_count: int = 16,
                     augment: Optional[AugmentConfig] = AugmentConfig(),
                     data_dir: str = '', command: str = '', refine_from: str = '',
                     refine_channels: int = 16, refine_radius: int = 2,
                     init_from: str = '', edge_weight: float = 1.0) -> Dict[str, Any]:
    """Train on ``cfg.steps * cfg.batch_size`` fresh synthetic pairs (per torchrun rank) of
    ``height`` x ``width`` rendered on the fly, or, with ``data_dir``, on a pool written by
    ``corr_depth synth stereo`` (rendering once and re-augmenting every pass frees the CPU that
    rendering would take).

    Every validation that improves the held-out EPE writes ``out_dir/best.safetensors`` (+ JSON
    sidecar) with the full metadata; ``out_dir/last.safetensors`` is written at the end.
    With ``refine_from`` (a weights file without a refiner), the network is that file's plus a
    ``refine_channels`` wide local refiner searching ``refine_radius`` quarter-pixels each side
    (refinement.LocalRefiner), and only the refiner trains: the rest is loaded, frozen and
    kept in eval mode (``net_config`` is then ignored).
    With ``init_from``, training starts from that file's network and weights (all of them
    train; ``net_config`` is ignored too). ``edge_weight``: see stereo_loss.
    Returns fit()'s final logs plus the best validation numbers.
    """
    from ..synth.config import SYNTH_VERSION
    refined_from = initialised_from = None
    if refine_from and init_from:
        raise ValueError('use either refine_from or init_from, not both')
    torch.manual_seed(cfg.seed)   # before the network's random initialisation (fit seeds later)
    if refine_from:
        model, refined_from = refiner_on_frozen_base(refine_from, refine_channels,
                                                     refine_radius)
    elif init_from:
        model, header = load_weights(init_from, build_stereo_net, expected_arch=ARCH)
        initialised_from = source_note(init_from, header)
    else:
        model = build_stereo_net(**dict(net_config or {}))
    config = dict(model.config)
    from ..synth.io import sample_seed
    train_seed = cfg.seed * 1_000_000
    if train_seed in (VALIDATION_SEED_BASE, CALIBRATION_SEED_BASE):
        raise ValueError(f'--seed {cfg.seed} would train on the held-out validation or '
                         'calibration pairs: choose another seed')
    # Every torchrun rank takes steps * batch_size items of its own (DistributedSampler splits
    # the dataset), so the data is world_size times that: no pair is drawn by two ranks.
    count = cfg.steps * cfg.batch_size * int(os.environ.get('WORLD_SIZE', '1'))
    if data_dir:
        base = stereo_folder_dataset(data_dir, height, width)
        with open(os.path.join(data_dir, 'dataset.json'), encoding='utf-8') as f:
            info = json.load(f)
        pool_h, pool_w = base[0]['left'].shape[-2:]
        size_note = f'{pool_w}x{pool_h}' + ('' if (pool_h, pool_w) == (height, width) else
                                            f' cropped to {width}x{height}')
        data_note = (f'synthetic stereo ({info.get("synth_version")}), pool of {len(base)} pairs '
                     f'written by corr_depth synth stereo --seed {info.get("seed")} '
                     f'(sample seeds seed*1000003+i), {size_note}, re-augmented every pass')
        # The generator that rendered the pool, not this code's (the pool may be older).
        data_version, data_seed = info.get('synth_version'), info.get('seed')
    else:
        data_version, data_seed = SYNTH_VERSION, train_seed
        base = synthetic_stereo_dataset(count, height, width, train_seed)
        # Each item is a fresh render: read in order, so a resume with more --steps reads on
        # into new pairs instead of a new shuffle of the longer set.
        cfg = replace(cfg, shuffle=False)
        data_note = (f'synthetic stereo ({SYNTH_VERSION}), on the fly, {width}x{height}, '
                     f'sample seeds {sample_seed(train_seed, 0)}..'
                     f'{sample_seed(train_seed, count - 1)}')
    dataset = StereoTrainingSet(base, augment, seed=cfg.seed, length=count,
                                crop_hw=(height, width))
    val_data = validation_set(val_count, height, width)
    best = BestWeights(os.path.join(cfg.out_dir, 'best.safetensors'), 'epe_px')
    def metadata(step, val):
        return {'training_data': data_note,
                'synth_version': data_version, 'synth_seed': data_seed,
                'validation_seeds': f'{sample_seed(VALIDATION_SEED_BASE, 0)}..'
                                    f'{sample_seed(VALIDATION_SEED_BASE, val_count - 1)}',
                'steps': step, 'batch_size': cfg.batch_size, 'train_size_hw': [height, width],
                'validation': val, 'max_disparity_px': model.max_disparity_px,
                'divisibility': DIVISIBILITY, 'output': 'disparity in pixels (no doffs), '
                'relative to the input size; metric depth needs the rig calibration',
                'augmentation': asdict(augment) if augment else None,
                **({'loss_edge_weight': edge_weight} if edge_weight != 1.0 else {}),
                'command': command, 'train_config': train_config_dict(cfg),
                **({'refined_from': refined_from} if refined_from else {}),
                **({'initialised_from': initialised_from} if initialised_from else {})}

    def val_fn(bare, step):
        val = evaluate_on_set(bare, val_data)
        best.offer(bare, {**val, 'step': step}, arch=ARCH, config=config,
                   metadata=metadata(step, val))
        return val

    signature = {'net': config, 'size_hw': [height, width], 'data_dir': path_key(data_dir),
                 'augment': asdict(augment) if augment else None,
                 'refine_from': path_key(refine_from), 'init_from': path_key(init_from)}
    if edge_weight != 1.0:   # absent at 1, so that older runs still resume
        signature['edge_weight'] = edge_weight
    if val_count != 16:      # best-so-far compares like with like (absent at the default)
        signature['val_count'] = val_count
    result = fit(model, dataset, make_loss_fn(model.max_disparity_px, edge_weight), cfg,
                 val_fn=val_fn,
                 signature=signature, signature_added_later=SIGNATURE_ADDED_LATER)
    save_weights(os.path.join(cfg.out_dir, 'last.safetensors'), model, arch=ARCH, config=config,
                 metadata=metadata(result.get('step', cfg.steps),
                                   validation_metrics(result)))
    return {**result, 'best': best.best or {'epe_px': math.inf}}


def refiner_on_frozen_base(base_path: str, refine_channels: int, refine_radius: int = 2):
    """(model, note): the network of ``base_path`` plus an untrained ``refine_channels``
    wide refiner of search radius ``refine_radius``, base weights loaded and frozen
    (``StereoNet.freeze_base``); ``note`` describes the base for the new weights' metadata."""
    base, header = load_weights(base_path, build_stereo_net, expected_arch=ARCH)
    if 'refine_channels' in header['config']:
        raise ValueError(f'{base_path} already has a refiner; refine a file without one')
    model = build_stereo_net(**{**header['config'], 'refine_channels': int(refine_channels),
                                'refine_radius': int(refine_radius)})
    keys = model.load_state_dict(base.state_dict(), strict=False)
    if keys.unexpected_keys or any(not k.startswith('refiner.') for k in keys.missing_keys):
        raise ValueError(f'{base_path} does not match the network it describes: '
                         f'{keys.unexpected_keys or keys.missing_keys}')
    model.freeze_base()
    return model, source_note(base_path, header)


def recalibrate_batchnorm(model, dataset: Dataset, *, batches: int = 32, batch_size: int = 4,
                          device: str = 'cpu') -> None:
    """Replace every BatchNorm's running statistics by their average over ``batches`` training
    batches computed with the final weights ("precise BN", Wu & Johnson 2021).

    The running averages collected during training mix statistics of many older weight states
    (momentum 0.1), which makes eval mode measurably worse than train mode on a short run.
    Weights are not changed; the model is left in eval mode.
    """
    from torch.utils.data import DataLoader
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None                     # cumulative moving average
    model.train()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=True)
    with torch.no_grad():
        for index, batch in enumerate(loader):
            if index >= batches:
                break
            model(batch['left'].to(device), batch['right'].to(device))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def ship_weights(source_path: str, ship_path: str, *, height: int, width: int,
                 recalibrate_batches: int = 32, val_count: int = 16,
                 command: str = '') -> Dict[str, Any]:
    """Turn a training output (``best.safetensors``) into the shipped weights file.

    Candidates: the BatchNorm statistics as trained or re-estimated on fresh synthetic pairs
    (seeds from 8e8, disjoint from training and validation), times the inference regression
    radius 0 or 2; the one with the lowest held-out validation EPE is written to ``ship_path``
    (+ JSON) with the source's metadata plus every candidate's numbers. Returns the new header.
    """
    import copy
    from ..training import read_weights_header
    trained, header = load_weights(source_path, build_stereo_net, expected_arch=ARCH)
    val_data = validation_set(val_count, height, width)
    variants = {'trained_bn': trained.eval()}
    if recalibrate_batches > 0:
        recalibrated = copy.deepcopy(trained)
        calibration = StereoTrainingSet(synthetic_stereo_dataset(
            recalibrate_batches * 4, height, width, CALIBRATION_SEED_BASE), augment=None)
        recalibrate_batchnorm(recalibrated, calibration, batches=recalibrate_batches)
        variants['recalibrated_bn'] = recalibrated
    scores = {}
    for name, model in variants.items():
        for radius in (0, 2):
            model.regression_radius = radius
            scores[f'{name}/radius{radius}'] = evaluate_on_set(model, val_data)
    choice = min(scores, key=lambda k: scores[k]['epe_px'])
    name, radius = choice.split('/radius')
    model = variants[name]
    model.regression_radius = int(radius)
    model.config['regression_radius'] = int(radius)
    metadata = dict(header['metadata'])
    metadata.update({
        'validation': scores[choice],
        'shipping': {'source': os.path.basename(source_path), 'chosen': choice,
                     'batchnorm_recalibration': f'{recalibrate_batches} batches of 4 synthetic '
                     f'{width}x{height} pairs, seeds from 800000000' if recalibrate_batches else None,
                     'candidates_validation': scores, 'command': command},
        'source_identity': read_weights_header(source_path).get('identity')})
    return save_weights(ship_path, model, arch=ARCH, config=dict(model.config), metadata=metadata)
