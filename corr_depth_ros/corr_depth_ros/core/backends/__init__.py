"""Stereo backends: one call signature, chosen by the node's ``backend`` parameter.

Every backend takes a rectified pair as (H, W, 3) uint8 RGB arrays and returns a
:class:`StereoResult`. Trade-offs:
  * ``sgbm``: OpenCV semi-global block matching. No weights, predictable, ~40 ms at 741x500 on a
    2-core CPU; weak on textureless and reflective surfaces.
  * ``learned``: our GwcNet-style network (core/stereo_net) with the shipped weights; dense
    output with a confidence, needs torch, fastest on a GPU (half precision there).
  * ``onnx``: a user-supplied ONNX stereo model through onnxruntime (CUDA provider when
    available); no torch needed, but size/normalisation/names must be configured.
"""
from typing import Callable, Dict

from .base import StereoBackend, StereoResult

_FACTORIES: Dict[str, Callable[..., StereoBackend]] = {}


def register_backend(name: str, factory: Callable[..., StereoBackend]) -> None:
    """Make ``factory(**params)`` available as ``create_backend(name, **params)``."""
    _FACTORIES[name] = factory


def available_backends():
    _register_builtin()
    return sorted(_FACTORIES)


def create_backend(name: str, **params) -> StereoBackend:
    """Instantiate a backend by name; ValueError lists the known names."""
    _register_builtin()
    if name not in _FACTORIES:
        raise ValueError(f'unknown stereo backend {name!r}; known: {", ".join(sorted(_FACTORIES))}')
    return _FACTORIES[name](**params)


def _lazy(module: str, cls: str) -> Callable[..., StereoBackend]:
    # Import on first use, so a missing torch or onnxruntime only breaks the backend that
    # needs it (create_backend raises then, and the node falls back to sgbm).
    def factory(**params):
        import importlib
        return getattr(importlib.import_module(f'{__name__}.{module}'), cls)(**params)
    return factory


def _register_builtin() -> None:
    if 'sgbm' not in _FACTORIES:
        from .sgbm import SgbmBackend
        register_backend('sgbm', SgbmBackend)
    if 'learned' not in _FACTORIES:
        register_backend('learned', _lazy('learned', 'LearnedBackend'))
    if 'onnx' not in _FACTORIES:
        register_backend('onnx', _lazy('onnx_backend', 'OnnxStereoBackend'))


__all__ = ['StereoBackend', 'StereoResult', 'available_backends', 'create_backend',
           'register_backend']
