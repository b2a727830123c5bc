"""Tests of the procedural synthetic data engine (core/synth): geometry GT, determinism, ranges,
disk round trip, bad input. Small images so that the file runs in seconds on a laptop CPU."""
import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from corr_depth_ros.core.synth import (
    SYNTH_VERSION, RectifiedPairFolder, SyntheticFolderDataset, SyntheticMultiViewDataset,
    SyntheticStereoDataset, SynthConfig, read_pfm, render_multiview_pair, render_stereo_pair,
    sample_seed, write_dataset, write_pfm)
from corr_depth_ros.core.synth.imaging import sample_camera_responses
from corr_depth_ros.core.synth.scene import Rng

H, W = 72, 96
CLEAN = SynthConfig().clean()


def warp_right_to_left(right: torch.Tensor, disparity_left_px: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample the right image (3,H,W) at (x - d, y) for every left pixel."""
    _, height, width = right.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width, dtype=torch.float32), indexing='ij')
    x_right = xs - disparity_left_px[0]
    grid = torch.stack([2 * x_right / (width - 1) - 1, 2 * ys / (height - 1) - 1], dim=-1)
    return F.grid_sample(right[None], grid[None], mode='bilinear', align_corners=True)[0]


# --------------------------------------------------------------------------- 1. photometric GT

@pytest.mark.parametrize('seed', [1, 2, 3, 4])
def test_warping_right_by_left_disparity_reproduces_left(seed):
    sample = render_stereo_pair(seed, 96, 128, CLEAN)
    warped = warp_right_to_left(sample['right'], sample['disparity_left_px'])
    visible = ~sample['occlusion_left'][0]
    assert visible.float().mean() > 0.5
    error = (warped - sample['left']).abs().amax(dim=0)[visible]
    assert error.mean() < 0.02, f'mean abs error {error.mean():.4f}'
    assert (error < 0.05).float().mean() > 0.9
    # Sanity check of the check: warping by a wrong disparity must fail it.
    wrong = warp_right_to_left(sample['right'], sample['disparity_left_px'] * 0.7 + 3.0)
    wrong_error = (wrong - sample['left']).abs().amax(dim=0)[visible].mean()
    assert wrong_error > max(3 * error.mean(), 0.01)


def test_views_differ_when_photometric_nuisances_are_on():
    config = SynthConfig(jpeg=False, blur=False)
    sample = render_stereo_pair(5, H, W, config)
    clean = render_stereo_pair(5, H, W, config.clean())
    # Same geometry either way: only appearance depends on the nuisance switches.
    assert torch.equal(sample['disparity_left_px'], clean['disparity_left_px'])
    warped = warp_right_to_left(sample['right'], sample['disparity_left_px'])
    visible = ~sample['occlusion_left'][0]
    error = (warped - sample['left']).abs().amax(dim=0)[visible].mean()
    warped_clean = warp_right_to_left(clean['right'], clean['disparity_left_px'])
    error_clean = (warped_clean - clean['left']).abs().amax(dim=0)[visible].mean()
    assert error > error_clean


# --------------------------------------------------------------------------- 2. multiview GT

def _project(depth_a, K, T_b_from_a):
    """Independent re-implementation: back-project A, transform, project into B (float64)."""
    height, width = depth_a.shape
    K = K.double()
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64),
                          torch.arange(width, dtype=torch.float64), indexing='ij')
    z = depth_a.double()
    points = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z])
    points_b = torch.einsum('ij,jhw->ihw', T_b_from_a[:3, :3], points) \
        + T_b_from_a[:3, 3, None, None]
    pixel = torch.stack([K[0, 0] * points_b[0] / points_b[2] + K[0, 2],
                         K[1, 1] * points_b[1] / points_b[2] + K[1, 2]])
    return pixel, points_b[2]


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_multiview_correspondences_are_consistent(seed):
    sample = render_multiview_pair(seed, H, W, CLEAN)
    depth_a, depth_b = sample['depth_a_m'][0], sample['depth_b_m'][0]
    T = sample['T_b_from_a']
    assert torch.allclose(T[:3, :3] @ T[:3, :3].T, torch.eye(3, dtype=torch.float64), atol=1e-9)
    assert T[:3, 3].norm() > 1e-3  # a real second pose, not just a rotation
    pixel, z_b = _project(depth_a, sample['K'], T)
    match = sample['match_b_px'].double()
    valid = torch.isfinite(match).all(dim=0)
    assert torch.allclose(match[:, valid], pixel[:, valid], atol=2e-2)

    visible = sample['visible_in_b'][0]
    assert visible.float().mean() > 0.2
    # Visible: B's depth at the match equals the transformed z: at one of the 4 neighbours, or
    # bilinearly interpolated in inverse depth (exact on planes, also seen at grazing angles).
    x0 = pixel[0].floor().clamp(0, W - 2).long()
    y0 = pixel[1].floor().clamp(0, H - 2).long()
    neighbours = torch.stack([depth_b[y0 + dy, x0 + dx].double()
                              for dy in (0, 1) for dx in (0, 1)])
    relative = ((neighbours - z_b) / z_b).abs().amin(dim=0)
    wx, wy = pixel[0] - x0, pixel[1] - y0
    inverse = 1.0 / neighbours
    bilinear = (inverse[0] * (1 - wx) + inverse[1] * wx) * (1 - wy) \
        + (inverse[2] * (1 - wx) + inverse[3] * wx) * wy
    agrees = (relative < 0.03) | ((bilinear * z_b - 1).abs() < 0.01)
    assert agrees[visible].float().mean() > 0.99
    # Invisible and inside B's image: something in B is really in front of the point.
    inside = (pixel[0] >= 0) & (pixel[0] <= W - 1) & (pixel[1] >= 0) & (pixel[1] <= H - 1) \
        & (z_b > 0)
    hidden = ~visible & inside
    if hidden.any():
        in_front = (neighbours.amin(dim=0) < z_b * (1 - 0.005))[hidden]
        assert in_front.float().mean() > 0.95
    # Invisible and not inside: the projection is really outside the image (or behind B).
    outside = ~visible & ~inside
    assert not (outside & inside).any()
    assert torch.equal(visible & ~inside, torch.zeros_like(visible))
    # Object masks are the instance maps.
    assert torch.equal(sample['object_mask_a'], sample['instance_a'] > 0)
    assert torch.equal(sample['object_mask_b'], sample['instance_b'] > 0)


def test_multiview_object_pixels_match_the_same_instance():
    sample = render_multiview_pair(7, H, W, CLEAN, layout='tabletop')
    visible = sample['visible_in_b'][0] & sample['object_mask_a'][0]
    assert visible.sum() > 20
    match = sample['match_b_px'].round().long()
    ys, xs = torch.nonzero(visible, as_tuple=True)
    xb = match[0, ys, xs].clamp(0, W - 1)
    yb = match[1, ys, xs].clamp(0, H - 1)
    same = sample['instance_b'][0, yb, xb] == sample['instance_a'][0, ys, xs]
    assert same.float().mean() > 0.95


# --------------------------------------------------------------------------- 3. determinism, ranges

def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(torch.nan_to_num(a[key]), torch.nan_to_num(b[key])), key
        else:
            assert a[key] == b[key], key


def test_same_seed_same_sample_and_different_seeds_differ():
    _assert_same(render_stereo_pair(11, H, W), render_stereo_pair(11, H, W))
    _assert_same(render_multiview_pair(11, H, W), render_multiview_pair(11, H, W))
    a, b = render_stereo_pair(11, H, W), render_stereo_pair(12, H, W)
    assert not torch.equal(a['left'], b['left'])
    assert a['baseline_m'] != b['baseline_m']
    a, b = render_multiview_pair(11, H, W), render_multiview_pair(12, H, W)
    assert not torch.equal(a['image_a'], b['image_a'])


def test_seeds_count_whole_beyond_32_bits():
    """torch's generator keeps a seed's low 32 bits only: seeds 2**32 apart (validation and
    evaluation sample seeds are beyond 2**32) must still render different samples, and a
    training stream offset by 2**60 must not replay the unoffset one. Seeds below 2**32 keep
    the stream they always had (data rendered from them stays the same)."""
    from corr_depth_ros.core.seeding import generator_seed, seeded_generator
    a, b = render_stereo_pair(7, H, W), render_stereo_pair(7 + 2 ** 32, H, W)
    assert not torch.equal(a['left'], b['left']) and a['baseline_m'] != b['baseline_m']
    assert generator_seed(7) == 7 and generator_seed(2 ** 32 - 1) == 2 ** 32 - 1
    assert torch.equal(torch.rand(4, generator=seeded_generator(7)),
                       torch.rand(4, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(torch.rand(4, generator=seeded_generator(2 ** 60 + 7)),
                           torch.rand(4, generator=seeded_generator(7)))
    assert len({generator_seed(900_000_000 * 1_000_003 + k * 2 ** 32) for k in range(8)}) == 8
    with pytest.raises(ValueError, match='seed must be in'):
        generator_seed(-1)


def test_config_refuses_values_that_would_crash_or_render_garbage():
    """Non-finite weights and tolerances, negative noise, shading fractions outside [0, 1]
    and a camera straight above the table (no image-up: rendering crashed) are refused when
    the config is made; the steepest allowed elevation renders."""
    nan = float('nan')
    for kw, field in ((dict(layout_weights=(nan, 1.0)), 'layout_weights'),
                      (dict(visibility_rel_tol=nan), 'visibility_rel_tol'),
                      (dict(shot_noise_scale_range=(-0.02, -0.01)), 'shot_noise_scale_range'),
                      (dict(read_noise_std_range=(-0.1, 0.0)), 'read_noise_std_range'),
                      (dict(ambient_range=(0.5, 1.5)), 'ambient_range'),
                      (dict(vignetting_range=(-0.2, 0.1)), 'vignetting_range'),
                      (dict(camera_elevation_deg_range=(87.5, 87.6)),
                       'camera_elevation_deg_range')):
        with pytest.raises(ValueError, match=field):
            SynthConfig(**kw)
    steep = SynthConfig(camera_elevation_deg_range=(85.0, 85.0))
    for seed in range(4):
        render_stereo_pair(seed, H, W, steep, layout='tabletop')


def test_sizes_and_seeds_are_checked_before_rendering(tmp_path):
    """numpy integer sizes are written as plain ints (json.dumps failed after every sample
    was rendered); an on-the-fly dataset whose last sample seed would be out of range is
    refused when made, not at its first item."""
    import json

    from corr_depth_ros.core.synth import SyntheticStereoDataset, write_dataset
    write_dataset(tmp_path / 'a', 'stereo', 1, np.int64(H), np.int64(W), progress=False,
                  contact_sheet_rows=0)
    info = json.loads((tmp_path / 'a' / 'dataset.json').read_text())
    assert (info['height'], info['width']) == (H, W)
    with pytest.raises(ValueError, match='too large'):
        SyntheticStereoDataset(2, H, W, seed=2 ** 62)


def test_global_rng_is_not_used():
    torch.manual_seed(0)
    a = render_stereo_pair(3, H, W)
    torch.manual_seed(123)
    np.random.seed(5)
    b = render_stereo_pair(3, H, W)
    _assert_same(a, b)


def test_randomised_quantities_stay_in_their_ranges():
    config = SynthConfig()
    height, width = 48, 64
    max_disparities, min_disparities, layouts_seen = [], [], 0
    for seed in range(24):
        sample = render_stereo_pair(seed, height, width, config)
        K = sample['K']
        fx_over_width = float(K[0, 0]) / width
        assert config.fx_over_width_range[0] <= fx_over_width <= config.fx_over_width_range[1]
        assert K[0, 0] == K[1, 1] and K[0, 1] == 0 and K[2, 2] == 1
        jitter = config.principal_point_jitter_frac
        assert abs(float(K[0, 2]) - (width - 1) / 2) <= jitter * width + 1e-9
        assert abs(float(K[1, 2]) - (height - 1) / 2) <= jitter * height + 1e-9
        assert config.baseline_m_range[0] <= sample['baseline_m'] <= config.baseline_m_range[1]
        for side in ('left', 'right'):
            disparity = sample[f'disparity_{side}_px']
            assert torch.isfinite(disparity).all() and (disparity > 0).all()
            assert float(disparity.max()) <= config.max_disparity_frac * width * (1 + 1e-5)
        max_disparities.append(float(sample['disparity_left_px'].max()))
        min_disparities.append(float(sample['disparity_left_px'].min()))
        assert 0.0 <= float(sample['left'].min()) and float(sample['left'].max()) <= 1.0
        layouts_seen += int(sample['instance_left'].max() > 0)
    # Wide disparity range across samples: near-zero background up to a large fraction of W.
    assert min(min_disparities) < 0.02 * width
    assert max(max_disparities) > 0.2 * width
    assert layouts_seen > 20  # almost every sample shows objects


def test_camera_responses_stay_in_their_ranges():
    config = SynthConfig(blur_prob=1.0, jpeg_prob=1.0)
    for seed in range(30):
        left, right = sample_camera_responses(Rng(seed), config, 2)
        for response in (left, right):
            low, high = config.exposure_range
            low_a, high_a = config.exposure_asymmetry_range
            assert low * low_a <= response.exposure <= high * high_a
            assert all(config.colour_gain_range[0] <= g <= config.colour_gain_range[1]
                       for g in response.colour_gain)
            assert config.gamma_range[0] <= response.gamma <= config.gamma_range[1]
            assert 0 < response.blur_sigma_px <= config.blur_sigma_px_range[1]
            assert config.jpeg_quality_range[0] <= response.jpeg_quality \
                <= config.jpeg_quality_range[1]
            assert response.read_noise_std <= config.read_noise_std_range[1]
    clean = sample_camera_responses(Rng(0), CLEAN, 2)
    assert clean[0] == clean[1]
    assert clean[0].blur_sigma_px == 0 and clean[0].jpeg_quality == 0
    assert clean[0].read_noise_std == 0 and clean[0].shot_noise_scale == 0


def test_forcing_a_layout_keeps_the_rest_of_the_random_stream():
    drawn = render_stereo_pair(4, H, W)
    for layout in ('tabletop', 'chaotic'):
        forced = render_stereo_pair(4, H, W, layout=layout)
        assert torch.equal(forced['K'], drawn['K'])
        assert forced['baseline_m'] == drawn['baseline_m']


# --------------------------------------------------------------------------- 4. disparity/occlusion

@pytest.mark.parametrize('seed', [0, 1])
def test_disparity_is_fx_baseline_over_depth(seed):
    sample = render_stereo_pair(seed, H, W)
    fx = float(sample['K'][0, 0])
    for side in ('left', 'right'):
        product = sample[f'disparity_{side}_px'].double() * sample[f'depth_{side}_m'].double()
        assert torch.allclose(product, torch.full_like(product, fx * sample['baseline_m']),
                              rtol=1e-6, atol=0)


def test_occlusion_is_non_empty_on_clutter():
    fractions = [float(render_stereo_pair(seed, H, W, layout='chaotic')['occlusion_left']
                       .float().mean()) for seed in range(3)]
    assert all(f > 0.005 for f in fractions), fractions


def test_fronto_plane_occlusion_is_only_the_out_of_view_band():
    sample = render_stereo_pair(2, H, W, CLEAN, layout='fronto_plane')
    disparity = sample['disparity_left_px'][0]
    # One fronto-parallel plane: constant depth and disparity.
    assert float(disparity.max() - disparity.min()) < 1e-3 * float(disparity.mean())
    x_right = torch.arange(W, dtype=torch.float32)[None, :] - disparity
    out_of_view = x_right < 0
    occluded = sample['occlusion_left'][0]
    assert torch.equal(occluded, out_of_view)
    assert (occluded & ~out_of_view).sum() == 0
    # And the right view sees the whole plane from the left view except its own right band.
    x_left = torch.arange(W, dtype=torch.float32)[None, :] + sample['disparity_right_px'][0]
    assert torch.equal(sample['occlusion_right'][0], x_left > W - 1)


def test_fronto_plane_fills_the_views_the_room_never_hides_it():
    """The layout is one plane facing the camera: the room around it must not come in front
    of it (its far wall used to land before the plane in a fifth of the samples, hiding it
    whole), nor show its side walls in the stereo views or multiview's first view."""
    for seed in range(12):
        sample = render_stereo_pair(seed, H, W, layout='fronto_plane')
        assert bool((sample['instance_left'] == 1).all()), seed
        assert bool((sample['instance_right'] == 1).all()), seed
        assert bool((render_multiview_pair(seed, H, W, layout='fronto_plane')['instance_a'] == 1)
                    .all()), seed


def test_instances_are_consistent_between_left_and_right():
    sample = render_stereo_pair(6, H, W, CLEAN)
    visible = ~sample['occlusion_left'][0]
    x_right = (torch.arange(W)[None, :] - sample['disparity_left_px'][0]).round().long()
    ys, xs = torch.nonzero(visible, as_tuple=True)
    same = sample['instance_right'][0, ys, x_right[ys, xs].clamp(0, W - 1)] \
        == sample['instance_left'][0, ys, xs]
    assert same.float().mean() > 0.97


# --------------------------------------------------------------------------- 5. disk round trip

def _run_cli(argv):
    from corr_depth_ros.cli import synth as synth_cli

    parser = argparse.ArgumentParser(prog='corr_depth')
    synth_cli.register(parser.add_subparsers(dest='command'))
    args = parser.parse_args(argv)
    return args.func(args)


def _assert_round_trip(loaded, rendered, image_keys):
    assert loaded.keys() == rendered.keys()
    for key, value in rendered.items():
        if key in image_keys:
            # 8-bit PNG quantisation: at most half a grey level.
            assert torch.allclose(loaded[key], value, atol=0.5 / 255 + 1e-6), key
        elif torch.is_tensor(value):
            assert loaded[key].dtype == value.dtype, key
            assert loaded[key].shape == value.shape, key
            assert torch.equal(torch.nan_to_num(loaded[key], nan=-7.0),
                               torch.nan_to_num(value, nan=-7.0)), key
        else:
            assert loaded[key] == value, key


def test_stereo_dataset_round_trip_through_the_cli(tmp_path):
    out = tmp_path / 'stereo'
    assert _run_cli(['synth', 'stereo', '--out', str(out), '--count', '2', '--size', '64x48',
                     '--seed', '3', '--no-progress', '--contact-sheet-rows', '2']) == 0
    assert (out / 'contact_sheet.png').is_file()
    dataset = SyntheticFolderDataset(out)
    assert len(dataset) == 2 and dataset.kind == 'stereo'
    for i in range(2):
        rendered = render_stereo_pair(sample_seed(3, i), 48, 64)
        _assert_round_trip(dataset[i], rendered, ('left', 'right'))
    import json
    meta = json.loads((out / '000001' / 'meta.json').read_text())
    assert meta['synth_version'] == SYNTH_VERSION and meta['seed'] == sample_seed(3, 1)
    assert SynthConfig.from_dict(meta['config']) == SynthConfig()
    # Writing over an existing dataset needs --overwrite.
    assert _run_cli(['synth', 'stereo', '--out', str(out), '--count', '1', '--size', '64x48',
                     '--no-progress']) == 2
    # With it, a smaller dataset replaces the old one whole: no leftover sample is read.
    assert _run_cli(['synth', 'stereo', '--out', str(out), '--count', '1', '--size', '64x48',
                     '--seed', '8', '--no-progress', '--overwrite']) == 0
    replaced = SyntheticFolderDataset(out)
    assert len(replaced) == 1 and not (out / '000001').exists()
    assert json.loads((out / '000000' / 'meta.json').read_text())['seed'] == sample_seed(8, 0)


def test_multiview_dataset_round_trip(tmp_path):
    out = write_dataset(tmp_path / 'mv', 'multiview', 2, 48, 64, seed=1, progress=False,
                        contact_sheet_rows=2)
    assert (out / 'contact_sheet.png').is_file()
    dataset = SyntheticFolderDataset(out)
    assert dataset.kind == 'multiview'
    for i in range(2):
        rendered = render_multiview_pair(sample_seed(1, i), 48, 64)
        _assert_round_trip(dataset[i], rendered, ('image_a', 'image_b'))


def test_pfm_round_trip_is_exact(tmp_path):
    generator = torch.Generator().manual_seed(0)
    grey = torch.randn(7, 5, generator=generator).numpy() * 1e3
    grey[2, 3] = np.nan
    grey[0, 0] = np.inf
    colour = torch.rand(4, 6, 3, generator=generator).numpy()
    write_pfm(tmp_path / 'grey.pfm', grey)
    write_pfm(tmp_path / 'colour.pfm', colour)
    np.testing.assert_array_equal(read_pfm(tmp_path / 'grey.pfm'), grey.astype(np.float32))
    np.testing.assert_array_equal(read_pfm(tmp_path / 'colour.pfm'), colour)
    # Header as other tools write it: big-endian, top row last.
    with open(tmp_path / 'big.pfm', 'wb') as f:
        f.write(b'Pf\n2 2\n1.0\n' + np.array([[1, 2], [3, 4]], dtype='>f4').tobytes())
    np.testing.assert_array_equal(read_pfm(tmp_path / 'big.pfm'), [[3, 4], [1, 2]])
    with pytest.raises(ValueError, match='not a PFM'):
        (tmp_path / 'bad.pfm').write_bytes(b'P6\n2 2\n255\n' + bytes(12))
        read_pfm(tmp_path / 'bad.pfm')


def test_rectified_pair_folder(tmp_path):
    import cv2

    for side in ('left', 'right'):
        (tmp_path / side).mkdir()
        for name in ('a', 'b'):
            cv2.imwrite(str(tmp_path / side / f'{name}.png'), np.full((6, 8, 3), 40, np.uint8))
    cv2.imwrite(str(tmp_path / 'left' / 'c.png'), np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(ValueError, match='without a partner'):
        RectifiedPairFolder(tmp_path)
    pairs = RectifiedPairFolder(tmp_path, allow_unmatched=True)
    assert len(pairs) == 2
    item = pairs[0]
    assert set(item) == {'left', 'right'}
    assert item['left'].shape == (3, 6, 8) and item['left'].dtype == torch.float32
    assert torch.allclose(item['right'], torch.full((3, 6, 8), 40 / 255))
    with pytest.raises(ValueError, match='does not exist'):
        RectifiedPairFolder(tmp_path / 'nowhere')


def test_on_the_fly_datasets_collate_and_match_the_seed_rule():
    dataset = SyntheticStereoDataset(2, 32, 40, seed=5)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch['left'].shape == (2, 3, 32, 40)
    assert batch['K'].shape == (2, 3, 3) and batch['baseline_m'].shape == (2,)
    assert torch.equal(batch['left'][1], render_stereo_pair(sample_seed(5, 1), 32, 40)['left'])
    multiview = SyntheticMultiViewDataset(2, 32, 40, seed=5)
    batch = next(iter(torch.utils.data.DataLoader(multiview, batch_size=2)))
    assert batch['match_b_px'].shape == (2, 2, 32, 40)
    assert batch['T_b_from_a'].shape == (2, 4, 4)
    with pytest.raises(IndexError):
        dataset[2]


# --------------------------------------------------------------------------- 6. bad input

@pytest.mark.parametrize('height, width, message', [
    (0, 64, 'height must be >= 2'), (48, -1, 'width must be >= 2'),
    (48.0, 64, 'height must be an int')])
def test_bad_size_raises(height, width, message):
    with pytest.raises(ValueError, match=message):
        render_stereo_pair(0, height, width)
    with pytest.raises(ValueError, match=message):
        render_multiview_pair(0, height, width)


def test_bad_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown layout 'spiral'"):
        render_stereo_pair(0, H, W, layout='spiral')
    with pytest.raises(ValueError, match='unknown layout'):
        SynthConfig(layouts=('tabletop', 'spiral'), layout_weights=(1, 1))
    with pytest.raises(ValueError, match='lo > hi'):
        SynthConfig(baseline_m_range=(0.3, 0.1))
    with pytest.raises(ValueError, match='must be > 0'):
        SynthConfig(fx_over_width_range=(0.0, 1.0))
    with pytest.raises(ValueError, match='texture_weights has 2 entries'):
        SynthConfig(textures=('fbm', 'checker', 'dots'), texture_weights=(1, 1))
    with pytest.raises(ValueError, match='seed must be in'):
        render_stereo_pair(-1, H, W)
    with pytest.raises(ValueError, match='config must be a SynthConfig'):
        render_stereo_pair(0, H, W, config={'baseline_m_range': (0.1, 0.2)})
    with pytest.raises(ValueError, match='unknown dataset kind'):
        write_dataset(tmp_path, 'mono', 1, H, W)
    with pytest.raises(ValueError, match='count must be a positive int'):
        write_dataset(tmp_path, 'stereo', 0, H, W)
    with pytest.raises(ValueError, match='no samples'):
        SyntheticFolderDataset(tmp_path)
    with pytest.raises(ValueError, match='unknown keys'):
        SynthConfig.from_dict({'warp_drive': True})


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    cpu = render_stereo_pair(9, H, W, CLEAN)
    gpu = render_stereo_pair(9, H, W, CLEAN, device='cuda')
    assert gpu['left'].device.type == 'cuda'
    assert torch.allclose(gpu['depth_left_m'].cpu(), cpu['depth_left_m'], rtol=1e-4)
    assert (gpu['left'].cpu() - cpu['left']).abs().mean() < 1e-3
    assert (gpu['occlusion_left'].cpu() != cpu['occlusion_left']).float().mean() < 1e-3


def test_no_nan_pixels_where_the_view_faces_the_light():
    # Seed found by the descriptor evaluation: camera B looks almost straight against the light,
    # where the Blinn-Phong half vector degenerates; 1.0 rendered 6081 NaN pixels here.
    sample = render_multiview_pair(1000500003, 240, 320)
    for key in ('image_a', 'image_b'):
        assert torch.isfinite(sample[key]).all(), key
        assert sample[key].min() >= 0 and sample[key].max() <= 1


def test_noise_atlas_lookup_is_trilinear_in_the_volume():
    """The 2D-atlas lookup (two bilinear taps + lerp) equals trilinear sampling of the 3D
    volume, wrap-around included (coordinates far outside one period, negative ones too)."""
    from corr_depth_ros.core.synth import textures

    generator = torch.Generator().manual_seed(3)
    q = torch.randn(3, 20000, generator=generator) * 9.0
    sharp = torch.zeros(q.shape[1])  # footprint 0: full band, no attenuation
    got = textures.sample_noise(q, sharp)
    u = q / textures._NOISE_PERIOD
    grid = (2.0 * (u - torch.floor(u)) - 1.0).T.reshape(1, 1, 1, -1, 3)
    want = F.grid_sample(textures.noise_volume('cpu'), grid, mode='bilinear',
                         padding_mode='border', align_corners=True)[0, :2, 0, 0]
    assert got.shape == want.shape == (2, q.shape[1])
    assert torch.allclose(got, want, atol=1e-3), (got - want).abs().max()
    assert want.std() > 0.5  # not trivially zero


def test_right_view_follows_the_last_disparity_cap_rescale():
    """Seed 1261 at 64x48 needs five rescales: the right view must be the final scene's (it
    was the previous one's, 22.402 px against the 22.4 px cap, with a wrong edge pixel)."""
    from corr_depth_ros.core.synth.stereo import render_stereo_pair
    sample = render_stereo_pair(1261, 48, 64)
    cap = SynthConfig().max_disparity_frac * 64
    assert float(torch.nan_to_num(sample['disparity_right_px']).max()) <= cap + 1e-3
