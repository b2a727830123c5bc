"""On-disk format of synthetic datasets, its writer and loaders, and a user-folder loader.

Layout (full description in FORMAT.md next to this file)::

    ROOT/dataset.json            kind ('stereo' | 'multiview'), count, size, seed, SYNTH_VERSION,
                                 config
    ROOT/contact_sheet.png       a few samples drawn for a person to look at
    ROOT/000000/meta.json        kind, seed, K, baseline_m | T_b_from_a, size, version, config
    stereo:    left.png right.png (8-bit RGB), disparity_left.pfm disparity_right.pfm
               depth_left.pfm depth_right.pfm (float32 PFM, pixels / metres),
               occlusion_left.png occlusion_right.png (8-bit, 255 = occluded),
               instance_left.png instance_right.png (16-bit, 0 = background)
    multiview: image_a.png image_b.png, depth_a.pfm depth_b.pfm, instance_a.png instance_b.png,
               match_b_px.npy (2,H,W float32, NaN invalid), visible_in_b.png (255 = visible)

PFM follows the Middlebury / SceneFlow convention: header ``Pf`` (1 channel) or ``PF`` (3),
``WIDTH HEIGHT``, then a scale whose sign gives the byte order (negative = little-endian), then
float32 rows stored bottom-to-top. NaN is kept as NaN.
"""
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import SYNTH_VERSION, SynthConfig

PathLike = Union[str, os.PathLike]
KINDS = ('stereo', 'multiview')
FORMAT_NAME = 'corr_depth_synth'
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.tif', '.tiff')


# ----------------------------------------------------------------------------- PFM

def write_pfm(path: PathLike, array: np.ndarray) -> None:
    """Write (H,W) or (H,W,3) float data as little-endian float32 PFM."""
    data = np.asarray(array)
    if data.ndim == 2:
        header = b'Pf'
    elif data.ndim == 3 and data.shape[2] == 3:
        header = b'PF'
    else:
        raise ValueError(f'write_pfm: expected (H,W) or (H,W,3), got shape {data.shape}')
    height, width = data.shape[:2]
    with open(path, 'wb') as f:
        f.write(header + b'\n' + f'{width} {height}\n'.encode('ascii') + b'-1.0\n')
        # PFM stores the bottom row first.
        f.write(np.ascontiguousarray(data[::-1], dtype='<f4').tobytes())


def read_pfm(path: PathLike) -> np.ndarray:
    """Read a PFM file into float32 (H,W) or (H,W,3), top row first."""
    with open(path, 'rb') as f:
        tokens: List[bytes] = []
        # Header: 4 whitespace-separated tokens (type, width, height, scale), then one
        # whitespace byte before the raster.
        while len(tokens) < 4:
            line = f.readline()
            if not line:
                raise ValueError(f'{path}: truncated PFM header')
            tokens += line.split()
        kind, width, height, scale = tokens[0], int(tokens[1]), int(tokens[2]), float(tokens[3])
        if kind not in (b'Pf', b'PF'):
            raise ValueError(f'{path}: not a PFM file (magic {kind!r})')
        channels = 3 if kind == b'PF' else 1
        dtype = '<f4' if scale < 0 else '>f4'
        count = width * height * channels
        data = np.frombuffer(f.read(4 * count), dtype=dtype)
    if data.size != count:
        raise ValueError(f'{path}: PFM raster has {data.size} values, expected {count}')
    shape = (height, width, 3) if channels == 3 else (height, width)
    return data.reshape(shape)[::-1].astype(np.float32)


# ----------------------------------------------------------------------------- images

def _write_png(path: PathLike, array: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), array):
        raise OSError(f'could not write {path}')


def _read_png(path: PathLike, flags=None) -> np.ndarray:
    import cv2

    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED if flags is None else flags)
    if array is None:
        raise OSError(f'could not read image {path}')
    return array


def write_rgb8_png(path: PathLike, rgb: np.ndarray) -> None:
    """(H,W,3) uint8 RGB -> PNG at ``path``; OSError if it could not be written."""
    _write_png(path, np.ascontiguousarray(np.asarray(rgb)[..., ::-1]))


def _save_rgb(path: PathLike, image: torch.Tensor) -> None:
    rgb = (image.detach().cpu().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0)
    write_rgb8_png(path, rgb.numpy())


def load_rgb(path: PathLike) -> torch.Tensor:
    """(3,H,W) float32 RGB in [0,1] from an 8-bit (or 16-bit) colour or grey image file."""
    import cv2

    array = _read_png(path, cv2.IMREAD_UNCHANGED)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    array = array[..., :3][..., ::-1]  # BGR(A) -> RGB
    peak = 65535.0 if array.dtype == np.uint16 else 255.0
    return torch.from_numpy(np.ascontiguousarray(array).astype(np.float32) / peak).permute(2, 0, 1)


def _save_mask(path: PathLike, mask: torch.Tensor) -> None:
    _write_png(path, mask.detach().cpu().numpy().reshape(mask.shape[-2:]).astype(np.uint8) * 255)


def _load_mask(path: PathLike) -> torch.Tensor:
    return torch.from_numpy(_read_png(path) > 127)[None]


def _save_instance(path: PathLike, instance: torch.Tensor) -> None:
    array = instance.detach().cpu().numpy().reshape(instance.shape[-2:])
    if array.min() < 0 or array.max() > 65535:
        raise ValueError(f'instance ids must fit 16-bit PNG (0..65535), got {array.min()}..'
                         f'{array.max()}')
    _write_png(path, array.astype(np.uint16))


def _load_instance(path: PathLike) -> torch.Tensor:
    return torch.from_numpy(_read_png(path).astype(np.int64))[None]


def _save_float(path: PathLike, tensor: torch.Tensor) -> None:
    write_pfm(path, tensor.detach().cpu().numpy().reshape(tensor.shape[-2:]).astype(np.float32))


def _load_float(path: PathLike) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(read_pfm(path)))[None]


# ----------------------------------------------------------------------------- samples

_SAMPLE_DIGITS = 6  # FORMAT.md: one folder a sample, its index zero-padded to 6 digits


def sample_dir(root: PathLike, index: int) -> Path:
    """The folder of sample ``index`` of the dataset at ``root``: ``ROOT/000042``."""
    return Path(root) / f'{int(index):0{_SAMPLE_DIGITS}d}'


def _meta(sample: dict, kind: str, config: Optional[SynthConfig]) -> dict:
    image = sample['left'] if kind == 'stereo' else sample['image_a']
    meta = {'format': FORMAT_NAME, 'kind': kind, 'synth_version': SYNTH_VERSION,
            'seed': int(sample['seed']), 'height': int(image.shape[-2]),
            'width': int(image.shape[-1]),
            'K': torch.as_tensor(sample['K']).tolist(),
            'config': None if config is None else config.to_dict()}
    if kind == 'stereo':
        meta['baseline_m'] = float(sample['baseline_m'])
    else:
        meta['T_b_from_a'] = torch.as_tensor(sample['T_b_from_a']).tolist()
    return meta


def save_stereo_sample(directory: PathLike, sample: dict,
                       config: Optional[SynthConfig] = None) -> None:
    """Write one dict of :func:`render_stereo_pair` into ``directory`` (created)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for side in ('left', 'right'):
        _save_rgb(d / f'{side}.png', sample[side])
        _save_float(d / f'disparity_{side}.pfm', sample[f'disparity_{side}_px'])
        _save_float(d / f'depth_{side}.pfm', sample[f'depth_{side}_m'])
        _save_mask(d / f'occlusion_{side}.png', sample[f'occlusion_{side}'])
        _save_instance(d / f'instance_{side}.png', sample[f'instance_{side}'])
    # meta.json last: its presence marks a complete sample.
    (d / 'meta.json').write_text(json.dumps(_meta(sample, 'stereo', config), indent=1))


def save_multiview_sample(directory: PathLike, sample: dict,
                          config: Optional[SynthConfig] = None) -> None:
    """Write one dict of :func:`render_multiview_pair` into ``directory`` (created)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for view in ('a', 'b'):
        _save_rgb(d / f'image_{view}.png', sample[f'image_{view}'])
        _save_float(d / f'depth_{view}.pfm', sample[f'depth_{view}_m'])
        _save_instance(d / f'instance_{view}.png', sample[f'instance_{view}'])
    np.save(d / 'match_b_px.npy', sample['match_b_px'].detach().cpu().numpy().astype(np.float32))
    _save_mask(d / 'visible_in_b.png', sample['visible_in_b'])
    (d / 'meta.json').write_text(json.dumps(_meta(sample, 'multiview', config), indent=1))


def _read_meta(directory: Path) -> dict:
    meta = json.loads((directory / 'meta.json').read_text())
    if meta.get('format') != FORMAT_NAME or meta.get('kind') not in KINDS:
        raise ValueError(f'{directory}/meta.json is not a {FORMAT_NAME} sample')
    return meta


def load_stereo_sample(directory: PathLike) -> Dict[str, object]:
    """Read a stereo sample back into the dict of :func:`render_stereo_pair` (images are
    8-bit quantised)."""
    d = Path(directory)
    meta = _read_meta(d)
    sample: Dict[str, object] = {}
    for side in ('left', 'right'):
        sample[side] = load_rgb(d / f'{side}.png')
    for side in ('left', 'right'):
        sample[f'disparity_{side}_px'] = _load_float(d / f'disparity_{side}.pfm')
    for side in ('left', 'right'):
        sample[f'depth_{side}_m'] = _load_float(d / f'depth_{side}.pfm')
    for side in ('left', 'right'):
        sample[f'occlusion_{side}'] = _load_mask(d / f'occlusion_{side}.png')
    for side in ('left', 'right'):
        sample[f'instance_{side}'] = _load_instance(d / f'instance_{side}.png')
    sample['K'] = torch.tensor(meta['K'], dtype=torch.float64)
    sample['baseline_m'] = float(meta['baseline_m'])
    sample['seed'] = int(meta['seed'])
    return sample


def load_multiview_sample(directory: PathLike) -> Dict[str, object]:
    """Read a multiview sample back into the dict of :func:`render_multiview_pair`."""
    d = Path(directory)
    meta = _read_meta(d)
    sample: Dict[str, object] = {}
    for view in ('a', 'b'):
        sample[f'image_{view}'] = load_rgb(d / f'image_{view}.png')
    for view in ('a', 'b'):
        sample[f'depth_{view}_m'] = _load_float(d / f'depth_{view}.pfm')
    for view in ('a', 'b'):
        sample[f'instance_{view}'] = _load_instance(d / f'instance_{view}.png')
    for view in ('a', 'b'):
        sample[f'object_mask_{view}'] = sample[f'instance_{view}'] > 0
    sample['K'] = torch.tensor(meta['K'], dtype=torch.float64)
    sample['T_b_from_a'] = torch.tensor(meta['T_b_from_a'], dtype=torch.float64)
    sample['match_b_px'] = torch.from_numpy(np.load(d / 'match_b_px.npy'))
    sample['visible_in_b'] = _load_mask(d / 'visible_in_b.png')
    sample['seed'] = int(meta['seed'])
    return sample


def load_sample(directory: PathLike) -> Dict[str, object]:
    """Load a stereo or multiview sample, whichever its meta.json says."""
    kind = _read_meta(Path(directory))['kind']
    return load_stereo_sample(directory) if kind == 'stereo' else load_multiview_sample(directory)


# ----------------------------------------------------------------------------- datasets

class SyntheticFolderDataset(Dataset):
    """A dataset written by :func:`write_dataset` (or ``corr_depth synth``), read from disk.

    Items are the same dicts as the on-the-fly generators (images 8-bit quantised).
    """

    def __init__(self, root: PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f'SyntheticFolderDataset: {self.root} is not a directory')
        info = self.root / 'dataset.json'
        kinds = set()
        if info.exists():
            # Exactly the samples dataset.json lists: not leftovers of an earlier, larger one.
            dataset = json.loads(info.read_text())
            kinds.add(dataset['kind'])
            self.sample_dirs = [sample_dir(self.root, i) for i in range(int(dataset['count']))]
            missing = [p.name for p in self.sample_dirs if not (p / 'meta.json').exists()]
            if missing:
                raise ValueError(f'SyntheticFolderDataset: {self.root}/dataset.json lists '
                                 f'{len(self.sample_dirs)} samples, {len(missing)} are missing '
                                 f'(first {missing[0]})')
        else:
            self.sample_dirs = sorted(p.parent for p in self.root.glob('*/meta.json'))
        if not self.sample_dirs:
            raise ValueError(f'SyntheticFolderDataset: no samples (*/meta.json) in {self.root}')
        kinds.add(_read_meta(self.sample_dirs[0])['kind'])
        if len(kinds) != 1:
            raise ValueError(f'SyntheticFolderDataset: {self.root} mixes kinds {sorted(kinds)}')
        self.kind = kinds.pop()

    def __len__(self) -> int:
        return len(self.sample_dirs)

    def __getitem__(self, index: int) -> Dict[str, object]:
        directory = self.sample_dirs[index]
        if self.kind == 'stereo':
            return load_stereo_sample(directory)
        return load_multiview_sample(directory)


def natural_key(path) -> list:
    """Sort key that orders f2 before f10 (numbers in names compared as numbers)."""
    # re.split with a group puts the digit runs at the odd positions (ASCII digits only: '²'
    # is a digit to str.isdigit() but not to int()).
    return [(0, int(part), '') if index % 2 else (1, 0, part)
            for index, part in enumerate(re.split(r'([0-9]+)', os.path.basename(str(path))))]


def rectified_pairs(root: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS):
    """``root/left/NAME.ext`` with ``root/right/NAME.ext``, matched by file stem (``0001.png``
    with ``0001.jpg``), in natural order (frame2 before frame10): the one reading of this layout,
    for training (RectifiedPairFolder) and the camera that replays a folder. Returns (pairs as
    (left, right) Paths, names without a partner); ValueError when a side is missing, a name
    is there twice, or nothing pairs."""
    root = Path(root)
    stems = []
    for side in ('left', 'right'):
        folder = root / side
        if not folder.is_dir():
            raise ValueError(f'{folder} does not exist; expected {root}/left/*.png and '
                             f'{root}/right/*.png')
        files = {}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in extensions:
                if path.stem in files:
                    raise ValueError(f'{files[path.stem].name} and {path.name} in {folder} '
                                     'have the same name')
                files[path.stem] = path
        stems.append(files)
    left, right = stems
    common = sorted(set(left) & set(right), key=natural_key)
    if not common:
        raise ValueError(f'no left/right pairs with matching names under {root}')
    return [(left[s], right[s]) for s in common], sorted(set(left) ^ set(right))


class RectifiedPairFolder(Dataset):
    """A user's own rectified stereo pairs: ``root/left/NAME.ext`` with ``root/right/NAME.ext``.

    Pairs are matched by file stem (``0001.png`` with ``0001.jpg`` is a pair). Items are
    ``{'left', 'right'}``: (3,H,W) float32 RGB in [0,1], for self-supervised training.
    Raises ValueError when a folder is missing, nothing matches, or (unless
    ``allow_unmatched``) some file has no partner.
    """

    def __init__(self, root: PathLike, allow_unmatched: bool = False,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS):
        self.root = Path(root)
        try:
            self.pairs, unmatched = rectified_pairs(root, extensions)
        except ValueError as exc:
            raise ValueError(f'RectifiedPairFolder: {exc}') from exc
        if unmatched and not allow_unmatched:
            raise ValueError(f'RectifiedPairFolder: {len(unmatched)} images without a partner '
                             f'under {self.root}, e.g. {unmatched[:5]}; pass '
                             f'allow_unmatched=True to skip them')

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        left_path, right_path = self.pairs[index]
        left, right = load_rgb(left_path), load_rgb(right_path)
        if left.shape != right.shape:
            raise ValueError(f'RectifiedPairFolder: {left_path.name} is {tuple(left.shape)} but '
                             f'its right image is {tuple(right.shape)}')
        return {'left': left, 'right': right}


# ----------------------------------------------------------------------------- writer

def sample_seed(base_seed: int, index: int) -> int:
    """Seed of item ``index`` of a dataset with ``base_seed``: shared by the on-the-fly
    datasets and the writer, so a dataset on disk equals its on-the-fly twin."""
    return int(base_seed) * 1_000_003 + int(index)


def _render(kind: str, seed: int, height: int, width: int, config: SynthConfig, device,
            layout: Optional[str]):
    from .multiview import render_multiview_pair
    from .stereo import render_stereo_pair

    render = render_stereo_pair if kind == 'stereo' else render_multiview_pair
    return render(seed, height, width, config, layout=layout, device=device)


def _write_one(job) -> int:
    """Render and save one sample (runs in worker processes too)."""
    root, kind, index, seed, height, width, config_dict, device, layout = job
    config = SynthConfig.from_dict(config_dict)
    sample = _render(kind, seed, height, width, config, device, layout)
    save = save_stereo_sample if kind == 'stereo' else save_multiview_sample
    save(sample_dir(root, index), sample, config)
    return index


def _init_worker():
    # Several processes already share the cores: intra-op threads would only oversubscribe.
    torch.set_num_threads(1)


def write_dataset(root: PathLike, kind: str, count: int, height: int, width: int, seed: int = 0,
                  config: Optional[SynthConfig] = None, workers: int = 0, device='cpu',
                  layout: Optional[str] = None, progress: bool = True,
                  contact_sheet_rows: int = 6, overwrite: bool = False) -> Path:
    """Render ``count`` samples into ``root`` and draw ``root/contact_sheet.png``.

    Args:
        kind: 'stereo' or 'multiview'. count: number of samples (>= 1).
        height, width: image size, pixels. seed: dataset seed (item i uses
            ``sample_seed(seed, i)``). config: ranges (default ``SynthConfig()``).
        workers: 0 renders in this process; N > 0 uses N spawned processes, 1 thread each.
        device: render device ('cpu', 'cuda'); with workers, each process uses it.
        layout: force one layout for every sample. progress: tqdm bar on stderr.
        contact_sheet_rows: samples drawn on the sheet (0: no sheet).
        overwrite: allow writing into a directory that already holds a dataset.
    Returns:
        ``root`` as a Path.
    Raises:
        ValueError: bad arguments, or ``root`` already holds a dataset and not ``overwrite``.
    """
    from .render import check_request

    if kind not in KINDS:
        raise ValueError(f'unknown dataset kind {kind!r}; choose from {KINDS}')
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f'count must be a positive int, got {count!r}')
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f'workers must be an int >= 0, got {workers!r}')
    config = check_request(int(seed), height, width, config, layout)
    height, width = int(height), int(width)     # numpy integers pass the check; JSON needs int
    if sample_seed(seed, count - 1) >= 2 ** 63:
        raise ValueError(f'seed {seed} is too large: sample seeds seed*1000003+i must stay '
                         f'below 2**63')
    root = Path(root)
    if (root / 'dataset.json').exists() and not overwrite:
        raise ValueError(f'{root} already holds a dataset (dataset.json); choose another '
                         f'--out or pass --overwrite')
    root.mkdir(parents=True, exist_ok=True)
    if overwrite:
        # The previous dataset's samples (sample_dir's folders) go too: a smaller new one must
        # not leave them behind.
        for old in root.glob('[0-9]' * _SAMPLE_DIGITS):
            if old.is_dir() and (old / 'meta.json').exists():
                shutil.rmtree(old)
        (root / 'dataset.json').unlink(missing_ok=True)
    info = {'format': FORMAT_NAME, 'kind': kind, 'synth_version': SYNTH_VERSION,
            'count': count, 'height': height, 'width': width, 'seed': int(seed),
            'sample_seed': 'seed * 1000003 + index', 'layout': layout,
            'config': config.to_dict()}
    jobs = [(str(root), kind, i, sample_seed(seed, i), height, width, config.to_dict(),
             str(device), layout) for i in range(count)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=count, desc=f'synth {kind}', unit='sample', file=sys.stderr)
    try:
        if workers == 0:
            for job in jobs:
                _write_one(job)
                if bar is not None:
                    bar.update(1)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: a forked child inherits the parent's OpenMP/CUDA state, which
            # can deadlock torch.
            context = multiprocessing.get_context('spawn')
            with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                     initializer=_init_worker) as pool:
                for _ in pool.map(_write_one, jobs, chunksize=max(1, count // (8 * workers))):
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    (root / 'dataset.json').write_text(json.dumps(info, indent=1))
    if contact_sheet_rows > 0:
        write_contact_sheet(root, rows=contact_sheet_rows)
    return root


def write_contact_sheet(root: PathLike, rows: int = 6) -> Path:
    """Draw the first ``rows`` samples of a dataset on disk into ``root/contact_sheet.png``."""
    from .contact_sheet import multiview_contact_sheet, stereo_contact_sheet

    dataset = SyntheticFolderDataset(root)
    samples = [dataset[i] for i in range(min(rows, len(dataset)))]
    sheet = stereo_contact_sheet(samples) if dataset.kind == 'stereo' \
        else multiview_contact_sheet(samples)
    path = Path(root) / 'contact_sheet.png'
    _write_png(path, np.ascontiguousarray(sheet[..., ::-1]))
    return path
