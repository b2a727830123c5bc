"""Dense object descriptors, core tier: network shapes, DON loss known values, matching,
normals and grasp orientation, reference persistence and network-identity refusal."""
import math
import os

import numpy as np
import pytest
import torch

from corr_depth_ros.core.descriptors import grasp, matching, references
from corr_depth_ros.core.descriptors.loss import (ContrastiveConfig, contrastive_terms,
                                                  mine_hardest_non_matches, pair_loss,
                                                  sample_descriptors)
from corr_depth_ros.core.descriptors.network import (DEFAULT_SCALES, build_descriptor_net,
                                                     compute_descriptors)
from corr_depth_ros.core.geometry import depth_to_points


def tiny_net(seed=0, descriptor_dim=5):
    torch.manual_seed(seed)
    return build_descriptor_net(descriptor_dim=descriptor_dim, base_channels=4, normalize=True).eval()


# --- network -----------------------------------------------------------------------------------
@pytest.mark.parametrize('height,width', [(32, 48), (37, 53)])
def test_network_full_resolution_unit_descriptors(height, width):
    net = tiny_net()
    with torch.no_grad():
        out = net(torch.rand(2, 3, height, width))
    assert out.shape == (2, 5, height, width)
    norms = out.norm(dim=1)
    # Normalised at 1/2 resolution then bilinearly upsampled: within a few % of unit length.
    assert torch.all(norms <= 1.0 + 1e-5) and float(norms.mean()) > 0.9


def test_network_factory_is_keyword_only_and_checks_inputs():
    with pytest.raises(TypeError):
        build_descriptor_net(3, 4, True)  # noqa: the factory is keyword-only
    with pytest.raises(ValueError):
        build_descriptor_net(descriptor_dim=0, base_channels=4, normalize=True)
    with pytest.raises(ValueError, match='image'):
        tiny_net()(torch.rand(1, 4, 16, 16))
    net = build_descriptor_net(descriptor_dim=3, base_channels=4, normalize=False)
    assert net.config() == {'descriptor_dim': 3, 'base_channels': 4, 'normalize': False}
    image = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    assert compute_descriptors(net.eval(), image, scales=[1.0]).shape == (3, 20, 30)
    assert compute_descriptors(net.eval(), image).shape == (3 * len(DEFAULT_SCALES), 20, 30)


@pytest.mark.parametrize('height,width', [(37, 53), (40, 56)])
def test_multi_scale_descriptors_are_the_passes_side_by_side(height, width):
    """Block 0 is the full-resolution pass, block 1 the half-scale pass resampled onto the
    full grid (pixel centres aligned, padding cropped), both scaled by 1/sqrt(2). At 37x53 the
    half pass is resampled by a non-integer factor, at 40x56 by exactly 4 (the separable path)."""
    import torch.nn.functional as F

    net = tiny_net(seed=2, descriptor_dim=4).eval()
    image = (np.random.default_rng(5).random((height, width, 3)) * 255).astype(np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    both = compute_descriptors(net, image, scales=(1.0, 0.5))
    assert both.shape == (8, height, width)
    small_h, small_w = round(height * 0.5), round(width * 0.5)
    with torch.no_grad():
        np.testing.assert_allclose(both[:4] * math.sqrt(2), net(x)[0], atol=1e-6)
        small = F.interpolate(x, size=(small_h, small_w), mode='bilinear', antialias=True,
                              align_corners=False)
        low = net.forward_low(small)[0]                      # padded input, half resolution
    # Output pixel X sits at pass pixel (X + 0.5) * small_w / width - 0.5, i.e. at
    # ((X + 0.5) * small_w / width) / 2 - 0.5 on the half-resolution output of that pass.
    xs = ((np.arange(width) + 0.5) * small_w / width) / 2 - 0.5
    ys = ((np.arange(height) + 0.5) * small_h / height) / 2 - 0.5
    grid = torch.stack(torch.meshgrid(torch.tensor(ys), torch.tensor(xs), indexing='ij')[::-1],
                       -1).float()
    grid[..., 0] = (2 * grid[..., 0] + 1) / low.shape[2] - 1
    grid[..., 1] = (2 * grid[..., 1] + 1) / low.shape[1] - 1
    want = F.grid_sample(low[None], grid[None], mode='bilinear', padding_mode='border',
                         align_corners=False)[0] / math.sqrt(2)
    np.testing.assert_allclose(both[4:], want, atol=1e-5)
    for bad in ([], [0.5, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.5], 'x'):
        with pytest.raises(ValueError, match='scales'):
            compute_descriptors(net, image, scales=bad)


@pytest.mark.parametrize('factors', [(2, 2), (4, 4), (3, 2), (1, 4)])
@pytest.mark.parametrize('crop', [(0, 0), (1, 3), (2, 1)])
def test_separable_upsampling_matches_interpolate(factors, crop):
    """upsample_bilinear_into equals F.interpolate(align_corners=False) cropped, including
    edge clamping, one-pixel sources and channels-last input; bad sizes are refused."""
    import torch.nn.functional as F
    from corr_depth_ros.core.descriptors.network import upsample_bilinear_into

    generator = torch.Generator().manual_seed(sum(factors) + 7 * sum(crop))
    for h, w in ((5, 7), (1, 3), (2, 1)):
        low = torch.randn(2, 3, h, w, generator=generator)
        want = F.interpolate(low, scale_factor=factors, mode='bilinear', align_corners=False)
        height = max(1, factors[0] * h - crop[0])
        width = max(1, factors[1] * w - crop[1])
        for src in (low, low.contiguous(memory_format=torch.channels_last)):
            out = torch.full((2, 3, height, width), float('nan'))
            assert upsample_bilinear_into(src, factors, out) is out
            np.testing.assert_allclose(out, want[..., :height, :width], atol=1e-6)
    low = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match='does not fit'):
        upsample_bilinear_into(low, factors, torch.empty(1, 2, 4 * factors[0] + 1, 4))
    with pytest.raises(ValueError, match='does not fit'):
        upsample_bilinear_into(low, factors, torch.empty(1, 3, 4, 4))
    with pytest.raises(ValueError, match='integers >= 1'):
        upsample_bilinear_into(low, (0, 2), torch.empty(1, 2, 4, 4))


def test_loaded_net_runs_channels_last_with_the_same_descriptors(tmp_path):
    """load_descriptor_net keeps the weights channels-last (the fast CPU layout): same
    descriptors as the plain module, a plain contiguous result, and the same identity."""
    from corr_depth_ros.core.descriptors.network import load_descriptor_net
    from corr_depth_ros.core.training import save_weights

    net = tiny_net(seed=3, descriptor_dim=4)
    path = str(tmp_path / 'tiny.safetensors')
    header = save_weights(path, net, arch=references.ARCH, config=net.config(), metadata={})
    loaded, _ = load_descriptor_net(path)
    conv = loaded.down[0][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()
    assert references.network_identity(loaded) == header['identity']
    image = (np.random.default_rng(7).random((37, 53, 3)) * 255).astype(np.uint8)
    got = compute_descriptors(loaded, image)
    assert got.is_contiguous()
    np.testing.assert_allclose(got, compute_descriptors(net, image), atol=1e-5)


# --- loss ----------------------------------------------------------------------------------------
def test_contrastive_terms_known_values_and_hard_negative_scaling():
    match_a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    match_b = torch.tensor([[0.0, 1.0], [1.0, 0.5]])     # squared distances 1 and 0.25
    # Non-match distances 0.2, 0.5, 3.0 with margin 1: hinges 0.8, 0.5, 0 -> two hard negatives.
    non_a = torch.zeros(3, 2)
    non_b = torch.tensor([[0.2, 0.0], [0.0, 0.5], [3.0, 0.0]])
    match_loss, non_match_loss, num_hard = contrastive_terms(match_a, match_b, non_a, non_b, 1.0)
    assert float(match_loss) == pytest.approx((1.0 + 0.25) / 2)
    assert int(num_hard) == 2
    # Scaled by the 2 hard negatives, not by all 3 non-matches.
    assert float(non_match_loss) == pytest.approx((0.8 ** 2 + 0.5 ** 2) / 2)
    # Masking a pair out removes it from both the sum and the count.
    _, masked, hard = contrastive_terms(match_a, match_b, non_a, non_b, 1.0,
                                        torch.tensor([True, False, True]))
    assert int(hard) == 1 and float(masked) == pytest.approx(0.8 ** 2)
    # No hard negative: exactly 0, not 0/0.
    _, none, hard = contrastive_terms(match_a, match_b, non_a, non_b * 0 + 5.0, 1.0)
    assert int(hard) == 0 and float(none) == 0.0
    with pytest.raises(ValueError):
        contrastive_terms(match_a, match_b[:1], non_a, non_b, 1.0)


def test_sample_descriptors_bilinear():
    desc = torch.arange(12, dtype=torch.float32).view(1, 3, 4)   # value = 4*row + col
    pixels = torch.tensor([[0.0, 0.0], [3.0, 2.0], [1.5, 0.5]])
    got = sample_descriptors(desc, pixels)[:, 0]
    assert torch.allclose(got, torch.tensor([0.0, 11.0, 0.5 * 4 + 1.5]))


def test_sample_descriptors_keeps_sub_pixel_locations_under_bfloat16():
    """Descriptors in bfloat16 (mixed-precision training): the locations are not rounded to
    bfloat16 (200.3 would read at ~200.2); the values come back in the descriptors' dtype."""
    ramp = torch.arange(256, dtype=torch.float32).view(1, 1, 256).expand(1, 2, 256)
    pixels = torch.tensor([[200.3, 1.0], [60.2, 0.0]])
    got = sample_descriptors(ramp.to(torch.bfloat16), pixels)
    assert got.dtype == torch.bfloat16
    # bfloat16 holds 200.3 as 200.0 and 60.2 as 60.25, so a grid of the descriptors' dtype
    # reads at those places. In float32 the reads are exact; a ramp that is 0 at 200 shows the
    # 0.3 px in the bfloat16 case too.
    exact = sample_descriptors(ramp, pixels)[:, 0]
    torch.testing.assert_close(exact, torch.tensor([200.3, 60.2]))
    ramp_small = (torch.arange(256, dtype=torch.float32) - 200.0).view(1, 1, 256)
    near = sample_descriptors(ramp_small.to(torch.bfloat16), pixels[:1])[0, 0]
    assert abs(float(near) - 0.3) < 0.01      # 0.3 px past 200, not 0.2 or 0


def _pair_batch(height=24, width=32, shift_px=3):
    """B = A shifted right by shift_px: every A pixel with x + shift < W matches (x + shift, y)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    match = torch.stack([xs + shift_px, ys]).float()
    valid = (xs + shift_px) < width
    objects = (xs > 8) & (xs < 20)
    return match, valid, objects


def test_pair_loss_perfect_descriptors_beat_random_and_backpropagate():
    match, valid, objects = _pair_batch()
    height, width = valid.shape
    cfg = ContrastiveConfig(num_matches=256, margin=0.5)
    # "Perfect" descriptors: a unique code per scene point (its x, y in B coordinates, scaled).
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    desc_b = torch.stack([xs, ys]).float() / 4.0
    desc_a = torch.stack([xs + 3, ys]).float() / 4.0
    gen = torch.Generator().manual_seed(0)
    perfect, logs = pair_loss(desc_a, desc_b, match, valid, objects, objects, cfg, gen)
    assert logs['match_loss'] == pytest.approx(0.0, abs=1e-9)
    noise = torch.randn(2, height, width, generator=gen, requires_grad=True)
    random_loss, _ = pair_loss(noise, desc_b, match, valid, objects, objects, cfg, gen)
    assert float(random_loss.detach()) > float(perfect) + 0.1
    random_loss.backward()
    assert noise.grad is not None and float(noise.grad.abs().sum()) > 0


def test_match_edge_band_marks_field_jumps_and_occlusion_borders_only():
    from corr_depth_ros.core.descriptors.loss import match_edge_band
    height, width = 16, 40
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(),
                            indexing='ij')
    match = torch.stack([xs - 2.0, ys])             # the background shifts by 2 px...
    match[0, :, 20:] -= 10.0                       # ...the right half (nearer) by 12: a jump
    valid = match[0] >= 0                          # columns 0-1 land outside B: a view's edge
    valid[:, 30:33] = False                        # hidden in B though inside it: occluded
    band = match_edge_band(match, valid, jump_px=3.0, radius_px=2)
    cols = band.any(0)
    assert band[:, 17:23].all()                    # 2 px each side of the jump (19 | 20)
    assert band[:, 28:30].all() and band[:, 33:35].all()   # beside the occluded columns
    assert not band[:, 30:33].any()                # never an invalid pixel itself
    assert not cols[:17].any() and not cols[23:28].any() and not cols[35:].any()
    assert not band[:, 2:4].any()                  # out-of-view columns make no edge
    # A stereo-like field: steps of +3.5 and -3.5 px of disparity are both edges, +-2.5 are not.
    for step, marked in ((3.5, True), (-3.5, True), (2.5, False), (-2.5, False)):
        field = torch.stack([xs - 5.0, ys])
        field[0, :, 20:] -= step
        assert bool(match_edge_band(field, field[0] >= 0, jump_px=3.0, radius_px=1).any()) == marked
    # A view zoomed 3.5 times lands neighbours 3.5 px apart, but moves them smoothly: no edge.
    assert not match_edge_band(torch.stack([3.5 * xs, 3.5 * ys]),
                               torch.ones(height, width, dtype=torch.bool)).any()


def test_edge_match_weight_draws_matches_near_edges_and_is_absent_when_off(monkeypatch):
    from corr_depth_ros.core.descriptors import loss as loss_mod
    match, valid, objects = _pair_batch()
    height, width = valid.shape
    match = match.clone()
    match[0, :, width // 2:] -= 8.0                # a vertical correspondence edge
    band = loss_mod.match_edge_band(match, valid)
    assert band.any() and float(band.float().mean()) < 0.5
    drawn = []
    original = torch.multinomial
    monkeypatch.setattr(loss_mod.torch, 'multinomial',
                        lambda weights, *a, **k: drawn.append(weights) or original(weights, *a, **k))
    desc = torch.zeros(2, height, width)
    weights = {}
    for weight in (1.0, 8.0):
        drawn.clear()
        pair_loss(desc, desc, match, valid, objects, objects,
                  ContrastiveConfig(num_matches=64, edge_match_weight=weight))
        weights[weight] = drawn[0].view(height, width)   # the first draw is the matches'
    # Band pixels weigh 8 times as much as before (objects keep their own factor), others the same.
    assert torch.allclose(weights[8.0][band], 8.0 * weights[1.0][band])
    assert torch.equal(weights[8.0][~band], weights[1.0][~band])
    assert 'edge_match_weight' not in ContrastiveConfig().to_dict()
    assert ContrastiveConfig(edge_match_weight=3.0).to_dict()['edge_match_weight'] == 3.0


def test_mining_returns_the_closest_pixels_outside_the_exclusion_disc():
    height, width = 12, 16
    desc = torch.full((2, height, width), 10.0)
    # The reference sits at (5, 6); its own pixel and a neighbour 2 px away are identical to it,
    # three far pixels come next, nearest first.
    desc[:, 6, 5] = 0.0
    desc[:, 6, 7] = 0.0
    for rank, (x, y) in enumerate([(14, 1), (0, 11), (9, 9)]):
        desc[:, y, x] = torch.tensor([0.1 * (rank + 1), 0.0])
    reference = torch.zeros(1, 2)
    truth = torch.tensor([[5.0, 6.0]])
    mined = mine_hardest_non_matches(reference, desc, truth, 3, exclusion_px=3.0)
    assert mined.shape == (1, 3, 2)
    assert mined[0].tolist() == [[14.0, 1.0], [0.0, 11.0], [9.0, 9.0]]
    # With a 1.5 px disc the neighbour 2 px away is the hardest non-match.
    mined = mine_hardest_non_matches(reference, desc, truth, 1, exclusion_px=1.5)
    assert mined[0].tolist() == [[7.0, 6.0]]
    # A match at the image corner: the disc is clipped, nothing wraps to the next row.
    corner = mine_hardest_non_matches(torch.full((1, 2), 10.0), desc, torch.tensor([[15.0, 0.0]]),
                                      4, exclusion_px=3.0)
    assert all(math.hypot(x - 15, y) >= 3.0 for x, y in corner[0].tolist())
    with pytest.raises(ValueError, match='count'):
        mine_hardest_non_matches(reference, desc, truth, height * width, exclusion_px=3.0)


def test_pair_loss_global_term_finds_a_far_confuser():
    match, valid, objects = _pair_batch()
    height, width = valid.shape
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    desc_b = torch.stack([xs, ys]).float() / 4.0
    desc_a = torch.stack([xs + 3, ys]).float() / 4.0
    only = torch.zeros_like(valid)
    only[10, 10] = True           # every sampled match is A's pixel (10, 10)
    mined = ContrastiveConfig(num_matches=64, margin=0.5, global_non_matches=2,
                              global_matches=64)
    # Perfect descriptors: every pixel 3 px or more from the match is beyond the margin.
    _, logs = pair_loss(desc_a, desc_b, match, only, objects, objects, mined,
                        torch.Generator().manual_seed(0))
    assert logs['global_loss'] == 0.0
    # One confuser far from the match, in a corner uniform sampling would rarely draw.
    desc_b[:, 1, width - 2] = desc_a[:, 10, 10]
    desc_a.requires_grad_(True)
    loss, logs = pair_loss(desc_a, desc_b, match, only, objects, objects, mined,
                           torch.Generator().manual_seed(0))
    assert logs['global_hard_frac'] > 0 and logs['global_loss'] > 0
    loss.backward()
    assert float(desc_a.grad[:, 10, 10].abs().sum()) > 0


# --- matching ------------------------------------------------------------------------------------
def _constructed_descriptors(height=30, width=40, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.normal(size=(dim, height, width)).astype(np.float32))


def test_best_match_finds_planted_descriptors_with_confidence():
    desc = _constructed_descriptors()
    targets = [(5, 7), (33, 21), (0, 0)]           # (x, y)
    reference = torch.stack([desc[:, y, x] for x, y in targets])
    result = matching.find_best_matches(reference, desc, subpixel=False)
    assert np.allclose(result['match_px'], np.array(targets, dtype=np.float32))
    assert np.allclose(result['distance'], 0.0, atol=1e-3)
    expected = 1 - (result['distance'] + 0.1) / (result['second_distance'] + 0.1)
    assert np.allclose(result['confidence'], expected, atol=1e-5)
    assert np.all(result['confidence'] > 0.5)
    # A descriptor that occurs twice, far apart, is ambiguous: confidence near 0.
    repeated = desc.clone()
    repeated[:, 25, 30] = repeated[:, 3, 3] + 0.001
    ambiguous = matching.find_best_matches(repeated[:, 3, 3][None], repeated)
    assert ambiguous['confidence'][0] < 0.1 and ambiguous['second_distance'][0] < 0.05
    # Norms kept with the image (as the node keeps them per frame): the same result; norms of
    # another image are refused.
    kept = matching.find_best_matches(reference, desc, subpixel=False,
                                      norms2=matching.pixel_norms2(desc))
    for key in result:
        np.testing.assert_allclose(kept[key], result[key], atol=1e-5)
    with pytest.raises(ValueError, match='norms2'):
        matching.find_best_matches(reference, desc, norms2=matching.pixel_norms2(desc[:, :20]))
    heat = matching.descriptor_heatmap(reference[1], desc, sigma=0.5)
    assert heat.shape == (30, 40) and heat[21, 33] == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(matching.descriptor_heatmap(reference[1], desc, 0.5,
                                                           matching.pixel_norms2(desc)),
                               heat, atol=1e-5)
    assert np.unravel_index(np.argmax(heat), heat.shape) == (21, 33)


def test_subpixel_refinement_on_a_smooth_field():
    height, width = 20, 30
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing='ij')
    desc = torch.stack([xs, ys]) * 0.1     # linear field: a descriptor names its position
    reference = torch.tensor([[12.3 * 0.1, 7.6 * 0.1]])
    result = matching.find_best_matches(reference, desc)
    # |d|^2 is exactly a paraboloid here, so the fit recovers the position (a fit through |d|,
    # a cone, gave 12.23 and 7.67).
    assert np.abs(result['match_px'][0] - np.array([12.3, 7.6])).max() < 1e-4


def test_descriptors_at_rejects_out_of_bounds_pixel_with_a_message():
    desc = _constructed_descriptors()
    with pytest.raises(ValueError, match=r'outside the 40x30 image'):
        matching.descriptors_at(desc, np.array([[40.0, 2.0]]))
    assert matching.descriptors_at(desc, np.array([[39.0, 29.0]])).shape == (1, 4)


# --- grasp ---------------------------------------------------------------------------------------
def _plane_points(normal, offset_m=1.0, height=40, width=50, f_px=60.0):
    """Points of the plane n.p = -offset (n towards the camera) seen by a pinhole camera, the
    plane's unit normal and the camera's (fx, fy, cx, cy)."""
    normal = np.asarray(normal, dtype=np.float64) / np.linalg.norm(normal)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    ray = np.stack([(u - cx) / f_px, (v - cy) / f_px, np.ones_like(u, dtype=np.float64)], -1)
    depth = -offset_m / (ray @ normal)
    intrinsics = (f_px, f_px, cx, cy)
    return depth_to_points(depth.astype(np.float32), *intrinsics), normal, intrinsics


def test_fit_normal_on_a_tilted_plane_points_to_camera():
    points, true_normal, intrinsics = _plane_points([0.3, -0.2, -1.0])
    normal, reason = grasp.fit_normal(points, (25, 20), radius_px=4)
    assert reason == ''
    assert np.dot(normal, true_normal) > 0.999          # same direction, towards the camera
    holes = points.copy()
    holes[10:30, 15:35] = np.nan
    holes[20, 25] = points[20, 25]
    normal, reason = grasp.fit_normal(holes, (25, 20), radius_px=4)
    assert np.all(np.isnan(normal)) and 'valid depth points' in reason


def test_fit_normal_leaves_out_the_surface_behind_a_depth_edge():
    """A box face 0.5 m away in front of a wall 1 m away, both facing the camera: near the
    box's outline the window holds both, and their joint fit was a wall seen edge-on (an
    approach from the side, reported as found)."""
    height, width, f_px = 90, 120, 100.0
    depth = np.full((height, width), 1.0, np.float32)
    depth[:, :60] = 0.5
    intrinsics = (f_px, f_px, 60.0, 45.0)
    points = depth_to_points(depth, *intrinsics)
    for col in (55, 59, 60, 64):     # on the box and on the wall, next to the edge
        normal, reason = grasp.fit_normal(points, (col, 45), radius_px=5)
        assert reason == '' and np.allclose(normal, [0, 0, -1], atol=1e-4), (col, normal)
    # A steep but continuous surface (70 degrees from facing the camera) is still followed.
    slanted, true_normal, _ = _plane_points(
        [np.sin(np.radians(70)), 0.0, -np.cos(np.radians(70))])
    normal, reason = grasp.fit_normal(slanted, (25, 20), radius_px=4)
    assert reason == '' and np.dot(normal, true_normal) > 0.999


def test_grasp_position_projects_onto_the_sub_pixel_match():
    points, _, intrinsics = _plane_points([0.3, -0.2, -1.0])
    fx, fy, cx, cy = intrinsics
    for pixel in [(25.4, 20.3), (24.6, 19.7), (25.0, 20.0)]:
        position = grasp.grasp_at(points, pixel, intrinsics)['position']
        assert np.isclose(position[2], points[20, 25, 2])      # the nearest pixel's depth
        projected = (fx * position[0] / position[2] + cx, fy * position[1] / position[2] + cy)
        assert np.allclose(projected, pixel, atol=1e-3), (pixel, projected)


def test_grasp_pose_z_axis_is_the_approach():
    points, true_normal, intrinsics = _plane_points([0.3, -0.2, -1.0])
    pose = grasp.grasp_at(points, (25, 20), intrinsics)
    assert pose['reason'] == ''
    x, y, z, w = pose['quaternion_xyzw']
    assert math.isclose(x * x + y * y + z * z + w * w, 1.0, rel_tol=1e-6)
    from transforms3d.quaternions import quat2mat
    rotation = quat2mat([w, x, y, z])
    assert np.allclose(rotation[:, 2], -true_normal, atol=1e-3)   # z points into the surface
    assert np.allclose(pose['position'], points[20, 25])
    nan_points = points.copy()
    nan_points[20, 25] = np.nan
    missing = grasp.grasp_at(nan_points, (25, 20), intrinsics)
    assert np.all(np.isnan(missing['position'])) and 'depth' in missing['reason']


def test_rotation_to_quaternion_identity_and_axis():
    assert np.allclose(grasp.rotation_to_quaternion_xyzw(np.eye(3)), [0, 0, 0, 1])
    rot_z90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    s = math.sqrt(0.5)
    assert np.allclose(grasp.rotation_to_quaternion_xyzw(rot_z90), [0, 0, s, s])


# --- references ----------------------------------------------------------------------------------

def test_rotation_to_quaternion_uses_tf_transformations_when_installed(monkeypatch):
    """With a ROS install's tf_transformations importable, it computes the quaternion (from a
    4x4 matrix, xyzw); the result is the same as transforms3d's, w >= 0."""
    import sys
    import types

    from transforms3d.quaternions import mat2quat
    calls = []

    def quaternion_from_matrix(matrix):
        calls.append(np.asarray(matrix).shape)
        w, x, y, z = mat2quat(np.asarray(matrix)[:3, :3])
        return [-x, -y, -z, -w]          # the other sign: still the same rotation
    stub = types.SimpleNamespace(quaternion_from_matrix=quaternion_from_matrix)
    rot_z90 = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    expected = grasp.rotation_to_quaternion_xyzw(rot_z90)
    monkeypatch.setitem(sys.modules, 'tf_transformations', stub)
    assert np.allclose(grasp.rotation_to_quaternion_xyzw(rot_z90), expected)
    assert calls == [(4, 4)]


def test_reference_persistence_and_identity_refusal(tmp_path):
    net = tiny_net(seed=0)
    other = tiny_net(seed=1)
    net_id = references.network_identity(net)
    assert net_id == references.network_identity(tiny_net(seed=0))
    assert net_id != references.network_identity(other)
    # Descriptors made at other scales are not comparable: another identity.
    assert net_id == references.network_identity(net, [1.0])
    assert references.network_identity(net, (1.0, 0.5)) not in (
        net_id, references.network_identity(net, (1.0, 0.75)))
    image = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    desc = compute_descriptors(net, image)
    pixels = np.array([[10.0, 12.0], [50.0, 40.0]], dtype=np.float32)
    ref = references.Reference('mug_handle', pixels, matching.descriptors_at(desc, pixels).numpy(),
                               net_id, (48, 64), references.make_thumbnail(image, 32))
    store = references.ReferenceStore(str(tmp_path), net_id)
    store.put(ref, overwrite=False)
    with pytest.raises(references.ReferenceError, match='overwrite'):
        store.put(ref, overwrite=False)
    # A new store (a restarted node) reloads it from disk, bit for bit.
    reloaded = references.ReferenceStore(str(tmp_path), net_id).get('mug_handle')
    assert np.array_equal(reloaded.descriptors, ref.descriptors)
    assert np.array_equal(reloaded.pixels_xy, pixels) and reloaded.image_size == (48, 64)
    assert reloaded.thumbnail.shape == (24, 32, 3)
    got_pixels, got_desc = references.lookup(store, 'mug_handle', np.array([[50.0, 40.0]]))
    assert np.array_equal(got_desc, ref.descriptors[1:])
    with pytest.raises(references.ReferenceError, match='not stored'):
        references.lookup(store, 'mug_handle', np.array([[1.0, 1.0]]))
    with pytest.raises(references.ReferenceError, match='not stored'):   # not pixel 0
        references.lookup(store, 'mug_handle', np.array([[np.nan, np.nan]]))
    # Another network refuses it, saying why and what to do.
    foreign = references.ReferenceStore(str(tmp_path), references.network_identity(other))
    with pytest.raises(references.ReferenceError, match='made by descriptor network .*set_reference'):
        foreign.get('mug_handle')
    with pytest.raises(references.ReferenceError, match='unknown reference_id'):
        store.get('nope')
    with pytest.raises(references.ReferenceError, match='not usable'):
        references.Reference('../evil', pixels, ref.descriptors, net_id, (48, 64))
    with pytest.raises(references.ReferenceError, match='not usable'):
        references.validate_reference_id('mug\n')       # `$` would let a final newline pass
    for hidden in ('.', '..', '.mug'):                 # would name hidden files
        with pytest.raises(references.ReferenceError, match='not usable'):
            references.validate_reference_id(hidden)
    references.validate_reference_id('mug.v2')
    # A huge id in a request is not echoed whole.
    with pytest.raises(references.ReferenceError) as info:
        references.validate_reference_id('a' * 100_000)
    assert len(str(info.value)) < 300 and '100000 characters' in str(info.value)
    with pytest.raises(references.ReferenceError) as info:
        store.get('b' * 100_000)
    assert len(str(info.value)) < 300


def test_reference_store_refuses_files_that_are_not_what_they_claim(tmp_path):
    """At load: a copy of a reference file under another name (it replaced the real reference
    at every restart, since ids came from the metadata), and descriptors of a size this network
    never makes (every request failed with an internal error), are skipped with a reason; a
    references_dir that cannot be a folder says so by name (it was a FileExistsError)."""
    net_id = references.network_identity(tiny_net(seed=0, descriptor_dim=4))
    pixels = np.array([[1.0, 2.0]], np.float32)
    store = references.ReferenceStore(str(tmp_path), net_id, descriptor_size=4)
    store.put(references.Reference('handle', pixels, np.ones((1, 4), np.float32), net_id,
                                   (10, 10)), overwrite=False)
    other = references.Reference('rim', pixels * 2, np.zeros((1, 4), np.float32), net_id, (10, 10))
    references.save_reference(str(tmp_path / 'zz_copy.safetensors'),
                              references.Reference('handle', pixels * 3,
                                                   np.zeros((1, 4), np.float32), net_id, (10, 10)))
    references.save_reference(str(tmp_path / 'wide.safetensors'), references.Reference(
        'wide', pixels, np.zeros((1, 7), np.float32), net_id, (10, 10)))
    store.put(other, overwrite=False)
    reloaded = references.ReferenceStore(str(tmp_path), net_id, descriptor_size=4)
    assert reloaded.ids() == ['handle', 'rim']
    assert np.array_equal(reloaded.get('handle').pixels_xy, pixels)      # not the copy's
    problems = '\n'.join(reloaded.load_errors)
    assert "zz_copy.safetensors: holds reference 'handle', which is stored as " \
        'handle.safetensors' in problems, problems
    assert 'wide.safetensors: descriptors of 7 numbers, but this network makes 4' in problems
    # Asked for by its file's name, the copy says what it is (it was an "unknown" id, and
    # storing that id said another node had stored it).
    with pytest.raises(references.ReferenceError, match="zz_copy.safetensors holds reference "
                       "'handle'"):
        reloaded.get('zz_copy')
    not_a_folder = tmp_path / 'file'
    not_a_folder.write_text('')
    for directory in (not_a_folder, not_a_folder / 'below'):
        with pytest.raises(references.ReferenceError, match=f'references_dir {str(directory)!r} '
                           'cannot be used as a folder'):
            references.ReferenceStore(str(directory), net_id)



def test_reference_stores_sharing_a_folder_and_damaged_files(tmp_path):
    """Two nodes on one references_dir: the second's set_reference (overwrite false) replaced
    the first's file and said "stored"; a damaged file (no pixels, NaN descriptors, a missing
    tensor, truncated) loaded and failed later with an internal error, or was skipped and then
    called an unknown id; a folder that cannot be written answered "internal error:
    SafetensorError"; references made at other descriptor scales were said to be of other
    weights."""
    net_id = references.network_identity(tiny_net(seed=0, descriptor_dim=4))
    pixels = np.array([[1.0, 2.0]], np.float32)

    def make(reference_id, value=1.0, network=net_id, **kwargs):
        return references.Reference(reference_id, pixels, np.full((1, 4), value, np.float32),
                                    network, (10, 10), **kwargs)
    first = references.ReferenceStore(str(tmp_path), net_id, descriptor_size=4)
    second = references.ReferenceStore(str(tmp_path), net_id, descriptor_size=4)
    first.put(make('mug'), overwrite=False)
    with pytest.raises(references.ReferenceError, match='stored in .* since this node started '
                       r'\(another node shares references_dir\)'):
        second.put(make('mug', 2.0), overwrite=False)
    assert references.load_reference(str(tmp_path / 'mug.safetensors')).descriptors[0, 0] == 1.0
    second.put(make('mug', 2.0), overwrite=True)                      # asked for: replaced
    assert sorted(os.listdir(tmp_path)) == ['mug.safetensors']        # no temporary left
    with pytest.raises(references.ReferenceError, match='has no pixels'):
        references.Reference('empty', np.zeros((0, 2), np.float32), np.zeros((0, 4), np.float32),
                             net_id, (10, 10))
    from safetensors.numpy import save_file
    good = {'pixels_xy': pixels, 'descriptors': np.ones((1, 4), np.float32),
            'thumbnail': np.zeros((1, 1, 3), np.uint8)}
    meta = {'reference_id': 'x', 'network_id': net_id, 'image_size': '[10, 10]',
            'created_s': '0.0', 'format': 'corr_depth_ros.reference/1'}
    save_file({**good, 'descriptors': np.full((1, 4), np.nan, np.float32)},
              str(tmp_path / 'nan.safetensors'), metadata={**meta, 'reference_id': 'nan'})
    save_file({k: v for k, v in good.items() if k != 'descriptors'},
              str(tmp_path / 'nodesc.safetensors'), metadata={**meta, 'reference_id': 'nodesc'})
    save_file({**good, 'pixels_xy': np.zeros((0, 2), np.float32),
               'descriptors': np.zeros((0, 4), np.float32)},
              str(tmp_path / 'none.safetensors'), metadata={**meta, 'reference_id': 'none'})
    (tmp_path / 'cut.safetensors').write_bytes(
        (tmp_path / 'mug.safetensors').read_bytes()[:50])
    reloaded = references.ReferenceStore(str(tmp_path), net_id, descriptor_size=4)
    assert reloaded.ids() == ['mug']
    for reference_id, why in (('nan', 'descriptors that are not finite'),
                              ('nodesc', 'lacks descriptors'), ('none', 'has no pixels'),
                              ('cut', 'could not be loaded')):
        with pytest.raises(references.ReferenceError) as info:
            reloaded.get(reference_id)
        assert why in str(info.value) and 're-create it' in str(info.value), str(info.value)
        assert 'unknown reference_id' not in str(info.value)
    # At other scales, with the same weights: said so, not "another network".
    weights_id = 'w' * 16
    half = references.ReferenceStore(str(tmp_path / 'scales'), 'a' * 16, descriptor_size=4,
                                     weights_id=weights_id, scales=(1.0, 0.5))
    half.put(make('rim', network='a' * 16, weights_id=weights_id, scales=(1.0, 0.5)),
             overwrite=False)
    one = references.ReferenceStore(str(tmp_path / 'scales'), 'b' * 16, descriptor_size=4,
                                    weights_id=weights_id, scales=(1.0,))
    with pytest.raises(references.ReferenceError, match=r'described at descriptor_scales '
                       r'\[1.0, 0.5\], this node runs \[1.0\]: set descriptor_scales'):
        one.get('rim')
    assert one.foreign() == {'rim': 'described at descriptor_scales [1.0, 0.5], this node '
                                    'runs [1.0]'}
    # A folder that cannot be written (here it became a file): a reason, not an internal error.
    gone = tmp_path / 'gone'
    store = references.ReferenceStore(str(gone), net_id, descriptor_size=4)
    gone.rmdir()
    gone.write_text('')
    with pytest.raises(references.ReferenceError, match='could not be stored in references_dir'):
        store.put(make('lid'), overwrite=False)


# --- evaluation ground truth ----------------------------------------------------------------------
def test_visible_in_right_finds_occlusion_and_out_of_view():
    from corr_depth_ros.core.descriptors.evaluate import visible_in_right
    disparity = np.full((3, 30), 2.0, np.float32)
    disparity[:, 10:20] = 6.0           # a nearer block: it hides the background to its left
    disparity[1, 25] = np.nan           # no ground truth
    visible = visible_in_right(disparity)
    expected = np.ones((3, 30), bool)
    expected[:, 0:2] = False            # x - 2 < 0: outside the right image
    expected[:, 6:10] = False           # lands on right columns 4..7, which the block covers
    expected[1, 25] = False
    assert np.array_equal(visible, expected)


def test_queries_split_by_distance_to_a_depth_edge():
    from corr_depth_ros.core.descriptors.evaluate import (depth_edge_distance_px,
                                                          pck_by_edge_distance)
    disparity = np.full((5, 30), 4.0, np.float32)
    disparity[:, 10:] += 0.5 * np.arange(20)    # a slant: 0.5 px a pixel is no edge
    disparity[:, 20:] += 10.0                   # a 10 px step between columns 19 and 20
    disparity[2, 3] = np.inf                    # missing GT makes no edge either
    distance = depth_edge_distance_px(disparity)
    assert np.all(distance[:, 19:21] == 0)
    assert distance[2, 25] == pytest.approx(5.0) and distance[2, 3] == pytest.approx(16.0)
    assert np.isinf(depth_edge_distance_px(np.full((4, 4), 3.0))).all()
    errors = np.array([0.5, 5.0, 1.0, 2.0, 9.0])
    split = pck_by_edge_distance(errors, np.array([0.0, 2.0, 4.0, 12.0, 30.0]))
    assert split == {'0-3px': {'pck@3': 0.5, 'queries': 2}, '3-10px': {'pck@3': 1.0, 'queries': 1},
                     '10px+': {'pck@3': 0.5, 'queries': 2}}
    assert pck_by_edge_distance(errors[:1], np.zeros(1))['10px+'] == {'pck@3': None, 'queries': 0}
    # An image without an edge puts every query at infinity: the last bin.
    assert pck_by_edge_distance(errors, np.full(5, np.inf))['10px+']['queries'] == 5


# Measured for the shipped weights with `corr_depth eval corr --dataset motorcycle` (1000
# queries): PCK@3 0.791 (D=32). A collapsed or mis-loaded net scores near 0 (a D=3 run: 0.013).
SHIPPED_MOTORCYCLE_PCK3_MIN = 0.60


def test_shipped_weights_find_motorcycle_points_in_the_right_image():
    """The shipped net on the real pair, whole right image searched, 200 visible queries."""
    from corr_depth_ros.core.descriptors import evaluate as ev
    from corr_depth_ros.core.motorcycle import load_motorcycle
    model, header = ev.load_model(None)
    data = load_motorcycle()
    queries, truth = ev.motorcycle_queries(data['disparity_px'], 200, seed=1)
    def net(a, b, q, t):
        return ev.match_descriptor_net(model, a, b, q, t)
    results, _ = ev.evaluate_pair({'net': net}, data['left'], data['right'], queries, truth)
    assert results['net']['pck@3'] >= SHIPPED_MOTORCYCLE_PCK3_MIN, (results['net'],
                                                                     header['identity'])


def test_eval_corr_synthetic_splits(tmp_path):
    """`corr_depth eval corr --dataset synthetic` scores held-out seeds by default and, with
    --split train, the first training seeds (the under- vs overfitting check)."""
    import json

    from corr_depth_ros.cli import main as cli_main
    from corr_depth_ros.core.descriptors.data import HELD_OUT_SEED
    seeds = {}
    for split in ('held-out', 'train'):
        out = tmp_path / f'{split}.json'
        assert cli_main(['eval', 'corr', '--dataset', 'synthetic', '--split', split, '--pairs', '1',
                         '--queries', '20', '--size', '64x48', '--baselines', '',
                         '--json', str(out)]) == 0
        report = json.loads(out.read_text())
        assert report['protocol'].startswith(split)
        assert 0.0 <= report['results']['descriptor_net']['pck@3'] <= 1.0
        seeds[split] = int(report['protocol'].split('(seeds ')[1].split(' ')[0])
    assert seeds['train'] == 0 and seeds['held-out'] >= HELD_OUT_SEED


def test_eval_corr_motorcycle_with_both_baselines_and_the_figure(tmp_path):
    """The benchmark's own path: Motorcycle, the net against SIFT and NCC (settings recorded),
    whole right image searched, and the matches figure."""
    import json

    from corr_depth_ros.cli import main as cli_main
    out, figure = tmp_path / 'moto.json', tmp_path / 'moto.png'
    assert cli_main(['eval', 'corr', '--dataset', 'motorcycle', '--queries', '10',
                     '--json', str(out), '--figure', str(figure)]) == 0
    report = json.loads(out.read_text())
    assert set(report['results']) == {'descriptor_net', 'sift', 'ncc'}
    for method in report['results'].values():
        assert {'pck@1', 'pck@3', 'pck@5', 'pck@10', 'median_error_px',
                'mean_fraction_false_positives'} <= set(method)
    assert 'validation' in report['baseline_settings']['chosen_on']
    by_edge = report['by_depth_edge_distance']
    for method in report['results']:
        assert sum(b['queries'] for b in by_edge[method].values()) == 10
    assert figure.is_file() and figure.stat().st_size > 0


def test_eval_corr_synthetic_object_queries_lie_on_objects(tmp_path, monkeypatch):
    """--queries-on objects samples queries only where A shows an object visible in B."""
    import json

    from corr_depth_ros.cli import main as cli_main
    from corr_depth_ros.core.descriptors import evaluate as ev
    from corr_depth_ros.core.descriptors.data import HELD_OUT_SEED, render_sample
    drawn = []
    original = ev.sample_queries

    def spy(valid, count, seed=0, border_px=0):
        drawn.append((valid.copy(), original(valid, count, seed, border_px)))
        return drawn[-1][1]
    monkeypatch.setattr(ev, 'sample_queries', spy)
    out = tmp_path / 'objects.json'
    assert cli_main(['eval', 'corr', '--dataset', 'synthetic', '--queries-on', 'objects',
                     '--pairs', '2', '--queries', '20', '--size', '64x48', '--baselines', '',
                     '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    assert report['queries_on'] == 'objects' and 'on objects' in report['protocol']
    skipped = report.get('pairs_without_object_queries', [])
    assert len(drawn) + len(skipped) == 2 and drawn
    seeds = [s for s in (HELD_OUT_SEED + ev.SYNTHETIC_TEST_OFFSET + i for i in range(2))
             if s not in skipped]
    for seed, (valid, queries) in zip(seeds, drawn):
        pair = render_sample('multiview', seed, 48, 64)
        on_object = (pair['object_mask_a'][0] & pair['match_valid'][0]).numpy()
        assert np.array_equal(valid, on_object)
        assert on_object[queries[:, 1].astype(int), queries[:, 0].astype(int)].all()


def test_train_descriptors_cli_fine_tunes_given_weights_with_mined_negatives(tmp_path):
    """`corr_depth train descriptors --init-from W --global-non-matches K`: two steps on tiny
    pairs start from W's network (its size, not the flags' defaults) and record the loss."""
    import json

    from safetensors.torch import load_file

    from corr_depth_ros.cli import main as cli_main
    from corr_depth_ros.core.training import read_weights_header, save_weights
    config = {'descriptor_dim': 6, 'base_channels': 8, 'normalize': True}
    start = build_descriptor_net(**config)
    start_path = str(tmp_path / 'start.safetensors')
    save_weights(start_path, start, arch=references.ARCH, config=config, metadata={})
    out = tmp_path / 'run'
    assert cli_main(['train', 'descriptors', '--out', str(out), '--init-from', start_path,
                     '--steps', '2', '--batch-size', '1', '--size', '64x48', '--pool-size', '2',
                     '--val-every', '2', '--checkpoint-every', '2', '--num-matches', '32',
                     '--global-non-matches', '3', '--global-matches', '16', '--lr', '1e-2',
                     '--edge-match-weight', '4']) == 0
    path = str(out / 'last.safetensors')
    header = read_weights_header(path)
    assert header['config'] == config
    meta = header['metadata']
    assert meta['initialised_from']['identity'] == read_weights_header(start_path)['identity']
    assert meta['spec']['descriptor_dim'] == 6
    assert meta['loss']['global_non_matches'] == 3 and meta['loss']['global_matches'] == 16
    assert meta['loss']['edge_match_weight'] == 4.0
    # Steps, data version and validation numbers, named as in best.safetensors.
    assert meta['steps'] == 2 and meta['synth_version'].startswith('corr_depth_synth-')
    best_meta = read_weights_header(str(out / 'best.safetensors'))['metadata']
    assert set(meta['validation']) == set(best_meta['validation']) and 'pck@3' in meta['validation']
    assert best_meta['steps'] == 2
    trained = load_file(path)
    assert any(not torch.equal(trained[k], v) for k, v in start.state_dict().items())
    logged = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert any('global_loss' in entry for entry in logged)


def test_pair_pool_streams_per_rank_and_after_a_resume(monkeypatch):
    """Ranks render disjoint seeds; a resumed pool renders the pairs that came next."""
    from corr_depth_ros.core.descriptors import data
    monkeypatch.setattr(data, 'render_sample', lambda kind, seed, h, w, config=None: {'seed': seed})

    def seeds_of(pool, reads):
        for i in range(reads):
            pool[i]
        return sorted(p['seed'] for p in pool.pool)
    fresh = data.PairPool(100, 8, 8, pool_size=4, renew_per_item=0.5, seed=2)
    assert seeds_of(fresh, 1) == [20_000_000, 20_000_001, 20_000_002, 20_000_003]
    rank1 = data.PairPool(100, 8, 8, pool_size=4, renew_per_item=0.5, seed=2)
    rank1.start_stream(rank=1, items_read=0, world_size=2)
    assert seeds_of(rank1, 1)[0] == 2 * data.SEEDS_PER_RUN + data.SEEDS_PER_RANK
    # Beyond 10 processes (2 nodes x 8 GPUs) the run's seeds are shared out evenly (rank 10
    # was refused); up to 10, every rank renders what it did before.
    rank15 = data.PairPool(100, 8, 8, pool_size=4, renew_per_item=0.5, seed=2)
    rank15.start_stream(rank=15, items_read=0, world_size=16)
    assert seeds_of(rank15, 1)[0] == 2 * data.SEEDS_PER_RUN + 15 * (data.SEEDS_PER_RUN // 16)
    assert data.seeds_per_rank(10) == data.SEEDS_PER_RANK
    with pytest.raises(ValueError, match=r'rank must be in \[0, 2\)'):
        data.PairPool(100, 8, 8, pool_size=4, seed=2).start_stream(rank=2, world_size=2)
    # After 20 reads the fresh pool has rendered 4 + 10 seeds; a pool resumed there starts
    # with the newest four of them instead of the first four again.
    seeds_of(fresh, 19)
    resumed = data.PairPool(100, 8, 8, pool_size=4, renew_per_item=0.5, seed=2)
    resumed.start_stream(rank=0, items_read=20)
    assert seeds_of(resumed, 0 + 1)[0] == 20_000_010
    assert max(p['seed'] for p in fresh.pool) == 20_000_013
    with pytest.raises(RuntimeError, match='before the first read'):
        resumed.start_stream(rank=0, items_read=40)


def test_baselines_are_refined_to_sub_pixel_like_the_net():
    """SIFT and NCC matches are refined as the descriptor net's are (they were whole pixels,
    which cost them ~0.5 px against a fractional ground truth and flattered the net's PCK@1)."""
    import cv2
    from corr_depth_ros.core.descriptors.evaluate import match_ncc, match_sift
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.random((120, 160)).astype(np.float32), (0, 0), 2.0)
    texture = (255 * (texture - texture.min()) / np.ptp(texture)).astype(np.uint8)
    image_a = np.repeat(texture[..., None], 3, axis=2)
    shift = 2.5       # B shows A moved 2.5 px left: A's (x, y) is B's (x - 2.5, y)
    image_b = cv2.warpAffine(image_a, np.float32([[1, 0, -shift], [0, 1, 0]]), (160, 120),
                             flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
    queries = np.stack([rng.uniform(30, 130, 20).round(), rng.uniform(30, 90, 20).round()],
                       1).astype(np.float32)
    truth = queries - np.float32([shift, 0.0])
    for method in (lambda *a: match_sift(*a), lambda *a: match_ncc(*a, patch_px=21)):
        matches, _ = method(image_a, image_b, queries, truth)
        errors = np.linalg.norm(matches - truth, axis=1)
        assert np.median(errors) < 0.2, errors


def test_small_images_and_large_requests_stay_sane(monkeypatch):
    """On an image smaller than the exclusion window there is no runner-up: confidence is 0,
    not 1 (a uniform 7x5 image read 'unambiguous'); on a large image the distance maps are
    computed a few references at a time (a 200-pixel request on 12 megapixels took GBs), with
    the same matches."""
    desc = torch.nn.functional.normalize(torch.ones(4, 5, 7), dim=0)     # uniform 7x5 image
    found = matching.find_best_matches(desc[:, :1, 0].t().contiguous(), desc)
    assert np.isinf(found['second_distance'][0]) and found['confidence'][0] == 0.0
    assert matching.match_confidence(np.array([0.1]), np.array([2.0]))[0] > 0.9
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.rand(8, 40, 50, generator=generator), dim=0)
    reference = matching.descriptors_at(image, np.array([[3.0, 4.0], [20.0, 30.0], [49.0, 0.0],
                                                         [10.0, 10.0], [33.0, 21.0]]))
    whole = matching.find_best_matches(reference, image)
    rows = []
    squared = matching.squared_distances
    monkeypatch.setattr(matching, 'squared_distances',
                        lambda ref, *a, **k: (rows.append(len(ref)), squared(ref, *a, **k))[1])
    monkeypatch.setattr(matching, 'CHUNK_BYTES', 2 * 4 * 40 * 50)      # two maps a chunk
    chunked = matching.find_best_matches(reference, image)
    assert rows == [2, 2, 1]
    for key in ('match_px', 'distance', 'second_distance', 'confidence'):
        np.testing.assert_allclose(chunked[key], whole[key], atol=1e-2)   # float rounding
