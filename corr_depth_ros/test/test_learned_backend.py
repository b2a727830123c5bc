"""The `learned` backend with the shipped weights, and the ONNX export / `onnx` backend.

Accuracy thresholds come from `corr_depth eval stereo` runs on the shipped weights, with margin
(numbers in the weights' JSON sidecar and in the report); speed is not tested here (house style
11: benchmarks write JSON).
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from corr_depth_ros.core.backends import available_backends, create_backend  # noqa: E402
from corr_depth_ros.core.backends.learned import (  # noqa: E402
    AUTO_SCALE_RANGE, DEFAULT_WEIGHTS, choose_input_scale)
from corr_depth_ros.core.metrics import disparity_metrics  # noqa: E402
from corr_depth_ros.core.stereo_net import ARCH, build_stereo_net  # noqa: E402
from corr_depth_ros.core.stereo_net.evaluate import motorcycle_pairs, synthetic_pairs  # noqa: E402
from corr_depth_ros.core.training import read_weights_header  # noqa: E402

# Measured on the shipped weights (see the report / weights JSON); the margin absorbs
# float differences between machines, not a worse model.
MOTORCYCLE_HALF_EPE_MAX_PX = 1.9   # measured 1.74 px (stop 20's shipped weights; 1.72 before)
# Seeds disjoint from training (seed * 1e6 + i) and validation (9e8 + i).
TEST_SEED = 970_000_000


@pytest.fixture(scope='module')
def learned():
    return create_backend('learned', device='cpu')


def test_shipped_weights_carry_their_config(learned):
    assert 'learned' in available_backends() and 'onnx' in available_backends()
    header = read_weights_header(DEFAULT_WEIGHTS)
    assert header['arch'] == ARCH
    meta = header['metadata']
    for key in ('synth_version', 'synth_seed', 'steps', 'validation', 'max_disparity_px',
                'divisibility', 'command'):
        assert key in meta, key
    assert meta['max_disparity_px'] == learned.network_max_disparity_px == \
        header['config']['max_disparity_px']
    # The widest range the backend answers: the network's at the smallest auto scale.
    assert learned.max_disparity_px == int(meta['max_disparity_px'] / AUTO_SCALE_RANGE[0])
    assert os.path.getsize(DEFAULT_WEIGHTS) < 8 * 1024 * 1024   # a few MB at most


def test_output_contract_on_an_odd_size(learned):
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (45, 67, 3), dtype=np.uint8)
    right = np.roll(left, -3, axis=1)
    result = learned.compute(left, right)
    assert result.disparity_px.shape == (45, 67) and result.disparity_px.dtype == np.float32
    assert result.valid.shape == (45, 67) and result.valid.dtype == bool
    assert result.confidence.min() >= 0 and result.confidence.max() <= 1
    assert learned.disparity_step_px > 0
    # A requested range below the prediction invalidates pixels instead of being ignored.
    limited = learned.compute(left, right, max_disparity_px=0)
    assert limited.valid.sum() <= (result.disparity_px <= 0).sum()
    # What it searched (DisparityImage's min/max): the network's range at the scale it ran at
    # (a 3 px shift: auto keeps the pair's size), or less when asked.
    assert learned.last_input_scale == AUTO_SCALE_RANGE[1] == 1.0
    assert result.search_range_px == (0.0, float(learned.network_max_disparity_px))
    assert limited.search_range_px == (0.0, 0.0)


def test_auto_input_scale_rule():
    """The probe's 99th-percentile disparity is put at AUTO_TARGET_PX (70 px): a near scene
    shrinks, a far one keeps its size; multiples of 1/8; no disparity at all: the cap."""
    low, high = AUTO_SCALE_RANGE
    assert choose_input_scale(np.full((10, 10), 140.0)) == 0.5
    assert choose_input_scale(np.full((10, 10), 100.0)) == 0.625      # 0.7 rounded down
    assert choose_input_scale(np.full((10, 10), 1000.0)) == low
    assert choose_input_scale(np.full((10, 10), 60.0)) == high == 1.0   # never enlarged
    assert choose_input_scale(np.full((10, 10), np.nan)) == high
    mostly_far = np.full((10, 10), 10.0)
    mostly_far[0, :2] = 300.0              # 2 % of the pixels decide it (the 99th percentile)
    assert choose_input_scale(mostly_far) == low


def test_fixed_input_scale_answers_in_pixels_of_the_given_pair(learned):
    """Run at half size, the disparity is still in pixels of the pair it was given: a
    random texture shifted by 24 px reads ~24 px, not the 12 px the network saw."""
    rng = np.random.default_rng(1)
    texture = rng.integers(0, 256, (96, 200, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(texture, 2, axis=0), 2, axis=1)     # 4-pixel grains
    left, right = texture[:, 24:280], texture[:, 48:304]     # a point at x on the left: x - 24
    half = create_backend('learned', device='cpu', input_scale=0.5)
    result = half.compute(np.ascontiguousarray(left), np.ascontiguousarray(right))
    assert result.disparity_px.shape == left.shape[:2] and half.last_input_scale == 0.5
    inner = result.disparity_px[16:-16, 32:-32]
    assert abs(float(np.median(inner)) - 24.0) < 1.0, np.median(inner)
    assert result.search_range_px == (0.0, float(2 * half.network_max_disparity_px))
    # DisparityImage.delta_d widens with it: the values were multiplied by 2.
    assert half.disparity_step_px == 2.0 / 64.0
    with pytest.raises(ValueError, match='input_scale'):
        half.set_params(input_scale=-1.0)
    with pytest.raises(ValueError, match='no runtime parameters'):
        half.set_params(refine=False)


def test_auto_input_scale_rescues_a_near_scene(learned):
    """A 640x480 scene with disparities to ~200 px, beyond the 0-112 px the network was trained
    on: run as trained it fails, auto shrinks the pair into its range."""
    pair = synthetic_pairs(1, 480, 640, TEST_SEED + 5)[0]
    assert np.nanpercentile(pair['disparity_px'], 95) > 150
    errors = {}
    for scale in (1.0, 0.0):
        backend = create_backend('learned', device='cpu', input_scale=scale)
        result = backend.compute(pair['left'], pair['right'])
        errors[scale] = disparity_metrics(result.disparity_px, pair['disparity_px'])['epe_px']
    assert backend.last_input_scale <= 0.5
    assert errors[0.0] < 0.5 * errors[1.0], errors


def test_a_stream_probes_again_only_when_its_scale_may_have_changed(monkeypatch):
    """probe_every N: after a probe, pairs of the same size reuse the scale while their own
    output calls for it, until N - 1 have; a changed scene, size or setting probes again.
    Stand-in network: a constant disparity, so the scale each pass implies is known."""
    backend = create_backend('learned', device='cpu', probe_every=3)
    seen = {'disparity': 40.0}              # pixels of the given pair: auto keeps scale 1
    passes = []

    def network(left, right, scale, refine=True):
        passes.append((scale, refine))
        shape = (max(1, round(left.shape[0] * scale)), max(1, round(left.shape[1] * scale)))
        return np.full(shape, seen['disparity'], np.float32), np.ones(shape, np.float32)
    monkeypatch.setattr(backend, '_infer_at', network)
    left = right = np.zeros((96, 128, 3), np.uint8)

    def probed(pairs):
        before = backend.probes
        for _ in range(pairs):
            backend.compute(left, right)
        return backend.probes - before
    assert probed(1) == 1 and passes[-1] == (1.0, True)
    assert probed(2) == 0                   # the next N - 1 = 2 pairs reuse scale 1
    assert probed(1) == 1                   # then the N-th probes again
    assert probed(2) == 0
    seen['disparity'] = 140.0               # something came near: the output calls for 0.5
    assert probed(1) == 1                   # the periodic probe; it picks 0.5
    assert backend.last_input_scale == 0.5
    assert probed(1) == 0                   # and the stream holds at 0.5
    seen['disparity'] = 40.0                # the near object left: 0.5's output calls for 1
    assert probed(1) == 0 and backend.last_input_scale == 0.5   # one pair at the old scale
    assert probed(1) == 1 and backend.last_input_scale == 1.0   # then a probe
    # Right after a probe (so no periodic one is due), a new size probes ...
    small = np.zeros((64, 96, 3), np.uint8)
    before = backend.probes
    backend.compute(small, small)
    assert backend.probes == before + 1
    before = backend.probes
    backend.compute(small, small)           # (the stream goes on at the new size)
    assert backend.probes == before
    backend.set_params(probe_every=3)       # ... and so does any new setting
    backend.compute(small, small)
    assert backend.probes == before + 1
    # Also a setting changed while a pair is running (the parameter callback's thread): that
    # pair must not leave its scale for the next one.
    def network_changing_settings(left, right, scale, refine=True):
        if refine:
            backend.set_params(probe_every=3)
        return network(left, right, scale, refine)
    monkeypatch.setattr(backend, '_infer_at', network_changing_settings)
    before = backend.probes
    backend.compute(small, small)           # reuses the scale; the setting changes meanwhile
    assert backend.probes == before
    monkeypatch.setattr(backend, '_infer_at', network)
    backend.compute(small, small)
    assert backend.probes == before + 1
    backend.set_params(probe_every=1)       # 1: every pair, as evaluations of unrelated pairs
    assert probed(3) == 3
    for bad in (0, 2.5, True, 1001, float('nan'), 'x'):
        with pytest.raises(ValueError, match='probe_every'):
            backend.set_params(probe_every=bad)
    assert backend.probe_every == 1
    assert create_backend('learned', device='cpu').probe_every == 1   # the backend's default


def test_missing_or_foreign_weights_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        create_backend('learned', weights_path=str(tmp_path / 'missing.safetensors'))
    from corr_depth_ros.core.training import save_weights
    path = str(tmp_path / 'other.safetensors')
    save_weights(path, torch.nn.Linear(2, 2), arch='not_stereo', config={}, metadata={})
    with pytest.raises(ValueError, match='expected'):
        create_backend('learned', weights_path=path)


def test_beats_a_constant_disparity_on_held_out_synthetic_pairs(learned):
    pairs = synthetic_pairs(3, 192, 256, TEST_SEED)
    learned_err, baseline_err = [], []
    for pair in pairs:
        gt = pair['disparity_px']
        result = learned.compute(pair['left'], pair['right'])
        learned_err.append(disparity_metrics(result.disparity_px, gt)['epe_px'])
        # The best constant guess, with the oracle's knowledge of the GT median.
        constant = np.full_like(gt, np.nanmedian(gt))
        baseline_err.append(disparity_metrics(constant, gt)['epe_px'])
    assert np.mean(learned_err) < 0.5 * np.mean(baseline_err), (learned_err, baseline_err)


def test_motorcycle_half_resolution_accuracy(learned):
    pair = motorcycle_pairs(0.5)[0]
    result = learned.compute(pair['left'], pair['right'])
    metrics = disparity_metrics(np.where(result.valid, result.disparity_px, np.nan),
                                pair['disparity_px'])
    assert metrics['epe_px'] < MOTORCYCLE_HALF_EPE_MAX_PX, metrics


def test_refiner_can_be_switched_off(learned):
    """refine=False drops the shipped weights' local refiner: the base network's output
    (2.27 px on the half-size Motorcycle against 1.74 refined)."""
    assert learned.get_params()['refine']
    coarse = create_backend('learned', device='cpu', refine=False)
    assert not coarse.get_params()['refine']
    # What each searches (DisparityImage max_disparity): the last of the 24 candidates 8 px
    # apart, 184 px, and with the refiner its +-8 px search around it, 192 px.
    assert (learned.network_searched_px, coarse.network_searched_px) == (192.0, 184.0)
    assert coarse.max_disparity_at(1.0) == 184 and learned.max_disparity_at(1.0) == 192
    pair = motorcycle_pairs(0.5)[0]
    errors = []
    for backend in (learned, coarse):
        result = backend.compute(pair['left'], pair['right'])
        errors.append(disparity_metrics(np.where(result.valid, result.disparity_px, np.nan),
                                        pair['disparity_px'])['epe_px'])
    assert errors[0] < errors[1] - 0.2, errors


@pytest.mark.parametrize('refine_channels', [0, 4])
def test_onnx_export_parity_and_onnx_backend(tmp_path, refine_channels):
    pytest.importorskip('onnxruntime')
    from corr_depth_ros.core.stereo_net.export import export_stereo_onnx
    torch.manual_seed(0)
    model = build_stereo_net(max_disparity_px=32, feature_channels=8, groups=2,
                             aggregation_channels=(8, 8, 8), refine_channels=refine_channels).eval()
    if refine_channels:     # the refiner's grid_sample must export too; untrained it adds 0
        with torch.no_grad():
            model.refiner.head[-1].weight.normal_(0.0, 0.5)
    path = str(tmp_path / 'tiny.onnx')
    parity = export_stereo_onnx(model, path, height=48, width=72)
    assert parity['max_abs_diff_disparity_px'] < 1e-3, parity
    assert parity['max_abs_diff_confidence'] < 1e-4, parity

    backend = create_backend('onnx', model_path=path, input_width=72, input_height=48,
                             confidence_name='confidence', device='cpu')
    rng = np.random.default_rng(1)
    left = rng.integers(0, 256, (48, 72, 3), dtype=np.uint8)
    right = np.roll(left, -2, axis=1)
    result = backend.compute(left, right)
    with torch.no_grad():
        expected = model(torch.from_numpy(left).permute(2, 0, 1)[None].float() / 255,
                         torch.from_numpy(right).permute(2, 0, 1)[None].float() / 255)
    np.testing.assert_allclose(result.disparity_px, expected['disparity'][0, 0].numpy(), atol=1e-3)
    assert result.confidence is not None and result.confidence.shape == (48, 72)
    # A different image size is resized to the model's input and the disparity rescaled.
    big = backend.compute(np.repeat(np.repeat(left, 2, 0), 2, 1), np.repeat(np.repeat(right, 2, 0), 2, 1))
    assert big.disparity_px.shape == (96, 144)
    # The model sees the same 72x48 image (area-averaged back), so its disparity, measured in
    # the model's pixels, is twice as many pixels of the twice as wide image.
    np.testing.assert_allclose(np.median(big.disparity_px), 2 * np.median(result.disparity_px),
                               rtol=0.02)
    # Defaults: the model's fixed input size and its 'confidence' output are found by name.
    plain = create_backend('onnx', model_path=path, device='cpu')
    assert plain.input_size == (72, 48) and plain.confidence_name == 'confidence'
    again = plain.compute(np.repeat(np.repeat(left, 2, 0), 2, 1),
                          np.repeat(np.repeat(right, 2, 0), 2, 1))
    np.testing.assert_allclose(again.disparity_px, big.disparity_px, atol=1e-4)
    assert again.confidence is not None
    with pytest.raises(ValueError):
        create_backend('onnx', model_path=path, output_name='nope')
    with pytest.raises(ValueError):
        create_backend('onnx', model_path='')


def test_onnx_export_leaves_no_file_it_could_not_check(tmp_path, monkeypatch):
    """An opset too old for the network is refused up front (opset 11 wrote a file onnxruntime
    cannot load, then a traceback); a file the parity check cannot run is removed."""
    pytest.importorskip('onnxruntime')
    import onnxruntime
    from corr_depth_ros.core.stereo_net.export import export_stereo_onnx
    model = build_stereo_net(max_disparity_px=32, feature_channels=8, groups=2,
                             aggregation_channels=(8, 8, 8), refine_channels=0).eval()
    path = tmp_path / 'old.onnx'
    with pytest.raises(ValueError, match='opset 11 cannot express the network'):
        export_stereo_onnx(model, str(path), height=32, width=48, opset=11)

    def broken(*args, **kwargs):
        raise RuntimeError('cannot load')
    monkeypatch.setattr(onnxruntime, 'InferenceSession', broken)
    with pytest.raises(ValueError, match='export to ONNX opset 17 failed .*cannot load'):
        export_stereo_onnx(model, str(path), height=32, width=48)
    assert list(tmp_path.iterdir()) == []
    # An earlier model at the path stays as it was (it was deleted).
    path.write_bytes(b'an earlier model')
    with pytest.raises(ValueError, match='was not written'):
        export_stereo_onnx(model, str(path), height=32, width=48)
    assert path.read_bytes() == b'an earlier model' and len(list(tmp_path.iterdir())) == 1


def _export(net, path, inputs=None, names=('left', 'right'), outputs=('disparity',), **kwargs):
    """A user's model as torch.onnx.export writes it (8x8 float32 images unless told)."""
    inputs = inputs or (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    torch.onnx.export(net, inputs, str(path), input_names=list(names),
                      output_names=list(outputs), dynamo=False, **kwargs)
    return str(path)


def test_onnx_backend_checks_what_the_model_needs_at_load(tmp_path):
    """Models the backend cannot feed are refused when it starts (the node then keeps sgbm),
    not by an error on every frame with no fallback; a failure inside onnxruntime is the
    model's (ModelOutputError: the node falls back)."""
    pytest.importorskip('onnxruntime')
    from corr_depth_ros.core.backends.onnx_backend import ModelOutputError

    class Shift(torch.nn.Module):        # disparity = left's first channel * 0 + 2
        def forward(self, left, right):
            return left[:, :1] * 0.0 + right[:, :1] * 0.0 + 2.0

    class ThreeInputs(torch.nn.Module):
        def forward(self, left, right, iters):
            return left[:, :1] * 0.0 + right[:, :1] * 0.0 + iters.sum()

    with pytest.raises(FileNotFoundError, match='ONNX model not found'):
        create_backend('onnx', model_path=str(tmp_path / 'missing.onnx'), device='cpu')
    (tmp_path / 'ref.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
    with pytest.raises(ValueError, match='could not be loaded as an ONNX model'):
        create_backend('onnx', model_path=str(tmp_path / 'ref.png'), device='cpu')
    three = _export(ThreeInputs(), tmp_path / 'three.onnx', names=('left', 'right', 'iters'),
                    inputs=(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8), torch.ones(1)))
    with pytest.raises(ValueError, match=r"inputs \['iters'\] besides the two images"):
        create_backend('onnx', model_path=three, device='cpu')
    batch2 = _export(Shift(), tmp_path / 'batch2.onnx',
                     inputs=(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)))
    with pytest.raises(ValueError, match=r'\(1, 3, H, W\)'):
        create_backend('onnx', model_path=batch2, device='cpu')
    fixed = _export(Shift(), tmp_path / 'fixed.onnx')
    with pytest.raises(ValueError, match='fixed at 8x8'):
        create_backend('onnx', model_path=fixed, input_width=16, input_height=8, device='cpu')
    # Width fixed, height free: the image keeps its height, the width is resized to the
    # model's and the disparity rescaled (2 px at width 8 = 4 px at width 16).
    free_height = _export(Shift(), tmp_path / 'free_height.onnx',
                          dynamic_axes={'left': {2: 'h'}, 'right': {2: 'h'},
                                        'disparity': {2: 'h'}})
    backend = create_backend('onnx', model_path=free_height, device='cpu')
    result = backend.compute(np.zeros((12, 16, 3), np.uint8), np.zeros((12, 16, 3), np.uint8))
    np.testing.assert_allclose(result.disparity_px, 4.0, atol=1e-5)

    class LowConfidence(torch.nn.Module):    # full-size disparity, quarter-size confidence
        def forward(self, left, right):
            disparity = left[:, :1] * 0.0 + right[:, :1] * 0.0 + 2.0
            return disparity, torch.nn.functional.avg_pool2d(disparity, 4) * 0.0 + 0.5
    low = _export(LowConfidence(), tmp_path / 'low.onnx', outputs=('disparity', 'confidence'))
    result = create_backend('onnx', model_path=low, device='cpu').compute(
        np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
    assert result.confidence.shape == (8, 8) and np.allclose(result.confidence, 0.5)

    # An output whose rank onnxruntime cannot infer (declared []) is judged on the first frame,
    # not refused at load: such a model worked before the load-time checks.
    import onnx
    from onnx import TensorProto, helper
    image = ['N', 3, 'H', 'W']
    graph = helper.make_graph(
        [helper.make_node('Sub', ['left', 'right'], ['d']),
         helper.make_node('ReduceMean', ['d'], ['m'], axes=[1], keepdims=1),
         helper.make_node('Shape', ['m'], ['s']),
         helper.make_node('Slice', ['s', 'zero', 'one'], ['s0']),
         helper.make_node('Sub', ['s0', 'one'], ['axis']),        # 0, known only at run time
         helper.make_node('Squeeze', ['m', 'axis'], ['disparity'])], 'unknown_rank',
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, image) for n in ('left', 'right')],
        [helper.make_tensor_value_info('disparity', TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor('zero', TensorProto.INT64, [1], [0]),
                     helper.make_tensor('one', TensorProto.INT64, [1], [1])])
    unknown = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 13)])
    unknown.ir_version = 8
    onnx.save(unknown, str(tmp_path / 'unknown.onnx'))
    result = create_backend('onnx', model_path=str(tmp_path / 'unknown.onnx'),
                            device='cpu').compute(np.zeros((8, 8, 3), np.uint8),
                                                  np.zeros((8, 8, 3), np.uint8))
    assert result.disparity_px.shape == (8, 8)

    class Fails(torch.nn.Module):           # declares 8x8 but reshapes to what only 8x8 fits
        def forward(self, left, right):
            return (left[:, :1] + right[:, :1]).reshape(1, 1, 8, 8)
    fails = _export(Fails(), tmp_path / 'fails.onnx',
                    dynamic_axes={'left': {2: 'h', 3: 'w'}, 'right': {2: 'h', 3: 'w'}})
    backend = create_backend('onnx', model_path=fails, device='cpu')
    with pytest.raises(ModelOutputError, match='onnxruntime could not run the model'):
        backend.compute(np.zeros((10, 12, 3), np.uint8), np.zeros((10, 12, 3), np.uint8))


def test_onnx_backend_refuses_a_grey_model_at_load(tmp_path):
    """A model that wants (1, 1, H, W) images fails when the backend starts (the node then
    falls back to sgbm), not on every frame."""
    pytest.importorskip('onnxruntime')

    class Grey(torch.nn.Module):
        def forward(self, left, right):
            return left - right
    path = str(tmp_path / 'grey.onnx')
    torch.onnx.export(Grey(), (torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)), path,
                      input_names=['left', 'right'], output_names=['disparity'], dynamo=False)
    with pytest.raises(ValueError, match='RGB'):
        create_backend('onnx', model_path=path, device='cpu')


def test_onnx_backend_refuses_outputs_that_are_not_disparity(tmp_path):
    """A flow-style (1, 2, H, W) output, or negative 'disparity' (flow x), is a model fault:
    ModelOutputError (not ValueError, which the node takes for a bad frame), so the node falls
    back to sgbm with the reason instead of dropping every frame."""
    pytest.importorskip('onnxruntime')
    from corr_depth_ros.core.backends.onnx_backend import ModelOutputError

    class Flow(torch.nn.Module):
        def forward(self, left, right):
            return (left - right)[:, :2] * 0.0 - 3.0     # two channels

    class Negative(torch.nn.Module):
        def forward(self, left, right):
            return (left - right)[:, :1] * 0.0 - 3.0     # one channel, all negative
    image = np.zeros((8, 8, 3), np.uint8)
    path = _export(Flow(), tmp_path / 'flow.onnx')
    with pytest.raises(ValueError, match=r"output 'disparity' has shape \[1, 2, 8, 8\]"):
        create_backend('onnx', model_path=path, device='cpu')     # its shape is declared
    backend = create_backend('onnx', model_path=_export(Negative(), tmp_path / 'neg.onnx'),
                             device='cpu')
    with pytest.raises(ModelOutputError, match='negative'):
        backend.compute(image, image)
    assert not issubclass(ModelOutputError, ValueError)

    class NearZero(torch.nn.Module):    # a far scene: slightly negative, not flow
        def forward(self, left, right):
            return (left - right)[:, :1] * 0.0 - 0.04
    path = str(tmp_path / 'near_zero.onnx')
    torch.onnx.export(NearZero(), (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), path,
                      input_names=['left', 'right'], output_names=['disparity'], dynamo=False)
    result = create_backend('onnx', model_path=path, device='cpu').compute(image, image)
    assert not result.valid.any()       # invalid pixels, but the model is not refused


def test_onnx_backend_with_other_names_and_normalisation(tmp_path):
    """A user's model with its own input/output names and ImageNet-style normalisation: the
    backend's names, mean and std options are enough (issue 4)."""
    pytest.importorskip('onnxruntime')

    class Normalised(torch.nn.Module):   # returns the mean of the left input as 'disparity'
        def forward(self, img_l, img_r):
            return img_l.mean(dim=1, keepdim=True) + 0.0 * img_r[:, :1]
    path = str(tmp_path / 'named.onnx')
    torch.onnx.export(Normalised(), (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), path,
                      input_names=['img_l', 'img_r'], output_names=['disp'], dynamo=False)
    backend = create_backend('onnx', model_path=path, input_names=['img_l', 'img_r'],
                             output_name='disp', mean=[0.5] * 3, std=[0.25] * 3, device='cpu')
    white = np.full((8, 8, 3), 255, np.uint8)
    np.testing.assert_allclose(backend.compute(white, white).disparity_px, 2.0, atol=1e-5)


def test_half_precision_runs_and_stays_close(learned):
    """float16 inference (what the node uses on a GPU), run here on the CPU: finite and within
    a fraction of a pixel of float32 on a Motorcycle crop; DisparityImage.delta_d then states
    float16's step at the top of the range (1/8 px), not float32's 1/64."""
    half = create_backend('learned', device='cpu', half=True)
    pair = motorcycle_pairs(0.25)[0]
    full = learned.compute(pair['left'], pair['right']).disparity_px
    low = half.compute(pair['left'], pair['right']).disparity_px
    assert np.isfinite(low).all() and np.median(np.abs(low - full)) < 0.5
    assert learned.disparity_step_px == 1.0 / 64.0 and half.disparity_step_px == 1.0 / 8.0
    assert np.spacing(np.float16(191.0)) <= half.disparity_step_px


def test_out_of_memory_is_retried_once_before_it_reaches_the_node(monkeypatch):
    """A GPU out-of-memory error (often passing: another process, fragmentation) retries the
    frame once, after the failed pass's tensors are released; a second one in a row goes to
    the caller, whose fallback to sgbm then applies. CPU stand-in: a model that raises it."""
    import weakref
    backend = create_backend('learned', device='cpu', input_scale=1.0)   # one pass a pair
    real = backend.model
    calls, failed_pass = [], []

    def flaky(left, right, refine, failures):
        calls.append(1)
        if len(calls) <= failures:
            activations = torch.empty(1 << 20)         # the failed pass's memory
            failed_pass.append(weakref.ref(activations))
            raise torch.OutOfMemoryError('CUDA out of memory (simulated)')
        # The retry runs once the failed pass's tensors are released (not from inside the
        # except block, whose traceback would still hold them).
        assert all(ref() is None for ref in failed_pass)
        return real(left, right, refine)
    pair = motorcycle_pairs(0.125)[0]
    monkeypatch.setattr(backend, 'model', lambda l, r, refine=True: flaky(l, r, refine, 1))
    result = backend.compute(pair['left'], pair['right'])
    assert len(calls) == 2 and result.valid.any()
    calls.clear()
    monkeypatch.setattr(backend, 'model', lambda l, r, refine=True: flaky(l, r, refine, 2))
    with pytest.raises(torch.OutOfMemoryError):
        backend.compute(pair['left'], pair['right'])
    assert len(calls) == 2


def test_onnx_backend_refuses_cuda_it_could_not_start(tmp_path, monkeypatch):
    """onnxruntime-gpu lists its CUDA provider even when the CUDA libraries are missing, and
    then runs the session on the CPU. device 'cuda' must say so (the node falls back with the
    reason), not run on the CPU unannounced. Simulated: the CPU build with the provider listed."""
    ort = pytest.importorskip('onnxruntime')

    class Diff(torch.nn.Module):
        def forward(self, left, right):
            return (left - right).abs().mean(dim=1, keepdim=True)
    path = str(tmp_path / 'diff.onnx')
    torch.onnx.export(Diff(), (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), path,
                      input_names=['left', 'right'], output_names=['disparity'], dynamo=False)
    listed = ort.get_available_providers()
    monkeypatch.setattr(ort, 'get_available_providers',
                        lambda: ['CUDAExecutionProvider'] + listed)
    with pytest.raises(ValueError, match='could not start its CUDA provider'):
        create_backend('onnx', model_path=path, device='cuda')
    # 'auto' takes the CPU quietly, as it should.
    backend = create_backend('onnx', model_path=path, device='auto')
    assert backend.get_params()['providers'] == ['CPUExecutionProvider']


def test_evaluation_splits_errors_at_depth_edges_from_the_rest():
    """evaluate_backend's by_region: a stand-in backend 2 px off within 3 px of the one depth
    step (both pixels of the step and 3 more each side: the band train stereo --edge-weight
    weighs) and exact elsewhere."""
    from corr_depth_ros.core.backends.base import StereoBackend, StereoResult
    from corr_depth_ros.core.stereo_net.evaluate import depth_edge_mask, evaluate_backend
    gt = np.full((10, 30), 5.0, np.float32)
    gt[:, 15:] = 12.0                      # a step between columns 14 and 15
    gt[0, :] = np.nan                      # no ground truth: never scored, never an edge
    edges = depth_edge_mask(gt)
    assert edges[1:, 11:19].all() and not edges[:, :11].any() and not edges[:, 19:].any()

    class OffAtEdges(StereoBackend):
        def compute(self, left_rgb, right_rgb, **_):
            return StereoResult(disparity_px=np.nan_to_num(gt) + 2.0 * edges,
                                valid=np.ones(gt.shape, bool))
    image = np.zeros((10, 30, 3), np.uint8)
    report = evaluate_backend(OffAtEdges(), [{'name': 'step', 'left': image, 'right': image,
                                              'disparity_px': gt}], repeats=1)
    regions = report['by_region']
    assert regions['depth_edges']['pixels'] == 9 * 8 and regions['elsewhere']['pixels'] == 9 * 22
    assert regions['depth_edges']['epe_px'] == pytest.approx(2.0)
    assert regions['elsewhere']['epe_px'] == 0.0
    assert regions['depth_edge_share_pct'] == pytest.approx(100.0 * 8 / 30)
    assert report['epe_px'] == pytest.approx(2.0 * 8 / 30)


def test_eval_stereo_and_export_onnx_commands(tmp_path, capsys):
    """`corr_depth export-onnx stereo` prints its parity check; `corr_depth eval stereo` measures
    sgbm and the exported model in one run and writes JSON and the figure."""
    pytest.importorskip('onnxruntime')
    import json

    from corr_depth_ros.cli import main as cli_main
    model = str(tmp_path / 'out' / 'stereo.onnx')
    assert cli_main(['export-onnx', 'stereo', '--out', model, '--width', '96',
                     '--height', '64']) == 0
    assert 'parity torch vs onnxruntime: max abs diff disparity' in capsys.readouterr().out
    report, figure = tmp_path / 'eval.json', tmp_path / 'eval.png'
    assert cli_main(['eval', 'stereo', '--dataset', 'synthetic', '--count', '1', '--size', '96x64',
                     '--backend', 'sgbm', '--backend', 'onnx', '--onnx-model', model,
                     '--repeats', '1', '--json', str(report), '--figure', str(figure)]) == 0
    results = json.loads(report.read_text())
    backends = results['backends']
    for name in ('sgbm', 'onnx'):
        assert {'epe_px', 'bad_2_pct'} <= set(backends[name]), backends.keys()
        assert {'depth_edges', 'elsewhere'} <= set(backends[name]['by_region'])
    assert figure.is_file() and figure.stat().st_size > 0


def test_eval_commands_write_their_figure_beside_the_json_by_default(tmp_path, capsys):
    """The issues' evaluation commands (`corr_depth eval ... --json out.json`) each write a
    figure: by default out.png beside the JSON; `--figure ''` writes none; mono's figure draws
    Motorcycle, so a synthetic-only run has none by default (and refuses an explicit path)."""
    from corr_depth_ros.cli import main as cli_main
    tiny = ['eval', 'stereo', '--dataset', 'synthetic', '--count', '1', '--size', '96x64',
            '--backend', 'sgbm', '--repeats', '1']
    assert cli_main(tiny + ['--json', str(tmp_path / 'a' / 'out.json')]) == 0
    assert (tmp_path / 'a' / 'out.png').stat().st_size > 0
    assert cli_main(tiny + ['--json', str(tmp_path / 'b' / 'out.json'), '--figure', '']) == 0
    assert sorted(p.name for p in (tmp_path / 'b').iterdir()) == ['out.json']
    mono = ['eval', 'mono', '--dataset', 'synthetic', '--synthetic-count', '1', '--no-speed',
            '--ablation-weights', '', '--json', str(tmp_path / 'c' / 'mono.json')]
    assert cli_main(mono) == 0
    assert sorted(p.name for p in (tmp_path / 'c').iterdir()) == ['mono.json']
    capsys.readouterr()
    assert cli_main(mono + ['--figure', str(tmp_path / 'c' / 'mono.png')]) == 2
    assert '--figure draws the Motorcycle image' in capsys.readouterr().err


def test_export_onnx_without_the_onnx_package_says_what_to_install(tmp_path, monkeypatch,
                                                                   capsys):
    """A ROS install's rosdep keys bring onnxruntime at most; torch's exporter also needs onnx:
    without it, one line saying so (exit 2), not torch's traceback, and no file."""
    import sys

    from corr_depth_ros.cli import main as cli_main
    monkeypatch.setitem(sys.modules, 'onnx', None)
    model = tmp_path / 'stereo.onnx'
    assert cli_main(['export-onnx', 'stereo', '--out', str(model), '--width', '96',
                     '--height', '64']) == 2
    assert 'export-onnx needs the onnx package' in capsys.readouterr().err
    assert not model.exists()


def test_eval_commands_run_as_printed_without_json(tmp_path, monkeypatch):
    """Without --json the numbers go where `make eval` puts them, eval_output/<kind>_<dataset>
    .json under the current folder, with the figure beside them (the README's commands run as
    printed)."""
    from corr_depth_ros.cli import main as cli_main
    monkeypatch.chdir(tmp_path)
    assert cli_main(['eval', 'stereo', '--dataset', 'synthetic', '--count', '1', '--size',
                     '96x64', '--backend', 'sgbm', '--repeats', '1']) == 0
    assert sorted(p.name for p in (tmp_path / 'eval_output').iterdir()) == \
        ['stereo_synthetic.json', 'stereo_synthetic.png']


def test_gpu_benchmark_script_runs_every_section_on_the_cpu(tmp_path):
    """scripts/bench_gpu.py, the one-shot script for a session that is lent a GPU: every
    section runs (here on the CPU, tiny counts) and lands in its JSON; a failed section would
    make it exit 1 with the error recorded."""
    import json
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(__file__), '..', '..', 'scripts', 'bench_gpu.py')
    if not os.path.isfile(script):
        pytest.skip('scripts/ is not beside the package (installed elsewhere)')
    out = tmp_path / 'gpu.json'
    result = subprocess.run([sys.executable, script, '--device', 'cpu', '--repeats', '1',
                             '--train-steps', '1', '--json', str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    for section in ('stereo', 'mono', 'descriptors', 'train', 'onnx'):
        assert 'error' not in report[section], report[section]
    assert report['stereo']['float32']['motorcycle']['epe_px'] < 3.0
    assert report['stereo']['float32']['network_only']['per_s'] > 0
    assert report['onnx']['parity']['max_abs_diff_disparity_px'] < 1e-3
    assert report['train']['autocast'] is False         # mixed precision is for CUDA only
    # Timed as the node runs it on a stream (it probed every pair, unlike the node).
    assert report['stereo']['float32']['probe_every'] > 1


def test_gpu_benchmark_keeps_the_sections_it_finished_when_stopped(tmp_path, monkeypatch):
    """A one-shot GPU run stopped by its time limit wrote no JSON at all: it wrote only after
    the last section."""
    import importlib.util
    import json
    import sys
    scripts = os.path.join(os.path.dirname(__file__), '..', '..', 'scripts')
    if not os.path.isfile(os.path.join(scripts, 'bench_gpu.py')):
        pytest.skip('scripts/ is not beside the package (installed elsewhere)')
    monkeypatch.syspath_prepend(scripts)
    spec = importlib.util.spec_from_file_location('bench_gpu_under_test',
                                                  os.path.join(scripts, 'bench_gpu.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, 'bench_mono', lambda device, repeats: {'forward_fps': 1.0})

    def killed(device, steps):
        raise KeyboardInterrupt     # as the device's time limit ends the run
    monkeypatch.setattr(bench, 'bench_train', killed)
    out = tmp_path / 'gpu.json'
    with pytest.raises(KeyboardInterrupt):
        bench.main(['--device', 'cpu', '--sections', 'mono,train', '--json', str(out)])
    assert json.loads(out.read_text())['mono']['forward_fps'] == 1.0
    sys.modules.pop('bench_common', None)


def test_learned_backend_refuses_pairs_smaller_than_its_padding(learned):
    """A pair padded up to the network's multiple is mostly padding: a 1x1 image came out with
    a disparity 26 times its width, all valid. Refused with the reason, as sgbm refuses pairs
    narrower than its search (the node drops the frame and keeps running)."""
    tiny = np.zeros((8, 4000, 3), np.uint8)
    with pytest.raises(ValueError, match='at least 32 px on each side, got 4000x8'):
        learned.compute(tiny, tiny)
