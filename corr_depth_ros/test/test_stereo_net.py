"""Core tests of the learned stereo network: shapes, known values, round trips, training signal.

Tiny random-weight models only (house style 11); accuracy of the shipped weights lives in
test_learned_backend.py.
"""
import json
import math

import pytest

torch = pytest.importorskip('torch')

from corr_depth_ros.core.stereo_net import ARCH, build_stereo_net  # noqa: E402
from corr_depth_ros.core.stereo_net.cost_volume import (concatenation_volume,  # noqa: E402
                                                        groupwise_correlation_volume)
from corr_depth_ros.core.stereo_net.model import DIVISIBILITY  # noqa: E402
from corr_depth_ros.core.stereo_net.refinement import convex_upsample  # noqa: E402
from corr_depth_ros.core.stereo_net.regression import (entropy_confidence,  # noqa: E402
                                                       peak_confidence, soft_argmin_disparity)
from corr_depth_ros.core.stereo_net.train import (AugmentConfig, StereoTrainingSet,  # noqa: E402
                                                  augment_pair, random_crop, rescale_and_crop,
                                                  stereo_loss)
from corr_depth_ros.core.training import load_weights, save_weights  # noqa: E402

TINY = dict(max_disparity_px=32, feature_channels=8, groups=2, aggregation_channels=(8, 8, 8))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return build_stereo_net(**TINY)


@pytest.mark.parametrize('height,width', [(64, 96), (37, 53), (70, 130), (1 + DIVISIBILITY, 2)])
def test_any_size_is_padded_and_cropped_back(height, width):
    model = tiny_model().eval()
    left, right = torch.rand(2, 3, height, width), torch.rand(2, 3, height, width)
    with torch.no_grad():
        out = model(left, right)
    assert out['disparity'].shape == (2, 1, height, width)
    assert out['confidence'].shape == (2, 1, height, width)
    assert torch.isfinite(out['disparity']).all()
    # Disparities are convex combinations of candidates 0..D-1 (times the stride).
    assert out['disparity'].min() >= 0 and out['disparity'].max() <= TINY['max_disparity_px']
    assert out['confidence'].min() >= 0 and out['confidence'].max() <= 1


@pytest.mark.parametrize('refine_channels', [0, 4])
def test_inference_form_gives_the_same_output(refine_channels):
    """prepare_for_inference (as LearnedBackend loads): BN folded into every convolution,
    the transposed ones included, weights channels-last; same disparity and confidence."""
    import copy

    from corr_depth_ros.core.inference_prep import prepare_for_inference
    torch.manual_seed(4)
    model = build_stereo_net(**TINY, refine_channels=refine_channels).eval()
    with torch.no_grad():
        if refine_channels:   # a trained-looking refiner (its last layer starts at zero)
            model.refiner.head[-1].weight.normal_(0.0, 0.1)
        for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            # Distinct per-channel statistics, so a scale on the wrong axis shows.
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.1)
            norm.running_mean.normal_(0.0, 0.1)
            norm.running_var.uniform_(0.5, 2.0)
    fast = prepare_for_inference(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in fast.modules())
    conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    left, right = torch.rand(1, 3, 70, 130), torch.rand(1, 3, 70, 130)
    with torch.no_grad():
        want, got = model(left, right), fast(left, right)
    for key in ('disparity', 'confidence'):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4)


def test_training_mode_returns_multiscale_outputs():
    model = tiny_model().train()
    out = model(torch.rand(1, 3, 40, 72), torch.rand(1, 3, 40, 72))
    for key in ('disparity', 'disparity_coarse', 'disparity_coarser', 'confidence'):
        assert out[key].shape == (1, 1, 40, 72), key


def test_mismatched_inputs_and_bad_config_raise():
    model = tiny_model()
    with pytest.raises(ValueError):
        model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 48))
    with pytest.raises(ValueError):
        build_stereo_net(max_disparity_px=30)        # not a multiple of the feature stride
    with pytest.raises(ValueError):
        build_stereo_net(feature_channels=12, groups=8)


def test_groupwise_correlation_known_values():
    left = torch.full((1, 4, 3, 10), 2.0)
    right = torch.full((1, 4, 3, 10), 3.0)
    right[:, 2:] = -1.0                         # second group anti-correlated
    volume = groupwise_correlation_volume(left, right, num_disparities=4, groups=2)
    assert volume.shape == (1, 2, 4, 3, 10)
    for d in range(4):
        # No match candidate for the first d columns: zeros there, as in GwcNet.
        assert torch.all(volume[0, :, d, :, :d] == 0)
        assert torch.allclose(volume[0, 0, d, :, d:], torch.tensor(6.0))
        assert torch.allclose(volume[0, 1, d, :, d:], torch.tensor(-2.0))


def test_groupwise_correlation_peaks_at_the_true_shift():
    torch.manual_seed(1)
    shift = 3
    right = torch.randn(1, 16, 5, 40)
    left = torch.zeros_like(right)
    left[..., shift:] = right[..., :-shift]     # left(w) = right(w - shift)
    volume = groupwise_correlation_volume(left, right, num_disparities=8, groups=4)
    best = volume.mean(dim=1).argmax(dim=1)     # (1, 5, 40)
    assert torch.all(best[..., shift + 8:] == shift)
    concat = concatenation_volume(left[:, :2], right[:, :2], 4)
    assert concat.shape == (1, 4, 4, 5, 40)
    assert torch.equal(concat[:, 2:, 2, :, 2:], right[:, :2, :, :-2])


def test_soft_argmin_on_known_distributions():
    prob = torch.zeros(1, 12, 1, 3)
    prob[0, 5, 0, 0] = 1.0                                   # one-hot at 5
    prob[0, 3, 0, 1] = prob[0, 4, 0, 1] = 0.5                # half way between 3 and 4
    prob[0, 2, 0, 2], prob[0, 10, 0, 2] = 0.6, 0.4           # two modes
    full = soft_argmin_disparity(prob)[0, 0, 0]
    assert torch.allclose(full, torch.tensor([5.0, 3.5, 0.6 * 2 + 0.4 * 10]))
    local = soft_argmin_disparity(prob, radius=1)[0, 0, 0]
    # The window around the arg-max ignores the far mode instead of averaging the two.
    assert torch.allclose(local, torch.tensor([5.0, 3.5, 2.0]))


def test_confidence_range_and_extremes():
    torch.manual_seed(2)
    prob = torch.softmax(torch.randn(2, 16, 8, 8) * 3, dim=1)
    for conf in (peak_confidence(prob), entropy_confidence(prob)):
        assert conf.shape == (2, 1, 8, 8)
        assert conf.min() >= 0 and conf.max() <= 1
    one_hot = torch.zeros(1, 16, 1, 1)
    one_hot[0, 7] = 1
    uniform = torch.full((1, 16, 1, 1), 1 / 16)
    assert peak_confidence(one_hot).item() == pytest.approx(1.0)
    # Flat: the arg-max is candidate 0, so the window holds 2 of 16 candidates.
    assert peak_confidence(uniform).item() == pytest.approx(2 / 16)
    assert entropy_confidence(one_hot).item() == pytest.approx(1.0)
    assert entropy_confidence(uniform).item() == pytest.approx(0.0, abs=1e-6)


def test_convex_upsample_keeps_constants_and_picks_neighbours():
    values = torch.full((1, 1, 3, 4), 7.0)
    up = convex_upsample(values, torch.randn(1, 9 * 4, 3, 4), factor=2)
    assert up.shape == (1, 1, 6, 8)
    assert torch.allclose(up, torch.tensor(7.0))
    # Weight logits that select the centre neighbour reproduce nearest-neighbour upsampling.
    values = torch.arange(12.0).view(1, 1, 3, 4)
    logits = torch.full((1, 9, 2, 2, 3, 4), -1e4)
    logits[:, 4] = 0
    up = convex_upsample(values, logits.view(1, 36, 3, 4), factor=2)
    assert torch.equal(up, values.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_convex_upsample_equals_the_softmax_formula_values_and_gradients():
    """The neighbour-by-neighbour weighted sum (in-place multiply-adds) against RAFT's formula
    written as one broadcast product, in training too."""
    def reference(values, logits, factor):
        batch, channels, height, width = values.shape
        weights = torch.softmax(logits.view(batch, 1, 9, factor, factor, height, width), dim=2)
        padded = torch.nn.functional.pad(values, (1, 1, 1, 1), mode='replicate')
        neighbours = torch.stack([padded[:, :, dy:dy + height, dx:dx + width]
                                  for dy in range(3) for dx in range(3)], dim=2)
        up = (weights * neighbours.view(batch, channels, 9, 1, 1, height, width)).sum(dim=2)
        return up.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, height * factor,
                                                     width * factor)
    torch.manual_seed(5)
    values, logits = torch.randn(2, 2, 3, 4), 4 * torch.randn(2, 9 * 9, 3, 4)
    weights = torch.randn(2, 2, 9, 12)
    results = []
    for upsample in (convex_upsample, reference):
        v, g = values.clone().requires_grad_(), logits.clone().requires_grad_()
        up = upsample(v, g, 3)
        (up * weights).sum().backward()
        results.append((up.detach(), v.grad, g.grad))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs)


def test_safetensors_round_trip_strict_and_arch_mismatch(tmp_path):
    model = tiny_model(seed=3).eval()
    path = str(tmp_path / 'tiny.safetensors')
    save_weights(path, model, arch=ARCH, config=dict(TINY, aggregation_channels=[8, 8, 8]),
                 metadata={'note': 'test'})
    loaded, header = load_weights(path, build_stereo_net, expected_arch=ARCH)
    loaded.eval()
    assert header['metadata'] == {'note': 'test'}
    left, right = torch.rand(1, 3, 40, 56), torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(model(left, right)['disparity'], loaded(left, right)['disparity'])
    with pytest.raises(ValueError, match='expected'):
        load_weights(path, build_stereo_net, expected_arch='some_other_arch')
    # Strict loading: a config that builds a different network must not load silently.
    save_weights(path, model, arch=ARCH, config=dict(TINY, aggregation_channels=[8, 8, 16]),
                 metadata={})
    with pytest.raises(ValueError, match=f'{path} does not hold the tensors .* the network has'):
        load_weights(path, build_stereo_net, expected_arch=ARCH)


def test_loss_ignores_pixels_without_ground_truth():
    gt = torch.full((1, 1, 4, 4), float('nan'))
    gt[0, 0, 1, 1] = 5.0
    gt[0, 0, 2, 2] = 500.0                      # beyond the search range: ignored too
    pred = torch.full((1, 1, 4, 4), 3.0)
    loss, logs = stereo_loss({'disparity': pred}, gt, max_disparity_px=192)
    assert logs['epe_px'] == pytest.approx(2.0)
    assert loss.item() == pytest.approx(1.5)    # smooth L1 with a 1 px knee: 2 - 0.5


def test_edge_weight_weighs_pixels_near_depth_steps():
    from corr_depth_ros.core.stereo_net.train import disparity_edge_band
    gt = torch.full((1, 1, 12, 20), 10.0)
    gt[..., 10:] = 30.0                          # a depth edge between columns 9 and 10
    gt[..., 0, 0] = float('nan')                 # no ground truth: not an edge by itself
    band = disparity_edge_band(gt)[0, 0]
    assert band[:, 6:14].all() and not band[:, :6].any() and not band[:, 14:].any()
    pred = torch.nan_to_num(gt)
    pred[..., 9] += 2.0                          # 2 px off at the edge (smooth L1: 1.5)
    pred[..., 0] += 2.0                          # and far from it
    plain, _ = stereo_loss({'disparity': pred}, gt, max_disparity_px=192)
    weighted, logs = stereo_loss({'disparity': pred}, gt, max_disparity_px=192, edge_weight=3.0)
    valid = 12 * 20 - 1
    assert plain.item() == pytest.approx(1.5 * (12 + 11) / valid)
    # Weights: 3 in the 8-column band (3 px each side of the step), 1 elsewhere; the mean
    # is over the weights.
    weight_sum = 3.0 * 8 * 12 + (valid - 8 * 12)
    assert weighted.item() == pytest.approx(1.5 * (3.0 * 12 + 11) / weight_sum)
    assert logs['epe_px'] == pytest.approx(2.0 * (12 + 11) / valid)   # EPE unweighted
    same, _ = stereo_loss({'disparity': pred}, gt, max_disparity_px=192, edge_weight=1.0)
    assert same.item() == plain.item()


def test_augmentation_is_seeded_and_changes_the_pair():
    torch.manual_seed(4)
    left, right = torch.rand(3, 32, 48), torch.rand(3, 32, 48)
    a = augment_pair(left, right, seed=11)
    b = augment_pair(left, right, seed=11)
    c = augment_pair(left, right, seed=12)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert not torch.equal(a[0], left)
    for image in a:
        assert image.shape == (3, 32, 48) and image.min() >= 0 and image.max() <= 1


def _warp_error(left, right, disparity_px, valid):
    """Mean |left - right sampled at (x - d, y)| over ``valid`` pixels of (3, H, W) images."""
    _, height, width = right.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32),
                            torch.arange(width, dtype=torch.float32), indexing='ij')
    grid = torch.stack([2 * (xs - disparity_px[0]) / (width - 1) - 1,
                        2 * ys / (height - 1) - 1], dim=-1)
    warped = torch.nn.functional.grid_sample(right[None], grid[None], align_corners=True)[0]
    return float((warped - left).abs().amax(dim=0)[valid].mean())


def test_photometric_draws_are_independent_of_the_geometric_ones(monkeypatch):
    """An item's mirror and its left/right photometric asymmetry are separate coin flips (they
    once replayed the same random numbers, so the two always came together)."""
    from corr_depth_ros.core.stereo_net import train as train_mod
    seeds = []
    monkeypatch.setattr(train_mod, 'augment_pair',
                        lambda left, right, seed, cfg: seeds.append(seed) or (left, right))
    sample = {'left': torch.zeros(3, 8, 8), 'right': torch.zeros(3, 8, 8),
              'disparity_left_px': torch.ones(1, 8, 8), 'disparity_right_px': torch.ones(1, 8, 8)}
    cfg = AugmentConfig(mirror_prob=0.5, asymmetric_prob=0.5, scale_prob=0.0)
    dataset = StereoTrainingSet([sample], cfg, seed=3, length=400)
    both = 0
    for index in range(400):
        mirrored = float(torch.rand(2, generator=torch.Generator().manual_seed(
            train_mod.AUGMENT_SEED_OFFSET + 3 * 7_919 + index))[0]) < 0.5
        dataset[index]
        asymmetric = float(torch.rand((), generator=torch.Generator().manual_seed(
            seeds[-1]))) < 0.5
        both += mirrored == asymmetric
    assert len(set(seeds)) == 400
    assert 140 < both < 260        # independent: about half agree (binomial sd 10)


@pytest.mark.parametrize('mirror,vflip', [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_geometric_flips_keep_a_consistent_pair(mirror, vflip):
    synth = pytest.importorskip('corr_depth_ros.core.synth')
    sample = synth.render_stereo_pair(3, 64, 96, synth.SynthConfig().clean())
    # Photometric changes off, so only geometry can break the warp check.
    no_photometric = AugmentConfig(asymmetric_prob=0.0, brightness=0.0, contrast=(1.0, 1.0),
                                   gamma=(1.0, 1.0), channel_gain=0.0, noise_std=(0.0, 0.0),
                                   patch_prob=0.0, mirror_prob=mirror, vflip_prob=vflip)
    item = StereoTrainingSet([sample], no_photometric, length=3)[2]
    disparity = item['disparity_px']
    expected = sample['disparity_right_px'].flip(-1) if mirror else sample['disparity_left_px']
    assert torch.equal(disparity, expected.flip(-2) if vflip else expected)
    valid = torch.isfinite(disparity[0]) & (disparity[0] > 0)
    valid[:, :2] = False
    valid[:, -2:] = False
    good = _warp_error(item['left'], item['right'], disparity, valid)
    # The un-mirrored ground truth on the mirrored images must fail the same check.
    wrong = _warp_error(item['left'], item['right'], sample['disparity_left_px'], valid)
    assert good < 0.015 and wrong > 1.6 * good, (good, wrong)


def test_scale_augmentation_keeps_a_consistent_pair():
    """Enlarged 1.5x and cropped back: same sizes, disparities multiplied by 1.5 (nearest
    sampling: no value mixes two surfaces), and the pair still warps onto itself with them,
    which it does not with the unscaled values."""
    synth = pytest.importorskip('corr_depth_ros.core.synth')
    sample = synth.render_stereo_pair(6, 64, 96, synth.SynthConfig().clean())  # ~12 px
    left, right = sample['left'].float(), sample['right'].float()
    original = sample['disparity_left_px'].float()
    gen = torch.Generator().manual_seed(5)
    big_left, big_right, disparity = rescale_and_crop(left, right, original, gen, (1.5, 1.5))
    assert big_left.shape == left.shape and big_right.shape == right.shape
    assert disparity.shape == original.shape
    values = disparity[torch.isfinite(disparity)]
    assert values.numel() > 0.5 * disparity.numel()
    allowed = torch.unique(original[torch.isfinite(original)]) * 1.5
    assert torch.isin(values, allowed).all()
    # The warp check on pixels seen by both cameras whose match lies inside the crop.
    _, _, occluded = rescale_and_crop(left, right, sample['occlusion_left'].float(),
                                      torch.Generator().manual_seed(5), (1.5, 1.5))
    columns = torch.arange(disparity.shape[-1], dtype=torch.float32)
    valid = torch.isfinite(disparity[0]) & (occluded[0] == 0) & (columns - disparity[0] >= 1)
    valid[:, -3:] = False
    assert valid.float().mean() > 0.3
    good = _warp_error(big_left, big_right, disparity, valid)
    wrong = _warp_error(big_left, big_right, disparity / 1.5, valid)
    assert good < 0.02 and wrong > 3 * good, (good, wrong)
    # Shrunk to 0.8 into a smaller crop (a pool larger than the training size): the same.
    small_left, small_right, small = rescale_and_crop(left, right, original, gen, (0.8, 0.8),
                                                      (48, 72))
    assert small_left.shape == (3, 48, 72) and small.shape == (1, 48, 72)
    assert torch.isin(small[torch.isfinite(small)],
                      torch.unique(original[torch.isfinite(original)]) * (77 / 96)).all()  # 96 -> 77
    # Off by default; a training item with it on has the training size, and an unaugmented
    # item of a larger pool is its centre.
    assert AugmentConfig().scale_prob == 0.0
    item = StereoTrainingSet([sample], AugmentConfig(scale_prob=1.0), length=2)[1]
    assert item['left'].shape == left.shape and item['disparity_px'].shape == original.shape
    item = StereoTrainingSet([sample], AugmentConfig(scale_prob=1.0, scale_range=(0.5, 0.5)),
                             length=2, crop_hw=(40, 64))[1]
    assert item['left'].shape == (3, 40, 64) and item['disparity_px'].shape == (1, 40, 64)
    centre = StereoTrainingSet([sample], None, crop_hw=(40, 64))[0]
    assert torch.equal(centre['left'], left[:, 12:52, 16:80])
    assert torch.equal(centre['left'], random_crop((left,), None, (40, 64))[0])


def test_loss_decreases_on_a_tiny_synthetic_batch():
    synth = pytest.importorskip('corr_depth_ros.core.synth.stereo')
    torch.manual_seed(0)
    samples = [synth.render_stereo_pair(seed, 64, 96) for seed in (1, 2)]
    left = torch.stack([s['left'] for s in samples])
    right = torch.stack([s['right'] for s in samples])
    gt = torch.stack([s['disparity_left_px'] for s in samples])
    model = tiny_model(seed=5).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = stereo_loss(model(left, right), gt, TINY['max_disparity_px'])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses


def test_batchnorm_recalibration_changes_statistics_not_weights():
    from corr_depth_ros.core.stereo_net.train import recalibrate_batchnorm
    model = tiny_model(seed=6)
    weights = {k: v.clone() for k, v in model.state_dict().items() if 'running' not in k
               and 'num_batches' not in k}
    data = [{'left': torch.rand(3, 32, 64) * 0.2 + 0.7, 'right': torch.rand(3, 32, 64) * 0.2 + 0.7}
            for _ in range(4)]
    recalibrate_batchnorm(model, data, batches=2, batch_size=2)
    assert not model.training
    stem_norm = model.features.stem[0][1]
    # Bright, low-contrast inputs: the first BatchNorm's mean moved away from its reset value 0.
    assert stem_norm.running_mean.abs().max() > 1e-3
    for key, value in model.state_dict().items():
        if key in weights:
            assert torch.equal(value, weights[key]), key


def test_cli_size_and_count_types():
    """The CLI's argparse types refuse bad sizes and counts while parsing."""
    import argparse

    from corr_depth_ros.cli._args import positive_float, positive_int, size_hw
    assert size_hw('256x192') == (192, 256)
    for bad in ('256', '256x', 'x192', '256x1', '-4x3'):
        with pytest.raises(argparse.ArgumentTypeError):
            size_hw(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        positive_int('0')
    for bad in ('0', '-1', 'inf', 'nan'):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_float(bad)


@pytest.mark.parametrize('argv', [
    ['train', 'stereo', '--val-every', '0'], ['train', 'stereo', '--val-count', '0'],
    ['train', 'stereo', '--log-every', '0'], ['train', 'mono', '--height', '100'],
    ['train', 'mono', '--checkpoint-every', '0'], ['train', 'descriptors', '--seed', '100'],
    ['train', 'descriptors', '--pool-size', '0'], ['train', 'descriptors', '--num-matches', '0'],
    ['train', 'descriptors', '--margin', '-1'], ['train', 'descriptors', '--global-matches', '0'],
    ['train', 'descriptors', '--stereo-fraction', '1.5']])
def test_train_options_that_would_fail_mid_run_are_refused_while_parsing(argv, capsys, tmp_path):
    """Once a ZeroDivisionError or an IndexError after the first step, a crash on the first
    read (training seeds running into the held-out range), a mono size the net cannot take."""
    from corr_depth_ros.cli import main as cli_main
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv + ['--out' if argv[1] != 'mono' else '--out-dir', str(tmp_path / 'run')])
    assert exit_info.value.code == 2
    assert argv[2] in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


def test_vectorised_correlation_equals_the_export_loop():
    from corr_depth_ros.core.stereo_net.cost_volume import _groupwise_correlation_loop
    torch.manual_seed(3)
    # 9 columns: one matrix product; 75: three column blocks (the last one partial).
    for width in (9, 75):
        left, right = torch.randn(2, 12, 5, width), torch.randn(2, 12, 5, width)
        for disparities in (1, 4, 9, 12, 40, 80):   # including D > W: no candidate, zeros
            fast = groupwise_correlation_volume(left, right, disparities, 3)
            slow = _groupwise_correlation_loop(left, right, disparities, 3)
            assert fast.shape == (2, 3, disparities, 5, width)
            torch.testing.assert_close(fast, slow)
    # Training backpropagates through the strided view of the matrix product: same gradients.
    weights = torch.randn(2, 3, 4, 5, 75)
    grads = []
    for volume_fn in (groupwise_correlation_volume, _groupwise_correlation_loop):
        left_g, right_g = left.clone().requires_grad_(), right.clone().requires_grad_()
        (volume_fn(left_g, right_g, 4, 3) * weights).sum().backward()
        grads.append((left_g.grad, right_g.grad))
    torch.testing.assert_close(grads[0], grads[1])


def test_local_correlation_peaks_at_the_true_offset():
    """Right features = left features shifted by 5 quarter-pixels; searched around an estimate
    of 4, the correlation peaks at offset +1 (the 7th of -2, -1.5, .., 2)."""
    from corr_depth_ros.core.stereo_net.refinement import LocalRefiner
    torch.manual_seed(7)
    # Unit feature vectors of 32 channels: a vector matches itself far better than any other.
    left = torch.nn.functional.normalize(torch.randn(1, 32, 4, 40), dim=1)
    right = torch.zeros_like(left)
    right[..., :-5] = left[..., 5:]                  # left(x) = right(x - 5)
    refiner = LocalRefiner(feature_channels=32)
    correlation = refiner.local_correlation(left, right, torch.full((1, 1, 4, 40), 4.0))
    assert correlation.shape == (1, 9, 4, 40)
    peak = correlation[..., 10:].argmax(dim=1)       # where the shifted pixels exist
    assert (peak == refiner.offsets.index(1.0)).all()
    # The exact value there is the mean over channels of left * left.
    torch.testing.assert_close(correlation[:, 6, :, 10:], (left * left).mean(1)[..., 10:])
    # A wider search (radius 4: -4 .. 4 in half steps) finds a shift of 7 from the same estimate.
    right = torch.zeros_like(left)
    right[..., :-7] = left[..., 7:]
    wide = LocalRefiner(feature_channels=32, radius=4)
    correlation = wide.local_correlation(left, right, torch.full((1, 1, 4, 40), 4.0))
    assert correlation.shape == (1, 17, 4, 40)
    assert (correlation[..., 12:].argmax(dim=1) == wide.offsets.index(3.0)).all()


def test_refiner_trains_alone_on_a_frozen_base(tmp_path):
    """refiner_on_frozen_base: same output as the base until trained; a training step moves
    the refiner only (base weights and BatchNorm statistics fixed, base kept in eval mode);
    older files without a refiner keep their config; a refined file cannot be refined again."""
    from corr_depth_ros.core.stereo_net.train import refiner_on_frozen_base
    base = tiny_model(seed=8).eval()
    path = str(tmp_path / 'base.safetensors')
    save_weights(path, base, arch=ARCH, config=dict(base.config), metadata={'steps': 7})
    assert 'refine_channels' not in base.config
    model, note = refiner_on_frozen_base(path, 4)
    assert note['steps'] == 7 and model.config['refine_channels'] == 4
    left, right = torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(left, right)['disparity'],
                                   base(left, right)['disparity'])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert model.refiner.training and not model.features.training
    assert not model.aggregation.training
    out = model(left, right)
    assert 'disparity_unrefined' in out and 'disparity_coarse' not in out
    loss, _ = stereo_loss(out, out['disparity_unrefined'].detach() + 1.0, 64)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss.backward()
    optimiser.step()
    for key, value in model.state_dict().items():
        changed = not torch.equal(value, before[key])
        if key.startswith('refiner.'):
            continue
        assert not changed, key
    assert not torch.equal(model.refiner.head[-1].weight, before['refiner.head.4.weight'])
    refined = str(tmp_path / 'refined.safetensors')
    save_weights(refined, model, arch=ARCH, config=dict(model.config), metadata={})
    loaded, _ = load_weights(refined, build_stereo_net, expected_arch=ARCH)
    assert loaded.refiner is not None
    with pytest.raises(ValueError, match='already has a refiner'):
        refiner_on_frozen_base(refined, 4)


def _grid_sample_correlation(left, right, disparity, offsets):
    """Reference for LocalRefiner.local_correlation: bilinear grid_sample, zero padding."""
    batch, _, height, width = left.shape
    out = []
    for offset in offsets:
        xs = torch.arange(width, dtype=left.dtype).view(1, 1, width) - disparity[:, 0] - offset
        ys = torch.arange(height, dtype=left.dtype).view(1, height, 1).expand_as(xs)
        grid = torch.stack([(2 * xs + 1) / width - 1, (2 * ys + 1) / height - 1], dim=-1)
        sampled = torch.nn.functional.grid_sample(right, grid, mode='bilinear',
                                                  padding_mode='zeros', align_corners=False)
        out.append((left * sampled).mean(dim=1, keepdim=True))
    return torch.cat(out, dim=1)


def test_local_correlation_equals_bilinear_sampling():
    """Fractional disparities, near and beyond both borders: the integer-shift form equals
    bilinear sampling with zero padding."""
    from corr_depth_ros.core.stereo_net.refinement import LocalRefiner
    torch.manual_seed(9)
    left, right = torch.randn(2, 5, 6, 30), torch.randn(2, 5, 6, 30)
    disparity = torch.rand(2, 1, 6, 30) * 34.0 - 1.0     # -1 .. 33: some leave the image
    disparity[0, 0, 0, :4] = torch.tensor([0.0, 0.5, 1.0, 2.25])
    # A fraction just under 1: + 2 (the largest offset) rounds up to an integer in float32.
    disparity[1, 0, 0, :3] = torch.tensor([47.99999, 1.9999999, 12.999999])
    for radius in (2, 3):
        refiner = LocalRefiner(feature_channels=5, radius=radius)
        got = refiner.local_correlation(left, right, disparity)
        want = _grid_sample_correlation(left, right, disparity, refiner.offsets)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_train_stereo_net_refines_a_frozen_base_or_starts_from_weights(tmp_path):
    """Two steps on tiny on-the-fly pairs: --refine-from keeps the base tensors and adds a
    trained refiner; --init-from starts from a file's network and trains all of it."""
    pytest.importorskip('corr_depth_ros.core.synth.stereo')
    from safetensors.torch import load_file

    from corr_depth_ros.core.stereo_net.train import train_stereo_net
    from corr_depth_ros.core.training import TrainConfig, read_weights_header
    base_path = str(tmp_path / 'base.safetensors')
    base = tiny_model(seed=10)
    save_weights(base_path, base, arch=ARCH, config=dict(base.config), metadata={})

    def run(name, **kwargs):
        cfg = TrainConfig(out_dir=str(tmp_path / name), steps=2, batch_size=1, val_every=2,
                          checkpoint_every=2, log_every=1, threads=1, num_workers=0, lr=1e-2)
        train_stereo_net(cfg, height=64, width=96, val_count=1, **kwargs)
        path = str(tmp_path / name / 'last.safetensors')
        return read_weights_header(path), load_file(path)

    header, refined = run('refine', refine_from=base_path, refine_channels=4, refine_radius=3)
    assert header['config']['refine_channels'] == 4
    assert header['config']['refine_radius'] == 3          # stored, so the file rebuilds it
    assert refined['refiner.head.0.0.weight'].shape[1] == 13 + 16 + 1   # 13 offsets
    assert header['metadata']['refined_from']['identity'] == read_weights_header(base_path)['identity']
    for key, value in base.state_dict().items():
        assert torch.equal(refined[key], value), key
    assert refined['refiner.head.4.weight'].abs().sum() > 0      # trained away from zero

    refined_path = str(tmp_path / 'refine' / 'last.safetensors')
    header, joint = run('joint', init_from=refined_path)
    assert header['config'] == read_weights_header(refined_path)['config']
    assert header['metadata']['initialised_from']['file'] == 'last.safetensors'
    assert not torch.equal(joint['features.head.weight'], refined['features.head.weight'])
    with pytest.raises(ValueError, match='either'):
        run('both', refine_from=base_path, init_from=refined_path)



def test_searched_range_ends_at_the_last_candidate():
    """max_disparity_px 32 -> 4 candidates 0, 8, 16, 24 px: the base network never answers past
    24 px (soft-argmin and convex upsampling stay within the candidates), what it searched; a
    refiner of radius 3 (+-3 quarter-resolution pixels) searches 12 px further."""
    torch.manual_seed(0)
    model = build_stereo_net(**TINY).eval()
    assert model.searched_max_disparity_px() == 24.0
    with torch.no_grad():
        # Aggregation weights scaled up: sharp distributions, some peaked at the last candidate.
        for parameter in model.aggregation.parameters():
            parameter.mul_(8.0)
        left = torch.rand(2, 3, 32, 64)
        disparity = model(left, torch.rand(2, 3, 32, 64))['disparity']
    assert 0.0 <= float(disparity.min()) and float(disparity.max()) <= 24.0 + 1e-4
    refined = build_stereo_net(**TINY, refine_channels=4, refine_radius=3)
    assert refined.searched_max_disparity_px() == 36.0
    assert refined.searched_max_disparity_px(refine=False) == 24.0

def test_train_stereo_resumes_a_checkpoint_from_before_scale_augmentation(tmp_path):
    """A checkpoint whose signature predates augment.scale_prob / scale_range (08fe5fc) resumes
    without scale augmentation, the same run, and is refused with it."""
    pytest.importorskip('corr_depth_ros.core.synth.stereo')
    from corr_depth_ros.core.stereo_net.train import train_stereo_net
    from corr_depth_ros.core.training import TrainConfig

    def run(steps, augment):
        cfg = TrainConfig(out_dir=str(tmp_path / 'run'), steps=steps, batch_size=1, val_every=100,
                          checkpoint_every=1, log_every=1, threads=1, num_workers=0,
                          resume=steps > 1)
        return train_stereo_net(cfg, height=32, width=48, net_config=TINY, val_count=1,
                                augment=augment)

    run(1, AugmentConfig())
    path = tmp_path / 'run' / 'checkpoint.pt'
    state = torch.load(path, weights_only=True)
    signature = json.loads(state['signature'])
    del signature['augment']['scale_prob'], signature['augment']['scale_range']
    state['signature'] = json.dumps(signature, sort_keys=True)   # as the older code wrote it
    torch.save(state, path)
    with pytest.raises(ValueError, match="is of another run .*'scale_prob': 0.0.* there"):
        run(2, AugmentConfig(scale_prob=0.5))
    assert run(2, AugmentConfig())['step'] == 2
    # On-the-fly pairs are read in order (a resume with more steps reads on into new pairs).
    from corr_depth_ros.core.training import read_weights_header
    header = read_weights_header(str(tmp_path / 'run' / 'last.safetensors'))
    assert header['metadata']['train_config']['shuffle'] is False


@pytest.mark.parametrize('batch,height,width,padded', [(1, 13, 21, (16, 24)), (2, 16, 24, (16, 24)),
                                                        (1, 9, 16, (16, 16))])
def test_normalized_batch_equals_pad_cat_normalise(batch, height, width, padded):
    """FeatureExtractor.normalized_batch is the plain pad + cat + normalise, channels-last,
    also for channels-last (HWC-strided) inputs as the learned backend builds them; the
    argmax helper of the regression gives argmax's indices."""
    import torch.nn.functional as F
    from corr_depth_ros.core.stereo_net.features import FeatureExtractor
    from corr_depth_ros.core.stereo_net.regression import argmax_candidates

    features = FeatureExtractor(channels=8)
    generator = torch.Generator().manual_seed(height)
    left, right = (torch.rand(batch, 3, height, width, generator=generator) for _ in range(2))
    right = right.contiguous(memory_format=torch.channels_last)
    got = features.normalized_batch((left, right), *padded)
    pad = (0, padded[1] - width, 0, padded[0] - height)
    plain = torch.cat([F.pad(left, pad, mode='replicate'), F.pad(right, pad, mode='replicate')])
    want = (plain - features.mean) / features.std
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match='cannot pad'):
        features.normalized_batch((left, right), height - 1, width)
    probability = torch.softmax(torch.randn(batch, 7, 5, 6, generator=generator), dim=1)
    probability[:, 3:5] = probability[:, 3:4].clone()          # ties: the first one wins
    assert torch.equal(argmax_candidates(probability), probability.argmax(dim=1, keepdim=True))


def test_train_stereo_refuses_seeds_of_the_held_out_sets(tmp_path):
    """--seed 900 / 800 would render exactly the validation / calibration pairs."""
    from corr_depth_ros.core.stereo_net.train import train_stereo_net
    from corr_depth_ros.core.training import TrainConfig
    for seed in (900, 800):
        with pytest.raises(ValueError, match='held-out'):
            train_stereo_net(TrainConfig(out_dir=str(tmp_path / str(seed)), steps=1, seed=seed),
                             height=32, width=48, net_config=TINY)
