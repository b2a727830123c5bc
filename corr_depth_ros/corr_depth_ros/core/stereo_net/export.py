"""ONNX export of the stereo network for fixed-size deployment (onnxruntime, TensorRT).

The graph is traced at one input size: padding to the network's multiple is computed in Python
from the traced shapes, so an exported model accepts exactly (1, 3, height, width) inputs.
Inputs ``left``/``right`` are RGB in [0, 1] (normalisation is inside the graph, so the ``onnx``
backend runs it with mean 0 and std 1); outputs ``disparity`` and ``confidence`` (1, 1, H, W).
"""
import inspect
import os
from typing import Dict

import numpy as np
import torch
from torch import nn

INPUT_NAMES = ('left', 'right')
OUTPUT_NAMES = ('disparity', 'confidence')
# The oldest opset that expresses the network (11 and below: Clip of int64 tensors fails).
MIN_OPSET = 12


class _TupleOutputs(nn.Module):
    """ONNX graphs return tensors, not dicts."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, left: torch.Tensor, right: torch.Tensor):
        out = self.model(left, right)
        return out['disparity'], out['confidence']


def export_stereo_onnx(model: nn.Module, path: str, *, height: int, width: int,
                       opset: int = 17, seed: int = 0) -> Dict[str, float]:
    """Write ``model`` (eval mode, CPU float32) to ``path`` for (height, width) inputs, then run
    torch and onnxruntime on the same random pair and return the max absolute differences
    ``{'max_abs_diff_disparity_px', 'max_abs_diff_confidence'}`` (the parity check)."""
    import importlib.util
    for module, why in (('onnx', 'torch writes ONNX files with it'),
                        ('onnxruntime', 'the parity check runs the file with it')):
        if importlib.util.find_spec(module) is None:
            raise ValueError(f'export-onnx needs the {module} package ({why}): '
                             f'pip install {module}')
    import onnxruntime as ort
    if height <= 0 or width <= 0:
        raise ValueError(f'height and width must be positive, got {height}x{width}')
    if opset < MIN_OPSET:
        raise ValueError(f'opset {opset} cannot express the network (below {MIN_OPSET}, '
                         'Clip of integer tensors has no ONNX form); use --opset '
                         f'{MIN_OPSET} or higher')
    model = model.float().cpu().eval()
    # The wrapper must be in eval mode too: export restores the wrapper's own mode afterwards,
    # recursively, and a fresh module starts in training mode.
    wrapper = _TupleOutputs(model).eval()
    gen = torch.Generator().manual_seed(seed)
    left = torch.rand(1, 3, height, width, generator=gen)
    right = torch.roll(left, shifts=-4, dims=3) * 0.9 + 0.1 * torch.rand(1, 3, height, width,
                                                                        generator=gen)
    # The TorchScript exporter; torch releases before 2.5 have no `dynamo` switch (and use it).
    legacy = ({'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters
              else {})
    # Written beside ``path`` and moved there once onnxruntime has run it: a failed export
    # leaves no file it cannot run, and an earlier model at ``path`` as it was.
    folder, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(folder, f'.{name}.partial')
    try:
        torch.onnx.export(wrapper, (left, right), partial, input_names=list(INPUT_NAMES),
                          output_names=list(OUTPUT_NAMES), opset_version=opset, **legacy)
        session = ort.InferenceSession(partial, providers=['CPUExecutionProvider'])
        disparity, confidence = session.run(list(OUTPUT_NAMES),
                                            {'left': left.numpy(), 'right': right.numpy()})
        os.replace(partial, path)
    except Exception as exc:  # noqa: BLE001 - torch's and onnxruntime's errors alike
        raise ValueError(f'export to ONNX opset {opset} failed ({type(exc).__name__}: {exc}); '
                         f'{path} was not written') from exc
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    with torch.no_grad():
        ref_disparity, ref_confidence = wrapper(left, right)
    return {'max_abs_diff_disparity_px': float(np.abs(disparity - ref_disparity.numpy()).max()),
            'max_abs_diff_confidence': float(np.abs(confidence - ref_confidence.numpy()).max())}
