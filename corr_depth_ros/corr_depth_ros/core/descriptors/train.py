"""Training of the descriptor net on synthetic pairs (`corr_depth train descriptors`).

Uses the shared loop :func:`corr_depth_ros.core.training.fit`. Validation every ``val_every``
steps measures PCK@3 px of whole-image arg-min matching on held-out synthetic multiview pairs
(seeds >= HELD_OUT_SEED) and keeps the best weights as ``best.safetensors`` in the run folder.
"""
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import torch

from ..synth.config import SYNTH_VERSION
from ..synth.contact_sheet import to_uint8_rgb
from ..training import (BestWeights, TrainConfig, fit, is_main_process, load_weights, path_key,
                        save_weights, source_note, train_config_dict, unwrap,
                        validation_metrics)
from .augment import augment_pairs
from .data import PairPool, held_out_pairs, optional_import_check
from .loss import ContrastiveConfig, pair_loss
from .matching import descriptors_at, find_best_matches
from .network import DEFAULT_SCALES, DIVISIBLE_BY, build_descriptor_net, compute_descriptors
from .references import ARCH


@dataclass
class DescriptorTrainSpec:
    """Everything about a run besides the generic loop settings (TrainConfig)."""

    descriptor_dim: int = 16
    base_channels: int = 16
    normalize: bool = True
    height: int = 192
    width: int = 256
    stereo_fraction: float = 0.3
    pool_size: int = 256
    renew_per_item: float = 0.5
    background_prob: float = 0.2
    val_pairs: int = 6
    val_points: int = 200
    photo_textures: float = 0.0    # weight of the 'photo' texture family (0: procedural only)
    init_from: str = ''             # start from these weights (their network config wins)
    loss: ContrastiveConfig = field(default_factory=ContrastiveConfig)


def make_loss_fn(spec: DescriptorTrainSpec):
    def loss_fn(model, batch):
        batch = augment_pairs(batch, background_prob=spec.background_prob)
        count = batch['image_a'].shape[0]
        # One forward pass over A and B together (batch norm-free net: no statistics to mix).
        descriptors = model(torch.cat([batch['image_a'], batch['image_b']]))
        total = 0.0
        logs_sum: Dict[str, float] = {}
        for i in range(count):
            loss, logs = pair_loss(descriptors[i], descriptors[count + i], batch['match_b_px'][i],
                                   batch['match_valid'][i, 0], batch['object_mask_a'][i, 0],
                                   batch['object_mask_b'][i, 0], spec.loss)
            total = total + loss
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + v / count
        return total / count, logs_sum
    return loss_fn


def pck_on_pairs(model, pairs, points_per_pair: int, thresholds=(1, 3, 5, 10),
                 seed: int = 0, scales=DEFAULT_SCALES) -> Dict[str, float]:
    """PCK of whole-image matching on prepared pairs (A pixels sampled where visible in B),
    with the descriptors the node and the evaluation compute (8-bit images, ``scales``), so the
    step kept as best is the best at what is deployed."""
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    errors: List[np.ndarray] = []
    for pair in pairs:
        valid = pair['match_valid'][0].numpy()
        rows, cols = np.nonzero(valid)
        if len(rows) == 0:
            continue
        pick = rng.choice(len(rows), size=min(points_per_pair, len(rows)), replace=False)
        pixels = np.stack([cols[pick], rows[pick]], axis=1).astype(np.float32)
        truth = pair['match_b_px'][:, rows[pick], cols[pick]].t().numpy()
        desc_a, desc_b = (compute_descriptors(model, to_uint8_rgb(pair[key]), device, scales)
                          for key in ('image_a', 'image_b'))
        reference = descriptors_at(desc_a, pixels)
        found = find_best_matches(reference, desc_b)
        errors.append(np.linalg.norm(found['match_px'] - truth, axis=1))
    err = np.concatenate(errors) if errors else np.zeros(0)
    out = {f'pck@{t}': float(np.mean(err <= t)) if len(err) else 0.0 for t in thresholds}
    out['median_error_px'] = float(np.median(err)) if len(err) else float('nan')
    out['points'] = float(len(err))
    return out


def train_descriptors(spec: DescriptorTrainSpec, cfg: TrainConfig, command: str,
                      notes: str = '') -> Dict:
    """Run (or resume) a training; write best/last weights into cfg.out_dir; return a summary."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    missing = optional_import_check()
    if missing and spec.stereo_fraction < 1.0:
        raise RuntimeError(f'the multiview generator is not importable ({missing}); '
                           'use --stereo-fraction 1 to train on stereo pairs only')
    if spec.height % DIVISIBLE_BY or spec.width % DIVISIBLE_BY:
        print(f'note: {spec.width}x{spec.height} is padded to a multiple of {DIVISIBLE_BY}')
    torch.manual_seed(cfg.seed)
    initialised_from = None
    if spec.init_from:
        model, header = load_weights(spec.init_from, build_descriptor_net, expected_arch=ARCH)
        net_config = dict(header['config'])
        initialised_from = source_note(spec.init_from, header)
        # The file's network wins over the size flags; keep the spec (metadata) truthful.
        spec.descriptor_dim = net_config['descriptor_dim']
        spec.base_channels = net_config['base_channels']
        spec.normalize = net_config['normalize']
    else:
        net_config = {'descriptor_dim': spec.descriptor_dim,
                      'base_channels': spec.base_channels, 'normalize': spec.normalize}
        model = build_descriptor_net(**net_config)
    os.makedirs(cfg.out_dir, exist_ok=True)
    started = time.time()
    if is_main_process():
        print(f'a pool of {spec.pool_size} pairs is rendered at the first step ...', flush=True)
    train_synth, val_synth = synth_configs(spec.photo_textures)
    # The pool ignores the index it is read at, so the nominal epoch only sizes the sampler's
    # permutation (fit loops over epochs): 10**7 cost ~0.5 GB and 2.6 s before the first step.
    dataset = PairPool(length=100_000, height=spec.height, width=spec.width,
                       pool_size=spec.pool_size, renew_per_item=spec.renew_per_item,
                       stereo_fraction=spec.stereo_fraction, seed=cfg.seed, config=train_synth)
    val_kind = 'stereo' if missing else 'multiview'
    val_pairs = held_out_pairs(spec.val_pairs, spec.height, spec.width, val_kind,
                               config=val_synth)
    best = BestWeights(os.path.join(cfg.out_dir, 'best.safetensors'), 'pck@3',
                       higher_is_better=True)

    def metadata(step, step_metrics):
        return {'model': 'Dense Object Nets descriptors (Florence et al. 2018), small U-Net',
                'training_data': f'corr_depth_ros synthetic pairs ({1 - spec.stereo_fraction:.2f} '
                                 f'multiview, {spec.stereo_fraction:.2f} stereo), '
                                 f'{spec.width}x{spec.height}, seeds < 1e9'
                                 + (f', photo textures at weight {spec.photo_textures}'
                                    if spec.photo_textures else ''),
                'synth_version': SYNTH_VERSION, 'synth_seed': cfg.seed, 'steps': step,
                'input': 'RGB float in [0,1], any size (padded to a multiple of 16)',
                'divisible_by': DIVISIBLE_BY,
                'loss': spec.loss.to_dict(), 'train_config': train_config_dict(cfg),
                'spec': {k: v for k, v in vars(spec).items() if k != 'loss'},
                'validation': step_metrics, 'command': command, 'notes': notes,
                'torch': torch.__version__,
                **({'initialised_from': initialised_from} if initialised_from else {})}

    def val_fn(bare_model, step):
        metrics = pck_on_pairs(bare_model, val_pairs, spec.val_points)
        best.offer(bare_model, metrics, arch=ARCH, config=net_config,
                   metadata=metadata(step, metrics))
        return metrics

    signature = {'net': net_config, 'loss': spec.loss.to_dict(),
                 'size_hw': [spec.height, spec.width], 'stereo_fraction': spec.stereo_fraction,
                 'pool_size': spec.pool_size, 'background_prob': spec.background_prob,
                 'init_from': path_key(spec.init_from)}
    # Absent at their defaults, so that older runs still resume.
    if spec.photo_textures:
        signature['photo_textures'] = spec.photo_textures
    if spec.val_pairs != DescriptorTrainSpec.val_pairs:   # best-so-far compares like with like
        signature['val_pairs'] = spec.val_pairs
    last = fit(model, dataset, make_loss_fn(spec), cfg, val_fn=val_fn, signature=signature)
    save_weights(os.path.join(cfg.out_dir, 'last.safetensors'), unwrap(model), arch=ARCH,
                 config=net_config,
                 # fit() prefixes validation numbers with val_; best's metadata has them bare.
                 metadata=metadata(last.get('step', cfg.steps),
                                   validation_metrics(last)))
    return {'last': last, 'best': best.best or {'pck@3': -1.0},
            'wall_s': time.time() - started}


def synth_configs(photo_weight: float):
    """(training, validation) SynthConfigs: the defaults, or with the 'photo' family at
    ``photo_weight``, validated on photographs training never sees. (None, None) when off."""
    if photo_weight < 0:
        raise ValueError(f'photo texture weight must be >= 0, got {photo_weight}')
    if photo_weight == 0:
        return None, None
    from ..synth.config import SynthConfig
    return (SynthConfig().with_photos(photo_weight, 'train'),
            SynthConfig().with_photos(photo_weight, 'validation'))


def command_line() -> str:
    return ' '.join(shlex.quote(a) for a in ['corr_depth'] + sys.argv[1:]) \
        if os.path.basename(sys.argv[0]) in ('corr_depth', '__main__.py') else \
        ' '.join(shlex.quote(a) for a in sys.argv)


def spec_from_args(args) -> DescriptorTrainSpec:
    loss = ContrastiveConfig(margin=args.margin, num_matches=args.num_matches,
                             global_non_matches=args.global_non_matches,
                             global_matches=args.global_matches,
                             edge_match_weight=args.edge_match_weight)
    return DescriptorTrainSpec(descriptor_dim=args.descriptor_dim,
                               base_channels=args.base_channels, normalize=not args.no_normalize,
                               height=args.height, width=args.width,
                               stereo_fraction=args.stereo_fraction, pool_size=args.pool_size,
                               background_prob=args.background_prob,
                               photo_textures=args.photo_textures, val_pairs=args.val_pairs,
                               init_from=args.init_from, loss=loss)


def copy_weights(source: str, target: str) -> None:
    import shutil
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    shutil.copyfile(source, target)
    shutil.copyfile(source + '.json', target + '.json')
