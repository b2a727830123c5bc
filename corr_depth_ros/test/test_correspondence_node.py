"""correspondence_node over real DDS (loopback): find_correspondence with inline and stored
references, 3D points and grasp poses from depth, bad requests, clicks, persistence.

Scene: a 320x240 crop of Middlebury Motorcycle (evaluation data: used here only to test, never
to train) as the live image, and the same scene shifted by (SHIFT_X, SHIFT_Y) pixels as the
reference image, so every reference pixel's true match is known. Depth is a tilted plane, so
3D points and surface normals are known too. Uses the shipped descriptor weights.
"""
import copy
import math
import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip('rclpy')
from geometry_msgs.msg import Point, PointStamped  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_services_default  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from corr_depth_interfaces.srv import FindCorrespondence, SetReference  # noqa: E402
from corr_depth_ros import conversions  # noqa: E402
from corr_depth_ros.core.descriptors import references  # noqa: E402
from corr_depth_ros.core.geometry import depth_to_points  # noqa: E402
from corr_depth_ros.core.motorcycle import load_motorcycle  # noqa: E402
from corr_depth_ros.nodes.correspondence_node import CorrespondenceNode  # noqa: E402

RELIABLE = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
HEIGHT, WIDTH = 240, 320
TOP, LEFT = 150, 250            # crop of the live image in the Motorcycle left image
SHIFT_X, SHIFT_Y = 9, 6         # reference image = live scene moved by this many pixels
FX = FY = 300.0
CX, CY = (WIDTH - 1) / 2, (HEIGHT - 1) / 2
PLANE_NORMAL = np.array([0.2, -0.3, -1.0]) / np.linalg.norm([0.2, -0.3, -1.0])  # towards camera
# Reference pixels (x, y) on textured parts of the motorcycle.
PIXELS = np.array([[120.0, 100.0], [200.0, 60.0], [80.0, 170.0], [240.0, 150.0]])


@pytest.fixture(scope='module')
def scene():
    left = load_motorcycle()['left']
    live = np.ascontiguousarray(left[TOP:TOP + HEIGHT, LEFT:LEFT + WIDTH])
    # Reference pixel (x, y) shows the scene point that the live image has at
    # (x - SHIFT_X, y - SHIFT_Y).
    reference = np.ascontiguousarray(left[TOP - SHIFT_Y:TOP - SHIFT_Y + HEIGHT,
                                          LEFT - SHIFT_X:LEFT - SHIFT_X + WIDTH])
    u, v = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    ray = np.stack([(u - CX) / FX, (v - CY) / FY, np.ones(u.shape)], -1)
    depth = (-1.0 / (ray @ PLANE_NORMAL)).astype(np.float32)     # plane n.p = -1 m
    depth[:, :40] = np.nan                                       # a strip with no depth
    return {'live': live, 'reference': reference, 'depth': depth,
            'points': depth_to_points(depth, FX, FY, CX, CY)}


class Client:
    """Publishes live frames (image + depth + camera_info) and calls the node's services."""

    def __init__(self, ros, scene):
        self.ros = ros
        self.scene = scene
        n = self.node = ros.node('correspondence_test_client')
        self.pub_image = n.create_publisher(Image, 'image', RELIABLE)
        self.pub_depth = n.create_publisher(Image, 'depth', RELIABLE)
        self.pub_info = n.create_publisher(CameraInfo, 'camera_info', RELIABLE)
        self.pub_click = n.create_publisher(Point, 'image_mouse_left', 10)
        self.find = n.create_client(FindCorrespondence, 'find_correspondence')
        self.set = n.create_client(SetReference, 'set_reference')
        self.stamp_sec = 1000
        self.received = {'correspondence/heatmap': [], 'correspondence/markers': [],
                         'correspondence/point': []}
        for topic, msg_type in (('correspondence/heatmap', Image),
                                ('correspondence/markers', MarkerArray),
                                ('correspondence/point', PointStamped)):
            n.create_subscription(msg_type, topic,
                                  lambda m, t=topic: self.received[t].append(m), RELIABLE)

    def publish_frame(self, info_width=WIDTH):
        self.stamp_sec += 1
        header = Header(frame_id='camera_color_optical_frame')
        header.stamp.sec = self.stamp_sec
        info = CameraInfo(header=header, width=info_width, height=HEIGHT)
        info.k = [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
        self.pub_info.publish(info)
        self.pub_depth.publish(conversions.array_to_image(self.scene['depth'], '32FC1', header))
        self.pub_image.publish(conversions.array_to_image(self.scene['live'], 'rgb8', header))
        return self.stamp_sec

    def wait_live(self, node):
        before = node.frames_processed
        ok = self.ros.wait_for(lambda: node.frames_processed > before, timeout_s=60,
                               action=self.publish_frame, action_period_s=1.0)
        assert ok, 'the node never processed a frame'

    def call(self, client, request):
        assert client.wait_for_service(timeout_sec=20), 'service not available'
        future = client.call_async(request)
        assert self.ros.wait_for(future.done, timeout_s=60), 'service call timed out'
        return future.result()


def _start(ros, tmp_path, **params):
    params = {'references_dir': str(tmp_path / 'refs'), **params}
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    return ros.add(CorrespondenceNode(context=ros.context, parameter_overrides=overrides))


def _find(pixels=(), image=None, reference_id=''):
    request = FindCorrespondence.Request()
    request.reference_id = reference_id
    if image is not None:
        request.reference_image = image
    request.reference_pixels = [conversions.pixel_point(p) for p in pixels]
    return request


def _rotation_z_axis(q):
    x, y, z, w = q.x, q.y, q.z, q.w
    return np.array([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)])


def test_inline_reference_matches_points_and_grasp_poses(ros, tmp_path, scene):
    node = _start(ros, tmp_path)
    # Frames and requests in separate callback groups, so that a multi-threaded executor can
    # take a frame's messages while a request is being served.
    groups = {getattr(sub, 'sub', sub).callback_group for sub in node._subs}
    assert len(groups) == 1 and node._srv_find.callback_group not in groups
    assert node._srv_set.callback_group not in groups | {node._srv_find.callback_group}
    assert node._click_sub.callback_group is node._srv_set.callback_group
    client = Client(ros, scene)
    # Before any frame: refused with a message naming the missing input.
    early = client.call(client.find, _find(PIXELS, conversions.array_to_image(
        scene['reference'], 'rgb8', Header())))
    assert not early.success and 'no live image yet' in early.message

    client.wait_live(node)
    reference_msg = conversions.array_to_image(scene['reference'], 'rgb8', Header())
    pixels = np.concatenate([PIXELS, [[30.0 + SHIFT_X, 120.0]]])   # the last lands on no depth
    response = client.call(client.find, _find(pixels, reference_msg))
    assert response.success, response.message
    assert response.image_header.frame_id == 'camera_color_optical_frame'
    assert response.image_header.stamp.sec > 1000
    assert len(response.matches) == len(pixels)
    for pixel, match in zip(pixels, response.matches):
        expected = pixel - [SHIFT_X, SHIFT_Y]
        got = np.array([match.match_pixel.x, match.match_pixel.y])
        assert np.abs(got - expected).max() <= 2.0, (pixel, got, expected)
        assert (match.reference_pixel.x, match.reference_pixel.y) == tuple(pixel)
        assert 0.0 <= match.confidence <= 1.0 and match.descriptor_distance >= 0.0
        assert match.point.header.stamp == response.image_header.stamp
    for match in response.matches[:len(PIXELS)]:
        assert match.found, match.reason
        col, row = int(round(match.match_pixel.x)), int(round(match.match_pixel.y))
        point = np.array([match.point.point.x, match.point.point.y, match.point.point.z])
        # On the ray through the sub-pixel match, at its nearest pixel's depth.
        depth = scene['points'][row, col, 2]
        ray = [(match.match_pixel.x - CX) / FX, (match.match_pixel.y - CY) / FY, 1.0]
        np.testing.assert_allclose(point, depth * np.array(ray), rtol=1e-5)
        pose = match.grasp_pose.pose
        assert pose.position.z == pytest.approx(point[2])
        # The approach (z) axis points into the surface: minus the plane normal.
        assert np.dot(_rotation_z_axis(pose.orientation), -PLANE_NORMAL) > 0.999
    no_depth = response.matches[-1]
    assert not no_depth.found and 'depth' in no_depth.reason
    assert math.isnan(no_depth.point.point.x) and math.isnan(no_depth.grasp_pose.pose.position.z)

    # Visual outputs carry the live image's header: heatmap (rgb8, live size), markers (a sphere
    # and an arrow per valid grasp pose after a DELETEALL), the first match's point.
    assert ros.wait_for(lambda: all(client.received.values()), timeout_s=20), \
        {k: len(v) for k, v in client.received.items()}
    heatmap = client.received['correspondence/heatmap'][-1]
    assert (heatmap.encoding, heatmap.width, heatmap.height) == ('rgb8', WIDTH, HEIGHT)
    assert heatmap.header.stamp == response.image_header.stamp
    markers = client.received['correspondence/markers'][-1].markers
    assert len(markers) == 1 + 2 * len(PIXELS)
    point = client.received['correspondence/point'][-1]
    assert point.point.z == pytest.approx(response.matches[0].point.point.z)
    # A query whose first match has no 3D point shows the first one that has (nothing was
    # published: the previous query's point stayed on show as if it were this one's).
    points_before = len(client.received['correspondence/point'])
    first_without = client.call(client.find, _find(np.concatenate([pixels[-1:], PIXELS[1:2]]),
                                                   reference_msg))
    assert first_without.success and math.isnan(first_without.matches[0].point.point.z)
    assert ros.wait_for(lambda: len(client.received['correspondence/point']) > points_before,
                        timeout_s=20)
    assert client.received['correspondence/point'][-1].point.z == pytest.approx(
        first_without.matches[1].point.point.z)

    # A match farther in descriptor space than match_threshold is not "found", even with depth
    # and a pose there: a planner must not grasp at a look-alike.
    strict = node.set_parameters([Parameter('match_threshold', value=1e-4)])[0]
    assert strict.successful, strict.reason
    points_before = len(client.received['correspondence/point'])
    picky = client.call(client.find, _find(PIXELS[:1], reference_msg))
    assert picky.success and not picky.matches[0].found
    assert 'match_threshold' in picky.matches[0].reason
    # Nor is it published as the point (that topic has no found flag: a consumer would act
    # on a look-alike); its marker shows it, orange.
    assert ros.wait_for(lambda: client.received['correspondence/markers'][-1].markers[1].color.r
                        == 1.0, timeout_s=20)
    assert len(client.received['correspondence/point']) == points_before
    assert node.set_parameters([Parameter('match_threshold', value=0.6)])[0].successful

    # Once a frame is replaced and no request holds it, the next frame's descriptors reuse its
    # buffer (core.memory.RecyclingPool): the node alternates between two.
    for _ in range(4):
        client.wait_live(node)
    assert node.frames_processed >= 5 and node._buffers.created == 2


def test_stored_references_bad_requests_clicks_and_reload(ros, tmp_path, scene):
    node = _start(ros, tmp_path)
    client = Client(ros, scene)
    client.wait_live(node)

    # set_reference on the newest live image, then find it by id with no pixels: all of them.
    set_request = SetReference.Request(reference_id='handle', overwrite=False)
    set_request.reference_pixels = [conversions.pixel_point(p) for p in PIXELS]
    stored = client.call(client.set, set_request)
    assert stored.success, stored.message
    again = client.call(client.set, set_request)
    assert not again.success and 'overwrite' in again.message
    response = client.call(client.find, _find(reference_id='handle'))
    assert response.success, response.message
    got = np.array([[m.match_pixel.x, m.match_pixel.y] for m in response.matches])
    # Same image: the stored descriptors are found at their own pixels.
    assert np.abs(got - PIXELS).max() <= 1.0
    assert all(m.found for m in response.matches)
    subset = client.call(client.find, _find(PIXELS[1:2], reference_id='handle'))
    assert subset.success and len(subset.matches) == 1
    # Many callers at once are all answered (the services' default queue of 10 dropped the
    # rest unanswered). The callers' own response queues are deep enough to hold them all.
    deep = copy.copy(qos_profile_services_default)
    deep.depth = 100
    callers = [client.node.create_client(FindCorrespondence, 'find_correspondence',
                                         qos_profile=deep) for _ in range(3)]
    assert all(c.wait_for_service(timeout_sec=10.0) for c in callers)
    futures = [c.call_async(_find(reference_id='handle')) for c in callers for _ in range(8)]
    assert ros.wait_for(lambda: all(f.done() for f in futures), timeout_s=60), (
        f'{sum(f.done() for f in futures)} of {len(futures)} requests answered')
    assert all(f.result().success for f in futures)

    reference_msg = conversions.array_to_image(scene['reference'], 'rgb8', Header())
    wrong_encoding = conversions.array_to_image(scene['reference'], 'rgb8', Header())
    wrong_encoding.encoding = 'yuv422'
    outside, nan, inf = 'outside the 320x240 image', float('nan'), float('inf')
    bad_requests = [
        (outside, _find([[320.0, 10.0]], reference_msg)),
        (outside, _find([[10.0, 240.0]], reference_msg)),
        (outside, _find([[-1.0, 10.0]], reference_msg)),
        (outside, _find([[10.0, -0.5]], reference_msg)),
        (outside, _find([[1.0, 1.0], [319.5, 10.0]], reference_msg)),
        ('reference_pixels contain NaN or inf', _find([[nan, 10.0]], reference_msg)),
        ('reference_pixels contain NaN or inf', _find([[inf, 0.0]], reference_msg)),
        ('reference_image is empty', _find(PIXELS, Image(height=HEIGHT, width=WIDTH,
                                                         encoding='rgb8', step=3 * WIDTH))),
        ('unknown reference_id', _find(reference_id='nope')),
        ('empty request', _find(PIXELS)),
        ('unsupported image encoding', _find(PIXELS, wrong_encoding)),
        ('reference_pixels is empty', _find([], reference_msg)),
        ('not both', _find(PIXELS, reference_msg, reference_id='handle')),
        ('not stored with reference', _find([[1.0, 1.0]], reference_id='handle')),
        ('the limit is max_pixels_per_request = 200', _find(np.tile(PIXELS, (51, 1)),
                                                            reference_msg)),
    ]
    reference_passes = []      # inline references are described without the frames' pool
    describe = node._describe
    node._describe = lambda rgb, pool=None: (reference_passes.append(1) if pool is None else None,
                                             describe(rgb, pool))[1]
    for expected_text, request in bad_requests:
        result = client.call(client.find, request)
        assert not result.success, expected_text
        assert expected_text in result.message, (expected_text, result.message)
        assert len(result.matches) == 0
    for pixels in ([[10.0, 240.0]], [[nan, 1.0]]):          # set_reference checks them too
        bad_set = SetReference.Request(reference_id='bad_pixels')
        bad_set.reference_pixels = [conversions.pixel_point(p) for p in pixels]
        result = client.call(client.set, bad_set)
        assert not result.success and ('outside' in result.message
                                       or 'NaN or inf' in result.message), result.message
    assert 'bad_pixels' not in node.reference_ids()
    # Bad pixels are refused before describing the inline reference (out of bounds, empty,
    # too many); only requests with an inline image and usable pixels cost a pass (none here).
    assert reference_passes == []
    node._describe = describe
    corner = client.call(client.find, _find([[319.0, 239.0]], reference_msg))   # the last pixel
    assert corner.success and len(corner.matches) == 1, corner.message
    # The pixel limit holds for stored references too (an empty list asks for all of them).
    assert node.set_parameters([Parameter('max_pixels_per_request', value=3)])[0].successful
    for pixels, said in (([], "4 pixels of reference 'handle' requested"),
                         (PIXELS, '4 reference_pixels requested')):
        result = client.call(client.find, _find(pixels, reference_id='handle'))
        assert not result.success and f'{said}; the limit is max_pixels_per_request = 3' \
            in result.message, result.message
    # Counted before anything else is done with them: a pixel that is not stored is not what
    # a request for too many is told.
    result = client.call(client.find, _find(np.tile([[300.0, 200.0]], (4, 1)),
                                            reference_id='handle'))
    assert '4 reference_pixels requested; the limit' in result.message, result.message
    assert node.set_parameters([Parameter('max_pixels_per_request', value=200)])[0].successful
    bad_id = client.call(client.set, SetReference.Request(reference_id='../x'))
    assert not bad_id.success and 'not usable' in bad_id.message
    # Still serving.
    assert client.call(client.find, _find(reference_id='handle')).success
    # Frames that cannot be used (camera_info for another size): the answers still come from
    # the last good frame, and say that newer ones are being dropped and why.
    assert ros.wait_for(lambda: node._last_frame_error is not None, timeout_s=30,
                        action=lambda: client.publish_frame(info_width=WIDTH * 2),
                        action_period_s=1.0)
    stale = client.call(client.find, _find(reference_id='handle'))
    assert stale.success and 'that image may be old' in stale.message, stale.message
    assert f'camera_info size {WIDTH * 2}x{HEIGHT} does not match' in stale.message
    assert 'live since' in stale.message
    # A planner that wants fresh frames only sets max_frame_age_s: past it, the request fails
    # and says why no newer frame came.
    time.sleep(0.3)
    assert node.set_parameters([Parameter('max_frame_age_s', value=0.2)])[0].successful
    too_old = client.call(client.find, _find(reference_id='handle'))
    assert not too_old.success and 'more than max_frame_age_s = 0.2' in too_old.message
    assert f'camera_info size {WIDTH * 2}x{HEIGHT} does not match' in too_old.message
    assert node.set_parameters([Parameter('max_frame_age_s', value=0.0)])[0].successful
    # Images over max_image_megapixels are not described (a 12 MP frame's descriptor image
    # alone takes 3 GB): an inline reference is refused, a live frame dropped, and both say so.
    assert node.set_parameters([Parameter('max_image_megapixels', value=0.05)])[0].successful
    too_big = client.call(client.find, _find(PIXELS, reference_msg))
    assert not too_big.success and 'reference_image is 320x240 (0.1 MP), more than ' \
        'max_image_megapixels = 0.05 (its descriptor image would take 20 MB)' \
        in too_big.message, too_big.message
    node._last_frame_error = None
    assert ros.wait_for(lambda: node._last_frame_error is not None, timeout_s=30,
                        action=client.publish_frame, action_period_s=1.0)
    stale = client.call(client.find, _find(reference_id='handle'))
    assert stale.success and 'the live image is 320x240 (0.1 MP), more than ' \
        'max_image_megapixels = 0.05' in stale.message, stale.message
    assert node.set_parameters([Parameter('max_image_megapixels', value=4.0)])[0].successful

    # A click on the image (rqt_image_view's topic) creates the "clicked" reference, a second
    # click extends it.
    for i, (x, y) in enumerate(PIXELS[:2]):
        ros.wait_for(lambda: 'clicked' in node.reference_ids() and
                     len(node._store.get('clicked').pixels_xy) > i, timeout_s=20,
                     action=lambda: client.pub_click.publish(Point(x=float(x), y=float(y))),
                     action_period_s=5.0)
    assert np.array_equal(node._store.get('clicked').pixels_xy, PIXELS[:2].astype(np.float32))
    # A click that would take the reference past max_pixels_per_request (beyond which a find of
    # all its pixels is refused) is itself refused.
    assert node.set_parameters([Parameter('max_pixels_per_request', value=2)])[0].successful
    node._on_click(Point(x=5.0, y=5.0))
    assert "would have 3 pixels; the limit is max_pixels_per_request = 2" in \
        node._errors.last_message, node._errors.last_message
    assert len(node._store.get('clicked').pixels_xy) == 2
    assert node.set_parameters([Parameter('max_pixels_per_request', value=200)])[0].successful
    # Clicks off the image, or at NaN, are refused and said to be clicks.
    node._on_click(Point(x=float('nan'), y=1.0))
    assert 'the click is at NaN or inf' in node._errors.last_message, node._errors.last_message
    node._on_click(Point(x=5.0, y=float(HEIGHT + 1)))
    assert 'outside' in node._errors.last_message, node._errors.last_message
    assert len(node._store.get('clicked').pixels_xy) == 2
    # A click reference id that cannot name a file is refused as a parameter.
    bad = node.set_parameters([Parameter('click_reference_id', value='bad id/x')])[0]
    assert not bad.successful and 'not usable' in bad.reason

    # A restarted node reloads both references from references_dir.
    restarted = _start(ros, tmp_path)
    assert restarted.reference_ids() == ['clicked', 'handle']
    # One restarted with other descriptor scales must not use them (64 vs 32 numbers a
    # descriptor, and another meaning): refused by name, with what to do.
    one_pass = _start(ros, tmp_path, descriptor_scales=[1.0])
    assert one_pass.reference_ids() == []
    # Scales the network cannot use are refused at start-up like any invalid value (the node
    # used to run with the default while the parameter showed the refused list).
    with pytest.raises(ValueError, match='invalid initial parameter: descriptor_scales'):
        _start(ros, tmp_path, descriptor_scales=[0.5, 1.0])
    assert sorted(one_pass._store.foreign()) == ['clicked', 'handle']   # named at start-up
    assert one_pass._network_id != restarted._network_id
    # Same weights, other scales: the refusal says which (it used to blame the weights).
    with pytest.raises(references.ReferenceError, match=r'described at descriptor_scales '
                       r'\[1.0, 0.5\], this node runs \[1.0\]: set descriptor_scales'):
        one_pass._store.get('handle')
    # Nor may its clicks replace the other network's "clicked" file (called directly: the other
    # nodes would take a published click too).
    client.wait_live(one_pass)
    one_pass._on_click(Point(x=10.0, y=10.0))
    assert 'was described at descriptor_scales' in one_pass._errors.last_message
    on_disk = references.load_reference(str(tmp_path / 'refs' / 'clicked.safetensors'))
    assert on_disk.network_id == restarted._network_id and len(on_disk.pixels_xy) == 2
    # A click reference id that cannot name a file is refused at start-up too.
    with pytest.raises(ValueError, match='click_reference_id'):
        _start(ros, tmp_path, click_reference_id='my ref')
    # A click that cannot be saved (references_dir gone) is reported; the node keeps running.
    import shutil
    shutil.rmtree(tmp_path / 'refs')
    before = node._errors.count
    assert ros.wait_for(lambda: node._errors.count > before, timeout_s=20,
                        action=lambda: client.pub_click.publish(Point(x=5.0, y=5.0)),
                        action_period_s=2.0)
    assert "reference 'clicked' could not be stored in references_dir" in \
        node._errors.last_message, node._errors.last_message
    client.wait_live(node)      # still processing frames


def test_example_grasp_client_script(ros, tmp_path, scene):
    """scripts/example_grasp_client.py (what the README tells planners to copy) against the
    node, in its own process: inline reference image, then a stored reference."""
    import os
    import subprocess
    import sys

    import cv2
    script = os.path.join(os.path.dirname(__file__), '..', '..', 'scripts',
                          'example_grasp_client.py')
    if not os.path.isfile(script):
        pytest.skip('scripts/ is not beside the package (installed elsewhere)')
    node = _start(ros, tmp_path)
    client = Client(ros, scene)
    client.wait_live(node)
    reference_png = str(tmp_path / 'reference.png')
    cv2.imwrite(reference_png, scene['reference'][:, :, ::-1])
    pixels = [f'{x:g},{y:g}' for x, y in PIXELS[:2]]

    def run(*args):
        return subprocess.run([sys.executable, script, '--timeout', '30', *args],
                              capture_output=True, text=True, timeout=120)

    inline = run('--image', reference_png, '--pixels', *pixels, '--repeat', '3')
    assert inline.returncode == 0, inline.stdout + inline.stderr
    assert 'success=True' in inline.stdout and 'latency over 3 calls' in inline.stdout
    assert inline.stdout.count('grasp q(xyzw)') == 2
    stored = run('--set', 'handle', '--pixels', *pixels)
    assert stored.returncode == 0 and "stored reference 'handle'" in stored.stdout, stored.stdout
    found = run('--find', 'handle')
    assert found.returncode == 0 and found.stdout.count('found=') == 2, found.stdout
    missing = run('--find', 'no_such_reference')
    assert missing.returncode == 1 and 'success=False' in missing.stdout
    # A reference stored from an image file, then found in the live image.
    from_file = run('--set', 'from_file', '--image', reference_png, '--pixels', *pixels)
    assert from_file.returncode == 0 and 'from the given image' in from_file.stdout, \
        from_file.stdout + from_file.stderr
    assert run('--find', 'from_file').stdout.count('found=') == 2
    assert run('--find', 'handle', '--image', reference_png).returncode == 2   # refused


def test_image_only_node_matches_without_3d_points(ros, tmp_path, scene):
    """use_depth false: the node takes the image alone; matches come back with their pixels,
    not found for want of a 3D point, and the reason says so."""
    node = _start(ros, tmp_path, use_depth=False)
    client = Client(ros, scene)
    client.wait_live(node)
    reference_msg = conversions.array_to_image(scene['reference'], 'rgb8', Header())
    response = client.call(client.find, _find(PIXELS, reference_msg))
    assert response.success, response.message
    for pixel, match in zip(PIXELS, response.matches):
        expected = pixel - [SHIFT_X, SHIFT_Y]
        assert np.abs(np.array([match.match_pixel.x, match.match_pixel.y]) - expected).max() <= 2.0
        assert not match.found and 'use_depth is false' in match.reason
        assert math.isnan(match.point.point.z)
    # rqt_image_view gives x = W (y = H) for a click on the last half pixel: the last pixel
    # (it was refused as outside the image).
    node._on_click(Point(x=float(WIDTH), y=float(HEIGHT)))
    assert np.array_equal(node._store.get('clicked').pixels_xy, [[WIDTH - 1, HEIGHT - 1]])
    # A double click adds the pixel once (a soak run piled up 117 copies of one pixel).
    node._on_click(Point(x=float(WIDTH - 1), y=float(HEIGHT - 1)))
    node._on_click(Point(x=10.0, y=20.0))
    assert np.array_equal(node._store.get('clicked').pixels_xy,
                          [[WIDTH - 1, HEIGHT - 1], [10, 20]])


def test_compressed_image_input(ros, tmp_path, scene):
    """image_transport compressed (png, lossless): the node takes <image>/compressed and keeps
    the very pixels of the raw image; depth stays raw."""
    from sensor_msgs.msg import CompressedImage
    node = _start(ros, tmp_path, image_transport='compressed')
    assert node._subs[0].topic_name == '/image/compressed'
    client = Client(ros, scene)
    pub_png = client.node.create_publisher(CompressedImage, 'image/compressed', RELIABLE)
    png = conversions.rgb8_to_compressed(scene['live'], Header(), 'png')
    raw_publish = client.pub_image.publish

    def publish_png(msg):
        png.header = msg.header
        pub_png.publish(png)
    client.pub_image.publish = publish_png
    try:
        client.wait_live(node)
    finally:
        client.pub_image.publish = raw_publish
    with node._frame_lock:
        frame = node._frame
    np.testing.assert_array_equal(frame.rgb, scene['live'])
    assert frame.points_m is not None


def test_set_reference_is_served_while_finds_keep_coming(ros, tmp_path, scene):
    """Composed into a multi-threaded executor (as here), a set_reference among a stream of
    find_correspondence requests is answered in turn: sharing one callback group with find, it
    waited 30 s and more (rclpy offers the services in creation order, and find kept the group
    busy)."""
    node = _start(ros, tmp_path)
    client = Client(ros, scene)
    client.wait_live(node)
    reference_msg = conversions.array_to_image(scene['reference'], 'rgb8', Header())
    finder = client.node.create_client(FindCorrespondence, 'find_correspondence')
    assert finder.wait_for_service(timeout_sec=10.0)
    pending, stop = [], time.monotonic() + 60.0

    def keep_finding():             # always a few finds waiting
        while len([f for f in pending if not f.done()]) < 4 and time.monotonic() < stop:
            pending.append(finder.call_async(_find(PIXELS, reference_msg)))
    keep_finding()
    set_request = SetReference.Request(reference_id='while_busy')
    set_request.reference_pixels = [conversions.pixel_point(p) for p in PIXELS[:2]]
    future = client.set.call_async(set_request)
    start = time.monotonic()
    assert ros.wait_for(future.done, timeout_s=20, action=keep_finding, action_period_s=0.02), \
        f'set_reference unanswered after 20 s while {len(pending)} finds were served'
    assert future.result().success, future.result().message
    assert time.monotonic() - start < 20
    stop = 0.0
    assert ros.wait_for(lambda: all(f.done() for f in pending), timeout_s=60)


def test_references_folder_is_per_node_unless_shared(monkeypatch):
    import os

    from corr_depth_ros.nodes.correspondence_node import PARAMS, references_folder
    default = next(p.default for p in PARAMS if p.name == 'references_dir')
    monkeypatch.delenv('ROS_HOME', raising=False)
    home = os.path.expanduser('~')
    assert references_folder(default, '/cam_a/correspondence_node') == \
        f'{home}/.ros/corr_depth_ros/references/cam_a/correspondence_node'
    assert references_folder(default, '/correspondence_node') == \
        f'{home}/.ros/corr_depth_ros/references/correspondence_node'
    assert references_folder('/data/refs', '/cam_a/correspondence_node') == '/data/refs'
    assert references_folder('', '/x') == ''
    # Under ROS_HOME where it is set, as ROS keeps its logs there.
    monkeypatch.setenv('ROS_HOME', '/srv/ros_home')
    assert references_folder(default, '/cam_a/correspondence_node') == \
        '/srv/ros_home/corr_depth_ros/references/cam_a/correspondence_node'
    assert references_folder('{ros_home}/mine', '/x') == '/srv/ros_home/mine'


def test_default_references_folder_that_cannot_be_made(ros, tmp_path, monkeypatch):
    """A read-only home (a container, a service user) keeps the node from making the default
    folder: it starts with references in memory, warning; a folder the user chose fails."""
    from corr_depth_ros.nodes.correspondence_node import DEFAULT_REFERENCES_DIR
    not_a_folder = tmp_path / 'file'
    not_a_folder.write_text('')
    monkeypatch.setenv('ROS_HOME', str(not_a_folder))
    node = _start(ros, tmp_path, references_dir=DEFAULT_REFERENCES_DIR)
    assert node._store.directory == ''
    with pytest.raises(references.ReferenceError, match='cannot be used as a folder'):
        _start(ros, tmp_path, references_dir=str(not_a_folder / 'refs'))
    monkeypatch.setenv('ROS_HOME', str(tmp_path / 'ros_home'))
    node = _start(ros, tmp_path, references_dir=DEFAULT_REFERENCES_DIR)
    assert node._store.directory == str(tmp_path / 'ros_home' / 'corr_depth_ros' / 'references'
                                        / 'correspondence_node')


def test_references_of_earlier_versions_are_pointed_at(tmp_path, monkeypatch):
    """Before {node}, every node kept its references directly in the parent folder of the
    default: after an upgrade they would seem lost, so the node says where they are (for the
    default setting only: a folder of the user's own is theirs)."""
    import os

    from corr_depth_ros.nodes.correspondence_node import DEFAULT_REFERENCES_DIR, \
        earlier_references
    monkeypatch.setenv('HOME', str(tmp_path))
    shared = tmp_path / '.ros' / 'corr_depth_ros' / 'references'
    shared.mkdir(parents=True)
    mine = str(shared / 'cam' / 'correspondence_node')
    assert earlier_references(DEFAULT_REFERENCES_DIR, mine) == []
    (shared / 'mug.safetensors').write_bytes(b'')
    assert earlier_references(DEFAULT_REFERENCES_DIR, mine) == [str(shared / 'mug.safetensors')]
    assert earlier_references(str(shared / '{node}'), mine) == []
    assert earlier_references(DEFAULT_REFERENCES_DIR, '') == []
    # They lay under ~/.ros whatever ROS_HOME says (before {ros_home}), and so did each
    # node's own folder: with ROS_HOME elsewhere that one is pointed at too.
    monkeypatch.setenv('ROS_HOME', str(tmp_path / 'elsewhere'))
    assert earlier_references(DEFAULT_REFERENCES_DIR, mine) == [str(shared / 'mug.safetensors')]
    (shared / 'cam' / 'correspondence_node').mkdir(parents=True)
    (shared / 'cam' / 'correspondence_node' / 'cup.safetensors').write_bytes(b'')
    moved = str(tmp_path / 'elsewhere' / 'corr_depth_ros' / 'references' / 'cam' /
                'correspondence_node')
    assert earlier_references(DEFAULT_REFERENCES_DIR, moved, '/cam/correspondence_node') == [
        str(shared / 'mug.safetensors'), str(shared / 'cam' / 'correspondence_node' /
                                             'cup.safetensors')]
    # Not when that folder is the one in use (ROS_HOME unset or ~/.ros), also through a link
    # (~/.ros a link to the volume ROS_HOME names).
    assert earlier_references(DEFAULT_REFERENCES_DIR, mine, '/cam/correspondence_node') == [
        str(shared / 'mug.safetensors')]
    os.symlink(tmp_path / '.ros', tmp_path / 'volume')
    linked = str(tmp_path / 'volume' / 'corr_depth_ros' / 'references' / 'cam' /
                 'correspondence_node')
    assert earlier_references(DEFAULT_REFERENCES_DIR, linked, '/cam/correspondence_node') == [
        str(shared / 'mug.safetensors')]
