"""Training utilities shared by every model: device choice, weights files, and one loop.

* Weights ship as safetensors; the architecture name, the factory's keyword arguments and the
  training metadata travel in the file's header (house style 5: checkpoints carry their own
  config), and load with ``strict=True``. A JSON sidecar repeats the header for people and git.
* :func:`fit` is the one training loop: AdamW with warm-up + cosine decay, AMP on CUDA,
  gradient clipping, ``torchrun`` DistributedDataParallel when WORLD_SIZE > 1, a tqdm bar and a
  JSON-lines log on rank 0, and a resumable checkpoint (``checkpoint.pt``, loaded with
  ``weights_only=True`` so resuming never unpickles arbitrary objects).
"""
import contextlib
import datetime
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


# --- devices and distributed -------------------------------------------------------------------
def resolve_device(name: str = 'auto') -> torch.device:
    """'auto' -> CUDA when available else CPU; 'cuda' without CUDA raises a clear error."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError('device "cuda" requested but torch.cuda.is_available() is False '
                         f'(torch {torch.__version__}); use device "cpu" or "auto"')
    return device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str = 'auto') -> Tuple[DistInfo, torch.device]:
    """Initialise torch.distributed from torchrun's environment (no-op for a single process)."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = resolve_device(device_name)
    if world_size > 1:
        import torch.distributed as dist
        if device.type == 'cuda':
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            # Ranks wait at a barrier while rank 0 renders a cache (main_process_first): a
            # large one takes longer than NCCL's 10 minute default.
            dist.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo',
                                    timeout=datetime.timedelta(hours=2))
    return DistInfo(rank, world_size, local_rank), device


@contextlib.contextmanager
def main_process_first(device_name: str = 'auto'):
    """Under torchrun, rank 0 runs the block first and the other ranks wait for it, then run it
    themselves: for data every rank reads but only one should write (a rendered cache, pairs
    extracted from a bag), which the others then find done. A single process just runs it.
    (If rank 0 fails inside, torchrun stops the other ranks.)"""
    info, _ = init_distributed(device_name)
    if info.world_size > 1 and not info.is_main:
        import torch.distributed as dist
        dist.barrier()
    yield
    if info.world_size > 1 and info.is_main:
        import torch.distributed as dist
        dist.barrier()


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a torchrun job (only rank 0 writes files)."""
    return int(os.environ.get('RANK', '0')) == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, 'module') else model


# --- weights files -------------------------------------------------------------------------------
def weights_identity(model: nn.Module, arch: str, config: Dict[str, Any]) -> str:
    """A short hash of architecture, config and parameter values: who computed a descriptor."""
    digest = hashlib.sha256(json.dumps({'arch': arch, 'config': config}, sort_keys=True).encode())
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_weights(path: str, model: nn.Module, *, arch: str, config: Dict[str, Any],
                 metadata: Dict[str, Any]) -> Dict[str, Any]:
    """Write ``path`` (safetensors, float32 tensors) and ``path + '.json'``; return the header.
    In a torchrun job only rank 0 writes (the others return the header only)."""
    from safetensors.torch import save_file
    header = {'arch': arch, 'config': config, 'metadata': metadata,
              'identity': weights_identity(model, arch, config)}
    if not is_main_process():
        return header
    state = {k: v.detach().cpu().float().contiguous() if v.is_floating_point() else
             v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Written beside and renamed (atomic): a run killed mid-write keeps the previous file, and
    # a resumed run can read it (BestWeights) instead of failing on a truncated one.
    save_file(state, path + '.tmp', metadata={k: json.dumps(v) for k, v in header.items()})
    os.replace(path + '.tmp', path)
    with open(path + '.json.tmp', 'w', encoding='utf-8') as f:
        json.dump(header, f, indent=2, sort_keys=True)
        f.write('\n')
    os.replace(path + '.json.tmp', path + '.json')
    return header


def read_weights_header(path: str) -> Dict[str, Any]:
    """The arch/config/metadata/identity stored in a safetensors file written by save_weights."""
    from safetensors import SafetensorError, safe_open
    if os.path.isdir(path):
        raise ValueError(f'{path} is a folder, not a weights file: name the .safetensors file '
                         'in it')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'weights file not found: {path}')
    try:
        with safe_open(path, framework='pt') as f:
            raw = f.metadata() or {}
    except SafetensorError as exc:
        raise ValueError(f'{path} is not a safetensors weights file ({exc})') from exc
    missing = {'arch', 'config'} - set(raw)
    if missing:
        raise ValueError(f'{path} has no {sorted(missing)} in its header: not a corr_depth_ros '
                         'weights file (written by save_weights)')
    header = {}
    for key, text in raw.items():
        try:
            header[key] = json.loads(text)
        except ValueError as exc:
            raise ValueError(f'{path}: the {key!r} entry of its header is not JSON ({exc}): the '
                             'file is damaged or was not written by save_weights') from exc
    if not isinstance(header['config'], dict):
        raise ValueError(f'{path}: its header config is {header["config"]!r}, not a mapping of '
                         'network options: the file is damaged or was not written by '
                         'save_weights')
    return header


class BestWeights:
    """``path`` (save_weights format) holds the weights of the best validation so far.

    ``offer`` writes them when ``metrics[key]`` beats the best one (lower is better unless
    ``higher_is_better``); the numbers live in the file's ``metadata['validation']``, so a
    resumed run compares against the best of the whole run, not of its second half.
    """

    def __init__(self, path: str, key: str, higher_is_better: bool = False):
        self.path, self.key, self.higher_is_better = path, key, higher_is_better
        self.best: Optional[Dict[str, Any]] = None
        if os.path.isfile(path):
            self.best = read_weights_header(path)['metadata'].get('validation')

    def _beats(self, value: float) -> bool:
        if self.best is None or self.key not in self.best:
            return math.isfinite(value)
        old = float(self.best[self.key])
        return value > old if self.higher_is_better else value < old

    def offer(self, model: nn.Module, metrics: Dict[str, Any], *, arch: str,
              config: Dict[str, Any], metadata: Dict[str, Any]) -> bool:
        """Keep ``model`` if ``metrics`` is the best so far; True when it was written."""
        if not self._beats(float(metrics[self.key])):
            return False
        self.best = dict(metrics)
        save_weights(self.path, model, arch=arch, config=config,
                     metadata={**metadata, 'validation': self.best})
        return True

    def load_into(self, model: nn.Module) -> Optional[Dict[str, Any]]:
        """Put the kept weights into ``model``; their validation numbers, or None if none kept."""
        if self.best is None or not os.path.isfile(self.path):
            return None
        from safetensors.torch import load_file
        unwrap(model).load_state_dict(load_file(self.path), strict=True)
        return self.best


def load_weights(path: str, factory: Callable[..., nn.Module], *, expected_arch: str,
                 map_location: str = 'cpu') -> Tuple[nn.Module, Dict[str, Any]]:
    """Build ``factory(**config)`` from the file's header and load its tensors strictly."""
    from safetensors.torch import load_file
    header = read_weights_header(path)
    if header['arch'] != expected_arch:
        raise ValueError(f'{path} holds a {header["arch"]!r} model, expected {expected_arch!r}')
    try:
        model = factory(**header['config'])
    except (TypeError, ValueError) as exc:
        # An option this version does not know (newer weights), or a value it refuses.
        raise ValueError(f'{path}: this version cannot build the {expected_arch!r} network its '
                         f'header describes ({exc}); its config: {header["config"]}') from exc
    state = load_file(path, device=map_location)
    mismatch = _tensor_mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(f'{path} does not hold the tensors of the network its header describes '
                         f'({mismatch}): the file is damaged or was written by other code')
    model.load_state_dict(state, strict=True)
    return model, header


def _tensor_mismatch(expected: Dict[str, torch.Tensor], found: Dict[str, torch.Tensor]) -> str:
    """'' when ``found`` has exactly ``expected``'s tensor names and shapes, else what differs
    (a few names of each kind: a state dict has hundreds)."""
    def some(names):
        names = sorted(names)
        return ', '.join(names[:3]) + (f' and {len(names) - 3} more' if len(names) > 3 else '')
    missing = set(expected) - set(found)
    extra = set(found) - set(expected)
    reshaped = sorted(k for k in set(expected) & set(found)
                      if tuple(expected[k].shape) != tuple(found[k].shape))
    parts = ([f'missing {some(missing)}'] if missing else []) + \
        ([f'unexpected {some(extra)}'] if extra else []) + \
        [f'{k} is {tuple(found[k].shape)}, the network has {tuple(expected[k].shape)}'
         for k in reshaped[:3]]
    return '; '.join(parts)


def source_note(path: str, header: Dict[str, Any]) -> Dict[str, Any]:
    """What new weights' metadata says about the file they started from (``--init-from``)."""
    meta = header.get('metadata', {})
    return {'file': os.path.basename(path), 'identity': header.get('identity'),
            'steps': meta.get('steps'), 'validation': meta.get('validation'),
            'command': meta.get('command')}


# --- the training loop ---------------------------------------------------------------------------
@dataclass
class TrainConfig:
    out_dir: str = 'runs/model'
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0
    log_every: int = 20
    val_every: int = 200
    checkpoint_every: int = 100
    num_workers: int = 0
    seed: int = 0
    device: str = 'auto'
    amp: bool = True
    threads: int = 0
    resume: bool = True
    # Shuffle the training items each epoch. False reads them in order: for on-the-fly data,
    # where every item is a fresh random render and the set grows with --steps, so that a
    # resumed run with more steps reads on into new items (a new shuffle of the longer set
    # re-read most of those already trained on and skipped most of the new ones).
    shuffle: bool = True
    # A batch whose loss is not finite is skipped (no optimiser step) and logged; this many in
    # a row means the weights themselves went bad, and training stops with an error.
    max_bad_batches: int = 10


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.05 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _to_device(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _log(path: str, record: Dict[str, Any]) -> None:
    with open(path, 'a', encoding='utf-8') as f:
        f.write(json.dumps(record) + '\n')


def path_key(path: str) -> Optional[str]:
    """A path option as run signatures store it: absolute and resolved (``pool``,
    ``./pool/`` and ``$PWD/pool`` are one folder), None when not given."""
    return os.path.realpath(path) if path else None


def _signature_text(signature: Optional[Dict[str, Any]]) -> str:
    return json.dumps(signature, sort_keys=True, default=str) if signature is not None else ''


def check_signature(ckpt_path: str, stored: Optional[str], signature: Optional[Dict[str, Any]],
                    added_later: Optional[Dict[str, Any]] = None) -> None:
    """Refuse to resume a checkpoint made with another run signature (see :func:`fit`).
    Checkpoints without one (older, or a caller that gives none) are accepted.

    ``added_later``: signature fields that a trainer added after checkpoints had been written,
    by dotted path (``'augment.scale_prob'``), each with the value the older code implicitly
    had (the option off). A stored signature without such a field is read as having that
    value, so an older checkpoint resumes when the run leaves the new option as the old code
    had it, and is refused when the run sets it otherwise.
    """
    if not stored or signature is None:
        return
    before = json.loads(stored)
    for path, old_value in (added_later or {}).items():
        *parents, name = path.split('.')
        node = before
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        # No parent (e.g. augment None, a run without augmentation): nothing was left out.
        if isinstance(node, dict) and name not in node:
            node[name] = json.loads(_signature_text(old_value))   # as stored: tuples as lists
    now = json.loads(_signature_text(signature))
    if before != now:
        differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        detail = '; '.join(f'{k}: {before.get(k)!r} there, {now.get(k)!r} now' for k in differ)
        raise ValueError(f'{ckpt_path} is of another run ({detail}): give another output '
                         'folder, or the options that run had')


def validation_metrics(result: Dict[str, Any]) -> Dict[str, Any]:
    """fit()'s result -> its last validation numbers, without the ``val_`` prefix."""
    return {k[4:]: v for k, v in result.items() if k.startswith('val_')}


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The mixed-precision type for training on a CUDA ``device``: bfloat16 (no loss scaling
    needed) where the GPU runs it natively, Ampere (compute capability 8) and newer; float16
    with a GradScaler before that. ``torch.cuda.is_bf16_supported()`` is no guide: it also says
    yes on a T4 or V100, where bfloat16 is emulated and slow."""
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def mixed_precision(enabled: bool, device: torch.device) -> Tuple[bool, torch.dtype, bool]:
    """fit()'s choice: (autocast on, its dtype, GradScaler on). Mixed precision only on CUDA;
    float16 needs the loss scaler, bfloat16 does not."""
    use_amp = bool(enabled) and device.type == 'cuda'
    dtype = autocast_dtype(device) if use_amp else torch.float16
    return use_amp, dtype, use_amp and dtype == torch.float16


def _apply_optimizer_options(optimizer, scheduler, cfg: 'TrainConfig', say: bool) -> None:
    """After a resume: the learning rate and weight decay given now win over the checkpoint's
    (AdamW's state restores the old ones and LambdaLR its old base rates, while the weights'
    metadata records the options of this run). The rate of the next step follows the schedule
    of this run (``cfg.steps`` may have changed) instead of keeping the checkpoint's last one."""
    before = optimizer.param_groups[0]
    old = (before.get('initial_lr', before['lr']), before['weight_decay'])
    for group in optimizer.param_groups:
        group['initial_lr'] = cfg.lr
        group['weight_decay'] = cfg.weight_decay
        group['lr'] = cfg.lr * lr_factor(scheduler.last_epoch, cfg.warmup_steps, cfg.steps)
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    if say and old != (cfg.lr, cfg.weight_decay):
        print(f'resuming with lr {cfg.lr:g} and weight decay {cfg.weight_decay:g} (the checkpoint '
              f'had {old[0]:g} and {old[1]:g})')


class EpochSampler(torch.utils.data.Sampler):
    """Training indices, epoch after epoch: each epoch a permutation that depends only on
    (seed, epoch), split across ranks as DistributedSampler splits it (rank r takes every
    world_size-th index; the tail that does not divide evenly is left out, where
    DistributedSampler would pad it with repeats). It starts at
    ``start_epoch`` with the first ``skip`` indices of this rank's share left out, so that a
    resumed run reads on where the checkpoint's run stood instead of drawing a new shuffle
    (exactly so when the dataset length is the same). With ``shuffle`` False every epoch reads
    the items in order (rank r at its position p takes item p * world_size + r), so a dataset
    that grows (train stereo's on-the-fly set, sized by --steps) is read on into its new
    items."""

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_epoch: int = 0, skip: int = 0, shuffle: bool = True):
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.per_rank = length // world_size
        self.epoch, self.skip, self.shuffle = start_epoch, skip, shuffle

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self):
        from .seeding import mixed_generator
        if self.shuffle:
            generator = mixed_generator(self.seed, self.epoch)      # any int seed
            order = torch.randperm(self.length, generator=generator)
        else:
            order = torch.arange(self.length)
        order = order[:self.per_rank * self.world_size]
        mine = order[self.rank::self.world_size].tolist()
        skip, self.skip = self.skip, 0
        self.epoch += 1
        return iter(mine[skip:])


def _batch_norm_state(model: nn.Module):
    """Copies of every batch norm's running statistics (small), to put back after a skipped
    batch: its forward pass in train mode has already folded that batch into them."""
    return [(m, [t.detach().clone() for t in (m.running_mean, m.running_var,
                                              m.num_batches_tracked)])
            for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


def _restore_batch_norm(state) -> None:
    with torch.no_grad():
        for module, saved in state:
            for tensor, value in zip((module.running_mean, module.running_var,
                                      module.num_batches_tracked), saved):
                tensor.copy_(value)


# Weights files the trainers write into out_dir (BestWeights' best.safetensors, the final
# last.safetensors): a run that does not resume must not take them for its own.
RUN_WEIGHTS = ('best.safetensors', 'last.safetensors')


def _run_signature(signature: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size > 1 and signature is not None:
        # Each rank reads its own part of the data (and the batch is per rank): a resume with
        # another number of processes is another run. Absent for one process, as before.
        return {**signature, 'world_size': world_size}
    return signature


def resume_state(cfg: TrainConfig, signature: Optional[Dict[str, Any]] = None,
                 signature_added_later: Optional[Dict[str, Any]] = None,
                 map_location: Any = 'cpu') -> Optional[Dict[str, Any]]:
    """The checkpoint :func:`fit` would resume in ``cfg.out_dir`` (None: a fresh run), after
    every check that refuses the run: fit calls it, and a trainer whose data takes long to
    build calls it first, so that a refused run costs nothing.

    Refused: a fresh run in a folder that holds a previous run's weights (:data:`RUN_WEIGHTS`;
    without ``cfg.resume`` its checkpoint.pt or log.jsonl too), a checkpoint that does not
    load, one of another signature (:func:`check_signature`), seed or batch size (its data
    stream), or one beyond ``cfg.steps``.
    """
    ckpt_path = os.path.join(cfg.out_dir, 'checkpoint.pt')
    weights = [name for name in RUN_WEIGHTS if os.path.isfile(os.path.join(cfg.out_dir, name))]
    if not cfg.resume:
        found = [name for name in ('checkpoint.pt', 'log.jsonl', *RUN_WEIGHTS)
                 if os.path.isfile(os.path.join(cfg.out_dir, name))]
        if found:
            resumable = ('resume it, or ' if 'checkpoint.pt' in found else '')
            raise FileExistsError(f'{cfg.out_dir} holds a previous run ({", ".join(found)}): '
                                  f'{resumable}give another output folder; a fresh run there '
                                  'would mix its log and best weights with the old ones')
    if not os.path.isfile(ckpt_path):
        if weights:
            # BestWeights would compare against (and a trainer ship) weights of another run.
            raise FileExistsError(f'{cfg.out_dir} holds weights of a previous run '
                                  f'({", ".join(weights)}) but no checkpoint.pt to resume: give '
                                  'another output folder, or delete them to start afresh there')
        return None
    try:
        state = torch.load(ckpt_path, map_location=map_location, weights_only=True)
        if not isinstance(state, dict) or 'model' not in state or 'step' not in state:
            raise ValueError('no model and step in it')
    except PermissionError:
        raise                    # names the file; nothing wrong with the checkpoint itself
    except Exception as exc:     # truncated, overwritten: torch says it in many ways
        raise ValueError(f'{ckpt_path} cannot be read ({type(exc).__name__}: {exc}); delete it '
                         'to start the run over, or give another output folder') from exc
    check_signature(ckpt_path, state.get('signature'), _run_signature(signature),
                    signature_added_later)
    # The data stream is (seed, batch size): the sampler's order and position, the pairs
    # rendered and the augmentation. Older checkpoints without them are accepted.
    changed = [f'--{name.replace("_", "-")} {state[name]} there, {getattr(cfg, name)} now'
               for name in ('seed', 'batch_size')
               if name in state and int(state[name]) != int(getattr(cfg, name))]
    if changed:
        raise ValueError(f'{ckpt_path} is of a run with another data stream '
                         f'({"; ".join(changed)}): resume it with its values, or give another '
                         'output folder')
    if int(state['step']) > cfg.steps:
        raise ValueError(f'{ckpt_path} is at step {int(state["step"])}, beyond --steps '
                         f'{cfg.steps}: give --steps {int(state["step"])} or more to resume it, '
                         'or another output folder')
    return state


# The loader's generator: a stream of the seed apart from EpochSampler's (one per epoch).
LOADER_STREAM = 2 ** 40


def random_state(dataset, device: torch.device) -> Dict[str, Any]:
    """What a checkpoint keeps of the random state of one process: torch's global generator
    (augmentation in the loader with num_workers 0, the loss's sampling), the device's, and a
    dataset's own stream (``stream_state()``: the descriptor pair pool). Data-loader workers
    have their own generators, which are not kept: with num_workers > 0 a resumed run is
    reproducible but not identical to an uninterrupted one."""
    out: Dict[str, Any] = {'torch': torch.get_rng_state()}
    if device.type == 'cuda':
        out['cuda'] = torch.cuda.get_rng_state(device)
    stream_state = getattr(dataset, 'stream_state', None)
    if callable(stream_state):
        out['dataset'] = stream_state()
    return out


def _restore_random(saved: Dict[str, Any], dataset, device: torch.device) -> None:
    torch.set_rng_state(saved['torch'].cpu())
    if device.type == 'cuda' and 'cuda' in saved:
        torch.cuda.set_rng_state(saved['cuda'].cpu(), device)
    restore = getattr(dataset, 'restore_stream', None)
    if callable(restore) and 'dataset' in saved:
        restore(saved['dataset'])


def fit(model: nn.Module, train_dataset, loss_fn: Callable, cfg: TrainConfig, *,
        val_fn: Optional[Callable[[nn.Module, int], Dict[str, float]]] = None,
        signature: Optional[Dict[str, Any]] = None,
        signature_added_later: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    """Train ``model`` for ``cfg.steps`` optimiser steps (resuming from out_dir if possible).

    ``loss_fn(model, batch) -> (loss, logs)``; ``val_fn(bare_model, step) -> {name: value}``,
    ``step`` the optimiser steps done (what the trainers store with their best weights).
    Returns the last training logs merged with the last validation numbers.

    Without ``cfg.resume``, an out_dir that holds a previous run (checkpoint, log or weights)
    is refused rather than mixed with it, and so is one with weights but no checkpoint
    (:func:`resume_state` lists every refusal). A resumed run continues the data stream
    instead of replaying its first batches: the sampler (:class:`EpochSampler`) starts at the
    epoch and position the steps done reached, a dataset with
    ``start_stream(rank, items_read, world_size)`` (the descriptor pair pool) is told where
    this rank's stream stood, and one process puts back the random state the checkpoint keeps
    (:func:`random_state`), so that it ends as the uninterrupted run would have (under torchrun,
    and from older checkpoints, the random state is reseeded from the step reached instead).
    Every rank calls start_stream too, so that ranks of a torchrun job draw different data. A
    batch whose loss is not finite is skipped with the weights and the batch norm statistics as
    they were; weights that are no longer finite are never written to a checkpoint.
    Validation runs before the checkpoint of the same step, and the checkpoint keeps the last
    validation numbers, so a run killed during validation validates that step again and a
    finished run resumed once more returns its numbers.

    ``signature``: what defines the run apart from its length (network, loss, data; JSON
    types). It is stored in the checkpoint, and a resume with another one is refused: e.g. a
    --no-lr ablation must not continue the LR run's checkpoint. ``cfg.steps`` may change.
    ``signature_added_later``: fields added to the signature since older checkpoints, with the
    values those runs implicitly had (check_signature's ``added_later``).
    """
    from torch.utils.data import DataLoader
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    dist_info, device = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed + dist_info.rank)
    os.makedirs(cfg.out_dir, exist_ok=True)
    log_path = os.path.join(cfg.out_dir, 'log.jsonl')
    ckpt_path = os.path.join(cfg.out_dir, 'checkpoint.pt')
    state = resume_state(cfg, signature, signature_added_later, map_location=device)
    signature = _run_signature(signature)

    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, cfg.steps))
    use_amp, amp_dtype, scaled = mixed_precision(cfg.amp, device)
    scaler = torch.amp.GradScaler('cuda', enabled=scaled)

    step = batches_drawn = 0
    resumed_validation: Dict[str, float] = {}
    if state is not None:
        model.load_state_dict(state['model'], strict=True)
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        _apply_optimizer_options(optimizer, scheduler, cfg, dist_info.is_main)
        if state.get('scaler') and scaler.is_enabled():
            scaler.load_state_dict(state['scaler'])   # {} from a disabled one: nothing to load
        step = int(state['step'])
        # Batches taken from the data, skipped non-finite ones included (older checkpoints:
        # as many as steps).
        batches_drawn = int(state.get('batches_drawn', step))
        resumed_validation = dict(state.get('validation') or {})
        if dist_info.is_main:
            print(f'resumed from {ckpt_path} at step {step}')
            _log(log_path, {'event': 'resumed', 'step': step})
    if dist_info.world_size > 1:
        import torch.distributed as dist
        steps = torch.tensor([step, -step], dtype=torch.int64,
                             device=device if device.type == 'cuda' else 'cpu')
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        if int(steps[0]) != -int(steps[1]):
            raise RuntimeError(f'ranks resumed at different steps ({-int(steps[1])} to '
                               f'{int(steps[0])}): out_dir must be one folder every node shares')
    # One process keeps its random state in the checkpoint (random_state()): a resumed run
    # draws what the uninterrupted one would have. Under torchrun only rank 0's is saved, and
    # older checkpoints have none: then not the stream's start again, but a step-dependent seed
    # gives new random augmentation (the data order itself goes on where it stood:
    # EpochSampler below).
    saved_random = (state or {}).get('random') if dist_info.world_size == 1 else None
    if step > 0 and saved_random is None:
        torch.manual_seed(cfg.seed + dist_info.rank + 1_000_003 * step)
    start_stream = getattr(train_dataset, 'start_stream', None)
    if callable(start_stream):
        start_stream(rank=dist_info.rank, items_read=batches_drawn * cfg.batch_size,
                     world_size=dist_info.world_size)

    train_model = model
    if dist_info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None)
    per_rank = len(train_dataset) // dist_info.world_size
    batches_per_epoch = per_rank // cfg.batch_size       # drop_last
    if batches_per_epoch == 0:
        # drop_last with fewer items than a batch yields nothing: batches() would spin forever.
        raise ValueError(f'{per_rank} training items' +
                         (f' per process ({dist_info.world_size} processes)'
                          if dist_info.world_size > 1 else '') +
                         f' are fewer than one batch of {cfg.batch_size}: add data or lower '
                         '--batch-size')
    sampler = EpochSampler(len(train_dataset), cfg.seed, dist_info.rank, dist_info.world_size,
                           start_epoch=batches_drawn // batches_per_epoch,
                           skip=(batches_drawn % batches_per_epoch) * cfg.batch_size,
                           shuffle=cfg.shuffle)
    # A generator of its own for the loader: it draws a seed from it on every pass (for its
    # workers), and taken from the global one that draw would fall at another place of the
    # stream in a run resumed mid-pass than in the uninterrupted one.
    # Its seed follows the position: the workers' seeds come from it, and a resumed run with
    # workers must not replay the augmentation of the run's start.
    from .seeding import mixed_generator
    loader = DataLoader(train_dataset, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=cfg.num_workers, drop_last=True,
                        pin_memory=device.type == 'cuda', persistent_workers=cfg.num_workers > 0,
                        generator=mixed_generator(cfg.seed + dist_info.rank,
                                                  LOADER_STREAM + batches_drawn))
    if saved_random is not None:
        _restore_random(saved_random, train_dataset, device)

    def batches():
        while True:
            yield from loader      # each pass is the sampler's next epoch

    progress = None
    if dist_info.is_main:
        from tqdm import tqdm
        progress = tqdm(total=cfg.steps, initial=step, desc=os.path.basename(cfg.out_dir.rstrip('/')),
                        dynamic_ncols=True)
    last: Dict[str, float] = {}
    val_last: Dict[str, float] = resumed_validation
    train_model.train()
    started = time.perf_counter()
    data_iter = batches()

    def divergence_advice() -> str:
        if os.path.isfile(ckpt_path):
            how = ('the same command' if cfg.resume else 'it resuming (train stereo: add '
                   '--resume; train descriptors: without --no-resume)')
            return (f'run {how} again with a lower --lr (now {cfg.lr:g}): it goes on from the '
                    f'last checkpoint in {cfg.out_dir}')
        return (f'lower --lr (now {cfg.lr:g}); no checkpoint was written yet, so give another '
                f'output folder or delete {cfg.out_dir}')

    def save_checkpoint():
        # One host sync for all of them, not one a tensor (a GPU waits at each).
        if not bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all()):
            # Kept, they would be resumed (and the previous, sound checkpoint lost).
            raise FloatingPointError(
                f'training diverged: the weights are no longer finite at step {step}, so no '
                f'checkpoint was written; {divergence_advice()}')
        if dist_info.is_main:
            tmp = ckpt_path + '.tmp'
            torch.save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                        'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(),
                        'signature': _signature_text(signature),
                        'validation': val_last, 'batches_drawn': batches_drawn,
                        'seed': cfg.seed, 'batch_size': cfg.batch_size,
                        **({'random': random_state(train_dataset, device)}
                           if dist_info.world_size == 1 else {}),
                        'step': step}, tmp)
            os.replace(tmp, ckpt_path)  # atomic: a kill mid-write never corrupts the checkpoint

    bad_in_a_row = 0
    while step < cfg.steps:
        batch = _to_device(next(data_iter), device)
        batches_drawn += 1
        batch_norm_before = _batch_norm_state(model)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
            loss, logs = loss_fn(train_model, batch)
        # All ranks must agree, or DDP's gradient all-reduce would wait for the skipping rank.
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if dist_info.world_size > 1:
            import torch.distributed as dist
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            # One degenerate sample (e.g. a rendered pair with no valid match) must not end a
            # long run: skip the batch, keep the weights and the batch norm statistics (its
            # forward pass folded the batch into them: NaN there would leave every later
            # validation and saved file NaN). Many in a row is a real divergence.
            _restore_batch_norm(batch_norm_before)
            bad_in_a_row += 1
            if dist_info.is_main:
                _log(log_path, {'event': 'skipped_batch', 'step': step,
                                **{k: float(v) for k, v in logs.items()}})
            if bad_in_a_row >= cfg.max_bad_batches:
                terms = ', '.join(f'{k} {float(v):g}' for k, v in logs.items())
                raise FloatingPointError(
                    f'training diverged: {bad_in_a_row} non-finite losses in a row at step '
                    f'{step}' + (f' ({terms})' if terms else '') + f'; {divergence_advice()}')
            continue
        bad_in_a_row = 0
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        lr_used = optimizer.param_groups[0]['lr']       # this step's; the scheduler moves it on
        scheduler.step()
        step += 1
        last = {'loss': float(loss.detach()), **{k: float(v) for k, v in logs.items()}}
        if dist_info.world_size > 1 and (step % cfg.log_every == 0 or step == cfg.steps):
            # log.jsonl records the loss averaged over every process's batch, not rank 0's
            # alone. The loss only: the other logs may differ in keys between processes (a
            # descriptor pair without object pixels has no object terms), and a reduction of
            # unequal tensors would hang.
            import torch.distributed as dist
            loss_sum = torch.tensor([last['loss']], dtype=torch.float64, device=device)
            dist.all_reduce(loss_sum)
            last['loss'] = float(loss_sum) / dist_info.world_size
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f'{last["loss"]:.4f}')
            if step % cfg.log_every == 0 or step == cfg.steps:
                _log(log_path, {'event': 'train', 'step': step, 'lr': lr_used,
                                'elapsed_s': time.perf_counter() - started, **last})
        # Validation first: a checkpoint of this step then holds its numbers, and a run killed
        # while validating resumes from the step before and validates this one again.
        if val_fn is not None and dist_info.is_main and (step % cfg.val_every == 0 or step == cfg.steps):
            model.eval()
            with torch.no_grad():
                val_last = {k: float(v) for k, v in val_fn(model, step).items()}
            model.train()
            _log(log_path, {'event': 'val', 'step': step, **val_last})
            if progress is not None:
                progress.write(f'step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in val_last.items()))
        # Also after every validation: it may have written best weights, and a run stopped
        # with best weights but no checkpoint could be neither resumed nor started afresh.
        validated = val_fn is not None and (step % cfg.val_every == 0 or step == cfg.steps)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or validated:
            save_checkpoint()
    if progress is not None:
        progress.close()
    if dist_info.world_size > 1:
        import torch.distributed as dist
        dist.barrier()   # no rank leaves (and reads best weights) while rank 0 still writes
    return {**last, **{f'val_{k}': v for k, v in val_last.items()}, 'step': step}


# A ground-truth disparity step over this between two neighbours is a depth edge: for train
# stereo --edge-weight, eval stereo's by_region and eval corr's by_depth_edge_distance alike.
DEPTH_EDGE_STEP_PX = 1.0


def field_steps(field: torch.Tensor, known: torch.Tensor, step: float) -> torch.Tensor:
    """Discontinuities of a ground-truth field: (B,C,H,W) ``field`` and (B,1,H,W) bool ``known``
    -> (B,1,H,W) bool, True at both pixels of every pair of known 4-neighbours whose field values
    differ by more than ``step`` (the L2 norm over C); unknown pixels never make one. With a
    disparity (C=1) these are depth edges; with a correspondence field (C=2, where each pixel
    lands in the other view) the places where the two sides of an edge move apart between
    views."""
    f = torch.where(known, field, torch.zeros_like(field))
    marked = torch.zeros_like(known)
    for dim in (-1, -2):
        length = f.shape[dim]
        first = [slice(None)] * 4
        second = [slice(None)] * 4
        first[dim], second[dim] = slice(1, length), slice(0, length - 1)
        first, second = tuple(first), tuple(second)
        jump = (f[first] - f[second]).norm(dim=1, keepdim=True) > step
        jump &= known[first] & known[second]
        marked[first] |= jump
        marked[second] |= jump
    return marked


def step_band(field: torch.Tensor, known: torch.Tensor, step: float, radius_px: int) -> torch.Tensor:
    """:func:`field_steps` widened to every pixel within ``radius_px`` (a square) of one."""
    size = 2 * radius_px + 1
    return F.max_pool2d(field_steps(field, known, step).float(), size, stride=1,
                        padding=radius_px) > 0


def train_config_dict(cfg: TrainConfig) -> Dict[str, Any]:
    """The loop's settings for weights metadata, with the number of torchrun processes
    (``batch_size`` is per process, so the effective batch is their product)."""
    return {**asdict(cfg), 'world_size': int(os.environ.get('WORLD_SIZE', '1'))}
