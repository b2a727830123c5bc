"""stereo_depth_node over real DDS (loopback): accuracy on Middlebury Motorcycle, outputs, bad input."""
import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from stereo_msgs.msg import DisparityImage  # noqa: E402

from corr_depth_ros import conversions  # noqa: E402
from corr_depth_ros.core.metrics import disparity_metrics  # noqa: E402
from corr_depth_ros.core.motorcycle import load_motorcycle  # noqa: E402
from corr_depth_ros.nodes.stereo_depth_node import StereoDepthNode  # noqa: E402

RELIABLE = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


class StereoRig:
    """Test publisher of a stereo set + collector of the node's outputs."""

    def __init__(self, ros, geometry, frame_id='left_optical'):
        self.node = ros.node('stereo_test_rig')
        self.geometry = geometry
        self.frame_id = frame_id
        n = self.node
        self.pubs = {
            'left': n.create_publisher(Image, 'left/image_rect', RELIABLE),
            'right': n.create_publisher(Image, 'right/image_rect', RELIABLE),
            'left_info': n.create_publisher(CameraInfo, 'left/camera_info', RELIABLE),
            'right_info': n.create_publisher(CameraInfo, 'right/camera_info', RELIABLE),
        }
        self.received = {'disparity': [], 'depth': [], 'points2': [], 'depth/camera_info': []}
        for topic, msg_type in (('disparity', DisparityImage), ('depth', Image),
                                ('points2', PointCloud2), ('depth/camera_info', CameraInfo)):
            n.create_subscription(msg_type, topic,
                                  lambda m, t=topic: self.received[t].append(m), RELIABLE)
        self.stamp_sec = 100

    def publish(self, left_rgb, right_rgb, *, left_encoding='rgb8', mutate=None, right_stamp_offset_ns=0):
        """Publish one set with a fresh stamp; returns that stamp's sec value."""
        self.stamp_sec += 1
        header = Header(frame_id=self.frame_id)
        header.stamp.sec = self.stamp_sec
        right_header = Header(frame_id='right_optical')
        right_header.stamp.sec = self.stamp_sec
        right_header.stamp.nanosec = right_stamp_offset_ns
        if left_encoding == 'bgr8':
            left_msg = conversions.array_to_image(left_rgb[:, :, ::-1], 'bgr8', header)
        else:
            left_msg = conversions.array_to_image(left_rgb, 'rgb8', header)
        right_msg = conversions.array_to_image(right_rgb, 'rgb8', right_header)
        left_info, right_info = conversions.stereo_camera_infos(self.geometry, header, right_header)
        msgs = {'left': left_msg, 'right': right_msg, 'left_info': left_info, 'right_info': right_info}
        if mutate:
            mutate(msgs)
        for key in ('left_info', 'right_info', 'right', 'left'):
            self.pubs[key].publish(msgs[key])
        return self.stamp_sec

    def outputs_for(self, stamp_sec):
        found = {}
        for topic, msgs in self.received.items():
            for m in msgs:
                if m.header.stamp.sec == stamp_sec:
                    found[topic] = m
        return found

    def wait_outputs(self, ros, send, timeout_s=60.0):
        """Publish with ``send()`` until all outputs of one of its stamps arrive."""
        stamps = []

        def action():
            stamps.append(send())

        ok = ros.wait_for(lambda: any(len(self.outputs_for(s)) == 4 for s in stamps),
                          timeout_s=timeout_s, action=action, action_period_s=2.0)
        assert ok, f'no complete output set; received counts {[(k, len(v)) for k, v in self.received.items()]}'
        return next(self.outputs_for(s) for s in stamps if len(self.outputs_for(s)) == 4)


@pytest.fixture(scope='module')
def motorcycle():
    return load_motorcycle()


def _start(ros, **params):
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    node = StereoDepthNode(context=ros.context, parameter_overrides=overrides)
    return ros.add(node)


def test_motorcycle_outputs_and_accuracy(ros, motorcycle):
    node = _start(ros)
    geometry = motorcycle['geometry']
    rig = StereoRig(ros, geometry)
    out = rig.wait_outputs(ros, lambda: rig.publish(motorcycle['left'], motorcycle['right']))
    assert node.synchronised_sets >= 1

    # Disparity message: 32FC1 with the doffs offset folded in, so Z = f*T/d holds.
    disp_msg = out['disparity']
    assert disp_msg.header.frame_id == 'left_optical'
    assert disp_msg.f == pytest.approx(geometry.fx)
    assert disp_msg.t == pytest.approx(geometry.baseline_m)
    assert disp_msg.delta_d > 0 and disp_msg.max_disparity > disp_msg.min_disparity > 0
    published = conversions.disparity_msg_to_array(disp_msg)
    valid = published > 0
    raw = np.where(valid, published - geometry.doffs_px, np.nan)
    metrics = disparity_metrics(raw, motorcycle['disparity_px'])
    # SGBM + hole filling measures ~9.7 % bad-2.0 and EPE ~1.6 px here.
    assert metrics['bad_2_pct'] < 12.0, metrics
    assert metrics['epe_px'] < 2.0, metrics
    assert metrics['holes_pct'] < 1.0, metrics

    # Depth: REP 118, consistent with the disparity message's own definition.
    depth = conversions.image_to_array(out['depth'])
    assert out['depth'].encoding == '32FC1' and depth.shape == (500, 741)
    both = valid & np.isfinite(depth)
    assert both.mean() > 0.95
    np.testing.assert_allclose(depth[both], disp_msg.f * disp_msg.t / published[both], rtol=1e-4)
    assert np.all(np.isnan(depth[~valid]))
    # Motorcycle depth is about 1.5 to 8 m at this scale.
    assert 1.0 < np.nanmedian(depth) < 8.0
    assert out['depth/camera_info'].k[0] == pytest.approx(geometry.fx)

    # Cloud: organised, x y z rgb, NaN for invalid, z equals depth.
    cloud = out['points2']
    assert (cloud.height, cloud.width) == (500, 741) and not cloud.is_dense
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb']
    points, rgb = conversions.pointcloud2_to_arrays(cloud)
    np.testing.assert_allclose(points[..., 2][both], depth[both], rtol=1e-6)
    assert np.array_equal(rgb, motorcycle['left'])
    assert np.all(np.isnan(points[~np.isfinite(depth)]))


def test_bad_inputs_are_reported_and_node_recovers(ros, motorcycle):
    node = _start(ros)
    geometry = motorcycle['geometry']
    small_l = np.ascontiguousarray(motorcycle['left'][:240, :320])
    small_r = np.ascontiguousarray(motorcycle['right'][:240, :320])
    small_geo = type(geometry)(**{**geometry.__dict__, 'width': 320, 'height': 240})
    rig = StereoRig(ros, small_geo)

    def wrong_encoding(m):
        m['left'].encoding = 'yuv422'

    def size_mismatch(m):
        m['right'] = conversions.array_to_image(small_r[:200], 'rgb8', m['right'].header)

    def bad_length(m):
        m['left'].data = m['left'].data[:-10]

    def empty(m):
        m['left'].height = m['left'].width = m['left'].step = 0
        m['left'].data = []

    def zero_k(m):
        m['left_info'].k = [0.0] * 9
        m['left_info'].p = [0.0] * 12

    def zero_tx(m):
        p = list(m['right_info'].p)
        p[3] = 0.0
        m['right_info'].p = p

    cases = {'encoding': wrong_encoding, 'size': size_mismatch, 'length': bad_length,
             'empty': empty, 'calibrated': zero_k, 'Tx = 0': zero_tx}
    bad_stamps = {}
    for expected_text, mutate in cases.items():
        before = node._errors.count
        stamps = bad_stamps.setdefault(expected_text, [])
        # This case's own error: on a slow machine a frame of the case before (re-published
        # while it was still on its way) can be reported after this one began.
        ok = ros.wait_for(lambda: node._errors.count > before and
                          expected_text in node._errors.last_message, timeout_s=20,
                          action=lambda: stamps.append(rig.publish(small_l, small_r, mutate=mutate)),
                          action_period_s=1.0)
        assert ok, f'no error reported for {expected_text}'
        assert expected_text in node._errors.last_message, node._errors.last_message

    # Unsynchronised stamps: never matched, never processed, and the watchdog (every 5 s; run
    # here by hand once all of them have arrived) says by how much the stamps differ.
    message = ros.unmatched_stamps_report(node, lambda: rig.publish(
        small_l, small_r, right_stamp_offset_ns=5_000_000))
    assert 'stamps differ by 0.005 s' in message, message

    # The node is still alive: the next good frame (in BGR this time) is processed.
    out = rig.wait_outputs(ros, lambda: rig.publish(small_l, small_r, left_encoding='bgr8'))
    assert conversions.image_to_array(out['depth']).shape == (240, 320)
    # Each output topic delivers in order, so an output of a bad frame (published before the
    # good frame's) would have arrived by now.
    for expected_text, stamps in bad_stamps.items():
        assert not any(rig.outputs_for(s) for s in stamps), f'{expected_text}: output published'


def test_approximate_sync_pairs_within_slop_only(ros, motorcycle):
    """approximate_sync: a right image 5 ms off its left pairs with slop 10 ms (outputs carry
    the left stamp); 50 ms off it does not."""
    import time
    node = _start(ros, approximate_sync=True, slop_s=0.01)
    geometry = motorcycle['geometry']
    small_l = np.ascontiguousarray(motorcycle['left'][:240, :320])
    small_r = np.ascontiguousarray(motorcycle['right'][:240, :320])
    rig = StereoRig(ros, type(geometry)(**{**geometry.__dict__, 'width': 320, 'height': 240}))
    out = rig.wait_outputs(ros, lambda: rig.publish(small_l, small_r,
                                                    right_stamp_offset_ns=5_000_000))
    assert out['depth'].header.stamp.nanosec == 0         # the left image's stamp
    counts, sets = node._sync.message_counts(), node.synchronised_sets
    for _ in range(3):
        rig.publish(small_l, small_r, right_stamp_offset_ns=50_000_000)
    # Judged once all of them have arrived, not after a fixed time.
    assert ros.wait_for(lambda: all(now - before >= 3 for now, before in zip(
        node._sync.message_counts(), counts)), timeout_s=30)
    assert node.synchronised_sets == sets


def test_runtime_parameters_validated(ros):
    node = _start(ros)
    running = node._backend
    ok = node.set_parameters([Parameter('sgbm.num_disparities', value=96)])[0]
    assert ok.successful and node._backend.get_params()['num_disparities'] == 96
    # A changed copy is swapped in: a frame running on the old one keeps its settings, taken
    # together with the node's (a change landing mid-frame mixed old and new).
    assert running.get_params()['num_disparities'] != 96
    bad = node.set_parameters([Parameter('sgbm.num_disparities', value=100)])[0]
    assert not bad.successful and 'multiple of 16' in bad.reason
    bad_p2 = node.set_parameters([Parameter('sgbm.p1', value=500), Parameter('sgbm.p2', value=100)])
    assert not all(r.successful for r in bad_p2)
    bad_p2 = node.set_parameters([Parameter('sgbm.p2', value=100)])[0]     # P1 is 200 at block 5
    assert not bad_p2.successful and 'p2 must be greater than p1' in bad_p2.reason
    # ros2 param load sets a file's parameters one at a time: the refusal says how to get a
    # set that holds only as a whole through (it refused part of a consistent file silently).
    assert 'one parameter at a time' in bad_p2.reason and 'ros2 param load again' in bad_p2.reason
    # sgbm searches sgbm.min_disparity .. max_disparity_px: an empty range is refused, from
    # either side.
    assert node.set_parameters([Parameter('sgbm.min_disparity', value=8)])[0].successful
    empty = node.set_parameters([Parameter('max_disparity_px', value=8)])[0]
    assert not empty.successful and 'greater than sgbm.min_disparity' in empty.reason
    assert node.set_parameters([Parameter('max_disparity_px', value=40)])[0].successful
    empty = node.set_parameters([Parameter('sgbm.min_disparity', value=40)])[0]
    assert not empty.successful and 'greater than sgbm.min_disparity' in empty.reason
    bad_backend = node.set_parameters([Parameter('backend', value='magic')])[0]
    assert not bad_backend.successful and 'one of' in bad_backend.reason
    read_only = node.set_parameters([Parameter('queue_size', value=3)])[0]
    assert not read_only.successful


def test_disparity_colours_keep_the_message_disparity_range(ros, motorcycle):
    """disparity/color maps the DisparityImage's min..max disparity onto the colour map, as
    stereo_image_proc's stereo_view does, so a colour means one disparity in every frame (each
    frame's own percentiles made the colours flicker)."""
    from corr_depth_ros.core.colormap import colourise
    _start(ros)
    rig = StereoRig(ros, motorcycle['geometry'])
    colours = {}
    rig.node.create_subscription(Image, 'disparity/color',
                                 lambda m: colours.setdefault(m.header.stamp.sec, m), RELIABLE)
    stamps = []
    assert ros.wait_for(lambda: any(s in colours and 'disparity' in rig.outputs_for(s)
                                    for s in stamps), timeout_s=60,
                        action=lambda: stamps.append(rig.publish(motorcycle['left'],
                                                                 motorcycle['right'])),
                        action_period_s=2.0)
    stamp = next(s for s in stamps if s in colours and 'disparity' in rig.outputs_for(s))
    message = rig.outputs_for(stamp)['disparity']
    disparity = conversions.image_to_array(message.image)
    disparity = np.where(disparity >= message.min_disparity, disparity, np.nan)
    expected = colourise(disparity, vmin=message.min_disparity, vmax=message.max_disparity)
    # The node colours the disparity before doffs is added: float rounding may move a pixel
    # lying on a colour step to the next one.
    differ = np.any(conversions.image_to_array(colours[stamp]) != expected, axis=2)
    assert differ.mean() < 1e-3, differ.mean()


def test_max_depth_and_no_cloud_through_the_node(ros, motorcycle):
    """max_depth_m masks far pixels in depth and disparity; publish_points=False publishes no
    cloud (and saves its CPU), the other outputs as usual."""
    node = _start(ros, max_depth_m=3.0, publish_points=False)
    rig = StereoRig(ros, motorcycle['geometry'])
    stamps = []

    def done():
        return any({'disparity', 'depth'} <= set(rig.outputs_for(s)) for s in stamps)
    assert ros.wait_for(done, timeout_s=60, action=lambda: stamps.append(
        rig.publish(motorcycle['left'], motorcycle['right'])), action_period_s=2.0)
    out = next(rig.outputs_for(s) for s in stamps if {'disparity', 'depth'} <= set(rig.outputs_for(s)))
    depth = conversions.image_to_array(out['depth'])
    assert np.nanmax(depth) <= 3.0 and np.isnan(depth).mean() > 0.2   # the far wall is gone
    disparity = conversions.disparity_msg_to_array(out['disparity'])
    assert np.array_equal(disparity <= 0, np.isnan(depth))           # the same pixels invalid
    time.sleep(1.0)
    assert rig.received['points2'] == [] and node.get_parameter('publish_points').value is False


def test_runtime_backend_switch_that_fails_is_refused(ros):
    """A backend that cannot start at run time: the change is refused with the reason, and the
    node keeps its backend (at start-up it falls back to sgbm instead)."""
    from corr_depth_ros.core.backends import available_backends
    if 'onnx' not in available_backends():
        pytest.skip('onnxruntime is not installed')
    node = _start(ros)
    result = node.set_parameters([Parameter('backend', value='onnx')])[0]   # no model_path
    assert not result.successful and "still running 'sgbm'" in result.reason, result.reason
    assert node._backend_name == 'sgbm' and node._values['backend'] == 'sgbm'
    assert node.get_parameter('backend').value == 'sgbm'


def test_a_model_that_fails_while_running_falls_back_to_sgbm(ros, motorcycle):
    """A learned/onnx backend that raises at run time (a CUDA error, out of memory): the node
    switches to sgbm, says so, and keeps publishing; the backend parameter follows."""
    node = _start(ros)

    class Failing:
        name = 'learned'

        def compute(self, left, right, max_disparity_px=None):
            raise RuntimeError('CUDA error: out of memory')
    with node._lock:
        node._backend, node._backend_name = Failing(), 'learned'
        node._values['backend'] = 'learned'
    rig = StereoRig(ros, motorcycle['geometry'])
    out = rig.wait_outputs(ros, lambda: rig.publish(motorcycle['left'], motorcycle['right']))
    published = conversions.disparity_msg_to_array(out['disparity'])
    raw = np.where(published > 0, published - motorcycle['geometry'].doffs_px, np.nan)
    assert disparity_metrics(raw, motorcycle['disparity_px'])['bad_2_pct'] < 12.0   # sgbm's
    assert node._backend_name == 'sgbm' and node.get_parameter('backend').value == 'sgbm'
    assert 'CUDA error: out of memory' in node._errors.last_message
    assert 'switched to sgbm' in node._errors.last_message

    # An sgbm setting changed while the fallback is under way swaps in a changed copy of the
    # new sgbm backend: the fallback's own backend:=sgbm still stands (it was refused as "a
    # newer backend choice", leaving the parameter at learned while sgbm ran).
    with node._lock:
        node._backend, node._backend_name = Failing(), 'learned'
        node._values['backend'] = 'learned'
    node.set_parameters([Parameter('backend', value='learned')])
    report = node._errors.error

    def meanwhile(key, text):
        if key == 'fallback':
            assert node.set_parameters([Parameter('sgbm.uniqueness_ratio', value=7)])[0].successful
        report(key, text)
    node._errors.error = meanwhile
    rig.wait_outputs(ros, lambda: rig.publish(motorcycle['left'], motorcycle['right']))
    assert node._backend_name == 'sgbm' and node.get_parameter('backend').value == 'sgbm'
    assert node._backend.get_params()['uniqueness_ratio'] == 7


def test_settings_valid_alone_but_not_together_are_refused_at_start_up(ros):
    """sgbm.min_disparity 64 with max_disparity_px 32 is an empty search: refused when the
    node starts, with that reason (it used to surface from a QoS-override parameter of rclpy's,
    which the user never set)."""
    with pytest.raises(ValueError, match=r'max_disparity_px \(32\) must be greater than '
                                         r'sgbm.min_disparity \(64\)'):
        StereoDepthNode(context=ros.context, parameter_overrides=[
            Parameter('sgbm.min_disparity', value=64), Parameter('max_disparity_px', value=32)])
    with pytest.raises(ValueError, match='p2 must be greater than p1'):
        StereoDepthNode(context=ros.context, parameter_overrides=[
            Parameter('sgbm.p2', value=100)])


def test_confidence_threshold_on_a_backend_without_confidence_says_it_is_not_applied(
        ros, motorcycle):
    """An ONNX model without a confidence output: the threshold cannot apply, and the node
    says so rather than silently keeping every pixel."""
    node = _start(ros, confidence_threshold=0.5)
    sgbm = node._backend

    class NoConfidence:
        name = 'onnx'

        def compute(self, left, right, max_disparity_px=None):
            result = sgbm.compute(left, right, max_disparity_px)
            result.confidence = None
            return result
    with node._lock:
        node._backend, node._backend_name = NoConfidence(), 'onnx'
    warnings = []
    node._errors.warn = lambda key, text: warnings.append(text)
    rig = StereoRig(ros, motorcycle['geometry'])
    rig.wait_outputs(ros, lambda: rig.publish(motorcycle['left'], motorcycle['right']))
    assert warnings and 'confidence_threshold 0.5 is not applied' in warnings[0]


def test_qos_override_of_one_topic_changes_only_that_topic(ros):
    """rclpy writes overrides into the profile it is given: each topic needs its own."""
    from rclpy.qos import qos_profile_sensor_data
    node = _start(ros, **{
        'qos_overrides./left/image_rect.subscription.reliability': 'reliable',
        'qos_overrides./disparity.publisher.reliability': 'best_effort',
        # Every output takes overrides: depth/camera_info did not, so a consumer could not give
        # depth and its camera_info one QoS.
        'qos_overrides./depth/camera_info.publisher.reliability': 'best_effort',
        'qos_overrides./confidence.publisher.depth': 3})
    reliability = {sub.topic_name: sub.qos_profile.reliability for sub in node._subs}
    assert reliability == {'/left/image_rect': ReliabilityPolicy.RELIABLE,
                           '/right/image_rect': ReliabilityPolicy.BEST_EFFORT,
                           '/left/camera_info': ReliabilityPolicy.BEST_EFFORT,
                           '/right/camera_info': ReliabilityPolicy.BEST_EFFORT}
    assert node._pub_disparity.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    assert node._pub_depth_info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    assert node._pub_confidence.qos_profile.depth == 3
    for pub in (node._pub_depth, node._pub_points, node._pub_colour):
        assert pub.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    assert qos_profile_sensor_data.reliability == ReliabilityPolicy.BEST_EFFORT


def test_compressed_input_follows_remapped_image_names(ros):
    """image_transport remaps the base topic and then adds the transport's suffix."""
    node = ros.add(StereoDepthNode(
        context=ros.context, parameter_overrides=[Parameter('image_transport', value='compressed')],
        cli_args=['--ros-args', '-r', 'left/image_rect:=/cam/left/image_rect']))
    assert [sub.topic_name for sub in node._subs[:2]] == ['/cam/left/image_rect/compressed',
                                                          '/right/image_rect/compressed']


def test_compressed_input(ros, motorcycle):
    """image_transport's `compressed` topics (png here, lossless) give the same accuracy."""
    from sensor_msgs.msg import CompressedImage
    _start(ros, image_transport='compressed')
    geometry = motorcycle['geometry']
    rig = StereoRig(ros, geometry)
    pubs = {'left': rig.node.create_publisher(CompressedImage, 'left/image_rect/compressed', RELIABLE),
            'right': rig.node.create_publisher(CompressedImage, 'right/image_rect/compressed', RELIABLE)}
    left_png = conversions.rgb8_to_compressed(motorcycle['left'], Header(), 'png')
    right_png = conversions.rgb8_to_compressed(motorcycle['right'], Header(), 'png')

    def send():
        rig.stamp_sec += 1
        header = Header(frame_id='left_optical')
        header.stamp.sec = rig.stamp_sec
        left_info, right_info = conversions.stereo_camera_infos(geometry, header, header)
        left_png.header = right_png.header = header
        rig.pubs['left_info'].publish(left_info)
        rig.pubs['right_info'].publish(right_info)
        pubs['right'].publish(right_png)
        pubs['left'].publish(left_png)
        return rig.stamp_sec

    out = rig.wait_outputs(ros, send)
    published = conversions.disparity_msg_to_array(out['disparity'])
    raw = np.where(published > 0, published - geometry.doffs_px, np.nan)
    assert disparity_metrics(raw, motorcycle['disparity_px'])['bad_2_pct'] < 12.0


def test_a_sgbm_node_does_not_import_torch():
    """The sgbm backend needs no torch, and a node running it does not pay torch's import
    (seconds, hundreds of MB): its worker resolves torch's thread count only once torch is in
    use. In a subprocess, where nothing else has imported torch."""
    import os
    import subprocess
    import sys
    script = '''
import sys, rclpy
from corr_depth_ros.nodes.stereo_depth_node import StereoDepthNode
rclpy.init()
node = StereoDepthNode()
assert node.get_parameter('backend').value == 'sgbm'
print('torch imported:', 'torch' in sys.modules)
node.destroy_node()
rclpy.try_shutdown()
'''
    env = dict(os.environ)     # the suite's own domain (conftest): never one next to the user's
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert 'torch imported: False' in result.stdout, result.stdout


def test_principal_point_offset_limits_the_depth_reach_and_the_node_says_so(ros):
    """cx_right 20 px right of cx_left: a plane at 2 m has an image disparity of 15 - 20 = -5
    px, below sgbm's default search from 0, so it came out too near (1.5 m and less, dense and
    valid) with nothing said. The node warns once, with the reach (f B / doffs = 1.5 m) and the
    remedy, and the remedy gives the plane at 2 m."""
    from corr_depth_ros.core.geometry import StereoGeometry
    geometry = StereoGeometry(width=320, height=240, fx=300.0, fy=300.0, cx_left=159.5,
                              cy=119.5, cx_right=179.5, baseline_m=0.1)
    texture = np.random.default_rng(3).integers(0, 256, (240, 400, 3)).astype(np.uint8)
    texture = np.repeat(np.repeat(texture[::2, ::2], 2, 0), 2, 1)[:240]
    left = np.ascontiguousarray(texture[:, 40:360])
    right = np.ascontiguousarray(texture[:, 35:355])     # left (x) is right (x + 5): d = -5
    node = _start(ros)
    said = []

    class Logger:
        def __getattr__(self, level):
            return lambda text, **kwargs: said.append((level, text))
    node.get_logger = Logger
    rig = StereoRig(ros, geometry)

    def median_depth():
        out = rig.wait_outputs(ros, lambda: rig.publish(left, right))
        return float(np.nanmedian(conversions.image_to_array(out['depth'])[:, 80:]))
    assert median_depth() < 1.6
    warnings = [text for level, text in said if level == 'warning']
    assert len(warnings) == 1 and 'reaches depths up to 1.50 m only' in warnings[0] \
        and 'set sgbm.min_disparity to -20 or lower' in warnings[0], said
    median_depth()
    assert len([1 for level, _ in said if level == 'warning']) == 1       # said once
    assert node.set_parameters([Parameter('sgbm.min_disparity', value=-32)])[0].successful
    rig.received = {k: [] for k in rig.received}
    assert abs(median_depth() - 2.0) < 0.05
    assert len([1 for level, _ in said if level == 'warning']) == 1


def test_parameters_the_node_does_not_have_are_named_at_start_up(ros):
    """A misspelt name in a params file, or a QoS override of a topic the node does not use
    (one without its namespace), was ignored without a word."""
    said = []

    class Logger:
        def __getattr__(self, level):
            return lambda text, **kwargs: said.append((level, text))

    class Named(StereoDepthNode):
        def get_logger(self):
            return Logger()
    overrides = [Parameter('backnd', value='learned'),
                 Parameter('qos_overrides./left/image_rect.subscription.reliability',
                           value='reliable'),
                 Parameter('qos_overrides./elsewhere/image_rect.subscription.reliability',
                           value='reliable')]
    ros.add(Named(context=ros.context, parameter_overrides=overrides))
    warnings = [text for level, text in said if level == 'warning' and 'ignored parameter' in text]
    assert len(warnings) == 1 and warnings[0].startswith(
        'ignored parameter(s) backnd, qos_overrides./elsewhere/image_rect.subscription.'
        'reliability: /stereo_depth_node has no such parameter'), said


def test_threads_caps_opencv_and_the_workers_torch_threads(ros):
    """On a many-core robot computer the node took every core for each frame: sgbm's 3-way
    mode fans out over all CPUs OpenCV sees (OMP_NUM_THREADS does not cap it) and the worker
    ran torch on its default team; `threads` caps both."""
    import cv2
    before = cv2.getNumThreads()
    try:
        node = _start(ros, threads=1)
        assert cv2.getNumThreads() == 1
        assert node._worker._torch_threads == 1
    finally:
        cv2.setNumThreads(before)


def test_the_log_says_which_backend_runs_where(ros):
    """The ready line said only backend=learned (not on which device, from which weights), and
    a runtime switch said nothing."""
    node = _start(ros)
    assert node.backend_summary().startswith('sgbm (mode=')
    lines = []
    info = node.get_logger().info
    node.get_logger().info = lambda text, **kw: (lines.append(text), info(text, **kw))
    assert node.set_parameters([Parameter('backend', value='learned')])[0].successful
    summary = node.backend_summary()
    assert 'device=cpu' in summary and 'stereo_gwc_small' in summary, summary
    assert lines == [f'backend switched to {summary}']
