"""Core geometry: disparity <-> depth <-> points <-> pixels, CameraInfo-derived geometry."""
import numpy as np
import pytest

from corr_depth_ros.core.geometry import (StereoGeometry, depth_to_points, disparity_to_depth,
                                          message_disparity, project_points, shifted_disparity)
from corr_depth_ros.core.motorcycle import motorcycle_geometry, projection_matrices


def test_round_trip_disparity_points_pixels():
    rng = np.random.default_rng(0)
    geo = motorcycle_geometry()
    disparity = rng.uniform(5, 60, size=(50, 80)).astype(np.float32)
    depth, valid = disparity_to_depth(disparity, geo.fx, geo.baseline_m, geo.doffs_px)
    assert valid.all()
    np.testing.assert_allclose(depth, geo.fx * geo.baseline_m / (disparity + geo.doffs_px), rtol=1e-6)
    points = depth_to_points(depth, geo.fx, geo.fy, geo.cx_left, geo.cy)
    pixels = project_points(points, geo.fx, geo.fy, geo.cx_left, geo.cy)
    u, v = np.meshgrid(np.arange(80), np.arange(50))
    np.testing.assert_allclose(pixels[..., 0], u, atol=1e-3)
    np.testing.assert_allclose(pixels[..., 1], v, atol=1e-3)
    # The right camera sees the same point at u - d (cx_right = cx_left + doffs).
    x_right = geo.fx * (points[..., 0] - geo.baseline_m) / points[..., 2] + geo.cx_right
    np.testing.assert_allclose(u - x_right, disparity, atol=2e-3)


def test_invalid_is_nan_never_epsilon():
    disparity = np.array([[10.0, 0.0, -3.0, np.nan, np.inf]], dtype=np.float32)
    depth, valid = disparity_to_depth(disparity, 500.0, 0.1)
    assert valid.tolist() == [[True, False, False, False, False]]
    assert depth[0, 0] == pytest.approx(5.0)
    assert np.isnan(depth[0, 1:]).all()
    points = depth_to_points(depth, 500.0, 500.0, 2.0, 0.0)
    assert np.isnan(points[0, 1:]).all() and np.isfinite(points[0, 0]).all()
    # doffs shifts validity: d + doffs must be positive
    _, valid_doffs = disparity_to_depth(np.array([[-2.0]], dtype=np.float32), 500.0, 0.1, doffs_px=3.0)
    assert valid_doffs.all()


def test_points_of_invalid_depth_are_nan():
    """NaN, zero, negative and infinite depth give NaN points; float64 and empty depth images
    work too."""
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 4.0, size=(7, 9)).astype(np.float32)
    depth[0, :4] = [np.nan, 0.0, -1.0, np.inf]
    expected = depth_to_points(depth, 400.0, 410.0, 4.2, 3.1)
    assert expected.dtype == np.float32 and expected.shape == (7, 9, 3)
    assert np.isnan(expected[0, :4]).all() and np.isfinite(expected[1:]).all()
    # float64 and empty depth images work too; all-NaN depth gives all-NaN points.
    np.testing.assert_allclose(depth_to_points(depth.astype(np.float64), 400.0, 410.0, 4.2, 3.1),
                               expected)
    assert depth_to_points(np.zeros((0, 5), np.float32), 1.0, 1.0, 0.0, 0.0).shape == (0, 5, 3)
    assert np.isnan(depth_to_points(np.full((2, 3), np.nan, np.float32), 1.0, 1.0, 0.0, 0.0)).all()


def test_message_disparity_includes_doffs():
    disparity = np.array([[10.0, 20.0]], dtype=np.float32)
    valid = np.array([[True, False]])
    out = message_disparity(shifted_disparity(disparity, 31.086), valid)
    assert out[0, 0] == pytest.approx(41.086) and out[0, 1] == -1.0


def test_geometry_from_projection_matrices():
    p_left, p_right = projection_matrices()
    geo = StereoGeometry.from_projection_matrices(p_left, p_right, 741, 500)
    assert geo.baseline_m == pytest.approx(0.193001)
    assert geo.doffs_px == pytest.approx(31.086)
    assert geo == motorcycle_geometry()
    bad = p_right.copy()
    bad[0, 3] = 0.0
    with pytest.raises(ValueError, match='Tx = 0'):
        StereoGeometry.from_projection_matrices(p_left, bad, 741, 500)
    with pytest.raises(ValueError, match='swapped'):
        StereoGeometry.from_projection_matrices(p_left, p_right * np.array([1, 1, 1, -1]), 741, 500)
    with pytest.raises(ValueError, match='focal'):
        StereoGeometry.from_projection_matrices(np.zeros((3, 4)), p_right, 741, 500)
    with pytest.raises(ValueError, match='size'):
        StereoGeometry.from_projection_matrices(p_left, p_right, 0, 500)
    # Not one rectified pair, or no principal point: refused with what differs (these used to
    # give depth from the right camera's focal length, or NaN and infinite points).
    for row, col, value, reason in ((0, 0, 40.0, 'differ in fx'), (1, 1, 40.0, 'differ in fy'),
                                    (1, 2, 10.0, 'differ in cy'),
                                    (0, 2, np.nan, 'right P has no valid principal point'),
                                    (0, 3, -np.inf, 'non-finite translation'),
                                    # Offset vertically or along z (accepted before, with
                                    # rows that do not line up: depth half the truth).
                                    (1, 3, -0.05 * p_right[1, 1], 'differ in Ty'),
                                    (2, 3, 0.01, 'Tz = 0.0 \\(left\\), 0.01')):
        bad = p_right.copy()
        bad[row, col] = value
        with pytest.raises(ValueError, match=reason):
            StereoGeometry.from_projection_matrices(p_left, bad, 741, 500)
    bad = p_left.copy()
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match='left P has no valid principal point'):
        StereoGeometry.from_projection_matrices(bad, p_right, 741, 500)
    # Rounding in a P computed in floating point is no offset.
    rounded = p_right.copy()
    rounded[1, 3] = rounded[2, 3] = 1e-13
    assert StereoGeometry.from_projection_matrices(p_left, rounded, 741, 500) == geo
    # P given relative to the rig's centre (left Tx = +fx B/2, right -fx B/2): the baseline
    # is the difference, not the right Tx alone (which gave half of it, and half the depth).
    centred_left, centred_right = p_left.copy(), p_right.copy()
    centred_left[0, 3], centred_right[0, 3] = -p_right[0, 3] / 2, p_right[0, 3] / 2
    assert StereoGeometry.from_projection_matrices(centred_left, centred_right, 741, 500) == geo
    # The whole topics swapped (the left info carries the right camera's Tx), and a vertical
    # pair: each refused with what it looks like.
    right_as_left, left_as_right = p_right.copy(), p_left.copy()
    right_as_left[0, 2] = left_as_right[0, 2] = p_left[0, 2]
    with pytest.raises(ValueError, match='are left and right swapped'):
        StereoGeometry.from_projection_matrices(right_as_left, left_as_right, 741, 500)
    copied = p_left.copy()
    copied[0, 3] = p_right[0, 3]             # the left info carries the right camera's P
    with pytest.raises(ValueError, match='the left camera_info carries the right camera'):
        StereoGeometry.from_projection_matrices(copied, p_right, 741, 500)
    vertical = p_left.copy()
    vertical[1, 3] = p_right[0, 3]
    with pytest.raises(ValueError, match='a vertical stereo pair'):
        StereoGeometry.from_projection_matrices(p_left, vertical, 741, 500)


def test_shape_checks():
    with pytest.raises(ValueError, match='dims'):
        disparity_to_depth(np.zeros((2, 3, 1)), 1.0, 1.0)
    with pytest.raises(ValueError, match='last dim'):
        project_points(np.zeros((4, 2)), 1, 1, 0, 0)


def test_broken_calibrations_give_no_infinite_depth_or_points():
    """REP 118: invalid depth is NaN, never inf. Focal lengths no camera has are refused (fx
    1e30 with a 1e9 m baseline gave +inf depth on every pixel, fy 1e-9 +inf points), and a
    disparity so small that f*B/d overflows float32 is invalid."""
    from corr_depth_ros.core.geometry import (StereoGeometry, check_focal_lengths,
                                              depth_from_shifted_disparity)
    with pytest.raises(ValueError, match='no usable focal length'):
        check_focal_lengths(1e30, 100.0, 'camera_info P')
    with pytest.raises(ValueError, match='no usable focal length'):
        check_focal_lengths(100.0, 1e-9, 'camera_info P')
    p_left = [1e30, 0, 10, 0, 0, 1e30, 10, 0, 0, 0, 1, 0]
    p_right = [1e30, 0, 10, -1e30 * 1e9, 0, 1e30, 10, 0, 0, 0, 1, 0]
    with pytest.raises(ValueError, match='no usable focal length'):
        StereoGeometry.from_projection_matrices(p_left, p_right, 20, 20)
    with pytest.raises(ValueError, match='beyond float32'):
        depth_from_shifted_disparity(np.ones((2, 2), np.float32), 1e30, 1e9)
    tiny = np.array([[1e-37, 4.0]], np.float32)
    depth, valid = depth_from_shifted_disparity(tiny, 1e3, 1e3)
    assert valid.tolist() == [[False, True]] and np.isnan(depth[0, 0]) and depth[0, 1] == 250e3
