"""SGBM backend: accuracy on Motorcycle (real data), hole filling, parameter validation."""
import numpy as np
import pytest

from corr_depth_ros.core.backends import available_backends, create_backend
from corr_depth_ros.core.backends.sgbm import fill_disparity_holes
from corr_depth_ros.core.metrics import disparity_metrics
from corr_depth_ros.core.motorcycle import load_motorcycle
from corr_depth_ros.core.stereo_pipeline import run_stereo


def test_fill_holes_prefers_background():
    disparity = np.array([[10, 0, 0, 30, 0]], dtype=np.float32)
    valid = np.array([[True, False, False, True, False]])
    filled = fill_disparity_holes(disparity, valid)
    assert filled.tolist() == [[10, 10, 10, 30, 30]]


def test_motorcycle_accuracy_and_pipeline():
    data = load_motorcycle()
    backend = create_backend('sgbm')
    out = run_stereo(data['left'], data['right'], data['geometry'], backend)
    metrics = disparity_metrics(out.disparity_px, data['disparity_px'])
    assert metrics['bad_2_pct'] < 12.0 and metrics['epe_px'] < 2.0, metrics
    assert metrics['holes_pct'] < 1.0
    assert np.isnan(out.depth_m[~out.valid]).all() and np.isfinite(out.depth_m[out.valid]).all()
    assert out.points_m.shape == (500, 741, 3)
    # A confidence threshold of 1 keeps only pixels SGBM matched itself (no filled ones).
    strict = run_stereo(data['left'], data['right'], data['geometry'], backend,
                        confidence_threshold=1.0)
    assert strict.valid.sum() < out.valid.sum()
    with pytest.raises(ValueError, match='does not match camera_info'):
        run_stereo(data['left'][:100], data['right'][:100], data['geometry'], backend)


def test_parameter_validation():
    assert 'sgbm' in available_backends()
    with pytest.raises(ValueError, match='multiple of 16'):
        create_backend('sgbm', num_disparities=50)
    with pytest.raises(ValueError, match='odd'):
        create_backend('sgbm', block_size=4)
    with pytest.raises(ValueError, match='unknown sgbm'):
        create_backend('sgbm', colour=True)
    with pytest.raises(ValueError, match='unknown stereo backend'):
        create_backend('nope')
