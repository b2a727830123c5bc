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


def test_fill_holes_matches_a_per_pixel_reference():
    """The vectorised fill against the rule written out pixel by pixel: a hole takes the
    smaller of the nearest valid disparities left and right in its row; a row without any
    valid pixel keeps its values."""
    def reference(disparity, valid):
        out = disparity.copy()
        for r in range(disparity.shape[0]):
            cols = np.flatnonzero(valid[r])
            for c in np.flatnonzero(~valid[r]):
                left, right = cols[cols < c], cols[cols > c]
                candidates = ([disparity[r, left[-1]]] if left.size else []) + \
                    ([disparity[r, right[0]]] if right.size else [])
                if candidates and np.isfinite(min(candidates)):
                    out[r, c] = min(candidates)
        return out

    rng = np.random.default_rng(7)
    for _ in range(200):
        height, width = rng.integers(1, 7), rng.integers(1, 10)
        disparity = rng.uniform(0, 60, size=(height, width)).astype(np.float32)
        valid = rng.random((height, width)) < rng.random()
        np.testing.assert_array_equal(fill_disparity_holes(disparity, valid),
                                      reference(disparity, valid))


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
    # valid_window is what SGBM computes (64 disparities, block 5: columns from 63 + 2), not the
    # filled mask's bounding box; OpenCV matched nothing left of it.
    assert out.valid_window == (65, 2, 741 - 2 - 65, 500 - 4)
    assert not strict.valid[:, :63].any() and strict.valid[:, 65:].any()
    with pytest.raises(ValueError, match='does not match camera_info'):
        run_stereo(data['left'][:100], data['right'][:100], data['geometry'], backend)


def test_run_stereo_outputs_agree_with_each_other():
    """run_stereo's derived outputs from a known backend result: invalid pixels (backend flag,
    low confidence, non-positive d + doffs, beyond max_depth_m) are NaN in disparity and depth
    and -1 in the message disparity, whose valid values are d + doffs; min/max are theirs when
    the backend does not say what it searched, else that range + doffs."""
    from corr_depth_ros.core.backends.base import StereoResult
    from corr_depth_ros.core.geometry import StereoGeometry
    geometry = StereoGeometry(width=4, height=2, fx=100.0, fy=100.0, cx_left=2.0, cx_right=3.0,
                              cy=1.0, baseline_m=0.1)  # doffs 1 px; Z = 10 / (d + 1)
    disparity = np.array([[4.0, 9.0, -1.0, 3.0], [1.0, 19.0, np.nan, 0.5]], np.float32)

    class Fixed:
        def compute(self, left, right, max_disparity_px=None):
            return StereoResult(disparity_px=disparity.copy(),
                                valid=np.array([[True, True, True, False], [True] * 4]),
                                confidence=np.array([[1, 1, 1, 1], [1, 0.2, 1, 1]], np.float32))

    image = np.zeros((2, 4, 3), np.uint8)
    out = run_stereo(image, image, geometry, Fixed(), confidence_threshold=0.5, max_depth_m=4.0)
    # d + 1: 5, 10, 0 (invalid), flagged, 2, low confidence, NaN, 1.5 -> Z = 2, 1, -, -, 5 (too
    # far), -, -, 6.67 (too far)
    assert out.valid.tolist() == [[True, True, False, False], [False] * 4]
    np.testing.assert_allclose(out.depth_m[0, :2], [2.0, 1.0])
    assert np.isnan(out.depth_m[~out.valid]).all() and np.isnan(out.disparity_px[~out.valid]).all()
    np.testing.assert_array_equal(out.disparity_px[out.valid], [4.0, 9.0])
    np.testing.assert_array_equal(out.message_disparity_px,
                                  [[5.0, 10.0, -1.0, -1.0], [-1.0] * 4])
    assert (out.min_disparity_px, out.max_disparity_px) == (5.0, 10.0)
    assert out.valid_window == (0, 0, 2, 1)
    np.testing.assert_allclose(out.points_m[0, 0], [(0 - 2.0) * 2.0 / 100, (0 - 1.0) * 2.0 / 100, 2.0])
    none_valid = run_stereo(image, image, geometry, Fixed(), max_depth_m=0.4)
    assert not none_valid.valid.any() and none_valid.min_disparity_px == 0.0
    assert none_valid.max_disparity_px == 0.0 and none_valid.valid_window == (0, 0, 0, 0)
    # A backend that says what it searched: min/max are that range + doffs, every frame.

    class Searched(Fixed):
        def compute(self, left, right, max_disparity_px=None):
            result = super().compute(left, right, max_disparity_px)
            result.search_range_px = (0.0, 63.0)
            return result
    for max_depth_m in (4.0, 0.4):
        out = run_stereo(image, image, geometry, Searched(), max_depth_m=max_depth_m)
        assert (out.min_disparity_px, out.max_disparity_px) == (1.0, 64.0)
    sgbm = create_backend('sgbm', min_disparity=2, num_disparities=32)
    textured = np.random.default_rng(1).integers(0, 255, (24, 80, 3), dtype=np.uint8)
    assert sgbm.compute(textured, textured).search_range_px == (2.0, 33.0)
    # A search from -16 px (verged cameras), or a negative doffs, puts min_disparity at -1 or
    # below: invalid pixels then take min_disparity - 1, still below it as the message defines.
    class FromMinus16(Fixed):
        def compute(self, left, right, max_disparity_px=None):
            result = super().compute(left, right, max_disparity_px)
            result.search_range_px = (-16.0, 47.0)
            return result
    out = run_stereo(image, image, geometry, FromMinus16(), confidence_threshold=0.5,
                     max_depth_m=4.0)
    assert out.min_disparity_px == -15.0
    np.testing.assert_array_equal(out.message_disparity_px,
                                  [[5.0, 10.0, -16.0, -16.0], [-16.0] * 4])
    backwards = StereoGeometry(width=4, height=2, fx=100.0, fy=100.0, cx_left=12.0, cx_right=2.0,
                               cy=1.0, baseline_m=0.1)   # doffs -10 px
    out = run_stereo(image, image, backwards, Searched())
    assert out.min_disparity_px == -10.0
    assert (out.message_disparity_px[~out.valid] < out.min_disparity_px).all()


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


def test_parameter_change_while_a_frame_runs_is_not_lost(monkeypatch):
    """A node changes parameters on its executor thread while the worker computes: a change
    that lands while the matcher is being built must reach the next frame."""
    import cv2

    from corr_depth_ros.core.backends import sgbm as sgbm_module
    backend = create_backend('sgbm', num_disparities=16)
    original = cv2.StereoSGBM_create
    calls = []

    def create_and_change(**kwargs):
        calls.append(kwargs['blockSize'])
        if len(calls) == 1:     # the "executor thread" changes the parameter mid-build
            backend.set_params(block_size=11)
        return original(**kwargs)
    monkeypatch.setattr(sgbm_module.cv2, 'StereoSGBM_create', create_and_change)
    image = np.random.default_rng(0).integers(0, 255, (32, 64, 3), dtype=np.uint8)
    backend.compute(image, image)           # ran with the parameters it started with
    backend.compute(image, image)           # the next frame uses the change
    backend.compute(image, image)           # and keeps the matcher built for it
    assert calls == [5, 11]


def test_search_range_wider_than_the_image_is_a_clear_error():
    image = np.zeros((20, 40, 3), np.uint8)
    with pytest.raises(ValueError, match='does not fit an image 40 px wide'):
        create_backend('sgbm').compute(image, image)              # 64 px default range
    with pytest.raises(ValueError, match='lower max_disparity_px'):
        create_backend('sgbm', num_disparities=16).compute(image, image, max_disparity_px=1024)


def _shifted_texture(shift_px: int, height: int = 120, width: int = 320):
    """A blurred random texture and its copy moved shift_px to the left (disparity shift_px:
    left x is right x - shift_px)."""
    import cv2
    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (height, width + shift_px), np.uint8)
                               .astype(np.float32), (0, 0), 1.0)
    left = np.repeat(texture[:, :width, None], 3, axis=2).astype(np.uint8)
    right = np.repeat(texture[:, shift_px:, None], 3, axis=2).astype(np.uint8)
    return np.ascontiguousarray(left), np.ascontiguousarray(right)


def test_max_disparity_override_is_the_largest_disparity_searched_from_min_disparity():
    """max_disparity_px means what the learned backends take it to mean: the largest disparity
    wanted. From a negative min_disparity the search still reaches it (to its last candidate:
    a range of 64 from 0 ends at 63); a positive one does not push it further; what the multiple-of-16 rounding searches past it is invalid, also after
    hole filling; and a maximum at or below min_disparity is a clear error."""
    left, right = _shifted_texture(60)
    for min_disparity in (-32, 0, 32):
        backend = create_backend('sgbm', min_disparity=min_disparity)
        result = backend.compute(left, right, max_disparity_px=64)
        assert result.search_range_px == (float(min_disparity), 63.0)      # 64 candidates
        inner = result.disparity_px[10:-10, 120:-10][result.valid[10:-10, 120:-10]]
        assert inner.size > 0.5 * result.valid[10:-10, 120:-10].size, min_disparity
        assert abs(float(np.median(inner)) - 60.0) < 0.5, min_disparity
    # 60 px is past a maximum of 50: every pixel that matched there is invalid, none filled.
    for fill in (False, True):
        result = create_backend('sgbm', fill_holes=fill).compute(left, right, max_disparity_px=50)
        assert result.search_range_px == (0.0, 50.0)                       # 0..63, cut at 50
        assert not (result.valid & (result.disparity_px > 50)).any()
    with pytest.raises(ValueError, match='greater than sgbm.min_disparity'):
        create_backend('sgbm', min_disparity=16).compute(left, right, max_disparity_px=16)
    # A near object (60 px) before a background (30 px) with a maximum of 50: the object is
    # invalid, not filled with the background's disparity (at the background's depth).
    near_left, _ = _shifted_texture(60)
    right = np.roll(near_left, -30, axis=1)               # background: disparity 30
    right[:, 140:260] = near_left[:, 200:320]             # columns 200.. of the left: 60
    for fill in (False, True):
        result = create_backend('sgbm', fill_holes=fill).compute(near_left, right,
                                                                  max_disparity_px=50)
        assert result.valid[10:-10, 220:310].mean() < 0.05, fill
        assert result.valid[10:-10, 90:180].mean() > 0.5, fill


def test_p2_must_exceed_p1_as_the_matcher_uses_them():
    """0 stands for 8 (P1) and 32 (P2) x block^2; OpenCV would quietly raise a P2 at or below
    P1 to P1 + 1, so such settings are refused whichever of them was left at 0."""
    create_backend('sgbm')                                     # 200 and 800 at block 5
    for params in ({'p1': 200, 'p2': 100}, {'p2': 100}, {'p1': 2000}, {'p1': 800}):
        with pytest.raises(ValueError, match='p2 must be greater than p1'):
            create_backend('sgbm', block_size=5, **params)
    create_backend('sgbm', block_size=5, p1=700)               # below the default P2 800
