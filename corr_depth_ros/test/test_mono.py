"""Core of the self-supervised monocular model (core/mono/): warping, loss terms, pp, depth
conversion, metrics, network shapes, a few training steps, and the shipped weights."""
import os

import numpy as np
import pytest
import torch

from corr_depth_ros.core.mono.inference import (estimate_depth, load_mono_model, metric_depth,
                                                predict_disparity, relative_depth,
                                                shipped_weights_path)
from corr_depth_ros.core.mono.losses import (LossWeights, appearance_loss,
                                             left_right_consistency_loss, monodepth_loss,
                                             smoothness_loss, ssim)
from corr_depth_ros.core.mono.metrics import depth_metrics, error_metrics, fit_scale_shift_inverse
from corr_depth_ros.core.mono.network import ARCH, build_mono_net
from corr_depth_ros.core.mono.postprocess import (edge_weights, post_process_disparity,
                                                  predict_with_post_process)
from corr_depth_ros.core.mono.warp import reconstruct_left, reconstruct_right


# One torch thread (conftest.py): the CI box is shared, and with several processes busy two
# OpenMP threads spin against each other and a tiny step gets ~15x slower than with one.
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _textured(height=32, width=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, height, width, generator=generator)


def _shifted_pair(shift_px=4, height=32, width=48):
    """A right image and the left image it implies at a constant integer disparity."""
    right = _textured(height, width)
    left = torch.empty_like(right)
    left[..., shift_px:] = right[..., :-shift_px]      # left(x) = right(x - d)
    left[..., :shift_px] = right[..., :1]               # border clamp, like the sampler
    return left, right


# --- warping ------------------------------------------------------------------------------
def test_constant_disparity_warp_reproduces_the_image():
    shift_px, width = 4, 48
    left, right = _shifted_pair(shift_px, width=width)
    disparity = torch.full((1, 1, 32, width), shift_px / width)
    rebuilt_left = reconstruct_left(right, disparity)
    torch.testing.assert_close(rebuilt_left, left, atol=1e-5, rtol=0)
    # And the other way: right(x) = left(x + d) wherever x + d is inside the image.
    rebuilt_right = reconstruct_right(left, disparity)
    torch.testing.assert_close(rebuilt_right[..., :-shift_px], right[..., :-shift_px],
                               atol=1e-5, rtol=0)
    # A wrong disparity does not reproduce it (the test can fail).
    wrong = reconstruct_left(right, disparity * 0.5)
    assert (wrong - left)[..., shift_px:].abs().mean() > 0.05


def test_half_pixel_disparity_interpolates_linearly():
    right = torch.arange(16, dtype=torch.float32).view(1, 1, 1, 16).repeat(1, 1, 2, 1)
    rebuilt = reconstruct_left(right, torch.full((1, 1, 2, 16), 0.5 / 16))
    torch.testing.assert_close(rebuilt[..., 1:], right[..., 1:] - 0.5)


# --- loss terms ---------------------------------------------------------------------------
def test_ssim_of_identical_images_is_one_and_drops_for_different_ones():
    image = _textured()
    torch.testing.assert_close(ssim(image, image), torch.ones_like(image), atol=1e-5, rtol=0)
    assert float(appearance_loss(image, image)) == pytest.approx(0.0, abs=1e-6)
    other = _textured(seed=1)
    assert float(ssim(image, other).mean()) < 0.5
    assert float(appearance_loss(image, other)) > 0.2


def test_smoothness_is_zero_for_constant_disparity_and_edge_aware():
    image = _textured()
    constant = torch.full((1, 1, 32, 48), 0.1)
    assert float(smoothness_loss(constant, image)) == pytest.approx(0.0, abs=1e-9)
    ramp = torch.linspace(0, 0.2, 48).view(1, 1, 1, 48).expand(1, 1, 32, 48)
    flat_image = torch.full_like(image, 0.5)
    edgy_image = torch.zeros_like(image)
    edgy_image[..., ::2] = 1.0                           # strong gradient at every column
    on_flat = float(smoothness_loss(ramp, flat_image))
    assert on_flat == pytest.approx(0.2 / 47, rel=1e-3)   # mean |dx d|; dy d = 0
    assert float(smoothness_loss(ramp, edgy_image)) < 0.5 * on_flat


def test_left_right_consistency_is_zero_for_a_consistent_pair():
    shape = (1, 1, 32, 48)
    # A fronto-parallel plane: both views see the same constant disparity.
    same = torch.full(shape, 0.08)
    lr_left, lr_right = left_right_consistency_loss(same, same)
    assert float(lr_left) == pytest.approx(0.0, abs=1e-7)
    assert float(lr_right) == pytest.approx(0.0, abs=1e-7)
    lr_left, lr_right = left_right_consistency_loss(same, torch.full(shape, 0.05))
    assert float(lr_left) == pytest.approx(0.03, abs=1e-6)
    assert float(lr_right) == pytest.approx(0.03, abs=1e-6)


def test_full_loss_is_lowest_at_the_true_disparity_and_lr_flag_switches_the_term():
    shift_px, width = 4, 48
    left, right = _shifted_pair(shift_px, width=width)

    def outputs(value):
        return [torch.full((1, 2, 32 // 2 ** s, width // 2 ** s), value) for s in range(4)]

    true_loss, logs = monodepth_loss(outputs(shift_px / width), left, right)
    wrong_loss, _ = monodepth_loss(outputs(1.5 * shift_px / width), left, right)
    assert float(true_loss) < float(wrong_loss)
    assert float(logs['smoothness']) == pytest.approx(0.0, abs=1e-9)
    # Inconsistent left/right channels: the LR term shows up only when switched on.
    mixed = [torch.cat([o[:, :1], o[:, 1:] * 0.5], 1) for o in outputs(shift_px / width)]
    _, with_lr = monodepth_loss(mixed, left, right, LossWeights(use_lr=True))
    _, without_lr = monodepth_loss(mixed, left, right, LossWeights(use_lr=False))
    assert float(with_lr['left_right']) > 0.01
    assert float(without_lr['left_right']) == 0.0


def test_depth_hints_pull_only_where_the_hint_rebuilds_the_view_better():
    """hint_loss (Watson et al. 2019): zero when the prediction is the true disparity (the
    hint cannot beat it), log(1 + |d - h|) where a true hint beats a wrong prediction, zero
    where there is no hint; monodepth_loss needs hints when their weight is on and uses them
    at every scale (hint_pyramid: subsampled, in that scale's pixels)."""
    from corr_depth_ros.core.mono.losses import appearance_error, hint_loss, hint_pyramid
    from corr_depth_ros.core.mono.warp import reconstruct_left
    shift_px, width = 4, 48
    left, right = _shifted_pair(shift_px, width=width)
    true_hint = torch.full((1, 1, 32, width), float(shift_px))

    def loss(disparity_px, hint):
        disparity = torch.full((1, 1, 32, width), disparity_px / width)
        error = appearance_error(left, reconstruct_left(right, disparity))
        return float(hint_loss(disparity, left, right, hint, error, -1.0))

    assert loss(shift_px, true_hint) == 0.0
    # Used nearly everywhere (not in the border columns the shift leaves unmatched): log(1 + 2).
    assert 0.8 * np.log(3.0) < loss(2.0, true_hint) <= np.log(3.0) + 1e-6
    assert loss(2.0, torch.full_like(true_hint, float('nan'))) == 0.0
    assert loss(shift_px, true_hint * 2) == 0.0      # a wrong hint does not pull a right answer
    pyramid = hint_pyramid(true_hint, 4)
    assert [tuple(h.shape[-2:]) for h in pyramid] == [(32, 48), (16, 24), (8, 12), (4, 6)]
    assert float(pyramid[2].max()) == shift_px / 4
    outputs = [torch.full((1, 2, 32 // 2 ** s, width // 2 ** s), 2.0 / width) for s in range(4)]
    with pytest.raises(ValueError, match='hint'):
        monodepth_loss(outputs, left, right, LossWeights(hints=1.0))
    _, logs = monodepth_loss(outputs, left, right, LossWeights(hints=1.0),
                             hints=(true_hint, true_hint))
    assert float(logs['hints']) > 0


def test_hint_pyramid_samples_each_block_near_its_centre():
    """The image pyramid is area-downsampled, so its pixel i at scale s sits at fine pixel
    2^s i + (2^s - 1) / 2; the hint taken there must be within half a fine pixel of that place
    (a hint of x itself, a plane slanted along the rows, shows the place taken)."""
    import torch.nn.functional as F
    from corr_depth_ros.core.mono.losses import hint_pyramid
    height, width = 32, 48
    ramp = torch.arange(width, dtype=torch.float32).expand(1, 1, height, width).clone()
    for s, hint in enumerate(hint_pyramid(ramp, 4)):
        centre = F.avg_pool2d(ramp, 2 ** s) / 2 ** s      # the block centres, that scale's px
        assert hint.shape == centre.shape
        assert float((hint - centre).abs().max()) <= 0.5 / 2 ** s + 1e-6, s


def test_stereo_hints_match_a_rendered_pair():
    """SGBM hints of a synthetic pair, both views (the right one via the mirrored pair), agree
    with the rendered disparity where SGBM found a match; NaN elsewhere."""
    synth = pytest.importorskip('corr_depth_ros.core.synth.stereo')
    from corr_depth_ros.core.mono.data import stereo_hints, training_synth_config
    sample = synth.render_stereo_pair(20_000_003, 96, 128, training_synth_config())
    hints = stereo_hints(sample['left'], sample['right'])
    for hint, truth in zip(hints, (sample['disparity_left_px'], sample['disparity_right_px'])):
        assert hint.shape == truth.shape and hint.dtype == torch.float32
        both = torch.isfinite(hint) & torch.isfinite(truth)
        assert 0.3 < float(both.float().mean()) < 1.0
        assert float((hint[both] - truth[both]).abs().median()) < 1.0


def test_loss_decreases_in_a_few_training_steps_on_a_toy_pair():
    torch.manual_seed(0)
    height, width, shift_px = 32, 64, 3
    generator = torch.Generator().manual_seed(3)
    right = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 16, generator=generator),
                                            size=(height, width + shift_px), mode='bilinear',
                                            align_corners=False)
    left = right[..., :width].clone()
    right = right[..., shift_px:].contiguous()          # left(x) = right(x - 3)
    model = build_mono_net(base_channels=4)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss, _ = monodepth_loss(model(left), left, right)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:2]), losses


# --- network ------------------------------------------------------------------------------
def test_network_shapes_and_range():
    model = build_mono_net(base_channels=8, max_disparity_fraction=0.3).eval()
    with torch.no_grad():
        outputs = model(torch.rand(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outputs] == [(2, 2, 64, 96), (2, 2, 32, 48),
                                                 (2, 2, 16, 24), (2, 2, 8, 12)]
    for o in outputs:
        assert float(o.min()) > 0 and float(o.max()) < 0.3
    with pytest.raises(ValueError, match='multiple of 32'):
        model(torch.rand(1, 3, 50, 96))
    with pytest.raises(ValueError, match='base_channels'):
        build_mono_net(base_channels=2)
    with pytest.raises(TypeError):
        build_mono_net(8)                              # keyword-only factory


def test_fused_batch_norm_gives_the_same_output():
    from corr_depth_ros.core.inference_prep import fuse_batch_norm
    model = build_mono_net(base_channels=8)
    model.train()
    with torch.no_grad():
        for _ in range(3):                           # give BN non-trivial running statistics
            model(torch.rand(2, 3, 64, 96) * 2)
    model.eval()
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(image)[0]
        fused = fuse_batch_norm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        torch.testing.assert_close(fused(image)[0], expected, rtol=1e-4, atol=1e-6)


def test_predict_disparity_resizes_and_keeps_width_fraction():
    model = build_mono_net(base_channels=8).eval()
    image = torch.rand(1, 3, 50, 70)
    disparity = predict_disparity(model, image, (64, 96))
    assert disparity.shape == (1, 1, 50, 70)
    with pytest.raises(ValueError, match='multiples of 32'):
        predict_disparity(model, image, (50, 70))


# --- post-processing ----------------------------------------------------------------------
def test_post_process_on_a_symmetric_input():
    half = torch.rand(1, 3, 8, 10)
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)      # image == its mirror

    def column_ramp(batch):
        # Not mirror-equivariant: returns the column index, so pp must combine two ramps.
        width = batch.shape[-1]
        return torch.arange(width, dtype=torch.float32).view(1, 1, 1, width).expand(
            batch.shape[0], 1, batch.shape[-2], width).clone()

    blended = predict_with_post_process(column_ramp, symmetric)[0, 0, 0]
    width = 20
    # The mirrored pass mirrored back is the reversed ramp W-1-x: inside the bands their mean
    # (W-1)/2, in the left band only the mirrored pass, in the right band only the direct one;
    # for a symmetric image the result is itself symmetric.
    assert float(blended[0]) == width - 1 and float(blended[-1]) == width - 1
    torch.testing.assert_close(blended[2:-2], torch.full((width - 4,), (width - 1) / 2))
    torch.testing.assert_close(blended, blended.flip(-1))

    def mean_brightness(batch):
        return batch.mean(1, keepdim=True)            # mirror-equivariant predictor
    image = torch.rand(1, 3, 8, 20)
    direct = mean_brightness(image)
    torch.testing.assert_close(predict_with_post_process(mean_brightness, image), direct)


def test_post_process_uses_each_pass_in_its_good_band():
    width = 40
    direct = torch.zeros(1, 1, 2, width)
    mirrored = torch.ones(1, 1, 2, width)            # mirrored back it is still all ones
    out = post_process_disparity(direct, mirrored)[0, 0, 0]
    weights = edge_weights(width)
    assert float(out[0]) == 1.0 and float(out[1]) == 1.0        # left 5 %: mirrored pass only
    assert float(out[-1]) == 0.0 and float(out[-2]) == 0.0      # right 5 %: direct pass only
    assert float(out[width // 2]) == 0.5
    torch.testing.assert_close(out, weights)


# --- depth conversion ---------------------------------------------------------------------
def test_metric_and_relative_depth():
    disparity_frac = np.array([[0.1, 0.05], [0.0, np.nan]], dtype=np.float32)
    depth_m, valid = metric_depth(disparity_frac, fx_px=50.0, width_px=100, baseline_m=0.2)
    # d = 0.1 * 100 = 10 px -> Z = 50 * 0.2 / 10 = 1 m; half the disparity is twice as far.
    np.testing.assert_allclose(depth_m[0], [1.0, 2.0], rtol=1e-6)
    assert valid.tolist() == [[True, True], [False, False]]
    assert np.isnan(depth_m[1]).all()
    relative, valid_rel = relative_depth(np.array([[0.1, 0.2, 0.4], [0.0, 0.2, 0.2]], np.float32))
    # Median disparity 0.2 -> relative depth 1.0; disparity 0.1 is twice the median depth.
    np.testing.assert_allclose(relative[0], [2.0, 1.0, 0.5], rtol=1e-6)
    assert np.isnan(relative[1, 0]) and not valid_rel[1, 0]
    with pytest.raises(ValueError, match='baseline_m'):
        metric_depth(disparity_frac, fx_px=50.0, width_px=100, baseline_m=0.0)
    with pytest.raises(ValueError, match='fx_px'):
        metric_depth(disparity_frac, fx_px=-1.0, width_px=100, baseline_m=0.1)


def test_estimate_depth_modes_with_a_random_model():
    model = build_mono_net(base_channels=8).eval()
    image = (np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)
    metric, valid, disparity = estimate_depth(model, image, 50.0, mode='metric', baseline_m=0.1,
                                              input_size=(32, 64))
    assert metric.shape == (40, 60) and metric.dtype == np.float32 and valid.all()
    np.testing.assert_allclose(metric, 50.0 * 0.1 / (disparity * 60), rtol=1e-5)
    relative, _, _ = estimate_depth(model, image, 50.0, mode='relative', baseline_m=None,
                                    input_size=(32, 64))
    assert np.nanmedian(relative) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match='depth mode'):
        estimate_depth(model, image, 50.0, mode='feet', baseline_m=0.1, input_size=(32, 64))


# --- metrics ------------------------------------------------------------------------------
def test_error_metrics_known_values():
    gt = np.array([1.0, 2.0, 4.0])
    m = error_metrics(gt * 1.1, gt)
    assert m['abs_rel'] == pytest.approx(0.1)
    assert m['sq_rel'] == pytest.approx(np.mean((0.1 * gt) ** 2 / gt))
    assert m['rmse'] == pytest.approx(np.sqrt(np.mean((0.1 * gt) ** 2)))
    assert m['rmse_log'] == pytest.approx(np.log(1.1))
    assert m['delta1'] == 1.0
    m = error_metrics(gt * 1.3, gt)
    assert m['delta1'] == 0.0 and m['delta2'] == 1.0


def test_median_scaling_and_scale_shift_alignment():
    gt = np.linspace(1.0, 5.0, 20, dtype=np.float32).reshape(4, 5)
    gt[0, 0] = np.nan                                           # no GT there: skipped
    twice = depth_metrics(gt * 2.0, gt)
    assert twice['raw']['abs_rel'] == pytest.approx(1.0, rel=1e-6)
    assert twice['median']['abs_rel'] == pytest.approx(0.0, abs=1e-6)
    assert twice['median']['scale'] == pytest.approx(0.5)
    assert twice['pixels'] == 19
    # An affine function of inverse depth is undone exactly by the scale-and-shift fit ...
    pred = 1.0 / (0.5 / gt + 0.1)
    aligned = depth_metrics(pred, gt)
    assert aligned['scale_shift_inv']['abs_rel'] == pytest.approx(0.0, abs=1e-5)
    assert aligned['scale_shift_inv']['scale'] == pytest.approx(2.0, rel=1e-4)
    # ... but not by median scaling alone.
    assert aligned['median']['abs_rel'] > 0.02
    valid = np.isfinite(gt)
    a, b = fit_scale_shift_inverse(pred[valid].astype(np.float64), gt[valid].astype(np.float64))
    assert (a, b) == (pytest.approx(2.0, rel=1e-4), pytest.approx(-0.2, abs=1e-4))
    with pytest.raises(ValueError, match='no ground-truth-valid'):
        depth_metrics(gt, np.full_like(gt, np.nan))
    # Over-estimates keep their full error: no cap taken from this image's ground truth.
    far = gt.copy()
    far[1, :] *= 10.0                            # one row predicted ten times too far
    errors = depth_metrics(far, gt)['median']
    scaled = far * (np.nanmedian(gt) / np.nanmedian(far))
    expected = np.nanmean(np.abs(scaled - gt) / gt)
    assert errors['abs_rel'] == pytest.approx(expected, rel=1e-5)
    # A fixed cap, when given, applies to the aligned prediction.
    capped = depth_metrics(far, gt, max_depth_m=5.0)['median']
    assert capped['abs_rel'] < errors['abs_rel']


# --- weights ------------------------------------------------------------------------------
def test_weights_round_trip(tmp_path):
    from corr_depth_ros.core.training import save_weights
    model = build_mono_net(base_channels=8)
    path = str(tmp_path / 'mono.safetensors')
    save_weights(path, model, arch=ARCH, config={'base_channels': 8,
                                                 'max_disparity_fraction': 0.35},
                 metadata={'training_rig': {'baseline_m': 0.1}, 'input_size_hw': [64, 96]})
    loaded, header = load_mono_model(path)
    # Loaded for inference: batch norm folded, weights channels-last (the fast CPU layout).
    conv = next(m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())
    model.eval()
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image)[0], model(image)[0], rtol=1e-4, atol=1e-6)
    assert header['metadata']['training_rig']['baseline_m'] == 0.1
    # The shipped float16 form: half the bytes, same predictions to well under 1 %.
    from corr_depth_ros.core.mono.train import export_half_precision
    size_before = os.path.getsize(path)
    export_half_precision(path)
    assert os.path.getsize(path) < 0.6 * size_before
    half, header = load_mono_model(path)
    assert header['metadata']['stored_dtype'] == 'float16'
    with torch.no_grad():
        torch.testing.assert_close(half(image)[0], model(image)[0], rtol=1e-2, atol=1e-4)


SHIPPED = shipped_weights_path()


@pytest.mark.skipif(not os.path.isfile(SHIPPED), reason='shipped mono weights not built yet')
def test_shipped_weights_order_motorcycle_depth_better_than_a_constant():
    """The shipped net reads the scene's layout: aligned by scale and shift in inverse depth it
    beats a constant depth (0.187 against 0.229 AbsRel). Median scaling alone does not: its
    depth range is off (0.266 against 0.212; see the README)."""
    from corr_depth_ros.core.mono.evaluate import motorcycle_ground_truth, predict_depth_m
    from corr_depth_ros.core.mono.inference import input_size_from_header
    model, header = load_mono_model()
    assert header['metadata']['labels_used'].startswith('none')
    assert header['metadata']['training_rig']['baseline_m'] > 0
    gt = motorcycle_ground_truth()
    pred = predict_depth_m(model, gt['left'], gt['fx_px'], input_size_from_header(header),
                           False, 'cpu', header['metadata']['training_rig']['baseline_m'])
    ours = depth_metrics(pred, gt['depth_m'])
    constant = depth_metrics(np.ones_like(gt['depth_m']), gt['depth_m'])
    aligned = ours['scale_shift_inv']['abs_rel'], constant['scale_shift_inv']['abs_rel']
    assert aligned[0] < aligned[1] - 0.02, aligned


def test_training_ships_the_best_validated_step_from_validation_seeds_of_its_own(tmp_path):
    """A short `train mono` run: validation pairs are rendered from their own seeds (never the
    ones `eval mono` reports), and the written weights are the step with the best validation."""
    import json

    from corr_depth_ros.core.mono.data import build_synthetic_cache, load_cache
    from corr_depth_ros.core.mono.evaluate import HELDOUT_FIRST_SEED
    from corr_depth_ros.core.mono.train import VALIDATION_FIRST_SEED, MonoTrainSpec, train_mono
    from corr_depth_ros.core.training import TrainConfig, read_weights_header
    spec = MonoTrainSpec(height=64, width=96, base_channels=4, train_count=4,
                         cache_dir=str(tmp_path / 'train'), val_cache_dir=str(tmp_path / 'val'),
                         val_images=2, half=False)
    cfg = TrainConfig(out_dir=str(tmp_path / 'run'), steps=4, batch_size=2, val_every=1,
                      log_every=1, checkpoint_every=2, device='cpu', threads=1, warmup_steps=1)
    header = train_mono(spec, cfg)
    assert load_cache(spec.val_cache_dir)['meta']['first_seed'] == VALIDATION_FIRST_SEED
    vals = [r for r in map(json.loads, open(tmp_path / 'run' / 'log.jsonl'))
            if r['event'] == 'val']
    assert [r['step'] for r in vals] == [1, 2, 3, 4]
    best = min(vals, key=lambda r: r['abs_rel_median'])
    selected = header['metadata']['selected']
    assert selected['validation']['step'] == best['step']
    assert selected['validation']['abs_rel_median'] == pytest.approx(best['abs_rel_median'])
    assert read_weights_header(spec.weights_out or str(tmp_path / 'run' / 'mono.safetensors')
                               )['identity'] == read_weights_header(
        str(tmp_path / 'run' / 'best.safetensors'))['identity']
    # A validation cache rendered from the evaluation's seeds is refused, not silently used.
    build_synthetic_cache(str(tmp_path / 'eval'), 2, 64, 96, first_seed=HELDOUT_FIRST_SEED,
                          with_depth=True, progress=False)
    spec_eval = MonoTrainSpec(height=64, width=96, base_channels=4, train_count=4,
                              cache_dir=str(tmp_path / 'train'),
                              val_cache_dir=str(tmp_path / 'eval'), val_images=2, half=False)
    with pytest.raises(ValueError, match='different cache'):
        train_mono(spec_eval, TrainConfig(out_dir=str(tmp_path / 'run2'), steps=1, batch_size=2,
                                          device='cpu', threads=1))


def test_train_mono_command_validates_by_default(tmp_path, capsys):
    """`corr_depth train mono` with the default --select best and no --val-cache-dir renders a
    validation cache beside the run and writes the best validated step (before, it skipped
    validation and quietly wrote the last step); --val-images 0 says it writes the last one."""
    from corr_depth_ros.cli import main as cli_main
    from corr_depth_ros.core.training import read_weights_header
    common = ['--height', '64', '--width', '64', '--base-channels', '4', '--train-count', '2',
              '--cache-dir', str(tmp_path / 'cache'), '--steps', '2', '--batch-size', '2',
              '--warmup-steps', '1', '--checkpoint-every', '2', '--threads', '1',
              '--device', 'cpu', '--float32']
    run = tmp_path / 'run'
    assert cli_main(['train', 'mono', '--out-dir', str(run), '--val-images', '2',
                     '--val-every', '1', *common]) == 0
    assert (run / 'val_cache_64x64_2').is_dir() and (run / 'best.safetensors').is_file()
    rule = read_weights_header(str(run / 'mono.safetensors'))['metadata']['selected']['rule']
    assert rule.startswith('lowest validation AbsRel')
    assert cli_main(['train', 'mono', '--out-dir', str(tmp_path / 'last'), '--val-images', '0',
                     *common]) == 0
    assert 'the last step is written' in capsys.readouterr().out
    rule = read_weights_header(str(tmp_path / 'last' / 'mono.safetensors'))['metadata'][
        'selected']['rule']
    assert rule == 'last step'


def test_training_with_depth_hints_logs_the_hint_term(tmp_path):
    """`train mono --depth-hints`: the items carry SGBM hints, the loss has its term, the
    weights' metadata says what supervised them."""
    import json

    from corr_depth_ros.core.mono.train import MonoTrainSpec, train_mono
    from corr_depth_ros.core.training import TrainConfig
    spec = MonoTrainSpec(height=64, width=96, base_channels=4, train_count=2,
                         cache_dir=str(tmp_path / 'train'), half=False, depth_hints=True)
    cfg = TrainConfig(out_dir=str(tmp_path / 'run'), steps=2, batch_size=2, log_every=1,
                      checkpoint_every=2, device='cpu', threads=1, warmup_steps=1)
    header = train_mono(spec, cfg)
    logs = [r for r in map(json.loads, open(tmp_path / 'run' / 'log.jsonl'))
            if r['event'] == 'train']
    assert logs and all(r['hints'] > 0 for r in logs)
    assert header['metadata']['loss']['hints'] == 1.0
    assert 'Depth Hints' in header['metadata']['labels_used']


def test_eval_mono_command_writes_both_models_alignments_and_the_figure(tmp_path):
    """`corr_depth eval mono` on Motorcycle (shipped LR model and its no-LR ablation in one run):
    every metric under median scaling and scale-and-shift, with and without pp, the constant
    baseline, then the figure (written after the JSON)."""
    import json

    from corr_depth_ros.cli import main as cli_main
    from corr_depth_ros.core.mono.inference import shipped_weights_path
    if not os.path.isfile(shipped_weights_path()):
        pytest.skip('shipped mono weights not present')
    out, figure = tmp_path / 'mono.json', tmp_path / 'mono.png'
    assert cli_main(['eval', 'mono', '--dataset', 'motorcycle', '--no-speed', '--json', str(out),
                     '--figure', str(figure)]) == 0
    report = json.loads(out.read_text())
    assert set(report['models']) == {'lr', 'no_lr'}
    for model in report['models'].values():
        for pp in ('no_pp', 'pp'):
            for alignment in ('raw', 'median', 'scale_shift_inv'):
                assert {'abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'delta1', 'delta2',
                        'delta3'} <= set(model['motorcycle'][pp][alignment])
    assert 'motorcycle' in report['baseline_constant_depth']
    assert figure.is_file() and figure.stat().st_size > 0


def test_figure_leaves_the_callers_image_alone():
    """make_figure draws its labels on copies, not on the image it was given."""
    from corr_depth_ros.core.mono.evaluate import make_figure
    image = np.zeros((48, 64, 3), np.uint8)
    depth = np.full((48, 64), 2.0, np.float32)
    figure = make_figure(image, depth, depth, 'title')
    assert figure.shape == (96, 128, 3) and figure.any() and not image.any()


def test_eval_mono_raw_depth_uses_the_baseline_the_weights_record(tmp_path):
    """`eval mono`'s unaligned ('raw') figures are what the node's metric mode would publish:
    with the weights' own training-rig baseline (not the synthetic rig's 0.1 m), and left out
    for weights that record none; the alignments do not depend on it."""
    from corr_depth_ros.core.mono.evaluate import motorcycle_ground_truth, run_evaluation
    from corr_depth_ros.core.training import save_weights
    torch.manual_seed(0)
    model = build_mono_net(base_channels=4)
    config = {'base_channels': 4, 'max_disparity_fraction': 0.35}
    paths = {}
    for name, rig in (('rig', {'baseline_m': 0.5}), ('none', None)):
        paths[name] = str(tmp_path / f'{name}.safetensors')
        metadata = {'input_size_hw': [64, 96]}
        if rig:
            metadata['training_rig'] = rig
        save_weights(paths[name], model, arch=ARCH, config=config, metadata=metadata)
    report, _ = run_evaluation(datasets=('motorcycle',), weights=paths['rig'],
                               ablation_weights='', speed=False)
    entry = report['models']['lr']
    assert entry['baseline_m'] == 0.5
    loaded, _ = load_mono_model(paths['rig'])
    gt = motorcycle_ground_truth()
    node_depth, _, _ = estimate_depth(loaded, gt['left'], gt['fx_px'], mode='metric',
                                      baseline_m=0.5, input_size=(64, 96))
    expected = depth_metrics(node_depth, gt['depth_m'])
    assert entry['motorcycle']['no_pp']['raw']['abs_rel'] == pytest.approx(
        expected['raw']['abs_rel'], rel=1e-5)
    report, _ = run_evaluation(datasets=('motorcycle',), weights=paths['none'],
                               ablation_weights='', speed=False)
    entry = report['models']['lr']
    assert entry['baseline_m'] is None
    assert 'raw' not in entry['motorcycle']['no_pp']
    assert entry['motorcycle']['no_pp']['median']['abs_rel'] == pytest.approx(
        expected['median']['abs_rel'], rel=1e-5)


def test_training_rig_names_where_its_baseline_came_from():
    from corr_depth_ros.core.mono.train import MonoTrainSpec, training_rig
    recording = {'bag': '/bags/run1', 'baseline_m': 0.12}
    assert training_rig(MonoTrainSpec(data='folder:x', rig_baseline_m=0.12,
                                      data_source=recording))['source'] == \
        'camera_info of the recording'
    # --baseline-m given with a recording overrides its camera_info, and says so.
    assert training_rig(MonoTrainSpec(data='folder:x', rig_baseline_m=0.2,
                                      data_source=recording)) == \
        {'baseline_m': 0.2, 'source': '--baseline-m'}
    assert training_rig(MonoTrainSpec(data='folder:x', rig_baseline_m=0.2))['source'] == \
        '--baseline-m'
    assert training_rig(MonoTrainSpec(data='folder:x')) is None


def test_depth_hints_on_images_wider_than_the_nodes_sgbm_range():
    """The Depth Hints matcher searches 0.2 x width: 528 disparities at 2592 px, past the stereo
    node's sgbm.num_disparities range (512), which SgbmParams.validate must not apply (a
    process-bag option check put it there and broke wide training images)."""
    from corr_depth_ros.core.mono.data import stereo_hints
    hints = stereo_hints(torch.rand(3, 32, 2592), torch.rand(3, 32, 2592))
    assert hints[0].shape[-1] == 2592


def test_train_mono_reuses_a_bags_pairs_whatever_the_namespace_spelling(tmp_path, monkeypatch):
    """--bag-namespace /cam, cam and /cam/ are one namespace (bag.py reads them alike), and
    a link to the bag is the bag: a resumed run was refused ('holds pairs of ...') when it
    spelled either differently from the first run."""
    import json

    from corr_depth_ros import bag
    from corr_depth_ros.cli.train_mono import _pairs_from_bag
    monkeypatch.setattr(bag, 'extract_stereo_pairs', lambda *a, **k: pytest.fail('extracted'))
    (tmp_path / 'rig.mcap').write_bytes(b'')
    os.symlink(tmp_path / 'rig.mcap', tmp_path / 'link.mcap')
    folder = tmp_path / 'run' / 'bag_pairs'
    folder.mkdir(parents=True)
    source = {'bag': str(tmp_path / 'rig.mcap'), 'namespace': '/cam', 'folder': str(folder),
              'pairs': 3, 'baseline_m': 0.1}
    (folder / 'source.json').write_text(json.dumps(source))
    for bag_path, namespace in ((tmp_path / 'rig.mcap', 'cam'), (tmp_path / 'link.mcap', '/cam/')):
        assert _pairs_from_bag(str(bag_path), namespace, str(tmp_path / 'run')) == source
    with pytest.raises(FileExistsError, match="holds pairs of .* \\(namespace '/cam'\\)"):
        _pairs_from_bag(str(tmp_path / 'rig.mcap'), '/other', str(tmp_path / 'run'))


def test_train_mono_refuses_pairs_an_earlier_version_extracted_with_unequal_sizes(tmp_path):
    """Extraction now leaves out pairs whose images are not their camera_info's size; a run
    resumed after the upgrade reused the old extraction and failed part-way through training."""
    import json

    import cv2
    from corr_depth_ros.cli.train_mono import EXTRACTION_VERSION, _pairs_from_bag
    (tmp_path / 'rig.mcap').write_bytes(b'')
    folder = tmp_path / 'run' / 'bag_pairs'
    for side, height in (('left', 48), ('right', 40)):
        (folder / side).mkdir(parents=True)
        cv2.imwrite(str(folder / side / '000000.png'), np.zeros((height, 64, 3), np.uint8))
    source = {'bag': str(tmp_path / 'rig.mcap'), 'namespace': '/cam', 'folder': str(folder),
              'pairs': 1, 'baseline_m': 0.1}
    (folder / 'source.json').write_text(json.dumps(source))
    with pytest.raises(FileExistsError, match='extracted by an earlier version.*000000.png.*'
                                              'delete it'):
        _pairs_from_bag(str(tmp_path / 'rig.mcap'), '/cam', str(tmp_path / 'run'))
    (folder / 'source.json').write_text(json.dumps({**source, 'extraction': EXTRACTION_VERSION}))
    assert _pairs_from_bag(str(tmp_path / 'rig.mcap'), '/cam', str(tmp_path / 'run'))['pairs'] == 1


def test_eval_mono_says_where_to_cache_the_held_out_pairs_when_it_cannot(tmp_path):
    """The held-out pairs are rendered into runs/mono in the working folder by default; where
    that could not be written, the command said only "runs: Read-only file system"."""
    from corr_depth_ros.core.mono.evaluate import run_evaluation
    (tmp_path / 'afile').write_text('')
    with pytest.raises(ValueError, match='cannot be cached in .*afile.*give --synthetic-cache'):
        run_evaluation(datasets=('synthetic',), ablation_weights='', synthetic_count=1,
                       synthetic_cache=str(tmp_path / 'afile' / 'cache'), speed=False)


def test_disparity_heads_stay_float32_under_mixed_precision():
    """Under autocast (CUDA training: bfloat16 on recent GPUs) the heads gave bfloat16
    disparities, 8 significant bits, which quantised the photometric warp to ~0.4 px."""
    import torch
    from corr_depth_ros.core.mono.network import build_mono_net
    torch.manual_seed(0)
    net = build_mono_net(base_channels=4).eval()
    image = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        plain = net(image)
        with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
            mixed = net(image)
    assert all(d.dtype == torch.float32 for d in mixed)
    assert torch.allclose(plain[0], mixed[0], atol=0.02 * net.max_disparity_fraction)


def test_a_complete_cache_is_used_without_writing_to_it(tmp_path, monkeypatch):
    """A complete held-out cache on a read-only mount (or shared) was refused: its arrays were
    opened for writing although nothing was left to render."""
    from corr_depth_ros.core.mono import data
    root = str(tmp_path / 'cache')
    data.build_synthetic_cache(root, 2, 32, 48, with_depth=True, progress=False)
    opened = []
    real = np.lib.format.open_memmap
    monkeypatch.setattr(np.lib.format, 'open_memmap',
                        lambda *a, **k: opened.append(k.get('mode')) or real(*a, **k))
    assert data.build_synthetic_cache(root, 2, 32, 48, with_depth=True, progress=False) == root
    assert opened and set(opened) == {'r'}, opened
    assert data.load_cache(root)['left'].shape == (2, 32, 48, 3)
    # A truncated array is still rendered again.
    with open(os.path.join(root, 'right.npy'), 'r+b') as f:
        f.truncate(200)
    data.build_synthetic_cache(root, 2, 32, 48, with_depth=True, progress=False)
    assert 'r+' in opened or 'w+' in opened
