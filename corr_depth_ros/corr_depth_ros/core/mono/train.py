"""Self-supervised training of the monocular network (``corr_depth train mono``).

The loss (losses.py) sees only the left and right images of rectified pairs: no depth or
disparity label is used, on synthetic data or on the user's own pairs. Synthetic pairs are
rendered with one fixed rig (data.TRAINING_RIG) so that metric depth has a defined baseline;
held-out synthetic depth is used for validation only: to log progress and to choose which
step's weights to ship (the best median-scaled AbsRel; ``select='last'`` keeps the final step).
Validation pairs have seeds of their own (``VALIDATION_FIRST_SEED``), apart from the training
pairs (from 0) and from the pairs ``corr_depth eval mono`` reports (evaluate.HELDOUT_FIRST_SEED),
so that choosing a step on them does not flatter the reported held-out numbers.
"""
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..training import (BestWeights, TrainConfig, fit, is_main_process, main_process_first,
                        path_key, resume_state, save_weights, train_config_dict)
from .data import (TRAINING_RIG, PairArrayDataset, build_synthetic_cache, load_cache, pair_item,
                   training_synth_config)
from .inference import metric_depth, predict_disparity
from .losses import LossWeights, monodepth_loss
from .metrics import depth_metrics, mean_metrics
from .network import ARCH, build_mono_net

VALIDATION_FIRST_SEED = 20_000_000


@dataclass
class MonoTrainSpec:
    """Everything that defines a training run besides the loop settings (TrainConfig)."""

    data: str = 'synthetic'                 # 'synthetic' or 'folder:PATH'
    height: int = 128
    width: int = 192
    base_channels: int = 16
    max_disparity_fraction: float = 0.35
    use_lr: bool = True
    train_count: int = 2400                 # synthetic pairs rendered for training
    cache_dir: str = ''                     # '' -> runs/mono/cache_train_<H>x<W>_<count>
    val_cache_dir: str = ''                 # validation cache with depth ('' = no validation)
    val_images: int = 50
    select: str = 'best'                    # ship the 'best' validated step or the 'last' one
    depth_hints: bool = False               # SGBM Depth Hints (losses.hint_loss), weight 1
    weights_out: str = ''
    command: str = ''
    # The rig the pairs come from, for metric depth: synthetic data uses data.TRAINING_RIG;
    # a user's folder or bag gives its baseline here (0: unknown, none stored).
    rig_baseline_m: float = 0.0
    data_source: Optional[Dict[str, Any]] = None     # e.g. the bag the pairs were extracted from
    loss: Dict[str, Any] = field(default_factory=dict)
    half: bool = True                       # ship float16 tensors (export_half_precision)


class _FolderPairs(torch.utils.data.Dataset):
    """The user's rectified pairs (``RectifiedPairFolder``), resized and augmented."""

    def __init__(self, root: str, height: int, width: int, hints: bool = False):
        from ..synth import RectifiedPairFolder
        self.folder = RectifiedPairFolder(root)
        self.size = (height, width)
        self.hints = hints

    def __len__(self):
        return len(self.folder)

    def _image(self, value) -> torch.Tensor:
        image = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
        if image.ndim == 3 and image.shape[-1] == 3 and image.shape[0] != 3:
            image = image.permute(2, 0, 1)      # (H,W,3) -> (3,H,W)
        image = image.float()
        if image.max() > 1.5:
            image = image / 255.0
        return F.interpolate(image[None], size=self.size, mode='bilinear', align_corners=False,
                             antialias=True)[0].clamp(0, 1)

    def __getitem__(self, index):
        item = self.folder[index]
        return pair_item(self._image(item['left']), self._image(item['right']), True, self.hints)


def data_key(spec: MonoTrainSpec) -> str:
    """``spec.data`` as the run signature stores it (a folder by its resolved path)."""
    if spec.data == 'synthetic':
        return spec.data
    if spec.data.startswith('folder:'):
        return f'folder:{path_key(spec.data.split(":", 1)[1])}'
    raise ValueError(f'--data must be "synthetic", "folder:PATH" or "bag:PATH", '
                     f'got {spec.data!r}')


def loss_weights(spec: MonoTrainSpec) -> LossWeights:
    return LossWeights(use_lr=spec.use_lr,
                       **{'hints': 1.0 if spec.depth_hints else 0.0, **spec.loss})


def net_config(spec: MonoTrainSpec) -> Dict[str, Any]:
    """The network's options (build_mono_net's arguments, the weights' config)."""
    return {'base_channels': spec.base_channels,
            'max_disparity_fraction': spec.max_disparity_fraction}


def run_signature(spec: MonoTrainSpec) -> Dict[str, Any]:
    """What defines a mono run apart from its length (core.training.fit's signature): a
    resume with another is refused. `train mono --data bag:` checks it before extracting."""
    signature = {'loss': asdict(loss_weights(spec)), 'data': data_key(spec),
                 'size_hw': [spec.height, spec.width], 'net': net_config(spec),
                 'train_count': spec.train_count if spec.data == 'synthetic' else None}
    if spec.val_images != MonoTrainSpec.val_images:   # best-so-far compares like with like
        signature['val_images'] = spec.val_images
    return signature


def make_dataset(spec: MonoTrainSpec, device: str = 'auto'):
    data_key(spec)      # refuses what is neither synthetic nor a folder
    if spec.data == 'synthetic':
        cache = spec.cache_dir or os.path.join(
            'runs', 'mono', f'cache_train_{spec.height}x{spec.width}_{spec.train_count}')
        with main_process_first(device):    # one torchrun rank renders, the others wait
            build_synthetic_cache(cache, spec.train_count, spec.height, spec.width, first_seed=0)
        arrays = load_cache(cache)
        return (PairArrayDataset(arrays['left'], arrays['right'], augment=True,
                                 hints=spec.depth_hints), arrays['meta'])
    root = spec.data.split(':', 1)[1]
    return (_FolderPairs(root, spec.height, spec.width, spec.depth_hints),
            {'folder': os.path.abspath(root)})


def make_loss_fn(weights: LossWeights):
    def loss_fn(model, batch):
        disparities = model(batch['left'])
        hints = ((batch['hint_left_px'], batch['hint_right_px']) if weights.hints > 0 else None)
        return monodepth_loss(disparities, batch['left'], batch['right'], weights, hints)
    return loss_fn


def evaluate_on_cache(model, cache_dir: str, count: int, input_size, post_process: bool = False,
                      device='cpu') -> Dict[str, Any]:
    """Depth metrics on a held-out synthetic cache (rendered with the training rig)."""
    arrays = load_cache(cache_dir)
    per_image = []
    for index in range(min(count, len(arrays['left']))):
        image = torch.from_numpy(np.array(arrays['left'][index])).permute(2, 0, 1)[None].float() / 255
        disparity = predict_disparity(model, image.to(device), input_size, post_process)[0, 0]
        width = image.shape[-1]
        depth_m, _ = metric_depth(disparity.cpu().numpy(), float(arrays['fx_px'][index]), width,
                                  TRAINING_RIG['baseline_m'])
        per_image.append(depth_metrics(depth_m, np.array(arrays['depth_left_m'][index])))
    return mean_metrics(per_image)


def training_rig(spec: MonoTrainSpec) -> Optional[Dict[str, Any]]:
    """The rig whose baseline turns predicted disparity into metres (weights metadata):
    synthetic data's fixed rig, or the user's (``rig_baseline_m``), or None when unknown (the
    node then needs its baseline_m parameter or relative depth)."""
    if spec.data == 'synthetic':
        return dict(TRAINING_RIG)
    if spec.rig_baseline_m > 0:
        # A recording's camera_info gives the baseline unless --baseline-m overrode it.
        recorded = (spec.data_source or {}).get('baseline_m')
        from_recording = recorded is not None and float(recorded) == float(spec.rig_baseline_m)
        return {'baseline_m': float(spec.rig_baseline_m),
                'source': 'camera_info of the recording' if from_recording else '--baseline-m'}
    return None


def train_mono(spec: MonoTrainSpec, cfg: TrainConfig) -> Dict[str, Any]:
    """Train, then write ``spec.weights_out`` (safetensors + JSON sidecar). Returns the header."""
    weights = loss_weights(spec)
    if spec.select not in ('best', 'last'):
        raise ValueError(f"select must be 'best' or 'last', got {spec.select!r}")
    config = net_config(spec)
    signature = run_signature(spec)
    # A run fit() would refuse is refused before the caches are rendered (minutes at the
    # default sizes); fit checks again.
    resume_state(cfg, signature)
    dataset, data_meta = make_dataset(spec, cfg.device)
    torch.manual_seed(cfg.seed)   # before the network's random initialisation (fit seeds later)
    model = build_mono_net(**config)
    metadata = {
        'model': 'Godard et al. 2017 self-supervised monocular depth (left-right consistency)',
        'output': 'left/right disparity as a fraction of the image width',
        'depth': 'metric via training_rig.baseline_m and the camera fx, or relative',
        'training_rig': training_rig(spec),
        'input_size_hw': [spec.height, spec.width],
        'divisibility': 32,
        'loss': asdict(weights),
        'data': spec.data,
        'data_meta': {k: v for k, v in data_meta.items() if k != 'synth_config'},
        'data_source': spec.data_source,
        'synth_config': data_meta.get('synth_config'),
        'labels_used': ('none (self-supervised: image reconstruction, plus Depth Hints: SGBM '
                        'disparities of the same training pairs)' if spec.depth_hints else
                        'none (self-supervised: image reconstruction only)'),
        'train_config': train_config_dict(cfg),
        'command': spec.command,
    }
    val_fn = best = None
    if spec.val_cache_dir:
        best = BestWeights(os.path.join(cfg.out_dir, 'best.safetensors'), 'abs_rel_median')
        # Rendered on first use; an existing cache with other seeds is refused (data.py).
        with main_process_first(cfg.device):
            build_synthetic_cache(spec.val_cache_dir, spec.val_images, spec.height, spec.width,
                                  first_seed=VALIDATION_FIRST_SEED,
                                  config=training_synth_config(), with_depth=True,
                                  progress=False)

        def val_fn(bare_model, step):
            result = evaluate_on_cache(bare_model, spec.val_cache_dir, spec.val_images,
                                       (spec.height, spec.width),
                                       device=next(bare_model.parameters()).device)
            val = {'abs_rel_median': result['median']['abs_rel'],
                   'delta1_median': result['median']['delta1'],
                   'abs_rel_raw': result['raw']['abs_rel']}
            best.offer(bare_model, {**val, 'step': step}, arch=ARCH, config=config,
                       metadata=metadata)
            return val
    final = fit(model, dataset, make_loss_fn(weights), cfg, val_fn=val_fn, signature=signature)
    model.eval()
    metadata['final'] = final
    selected = best.load_into(model) if best is not None and spec.select == 'best' else None
    seeds = f'{VALIDATION_FIRST_SEED}..{VALIDATION_FIRST_SEED + spec.val_images - 1}'
    metadata['selected'] = (
        {'rule': f'lowest validation AbsRel (median-scaled) of the run, step {selected["step"]}',
         'validation': selected, 'validation_seeds': seeds}
        if selected else {'rule': 'last step'})
    out = spec.weights_out or os.path.join(cfg.out_dir, 'mono.safetensors')
    header = save_weights(out, model, arch=ARCH, config=config, metadata=metadata)
    if not is_main_process():
        return header
    if spec.half:
        header = export_half_precision(out)
    print(json.dumps({'weights': out, 'final': final}, indent=2))
    return header


def export_half_precision(path: str) -> Dict[str, Any]:
    """Rewrite a save_weights file with float16 tensors (half the size; ~3.4 MB -> 1.7 MB at
    base_channels 16, under the repository's few-MB limit), keeping its header.

    ``load_weights`` still works unchanged: ``load_state_dict`` casts into the float32
    parameters. The header's ``identity`` is recomputed on the float16-rounded values, and
    ``metadata.stored_dtype`` says 'float16'. Rounding the weights changes the disparity by
    well under 0.1 % (checked by the eval JSON being produced from the shipped file).
    """
    from safetensors.torch import load_file, save_file

    from ..training import read_weights_header, weights_identity
    header = read_weights_header(path)
    state = load_file(path)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    model = build_mono_net(**header['config'])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()},
                          strict=True)
    header['metadata']['stored_dtype'] = 'float16'
    header['identity'] = weights_identity(model, header['arch'], header['config'])
    save_file(half, path, metadata={k: json.dumps(v) for k, v in header.items()})
    with open(path + '.json', 'w', encoding='utf-8') as f:
        json.dump(header, f, indent=2, sort_keys=True)
        f.write('\n')
    return header
