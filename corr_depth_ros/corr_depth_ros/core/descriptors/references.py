"""Named references (a clicked image + pixels + their descriptors), persisted to disk.

A descriptor only means something to the network that computed it, so each reference stores the
identity of its network (a hash of the weights and architecture config); a reference made by
another network is refused with a message saying how to fix it, instead of silently matching
garbage. One safetensors file per reference (tensors: pixels, descriptors, thumbnail; metadata:
network identity, image size, time), never a pickle.
"""
import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..shapes import check_shape

# fullmatch: no trailing newline; the first character is no dot (the file would be hidden:
# id '..' is the file '...safetensors').
_ID_PATTERN = re.compile(r'[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}')
THUMBNAIL_MAX_PX = 160


class ReferenceError(ValueError):
    """A reference that cannot be stored or used; the text says what to do."""


# Architecture name of the descriptor network in weights files (see core.training.save_weights).
ARCH = 'descriptors_don'


def network_identity(model, scales=(1.0,)) -> str:
    """16-hex-digit hash of a descriptor network's architecture, config and weights (the same
    ``identity`` that :func:`corr_depth_ros.core.training.save_weights` writes in the header).

    With descriptor ``scales`` other than (1.0,) (see network.compute_descriptors) they are
    hashed too: a reference described at other scales is not comparable, so it must not match.
    """
    from ..training import weights_identity
    from .network import check_scales
    config = model.config()
    scales = check_scales(scales)
    if scales != (1.0,):
        config = {**config, 'scales': list(scales)}
    return weights_identity(model, ARCH, config)


def _shown(reference_id) -> str:
    """repr of an id for a message, shortened: a request may carry a 100,000-character one."""
    text = repr(reference_id)
    return text if len(text) <= 80 else text[:60] + f'... ({len(str(reference_id))} characters)'


def reference_id_problem(reference_id: str) -> Optional[str]:
    """Why ``reference_id`` cannot name a reference, or None."""
    if not isinstance(reference_id, str) or not _ID_PATTERN.fullmatch(reference_id):
        return (f'reference_id {_shown(reference_id)} is not usable: use 1-64 characters from '
                'letters, digits, "_", "-" and "." not starting with "." (it names a file)')
    return None


def validate_reference_id(reference_id: str) -> None:
    problem = reference_id_problem(reference_id)
    if problem:
        raise ReferenceError(problem)


def make_thumbnail(image_rgb8: np.ndarray, max_px: int = THUMBNAIL_MAX_PX) -> np.ndarray:
    """(H,W,3) uint8 -> (h,w,3) uint8 with max(h, w) <= max_px (area down-sampling)."""
    import cv2
    check_shape('image_rgb8', image_rgb8, (None, None, 3))
    height, width = image_rgb8.shape[:2]
    scale = min(1.0, max_px / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image_rgb8, size, interpolation=cv2.INTER_AREA)


@dataclass
class Reference:
    """One named reference. pixels_xy (N,2) float32 (x, y) in the reference image; descriptors
    (N,D) float32; thumbnail (h,w,3) uint8; image_size (H, W) of the reference image."""

    reference_id: str
    pixels_xy: np.ndarray
    descriptors: np.ndarray
    network_id: str
    image_size: Tuple[int, int]
    thumbnail: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 3), np.uint8))
    created_s: float = field(default_factory=time.time)
    # What network_id is made of, kept apart so a refusal can say which differs: the weights'
    # identity (network_identity at one scale) and the descriptor scales. Empty in files
    # written before they were stored.
    weights_id: str = ''
    scales: Tuple[float, ...] = ()

    def __post_init__(self):
        validate_reference_id(self.reference_id)
        sizes = check_shape('pixels_xy', self.pixels_xy, ('N', 2))
        check_shape('descriptors', self.descriptors, ('N', None), sizes)
        check_shape('thumbnail', self.thumbnail, (None, None, 3))
        if sizes['N'] == 0:
            raise ReferenceError(f'reference {self.reference_id!r} has no pixels')

    def extended(self, pixels_xy: np.ndarray, descriptors: np.ndarray) -> 'Reference':
        """This reference with more pixels (a click adds one)."""
        return Reference(self.reference_id,
                         np.concatenate([self.pixels_xy, pixels_xy]).astype(np.float32),
                         np.concatenate([self.descriptors, descriptors]).astype(np.float32),
                         self.network_id, self.image_size, self.thumbnail, self.created_s,
                         self.weights_id, self.scales)


class ReferenceStore:
    """References of one network, held in memory and mirrored to ``directory`` (may be '' for
    memory only). References on disk made by another network, and files that could not be
    loaded, are kept aside, so asking for one says why it cannot be used rather than "unknown
    id". Another process may store into the same folder: an id stored there is not replaced
    unless asked to (overwrite)."""

    def __init__(self, directory: str, network_id: str, descriptor_size: Optional[int] = None,
                 weights_id: str = '', scales: Tuple[float, ...] = ()):
        """``descriptor_size``: numbers per descriptor of this network (D x scales); a file of
        this network with another size is refused at load (it can only be corrupt).
        ``weights_id``, ``scales``: what ``network_id`` is made of, to say which differs when a
        stored reference was made by another network."""
        self.directory = directory
        self.network_id = network_id
        self.descriptor_size = descriptor_size
        self.weights_id = weights_id
        self.scales = tuple(scales)
        self._refs: Dict[str, Reference] = {}
        self._foreign: Dict[str, Reference] = {}    # made by another network
        self._damaged: Dict[str, str] = {}          # id (from the file name) -> why not loaded
        self.load_errors: List[str] = []
        self.writable = True
        if directory:
            try:
                os.makedirs(directory, exist_ok=True)
                names = sorted(os.listdir(directory))
            except OSError as exc:
                raise ReferenceError(f'references_dir {directory!r} cannot be used as a folder '
                                     f'of references ({exc.strerror or exc}); give a folder '
                                     "this user can write, or '' to keep references in memory "
                                     'only') from exc
            # A read-only folder (references made elsewhere, on read-only media) still serves
            # its references; storing new ones is refused with the reason (put()).
            self.writable = os.access(directory, os.W_OK | os.X_OK)
            self._load_all(names)

    def _path(self, reference_id: str) -> str:
        return os.path.join(self.directory, f'{reference_id}.safetensors')

    def _load_all(self, names: List[str]) -> None:
        for name in names:
            if not name.endswith('.safetensors'):
                continue
            path = os.path.join(self.directory, name)
            file_id = name[:-len('.safetensors')]
            try:
                ref = load_reference(path)
            except Exception as exc:  # noqa: BLE001 - one bad file must not hide the others
                self.load_errors.append(f'{path}: {exc}')
                self._mark_damaged(file_id, f'{path} could not be loaded ({exc})')
                continue
            # A reference is its file (put() writes <id>.safetensors and replaces that file):
            # a copy under another name must not stand in for the id it carries.
            if name != os.path.basename(self._path(ref.reference_id)):
                problem = (f'holds reference {ref.reference_id!r}, which is stored as '
                           f'{os.path.basename(self._path(ref.reference_id))}; rename the file '
                           'to match, or remove it')
                self.load_errors.append(f'{path}: {problem}')
                self._mark_damaged(file_id, f'{path} {problem}')
                continue
            if ref.network_id == self.network_id:
                size = ref.descriptors.shape[1]
                if self.descriptor_size is not None and size != self.descriptor_size:
                    problem = (f'descriptors of {size} numbers, but this network makes '
                               f'{self.descriptor_size}: the file is damaged')
                    self.load_errors.append(f'{path}: {problem}; re-create the reference')
                    self._damaged[ref.reference_id] = f'{path} holds {problem}'
                    continue
                self._refs[ref.reference_id] = ref
            else:
                self._foreign[ref.reference_id] = ref

    def _mark_damaged(self, file_id: str, why: str) -> None:
        """Remember why a file did not load, for a request of the id it is named after."""
        if reference_id_problem(file_id) is None:
            self._damaged[file_id] = why

    def ids(self) -> List[str]:
        return sorted(self._refs)

    def __contains__(self, reference_id: str) -> bool:
        return reference_id in self._refs

    def foreign(self) -> Dict[str, str]:
        """Stored references this network cannot use: id -> why (made by another network, or
        at other descriptor scales)."""
        return {k: self._foreign_reason(ref) for k, ref in self._foreign.items()}

    def _foreign_reason(self, ref: Reference) -> str:
        if ref.weights_id and ref.weights_id == self.weights_id and ref.scales \
                and tuple(ref.scales) != self.scales:
            return (f'described at descriptor_scales {list(ref.scales)}, this node runs '
                    f'{list(self.scales)}')
        return f'made by descriptor network {ref.network_id}, this node runs {self.network_id}'

    def known(self, reference_id: str) -> bool:
        """Stored, by this network or another, or a file that could not be loaded (any of
        which :meth:`put` would replace)."""
        return (reference_id in self._refs or reference_id in self._foreign
                or reference_id in self._damaged)

    def get(self, reference_id: str) -> Reference:
        """The reference, or ReferenceError saying why not (unknown / made by another network
        or at other scales / its file damaged)."""
        if reference_id in self._refs:
            return self._refs[reference_id]
        if reference_id in self._foreign:
            ref = self._foreign[reference_id]
            reason = self._foreign_reason(ref)
            remedy = ('set descriptor_scales to match (a restart), or re-create it with '
                      'set_reference (overwrite=true)' if reason.startswith('described at')
                      else 'descriptors of different networks cannot be compared. Re-create '
                      'it with set_reference (overwrite=true) or load the weights it was made '
                      'with')
            raise ReferenceError(f'reference {reference_id!r} was {reason}: {remedy}')
        if reference_id in self._damaged:
            raise ReferenceError(f'reference {reference_id!r}: {self._damaged[reference_id]}; '
                                 're-create it with set_reference (overwrite=true)')
        known = ', '.join(self.ids()) or 'none'
        raise ReferenceError(f'unknown reference_id {_shown(reference_id)}; known: {known}. '
                             'Create it with set_reference or a click on the image')

    def put(self, ref: Reference, overwrite: bool) -> None:
        """Store (and persist) ``ref``; ReferenceError if it exists (here, or on disk: another
        node may share the folder) and not ``overwrite``, if it was made by another network, or
        if the folder cannot be written."""
        if ref.network_id != self.network_id:
            raise ReferenceError(f'reference {ref.reference_id!r} has network {ref.network_id}, '
                                 f'this store is for {self.network_id}')
        path = self._path(ref.reference_id) if self.directory else ''
        if not overwrite:
            if self.known(ref.reference_id):
                raise ReferenceError(f'reference {ref.reference_id!r} already exists; set '
                                     'overwrite=true to replace it')
            if path and os.path.exists(path):
                raise ReferenceError(f'reference {ref.reference_id!r} was stored in '
                                     f'{self.directory} since this node started (another node '
                                     'shares references_dir); set overwrite=true to replace it')
        if path:
            try:
                save_reference(path, ref)
            except Exception as exc:  # noqa: BLE001 - OSError, safetensors' own I/O error
                raise ReferenceError(f'reference {ref.reference_id!r} could not be stored in '
                                     f'references_dir {self.directory} ({exc}); give a folder '
                                     'this user can write') from exc
        self._refs[ref.reference_id] = ref
        self._foreign.pop(ref.reference_id, None)
        self._damaged.pop(ref.reference_id, None)


def save_reference(path: str, ref: Reference) -> None:
    """Write ``ref`` as safetensors (atomic: a temporary file renamed into place)."""
    from safetensors.numpy import save_file
    tensors = {'pixels_xy': np.ascontiguousarray(ref.pixels_xy, dtype=np.float32),
               'descriptors': np.ascontiguousarray(ref.descriptors, dtype=np.float32),
               'thumbnail': np.ascontiguousarray(ref.thumbnail, dtype=np.uint8)}
    metadata = {'reference_id': ref.reference_id, 'network_id': ref.network_id,
                'image_size': json.dumps(list(ref.image_size)), 'created_s': repr(ref.created_s),
                'weights_id': ref.weights_id, 'scales': json.dumps(list(ref.scales)),
                'format': 'corr_depth_ros.reference/1'}
    # A name of its own: two processes storing the same id into one folder must not write
    # (and rename) one temporary file.
    tmp = f'{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_reference(path: str) -> Reference:
    from safetensors import safe_open
    with safe_open(path, framework='numpy') as handle:
        meta = handle.metadata() or {}
        if meta.get('format') != 'corr_depth_ros.reference/1':
            raise ReferenceError(f'{path} is not a corr_depth_ros reference file')
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    missing = sorted({'pixels_xy', 'descriptors', 'thumbnail'} - set(tensors)
                     | {'reference_id', 'network_id', 'image_size', 'created_s'} - set(meta))
    if missing:
        raise ReferenceError(f'{path} lacks {", ".join(missing)}: the file is damaged')
    for name in ('pixels_xy', 'descriptors'):
        if not np.isfinite(tensors[name]).all():
            raise ReferenceError(f'{path} holds {name} that are not finite: the file is damaged')
    return Reference(meta['reference_id'], tensors['pixels_xy'].astype(np.float32),
                     tensors['descriptors'].astype(np.float32),
                     meta['network_id'], tuple(json.loads(meta['image_size'])),
                     tensors['thumbnail'], float(meta['created_s']),
                     meta.get('weights_id', ''), tuple(json.loads(meta.get('scales', '[]'))))


def lookup(store: ReferenceStore, reference_id: str,
           pixels_xy: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Pixels and descriptors of a stored reference: all of them when ``pixels_xy`` is empty or
    None, else the stored pixels nearest to each requested one (within 0.5 px).

    Raises ReferenceError naming the pixel that was not stored.
    """
    ref = store.get(reference_id)
    if pixels_xy is None or len(pixels_xy) == 0:
        return ref.pixels_xy, ref.descriptors
    pixels_xy = np.asarray(pixels_xy, dtype=np.float32).reshape(-1, 2)
    chosen = []
    for x, y in pixels_xy:
        gap = np.hypot(ref.pixels_xy[:, 0] - x, ref.pixels_xy[:, 1] - y)
        i = int(np.argmin(gap))
        if not gap[i] <= 0.5:   # also a NaN pixel (argmin of all-NaN is 0)
            stored = ', '.join(f'({px:g}, {py:g})' for px, py in ref.pixels_xy[:8])
            raise ReferenceError(f'pixel ({x:g}, {y:g}) is not stored with reference '
                                 f'{reference_id!r}; stored pixels: {stored}. Leave '
                                 'reference_pixels empty to use them all')
        chosen.append(i)
    return ref.pixels_xy[chosen], ref.descriptors[chosen]
