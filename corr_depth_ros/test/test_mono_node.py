"""mono_depth_node over real DDS (loopback): outputs, headers, depth modes, bad input."""

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
torch = pytest.importorskip('torch')
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from corr_depth_ros import conversions  # noqa: E402
from corr_depth_ros.core.mono.network import ARCH, build_mono_net  # noqa: E402
from corr_depth_ros.core.training import save_weights  # noqa: E402
from corr_depth_ros.nodes.mono_depth_node import MonoDepthNode  # noqa: E402

RELIABLE = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
HEIGHT, WIDTH = 96, 128
FX, FY, CX, CY = 100.0, 100.0, 63.5, 47.5
BASELINE_M = 0.1


@pytest.fixture(scope='module')
def weights_path(tmp_path_factory):
    """A tiny random-weight model: these tests check the wiring, not the accuracy."""
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp('mono') / 'tiny.safetensors')
    save_weights(path, build_mono_net(base_channels=4), arch=ARCH,
                 config={'base_channels': 4, 'max_disparity_fraction': 0.35},
                 metadata={'training_rig': {'baseline_m': BASELINE_M}, 'input_size_hw': [64, 96]})
    return path


@pytest.fixture(scope='module')
def image():
    rng = np.random.default_rng(0)
    return (rng.random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)


class MonoRig:
    """Publishes image + camera_info with fresh stamps and collects the node's outputs."""

    def __init__(self, ros, frame_id='camera_optical', intrinsics=(FX, FY, CX, CY)):
        self.node = ros.node('mono_test_rig')
        self.frame_id = frame_id
        self.intrinsics = intrinsics
        self.pub_image = self.node.create_publisher(Image, 'image', RELIABLE)
        self.pub_info = self.node.create_publisher(CameraInfo, 'camera_info', RELIABLE)
        self.received = {'depth': [], 'points2': [], 'depth/camera_info': []}
        for topic, msg_type in (('depth', Image), ('points2', PointCloud2),
                                ('depth/camera_info', CameraInfo)):
            self.node.create_subscription(msg_type, topic,
                                          lambda m, t=topic: self.received[t].append(m), RELIABLE)
        self.stamp_sec = 100

    def publish(self, rgb, *, encoding='rgb8', mutate=None):
        self.stamp_sec += 1
        header = Header(frame_id=self.frame_id)
        header.stamp.sec = self.stamp_sec
        header.stamp.nanosec = 123
        pixels = rgb[:, :, ::-1] if encoding == 'bgr8' else rgb
        msgs = {'image': conversions.array_to_image(np.ascontiguousarray(pixels), encoding, header)}
        info = CameraInfo(header=header, height=rgb.shape[0], width=rgb.shape[1])
        fx, fy, cx, cy = self.intrinsics
        info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        info.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        msgs['info'] = info
        if mutate:
            mutate(msgs)
        self.pub_info.publish(msgs['info'])
        self.pub_image.publish(msgs['image'])
        return self.stamp_sec

    def outputs_for(self, stamp_sec):
        return {topic: m for topic, msgs in self.received.items() for m in msgs
                if m.header.stamp.sec == stamp_sec}

    def wait_outputs(self, ros, send, timeout_s=60.0):
        stamps = []
        ok = ros.wait_for(lambda: any(len(self.outputs_for(s)) == 3 for s in stamps),
                          timeout_s=timeout_s, action=lambda: stamps.append(send()),
                          action_period_s=2.0)
        assert ok, f'no complete output set; counts {[(k, len(v)) for k, v in self.received.items()]}'
        return next(self.outputs_for(s) for s in stamps if len(self.outputs_for(s)) == 3)


def _start(ros, weights_path, **params):
    params = {'weights_path': weights_path, 'device': 'cpu', 'torch_threads': 1, **params}
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    return ros.add(MonoDepthNode(context=ros.context, parameter_overrides=overrides))


def test_outputs_encodings_shapes_and_headers(ros, weights_path, image):
    node = _start(ros, weights_path)
    rig = MonoRig(ros)
    out = rig.wait_outputs(ros, lambda: rig.publish(image))
    assert node.synchronised_sets >= 1
    for msg in out.values():
        assert msg.header.frame_id == 'camera_optical' and msg.header.stamp.nanosec == 123

    depth_msg = out['depth']
    assert depth_msg.encoding == '32FC1'
    depth = conversions.image_to_array(depth_msg)
    assert depth.shape == (HEIGHT, WIDTH)
    # Metric mode: Z = fx * B / d_px with a disparity the sigmoid bounds to (0, 0.35 W).
    assert np.isfinite(depth).all()
    assert float(depth.min()) > FX * BASELINE_M / (0.35 * WIDTH) - 1e-4
    # ... and exactly what the same model gives without ROS, with this camera's fx and the
    # weights' baseline (a wrong focal length or baseline in the node changes the scale).
    from corr_depth_ros.core.mono.inference import estimate_depth, load_mono_model
    model, _ = load_mono_model(weights_path, 'cpu')
    expected, _, _ = estimate_depth(model, image, FX, mode='metric', baseline_m=BASELINE_M,
                                    input_size=node._input_size,
                                    post_process=node.get_parameter('post_process').value)
    np.testing.assert_allclose(depth, expected, rtol=1e-4)

    info = out['depth/camera_info']
    assert (info.width, info.height) == (WIDTH, HEIGHT) and info.k[0] == pytest.approx(FX)

    cloud = out['points2']
    assert (cloud.height, cloud.width) == (HEIGHT, WIDTH)
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb']
    points, rgb = conversions.pointcloud2_to_arrays(cloud)
    np.testing.assert_allclose(points[..., 2], depth, rtol=1e-6)
    # Back-projection with the camera_info intrinsics: x = (u - cx) * z / fx.
    u = np.arange(WIDTH, dtype=np.float32)
    np.testing.assert_allclose(points[10, :, 0], (u - CX) * depth[10] / FX, rtol=1e-4, atol=1e-6)
    assert np.array_equal(rgb, image)

    # Relative mode at runtime: unitless, median 1.
    assert node.set_parameters([Parameter('depth_mode', value='relative')])[0].successful
    out = rig.wait_outputs(ros, lambda: rig.publish(image))
    relative = conversions.image_to_array(out['depth'])
    assert np.nanmedian(relative) == pytest.approx(1.0, rel=0.02)
    bad = node.set_parameters([Parameter('depth_mode', value='furlongs')])[0]
    assert not bad.successful and 'one of' in bad.reason

    # The colourised depth, computed only while someone subscribes: rgb8 at the image's size,
    # with the image's header.
    colour = []
    rig.node.create_subscription(Image, 'depth/color', colour.append, RELIABLE)
    assert ros.wait_for(lambda: colour, timeout_s=30, action=lambda: rig.publish(image),
                        action_period_s=1.0)
    assert (colour[0].encoding, colour[0].height, colour[0].width) == ('rgb8', HEIGHT, WIDTH)
    assert colour[0].header.frame_id == 'camera_optical'
    assert not node.set_parameters([Parameter('weights_path', value='/x')])[0].successful


def test_bad_inputs_are_reported_and_node_recovers(ros, weights_path, image):
    node = _start(ros, weights_path)
    rig = MonoRig(ros)

    def wrong_encoding(m):
        m['image'].encoding = 'yuv422'

    def bad_length(m):
        m['image'].data = m['image'].data[:-10]

    def empty(m):
        m['image'].height = m['image'].width = m['image'].step = 0
        m['image'].data = []

    def zero_k(m):
        m['info'].k = [0.0] * 9

    def size_mismatch(m):
        m['info'].width = WIDTH // 2

    cases = {'encoding': wrong_encoding, 'length': bad_length, 'empty': empty,
             'calibrated': zero_k, 'does not match': size_mismatch}
    bad_stamps = {}
    for expected_text, mutate in cases.items():
        before = node._errors.count
        stamps = bad_stamps.setdefault(expected_text, [])
        # This case's own error: on a slow machine a frame of the case before (re-published
        # while it was still on its way) can be reported after this one began.
        ok = ros.wait_for(lambda: node._errors.count > before and
                          expected_text in node._errors.last_message, timeout_s=20,
                          action=lambda: stamps.append(rig.publish(image, mutate=mutate)),
                          action_period_s=1.0)
        assert ok, f'no error reported for {expected_text}'
        assert expected_text in node._errors.last_message, node._errors.last_message

    # Unsynchronised stamps (camera_info 0.3 s after its image): never processed, and the
    # watchdog (every 5 s; run here by hand once all of them have arrived) says by how much
    # the stamps differ.
    def late_info(m):
        image_header = m['image'].header      # a new header: the two may share one object
        m['info'].header = Header(frame_id=image_header.frame_id)
        m['info'].header.stamp.sec = image_header.stamp.sec
        m['info'].header.stamp.nanosec = image_header.stamp.nanosec + 300_000_000
    message = ros.unmatched_stamps_report(node, lambda: rig.publish(image, mutate=late_info))
    assert 'stamps differ by 0.300 s' in message, message

    # Still alive: the next good frame (BGR this time) is processed.
    out = rig.wait_outputs(ros, lambda: rig.publish(image, encoding='bgr8'))
    assert conversions.image_to_array(out['depth']).shape == (HEIGHT, WIDTH)
    # Each output topic delivers in order, so an output of a bad frame (published before the
    # good frame's) would have arrived by now.
    for expected_text, stamps in bad_stamps.items():
        assert not any(rig.outputs_for(s) for s in stamps), f'{expected_text}: output published'


def test_missing_weights_fail_at_startup_with_a_reason(ros, tmp_path):
    with pytest.raises(FileNotFoundError, match='weights file not found'):
        MonoDepthNode(context=ros.context, parameter_overrides=[
            Parameter('weights_path', value=str(tmp_path / 'nope.safetensors'))])


def test_metric_mode_without_any_baseline_is_refused(ros, tmp_path):
    """Weights that do not know their rig's baseline: metric depth needs baseline_m, said at
    start-up and when a parameter change would leave it without one (not on every frame)."""
    path = str(tmp_path / 'no_baseline.safetensors')
    save_weights(path, build_mono_net(base_channels=4), arch=ARCH,
                 config={'base_channels': 4, 'max_disparity_fraction': 0.35},
                 metadata={'input_size_hw': [64, 96]})
    with pytest.raises(ValueError, match='needs a baseline and the weights metadata has no '
                       'training_rig.baseline_m: give the baseline_m parameter'):
        MonoDepthNode(context=ros.context, parameter_overrides=[
            Parameter('weights_path', value=path)])
    node = ros.add(MonoDepthNode(context=ros.context, parameter_overrides=[
        Parameter('weights_path', value=path), Parameter('depth_mode', value='relative')]))
    refused = node.set_parameters([Parameter('depth_mode', value='metric')])[0]
    assert not refused.successful and 'needs a baseline' in refused.reason
    ok = node.set_parameters_atomically([Parameter('depth_mode', value='metric'),
                                         Parameter('baseline_m', value=0.12)])
    assert ok.successful and node._values['depth_mode'] == 'metric'


def test_shipped_weights_through_the_node_on_a_real_image(ros):
    """Defaults as a user gets them (shipped weights, pp on, metric mode) on the Motorcycle left
    image at half size: the published depth, aligned by scale and shift in inverse depth, beats
    a constant depth (median scaling alone does not: the net's depth range is off; README)."""
    import os

    import cv2

    from corr_depth_ros.core.mono.evaluate import motorcycle_ground_truth
    from corr_depth_ros.core.mono.inference import SHIPPED_WEIGHTS, shipped_weights_path
    from corr_depth_ros.core.mono.metrics import depth_metrics
    if not os.path.isfile(shipped_weights_path()):
        pytest.skip(f'{SHIPPED_WEIGHTS} not shipped')
    gt = motorcycle_ground_truth()
    height, width = gt['left'].shape[0] // 2, gt['left'].shape[1] // 2
    left = cv2.resize(gt['left'], (width, height), interpolation=cv2.INTER_AREA)
    gt_depth = gt['depth_m'][::2, ::2][:height, :width]
    fx = gt['fx_px'] / 2
    node = ros.add(MonoDepthNode(context=ros.context, parameter_overrides=[
        Parameter('device', value='cpu'), Parameter('torch_threads', value=1)]))
    assert node.get_parameter('post_process').value is True
    rig = MonoRig(ros, intrinsics=(fx, fx, width / 2, height / 2))
    out = rig.wait_outputs(ros, lambda: rig.publish(left))
    depth = conversions.image_to_array(out['depth'])
    assert depth.shape == (height, width) and np.isfinite(depth).all() and (depth > 0).all()
    ours = depth_metrics(depth, gt_depth)['scale_shift_inv']['abs_rel']
    constant = depth_metrics(np.ones_like(gt_depth), gt_depth)['scale_shift_inv']['abs_rel']
    assert ours < constant - 0.02, (ours, constant)


def test_compressed_input_gives_the_raw_inputs_depth(ros, weights_path, image):
    """image_transport's `compressed` (png: lossless) under a remapped image name: the node
    subscribes to <remapped image>/compressed and publishes the depth the raw input gives."""
    from sensor_msgs.msg import CompressedImage
    node = ros.add(MonoDepthNode(
        context=ros.context, cli_args=['--ros-args', '-r', 'image:=/cam/image_rect'],
        parameter_overrides=[Parameter(k, value=v) for k, v in {
            'weights_path': weights_path, 'device': 'cpu', 'torch_threads': 1,
            'image_transport': 'compressed'}.items()]))
    assert node._subs[0].topic_name == '/cam/image_rect/compressed'
    rig = MonoRig(ros)
    rig.pub_image = rig.node.create_publisher(CompressedImage, '/cam/image_rect/compressed',
                                              RELIABLE)

    def as_png(msgs):
        msgs['image'] = conversions.rgb8_to_compressed(image, msgs['image'].header, 'png')
    compressed = rig.wait_outputs(ros, lambda: rig.publish(image, mutate=as_png))
    compressed_depth = conversions.image_to_array(compressed['depth'])
    raw_node = _start(ros, weights_path)    # the same model on the raw topic
    rig2 = MonoRig(ros)
    rig2.stamp_sec = 1000                   # stamps apart from the first rig's
    raw = rig2.wait_outputs(ros, lambda: rig2.publish(image))
    np.testing.assert_array_equal(conversions.image_to_array(raw['depth']), compressed_depth)
    assert raw_node.synchronised_sets > 0
