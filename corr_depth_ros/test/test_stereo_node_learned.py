"""stereo_depth_node with the learned and onnx backends over real DDS (loopback), and the
fallback to sgbm when the learned weights cannot be loaded."""
import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
torch = pytest.importorskip('torch')
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

from corr_depth_ros import conversions  # noqa: E402
from corr_depth_ros.core.metrics import disparity_metrics  # noqa: E402
from corr_depth_ros.core.motorcycle import load_motorcycle  # noqa: E402
from corr_depth_ros.nodes.stereo_depth_node import StereoDepthNode  # noqa: E402
from test_stereo_node import RELIABLE, StereoRig  # noqa: E402

# A 256x192 crop around the motorcycle keeps each frame fast on a CPU.
X0, Y0, WIDTH, HEIGHT = 250, 150, 256, 192
# The shipped weights score EPE 4.1 px on this crop (an all-zero prediction 44.7 px).
CROP_EPE_MAX_PX = 6.0


@pytest.fixture(scope='module')
def crop():
    data = load_motorcycle()
    g = data['geometry']
    geometry = type(g)(width=WIDTH, height=HEIGHT, fx=g.fx, fy=g.fy, cx_left=g.cx_left - X0,
                       cy=g.cy - Y0, cx_right=g.cx_right - X0, baseline_m=g.baseline_m)
    window = (slice(Y0, Y0 + HEIGHT), slice(X0, X0 + WIDTH))
    return {'left': np.ascontiguousarray(data['left'][window]),
            'right': np.ascontiguousarray(data['right'][window]),
            'disparity_px': data['disparity_px'][window], 'geometry': geometry}


def _start(ros, **params):
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    return ros.add(StereoDepthNode(context=ros.context, parameter_overrides=overrides))


def test_learned_backend_publishes_accurate_disparity_and_confidence(ros, crop):
    node = _start(ros, backend='learned', device='cpu')
    assert node._backend_name == 'learned'
    rig = StereoRig(ros, crop['geometry'])
    confidences, disparity_stamps = [], []
    rig.node.create_subscription(Image, 'confidence', confidences.append, RELIABLE)
    rig.node.create_subscription(DisparityImage, 'disparity',
                                 lambda m: disparity_stamps.append(m.header.stamp), RELIABLE)
    out = rig.wait_outputs(ros, lambda: rig.publish(crop['left'], crop['right']))

    disp_msg = out['disparity']
    assert disp_msg.header.frame_id == 'left_optical'
    assert disp_msg.delta_d == pytest.approx(1.0 / 64.0)   # float output, not SGBM's 1/16
    published = conversions.disparity_msg_to_array(disp_msg)
    assert published.shape == (HEIGHT, WIDTH)
    valid = published > 0
    assert valid.mean() > 0.95                                  # dense output
    raw = np.where(valid, published - crop['geometry'].doffs_px, np.nan)
    metrics = disparity_metrics(raw, crop['disparity_px'])
    assert metrics['epe_px'] < CROP_EPE_MAX_PX, metrics
    depth = conversions.image_to_array(out['depth'])
    both = valid & np.isfinite(depth)
    np.testing.assert_allclose(depth[both], disp_msg.f * disp_msg.t / published[both], rtol=1e-4)

    def matching():
        # Any frame whose disparity and confidence both arrived (the confidence subscription,
        # made last, may have missed the first frame: waiting for its stamp could not end).
        stamps = list(disparity_stamps) + [disp_msg.header.stamp]
        return [m for m in list(confidences) if m.header.stamp in stamps]
    assert ros.wait_for(lambda: matching(), timeout_s=60,
                        action=lambda: rig.publish(crop['left'], crop['right']),
                        action_period_s=2.0), 'no confidence image with a disparity\'s stamp'
    confidence_msg = matching()[0]
    assert confidence_msg.header.frame_id == disp_msg.header.frame_id
    confidence = conversions.image_to_array(confidence_msg)
    assert confidence_msg.encoding == '32FC1' and confidence.shape == (HEIGHT, WIDTH)
    assert np.nanmin(confidence) >= 0 and np.nanmax(confidence) <= 1
    # The search range is fixed by training: a larger max_disparity_px is refused, with why.
    trained = node._backend.max_disparity_px
    beyond = node.set_parameters([Parameter('max_disparity_px', value=trained + 16)])[0]
    assert not beyond.successful and 'trained range' in beyond.reason
    assert node.set_parameters([Parameter('max_disparity_px', value=trained // 2)])[0].successful
    # learned.input_scale changes at runtime; 1 is the network as trained, and the range
    # follows (auto reaches 192 / 0.375 = 512 px by shrinking near scenes).
    assert trained == 512
    # A scale whose range is below the max_disparity_px in force, or below one set with it, is
    # refused too.
    assert not node.set_parameters([Parameter('learned.input_scale', value=1.0)])[0].successful
    both = node.set_parameters_atomically([Parameter('learned.input_scale', value=1.0),
                                           Parameter('max_disparity_px', value=300)])
    assert not both.successful and 'trained range' in both.reason
    assert node._backend.input_scale == 0.0
    assert node.set_parameters([Parameter('max_disparity_px', value=0)])[0].successful
    assert node.set_parameters([Parameter('learned.input_scale', value=1.0)])[0].successful
    assert node._backend.input_scale == 1.0 and node._backend.max_disparity_px == 192
    refused = node.set_parameters([Parameter('learned.input_scale', value=-0.5)])[0]
    assert not refused.successful and node._backend.input_scale == 1.0
    # learned.probe_every reaches the backend too (5 by default in the node), alone or with
    # the scale; out of range is refused.
    assert node._backend.probe_every == 5
    assert node.set_parameters([Parameter('learned.probe_every', value=1)])[0].successful
    assert node._backend.probe_every == 1
    assert node.set_parameters_atomically([Parameter('learned.probe_every', value=4),
                                           Parameter('learned.input_scale', value=0.0)]).successful
    assert node._backend.probe_every == 4 and node._backend.input_scale == 0.0
    assert not node.set_parameters([Parameter('learned.probe_every', value=0)])[0].successful
    assert node._backend.probe_every == 4


def test_missing_weights_fall_back_to_sgbm(ros, crop, tmp_path):
    node = _start(ros, backend='learned', **{'learned.weights_path': str(tmp_path / 'nope.safetensors')})
    assert node._backend_name == 'sgbm'
    assert node.get_parameter('backend').value == 'sgbm'   # the parameter names what runs
    rig = StereoRig(ros, crop['geometry'])
    out = rig.wait_outputs(ros, lambda: rig.publish(crop['left'], crop['right']))
    assert out['disparity'].delta_d == pytest.approx(1.0 / 16.0)   # SGBM's fixed point


def test_onnx_backend_runs_an_exported_model(ros, crop, tmp_path):
    pytest.importorskip('onnxruntime')
    from corr_depth_ros.core.stereo_net import build_stereo_net
    from corr_depth_ros.core.stereo_net.export import export_stereo_onnx
    torch.manual_seed(0)
    model = build_stereo_net(max_disparity_px=64, feature_channels=8, groups=2,
                             aggregation_channels=(8, 8, 8))
    path = str(tmp_path / 'tiny.onnx')
    export_stereo_onnx(model, path, height=96, width=128)
    node = _start(ros, backend='onnx', **{'onnx.model_path': path, 'onnx.input_width': 128,
                                          'onnx.input_height': 96})
    assert node._backend_name == 'onnx'
    rig = StereoRig(ros, crop['geometry'])
    out = rig.wait_outputs(ros, lambda: rig.publish(crop['left'], crop['right']))
    assert conversions.disparity_msg_to_array(out['disparity']).shape == (HEIGHT, WIDTH)
