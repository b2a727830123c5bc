"""Backend ``onnx``: any user-supplied ONNX stereo model, run with onnxruntime.

For models trained elsewhere (e.g. an exported RAFT-Stereo or our own network via
``corr_depth export-onnx stereo``). The model must take the left and right images as two
(1, 3, H, W) float32 inputs and return a disparity map (1, 1, H, W) or (1, H, W) in pixels of
its input size. Many exported models have a fixed input size: the backend reads it from the
model (or ``input_width/height``), resizes the images and rescales the disparity (disparity
scales with image width).
Trade-off: no torch needed and the CUDA provider is used when onnxruntime-gpu is installed,
but the pre-processing must be told exactly what the model expects (size, mean, std, names).
"""
import os
from typing import Any, Dict, Optional, Sequence

import cv2
import numpy as np

from ..shapes import check_shape
from .base import StereoBackend, StereoResult


# onnx.input_width / input_height of the stereo node and process-bag's --onnx (0: the model's).
INPUT_SIZE_RANGE_PX = (0, 8192)


class ModelOutputError(RuntimeError):
    """The model's output cannot be disparity (a model fault, not this frame's input): the
    stereo node falls back to sgbm with this message rather than dropping every frame."""


def _plane_problem(name: str, shape) -> Optional[str]:
    """Why output ``name`` of ``shape`` (dims may be symbolic names) is not one image plane,
    (h, w), (1, h, w) or (1, 1, h, w); None if it is."""
    if len(shape) < 2 or any(isinstance(n, int) and n != 1 for n in shape[:-2]):
        return (f'output {name!r} has shape {list(shape)}; this backend reads one disparity '
                'image: (1, 1, h, w), (1, h, w) or (h, w)')
    return None


def _image_plane(output, name: str) -> np.ndarray:
    """An output of shape (h, w), (1, h, w) or (1, 1, h, w) as (h, w) float32."""
    array = np.asarray(output, np.float32)
    problem = _plane_problem(name, array.shape)
    if problem:
        raise ModelOutputError(problem)
    return array.reshape(array.shape[-2:])


def _size_text(fixed) -> str:
    return 'x'.join('any' if v is None else str(v) for v in reversed(fixed))


def _check_image_inputs(inputs, names) -> tuple:
    """The two image inputs must be float32 (batch, 3, H, W) with batch 1 or dynamic, and
    fixed at the same size if at all. Returns their (H, W), None where dynamic."""
    by_name = {i.name: i for i in inputs}
    sizes = []
    for name in names:
        node_arg = by_name[name]
        shape = list(node_arg.shape)
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3) \
                or (isinstance(shape[0], int) and shape[0] != 1):
            raise ValueError(f'input {name!r} has shape {shape}; this backend feeds '
                             '(1, 3, H, W) RGB images')
        if node_arg.type != 'tensor(float)':
            raise ValueError(f'input {name!r} is {node_arg.type}; this backend feeds float32 '
                             '(export the model with float32 inputs)')
        sizes.append(tuple(v if isinstance(v, int) and v > 0 else None for v in shape[2:]))
    if sizes[0] != sizes[1]:
        raise ValueError(f'the image inputs are fixed at different sizes: '
                         f'{_size_text(sizes[0])} and {_size_text(sizes[1])}')
    return sizes[0]


def _check_output_shape(node_arg) -> None:
    """An output whose shape is known must hold one image plane, as :func:`_image_plane`
    (onnxruntime gives [] where not even the rank is known: checked on the first frame)."""
    problem = _plane_problem(node_arg.name, node_arg.shape) if node_arg.shape else None
    if problem:
        raise ValueError(problem)


class OnnxStereoBackend(StereoBackend):
    """Args:
        model_path: the .onnx file.
        input_width, input_height: the model's input size, pixels (0 = the model's own fixed
            size if it has one, else the image's size).
        mean, std: per-channel normalisation applied to RGB in [0, 1]: (x - mean) / std.
        input_names: names of the left and right inputs ([] = the model's first two inputs).
        output_name: name of the disparity output ('' = the model's first output).
        confidence_name: optional name of a (1, 1, H, W) confidence output in [0, 1] ('' =
            an output named 'confidence' if the model has one).
        device: 'auto' (CUDA provider when available), 'cpu' or 'cuda'.
    """

    name = 'onnx'
    disparity_step_px = 1.0 / 64.0   # float output, no quantisation

    def __init__(self, model_path: str, input_width: int = 0, input_height: int = 0,
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 input_names: Sequence[str] = (), output_name: str = '',
                 confidence_name: str = '', device: str = 'auto', threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ValueError('the onnx backend needs onnxruntime: pip install onnxruntime '
                             '(onnxruntime-gpu for the CUDA provider)') from exc
        if not model_path:
            raise ValueError('onnx backend needs a model path (parameter onnx.model_path)')
        if os.path.isdir(model_path):
            raise IsADirectoryError(f'ONNX model {model_path} is a folder, not a file: give '
                                    'the .onnx file')
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f'ONNX model not found: {model_path}')
        if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
            raise ValueError(f'mean and std need 3 values each, std non-zero; got {mean}, {std}')
        if (input_width > 0) != (input_height > 0):
            raise ValueError('set both input_width and input_height, or neither')
        available = ort.get_available_providers()
        if device == 'cuda' and 'CUDAExecutionProvider' not in available:
            raise ValueError('device "cuda" requested but onnxruntime has no CUDA provider '
                             f'(available: {available})')
        providers = ['CPUExecutionProvider']
        if device in ('auto', 'cuda') and 'CUDAExecutionProvider' in available:
            providers.insert(0, 'CUDAExecutionProvider')
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(model_path, sess_options=options,
                                                providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no common base
            raise ValueError(f'{model_path} could not be loaded as an ONNX model '
                             f'({type(exc).__name__}: {exc})') from exc
        if device == 'cuda' and 'CUDAExecutionProvider' not in self.session.get_providers():
            # onnxruntime-gpu lists its CUDA provider even when the CUDA/cuDNN libraries it needs
            # are missing; the session then quietly runs on the CPU. Say so (the node falls back
            # or refuses the switch with this reason) instead of running slowly unannounced.
            raise ValueError('device "cuda" requested but onnxruntime could not start its CUDA '
                             f'provider (the session runs on {self.session.get_providers()}; '
                             'check the CUDA and cuDNN libraries onnxruntime-gpu needs)')
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.input_names = list(input_names) or inputs[:2]
        if len(self.input_names) != 2 or any(n not in inputs for n in self.input_names):
            raise ValueError(f'input_names must name two of the model inputs {inputs}, '
                             f'got {self.input_names}')
        self.output_name = output_name or outputs[0]
        if self.output_name not in outputs:
            raise ValueError(f'output {self.output_name!r} not in the model outputs {outputs}')
        if confidence_name and confidence_name not in outputs:
            raise ValueError(f'confidence output {confidence_name!r} not in {outputs}')
        if not confidence_name and 'confidence' in outputs and self.output_name != 'confidence':
            confidence_name = 'confidence'    # ours (export-onnx) has one under that name
        self.confidence_name = confidence_name
        self._output_checked = False   # the first frame tells whether the output is disparity
        self.model_path = model_path
        # What the model needs is known now: refused here with the reason, not frame by frame.
        others = [n for n in inputs if n not in self.input_names]
        if others:
            raise ValueError(f'the model has inputs {others} besides the two images '
                             f'{self.input_names}; this backend feeds only the left and right '
                             'images (export the model with the others fixed)')
        fixed = _check_image_inputs(self.session.get_inputs(), self.input_names)
        for name in [self.output_name] + ([confidence_name] if confidence_name else []):
            _check_output_shape(next(o for o in self.session.get_outputs() if o.name == name))
        if input_width > 0 and any(f is not None and f != want for f, want
                                   in zip(fixed, (input_height, input_width))):
            raise ValueError(f'input_width x input_height {input_width}x{input_height} does '
                             'not fit the model, whose inputs are fixed at '
                             f'{_size_text(fixed)} (leave both 0 to use its size)')
        if input_width <= 0:
            # A model exported at a fixed size (ours is): feed it that size, rescale the output.
            # A side left dynamic keeps the image's own size (0).
            input_height, input_width = (f or 0 for f in fixed)
        self.input_size = (int(input_width), int(input_height))
        self.mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
        self.providers = self.session.get_providers()

    def get_params(self) -> Dict[str, Any]:
        return {'model_path': self.model_path, 'input_width': self.input_size[0],
                'input_height': self.input_size[1], 'input_names': self.input_names,
                'output_name': self.output_name, 'providers': self.providers}

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        width, height = self.input_size
        width, height = width or image.shape[1], height or image.shape[0]
        if (image.shape[1], image.shape[0]) != (width, height):
            # Area averaging to shrink; enlarging with it would repeat pixels (blocky input
            # to a net that estimates sub-pixel disparity), so linear then.
            shrink = width <= image.shape[1] and height <= image.shape[0]
            image = cv2.resize(image, (width, height),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        x = image.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
        return np.ascontiguousarray((x - self.mean) / self.std)

    def compute(self, left_rgb: np.ndarray, right_rgb: np.ndarray,
                max_disparity_px: Optional[int] = None) -> StereoResult:
        sizes = check_shape('left_rgb', left_rgb, ('H', 'W', 3))
        check_shape('right_rgb', right_rgb, ('H', 'W', 3), sizes)
        height, width = left_rgb.shape[:2]
        feeds = {self.input_names[0]: self._prepare(left_rgb),
                 self.input_names[1]: self._prepare(right_rgb)}
        wanted = [self.output_name] + ([self.confidence_name] if self.confidence_name else [])
        try:
            results = self.session.run(wanted, feeds)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no common base
            # The input was checked and prepared as the model declares it: a failure here is the
            # model's (an op it cannot run, a shape it did not declare), so every frame would
            # fail alike; the stereo node falls back to sgbm on this error.
            raise ModelOutputError(f'onnxruntime could not run the model: '
                                   f'{type(exc).__name__}: {exc}') from exc
        disparity = _image_plane(results[0], self.output_name)
        confidence = None
        if self.confidence_name:
            confidence = _image_plane(results[1], self.confidence_name)
        if not self._output_checked:
            # Judged on the first frame only (a model's convention does not change; a frame of a
            # far scene may legitimately come out slightly negative later): clearly negative
            # output means flow, x_right - x_left, not disparity.
            finite = disparity[np.isfinite(disparity)]
            self._output_checked = finite.size > 0
            median = float(np.median(finite)) if finite.size else 0.0
            if finite.size and np.mean(finite < 0) > 0.5 and median < -1.0:
                raise ModelOutputError(
                    f'output {self.output_name!r} is mostly negative (median '
                    f'{median:.3g}): this backend expects disparity >= 0 in '
                    'pixels; a model that outputs flow (x_right - x_left) needs it negated in '
                    'the export')
        if disparity.shape != (height, width):
            # Disparity is measured in pixels of the model's input: rescale by the width ratio.
            scale = width / disparity.shape[1]
            disparity = cv2.resize(disparity, (width, height), interpolation=cv2.INTER_LINEAR) * scale
        if confidence is not None and confidence.shape != (height, width):
            # Its own resolution, whatever the disparity's (e.g. a cost-volume's 1/4).
            confidence = cv2.resize(confidence, (width, height), interpolation=cv2.INTER_LINEAR)
        valid = np.isfinite(disparity) & (disparity >= 0)
        if max_disparity_px is not None:
            valid &= disparity <= max_disparity_px
        if confidence is not None:
            confidence = np.clip(confidence, 0.0, 1.0).astype(np.float32)
        # A user's model does not say what it searched; the requested range if there is one.
        searched = (0.0, float(max_disparity_px)) if max_disparity_px is not None else None
        return StereoResult(disparity_px=disparity.astype(np.float32), valid=valid,
                            confidence=confidence, search_range_px=searched)
