"""Synthetic stereo camera (core + node over DDS), PLY files, and the one-process demo."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from corr_depth_ros.core.ply import read_ply, write_ply
from corr_depth_ros.core.sim_camera import FrameCancelled, SimRig, SimStereoCamera

RIG = SimRig(width=96, height=64, fx_px=80.0, baseline_m=0.1)


def test_sim_camera_is_deterministic_and_geometrically_right():
    cam = SimStereoCamera(RIG, seed=3, frames_per_scene=4, motion_m=0.02)
    a, b = cam.frame(1), SimStereoCamera(RIG, seed=3, frames_per_scene=4, motion_m=0.02).frame(1)
    assert np.array_equal(a['left'], b['left']) and np.array_equal(a['right'], b['right'])
    assert a['left'].shape == (64, 96, 3) and a['left'].dtype == np.uint8
    assert not np.array_equal(cam.frame(2)['left'], a['left'])  # the camera moves
    # Disparity follows the rig (f * B / Z) and stays within the configured range.
    finite = np.isfinite(a['depth_m'])
    assert finite.mean() > 0.9
    np.testing.assert_allclose(a['disparity_px'][finite], 80.0 * 0.1 / a['depth_m'][finite], rtol=1e-5)
    assert np.nanmax(a['disparity_px']) <= RIG.max_disparity_frac * RIG.width + 1e-3
    # Warping the right image with the GT disparity reproduces much of the left image.
    rows, cols = np.nonzero(finite)
    src = np.round(cols - a['disparity_px'][rows, cols]).astype(int)
    inside = src >= 0
    diff = np.abs(a['left'][rows[inside], cols[inside]].astype(int)
                  - a['right'][rows[inside], src[inside]].astype(int)).mean()
    shuffled = np.abs(a['left'][rows[inside], cols[inside]].astype(int)
                      - a['right'][rows[inside][::-1], src[inside][::-1]].astype(int)).mean()
    assert diff < 0.5 * shuffled
    with pytest.raises(ValueError):
        SimStereoCamera(SimRig(width=8, height=8), seed=0)


def test_sim_camera_frame_stops_between_stages_when_cancelled():
    """frame(cancelled=...) asks between its stages (scene, raycasts, shading) and gives up at
    the first yes, so a stopping camera thread leaves within one stage."""
    cam = SimStereoCamera(RIG, seed=3, frames_per_scene=4, motion_m=0.02)
    with pytest.raises(FrameCancelled):
        cam.frame(1, cancelled=lambda: True)
    asked = []

    def third_time():
        asked.append(1)
        return len(asked) >= 3
    with pytest.raises(FrameCancelled):
        cam.frame(1, cancelled=third_time)
    assert len(asked) == 3
    never = cam.frame(1, cancelled=lambda: False)      # not cancelled: the same frame
    assert np.array_equal(never['left'], SimStereoCamera(RIG, seed=3, frames_per_scene=4,
                                                         motion_m=0.02).frame(1)['left'])


def test_ply_round_trip(tmp_path):
    points = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    points[0, 1] = np.nan
    rgb = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    assert write_ply(str(tmp_path / 'c.ply'), points, rgb) == 5
    back, colours = read_ply(str(tmp_path / 'c.ply'))
    keep = np.isfinite(points.reshape(-1, 3)).all(axis=1)
    np.testing.assert_array_equal(back, points.reshape(-1, 3)[keep])
    np.testing.assert_array_equal(colours, rgb.reshape(-1, 3)[keep])


@pytest.mark.ros
def test_sim_camera_node_publishes_calibrated_pairs(ros):
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from corr_depth_ros import conversions
    from corr_depth_ros.nodes.sim_stereo_camera_node import SimStereoCameraNode
    overrides = [Parameter('width', value=96), Parameter('height', value=64),
                 Parameter('fx_px', value=80.0), Parameter('rate_hz', value=20.0),
                 Parameter('max_frames', value=3)]
    ros.add(SimStereoCameraNode(context=ros.context, parameter_overrides=overrides))
    probe = ros.node('probe')
    got = {'left': [], 'right_info': [], 'gt': []}
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    probe.create_subscription(Image, 'left/image_rect', got['left'].append, qos)
    probe.create_subscription(CameraInfo, 'right/camera_info', got['right_info'].append, qos)
    probe.create_subscription(Image, 'ground_truth/depth', got['gt'].append, qos)
    assert ros.wait_for(lambda: all(got.values()), timeout_s=30)
    left = conversions.image_to_rgb8(got['left'][0])
    assert left.shape == (64, 96, 3) and got['left'][0].header.frame_id == 'sim_left_optical'
    info = got['right_info'][0]
    assert info.p[3] == pytest.approx(-80.0 * 0.12)   # Tx = -fx * B (default baseline 0.12 m)
    assert conversions.image_to_array(got['gt'][0]).dtype == np.float32


@pytest.mark.ros
def test_sim_camera_on_sim_time_publishes_only_while_the_clock_advances(ros, tmp_path):
    """use_sim_time: before the first /clock every frame was stamped 0, and while the clock
    stood still 14 frames carried one stamp (frames nobody can pair by stamp). Now a frame
    goes out only with a stamp of its own."""
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from corr_depth_ros.nodes.sim_stereo_camera_node import SimStereoCameraNode
    overrides = [Parameter('width', value=64), Parameter('height', value=48),
                 Parameter('fx_px', value=50.0), Parameter('rate_hz', value=20.0),
                 Parameter('use_sim_time', value=True)]
    camera = ros.add(SimStereoCameraNode(context=ros.context, parameter_overrides=overrides))
    probe = ros.node('sim_time_probe')
    stamps = []
    probe.create_subscription(Image, 'left/image_rect',
                              lambda m: stamps.append(m.header.stamp.sec),
                              QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    clock_pub = probe.create_publisher(Clock, '/clock', 10)
    ros.wait_for(lambda: False, timeout_s=1.5)
    assert stamps == []                                     # no /clock yet: nothing
    for sec in (7, 8):
        msg = Clock()
        msg.clock.sec = sec
        assert ros.wait_for(lambda: camera.get_clock().now().nanoseconds == sec * 10 ** 9,
                            timeout_s=20, action=lambda: clock_pub.publish(msg),
                            action_period_s=0.2)
        # That stamp's frame first (it is stamped when published: a render slower than the
        # clock's step went out with the next stamp), then the clock stands still: 20 frames.
        assert ros.wait_for(lambda: sec in stamps, timeout_s=60), stamps
        ros.wait_for(lambda: False, timeout_s=1.0)
    assert stamps == [7, 8], stamps
    # A folder played once uses up no pair while it waits for the clock (all 3 went unpublished
    # before the first /clock).
    import cv2
    for side in ('left', 'right'):
        (tmp_path / side).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / side / f'f{i}.png'), np.full((24, 32, 3), i, np.uint8))
    ros.executor.remove_node(camera)
    ros.nodes.remove(camera)
    camera.destroy_node()
    folder = ros.add(SimStereoCameraNode(context=ros.context, parameter_overrides=[
        Parameter('source', value='folder'), Parameter('folder', value=str(tmp_path)),
        Parameter('loop', value=False), Parameter('rate_hz', value=20.0),
        Parameter('use_sim_time', value=True)]))
    ros.wait_for(lambda: False, timeout_s=1.0)              # no clock for this node yet
    stamps.clear()
    sec = 9
    while folder.frames_published < 3 and sec < 60:
        msg = Clock()
        msg.clock.sec = sec
        clock_pub.publish(msg)
        ros.wait_for(lambda: False, timeout_s=0.3)
        sec += 1
    assert folder.frames_published == 3, folder.frames_published


@pytest.mark.ros
def test_sim_camera_keeps_its_rate_under_a_running_clock_when_rendering_is_slow(
        ros, monkeypatch):
    """A render slower than the frame period starts the next frame before the /clock ticks
    again: the camera took that for a clock standing still, logged 'waiting for the clock
    (... without a running /clock)' and waited 0.2 s on every frame."""
    import threading
    import time

    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from corr_depth_ros.nodes.sim_stereo_camera_node import SimStereoCameraNode
    render = SimStereoCamera.frame

    def slow(self, i, cancelled=None):
        time.sleep(0.06)                                # slower than the 20 Hz period
        return render(self, i, cancelled=cancelled)
    monkeypatch.setattr(SimStereoCamera, 'frame', slow)
    probe = ros.node('clock_source')
    clock_pub = probe.create_publisher(Clock, '/clock', 10)
    running = threading.Event()
    running.set()

    def tick():                                         # a 100 Hz /clock at real speed
        start = time.monotonic()
        while running.is_set():
            msg = Clock()
            msg.clock.nanosec = 0
            msg.clock.sec = 0
            ns = 10 ** 9 + int((time.monotonic() - start) * 1e9)
            msg.clock.sec, msg.clock.nanosec = divmod(ns, 10 ** 9)
            clock_pub.publish(msg)
            time.sleep(0.01)
    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        camera = ros.add(SimStereoCameraNode(context=ros.context, parameter_overrides=[
            Parameter('width', value=64), Parameter('height', value=48),
            Parameter('fx_px', value=50.0), Parameter('rate_hz', value=20.0),
            Parameter('use_sim_time', value=True)]))
        waiting, waits = [], []
        monkeypatch.setattr(camera, '_waiting_for_clock', lambda: waiting.append(1))
        stop_wait = camera._stop.wait
        monkeypatch.setattr(camera._stop, 'wait',
                            lambda timeout=None: (waits.append(timeout), stop_wait(timeout))[1])
        frames = []
        probe.create_subscription(Image, 'left/image_rect', frames.append,
                                  QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        assert ros.wait_for(lambda: len(frames) >= 1, timeout_s=60)
        waiting.clear()
        waits.clear()
        first = len(frames)
        assert ros.wait_for(lambda: len(frames) >= first + 10, timeout_s=60)
        # Between frames the clock stood still only until its next tick: no long wait, no
        # 'waiting for the clock' line.
        assert waiting == [] and max(waits) < 0.1, (waiting, sorted(waits)[-5:])
    finally:
        running.clear()
        ticker.join(5)


@pytest.mark.ros
def test_sim_camera_paces_frames_from_the_first_one_after_a_clock_wait(ros):
    """When sim time started, the second frame went out at once after the first (the period
    counted from the schedule before the wait for the clock)."""
    import threading
    import time

    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from corr_depth_ros.nodes.sim_stereo_camera_node import SimStereoCameraNode
    ros.add(SimStereoCameraNode(context=ros.context, parameter_overrides=[
        Parameter('width', value=64), Parameter('height', value=48),
        Parameter('fx_px', value=50.0), Parameter('rate_hz', value=5.0),
        Parameter('use_sim_time', value=True)]))
    probe = ros.node('pacing_probe')
    arrivals = []
    probe.create_subscription(Image, 'left/image_rect',         # stamps: sim time at 1x
                              lambda m: arrivals.append(m.header.stamp.sec +
                                                        m.header.stamp.nanosec * 1e-9),
                              QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
    clock_pub = probe.create_publisher(Clock, '/clock', 10)
    ros.wait_for(lambda: False, timeout_s=1.5)          # the camera waits for a clock
    running = threading.Event()
    running.set()

    def tick():
        start = time.monotonic()
        while running.is_set():
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(
                10 ** 9 + int((time.monotonic() - start) * 1e9), 10 ** 9)
            clock_pub.publish(msg)
            time.sleep(0.01)
    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        assert ros.wait_for(lambda: len(arrivals) >= 3, timeout_s=60), arrivals
    finally:
        running.clear()
        ticker.join(5)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:3])]
    assert min(gaps) > 0.1, gaps                        # 5 Hz: 0.2 s apart (0.03 before)


@pytest.mark.ros
def test_sim_camera_names_every_damaged_pair_of_a_folder(ros, tmp_path, monkeypatch):
    """Each unusable pair is said once, so unthrottled: a second damaged pair within 5 s of
    the first was never named."""
    import cv2
    from rclpy.impl.rcutils_logger import RcutilsLogger
    from rclpy.parameter import Parameter
    from corr_depth_ros.nodes.sim_stereo_camera_node import SimStereoCameraNode
    for side in ('left', 'right'):
        (tmp_path / side).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / side / f'f{i}.png'), np.full((24, 32, 3), i, np.uint8))
    (tmp_path / 'left' / 'f0.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(20))
    (tmp_path / 'right' / 'f1.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(20))
    # The first pair too: the camera takes its size from the first usable one (it refused to
    # start on a damaged first pair).
    said = []
    error = RcutilsLogger.error
    monkeypatch.setattr(RcutilsLogger, 'error',
                        lambda self, text, **kw: (said.append(text), error(self, text, **kw))[1])
    ros.add(SimStereoCameraNode(context=ros.context, parameter_overrides=[
        Parameter('source', value='folder'), Parameter('folder', value=str(tmp_path)),
        Parameter('rate_hz', value=20.0), Parameter('fx_px', value=30.0)]))
    assert ros.wait_for(lambda: sum('skipped' in t for t in said) >= 2, timeout_s=30), said
    assert any('left/f0.png' in t for t in said) and any('right/f1.png' in t for t in said)


def test_folder_replay_goes_in_natural_order_and_refuses_other_sizes(tmp_path):
    """A replayed folder plays frame2 before frame10, and a pair of another size than the
    first (whose size the published camera_info has) is refused, not published with it."""
    import cv2
    from corr_depth_ros.nodes.sim_stereo_camera_node import FolderPairs
    for side in ('left', 'right'):
        (tmp_path / side).mkdir()
        for name, (width, value) in {'frame2': (32, 2), 'frame10': (32, 10),
                                     'frame1': (32, 1), 'frame11': (40, 11)}.items():
            cv2.imwrite(str(tmp_path / side / f'{name}.png'),
                        np.full((24, width, 3), value, np.uint8))
    pairs = FolderPairs(str(tmp_path))
    assert [int(pairs.frame(i)['left'][0, 0, 0]) for i in range(3)] == [1, 2, 10]
    from corr_depth_ros.core.synth.io import natural_key
    assert sorted(['f\u00b2.png', 'f10.png', 'f9.png'], key=natural_key) == \
        ['f9.png', 'f10.png', 'f\u00b2.png']          # '²' is no number to int()
    with pytest.raises(ValueError, match='frame11.png is 40x24, but the camera publishes 32x24'):
        pairs.frame(3)
    assert pairs.frame(7) is None                     # said once, then skipped on every loop
    # A damaged file is named, and not read again on later loops (libpng printed its error to
    # stderr every loop, and the message named both files without the fault).
    (tmp_path / 'left' / 'frame10.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(20))
    pairs = FolderPairs(str(tmp_path))
    with pytest.raises(ValueError, match=r'left/frame10.png cannot be read as an image'):
        pairs.frame(2)
    assert pairs.frame(2 + len(pairs)) is None and 2 in pairs.bad
    # Raised as PairSkipped, which the node logs unthrottled (said once per pair anyway: a
    # second damaged pair within the throttle's 5 s of the first was never named).
    from corr_depth_ros.nodes.sim_stereo_camera_node import PairSkipped
    (tmp_path / 'right' / 'frame1.png').write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(20))
    with pytest.raises(PairSkipped, match=r'right/frame1.png cannot be read'):
        pairs.frame(0)
    # Read as training reads a folder (a review found JPEG pairs trained but not replayed):
    # a jpg beside a png of the same name pairs; a name without a partner is skipped and named.
    cv2.imwrite(str(tmp_path / 'left' / 'frame20.jpg'), np.full((24, 32, 3), 20, np.uint8))
    cv2.imwrite(str(tmp_path / 'right' / 'frame20.png'), np.full((24, 32, 3), 20, np.uint8))
    cv2.imwrite(str(tmp_path / 'left' / 'alone.png'), np.zeros((24, 32, 3), np.uint8))
    pairs = FolderPairs(str(tmp_path))
    assert len(pairs) == 5 and pairs.unmatched == ['alone']
    from corr_depth_ros.core.synth.io import RectifiedPairFolder
    trained = RectifiedPairFolder(tmp_path, allow_unmatched=True)
    assert [tuple(map(str, p)) for p in trained.pairs] == pairs.pairs


@pytest.mark.ros
def test_sim_camera_node_stops_its_render_mid_frame(ros, monkeypatch):
    """destroy_node stops the render thread inside its frame (it used to finish the frame: on a
    loaded machine past the 2 s it waited, and the thread left inside torch aborted the
    process at exit under ros2 launch)."""
    import threading

    from rclpy.parameter import Parameter
    from corr_depth_ros.nodes.sim_stereo_camera_node import SimStereoCameraNode
    started, outcomes = threading.Event(), []
    render = SimStereoCamera.frame

    def watched(self, i, cancelled=None):
        started.set()
        try:
            return render(self, i, cancelled=cancelled)
        except FrameCancelled:
            outcomes.append('cancelled')
            raise
    # Watched from the first frame on: the render thread starts inside the constructor, and a
    # 1280x960 frame takes over 10 s on a loaded 2-core machine (waiting for the second frame
    # timed out there).
    monkeypatch.setattr(SimStereoCamera, 'frame', watched)
    overrides = [Parameter('width', value=1280), Parameter('height', value=960),
                 Parameter('rate_hz', value=30.0)]    # renders back to back
    node = SimStereoCameraNode(context=ros.context, parameter_overrides=overrides)
    try:
        assert started.wait(30.0)
    finally:
        node.destroy_node()
    # One render stage can outlast destroy_node's wait on a loaded machine; that the frame was
    # cut short, not finished, is what 'cancelled' shows.
    node._thread.join(timeout=60)
    assert not node._thread.is_alive()
    assert outcomes == ['cancelled'], outcomes


@pytest.mark.ros
def test_node_process_ends_at_once_on_sigint(tmp_path):
    """A node process (run_node, what ros2 run and ros2 launch start) interrupted mid-render
    exits 0 without a traceback, well inside launch's 5 s before SIGTERM: once the node is
    shut down it skips the interpreter's teardown (1-4 s with torch loaded on a busy machine;
    a render thread given up inside torch could abort it)."""
    import signal
    import time
    env = dict(os.environ)     # the suite's own domain (conftest): never one next to the user's
    # The node's main() as its console script runs it, with an atexit marker: interpreter
    # teardown (which runs atexit handlers) must not happen after the node is shut down.
    code = ('import atexit, sys\n'
            'atexit.register(lambda: print("INTERPRETER TEARDOWN", flush=True))\n'
            'sys.argv = ["sim_stereo_camera_node", "--ros-args", "-p", "width:=1280", '
            '"-p", "height:=960", "-p", "rate_hz:=30.0"]\n'
            'from corr_depth_ros.nodes.sim_stereo_camera_node import main\n'
            'main()\n')
    process = subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    output = []
    try:
        for line in process.stdout:       # until the node is up (its render thread started)
            output.append(line)
            if 'sim stereo camera:' in line:
                break
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        start = time.monotonic()
        rest, _ = process.communicate(timeout=60)
        seconds = time.monotonic() - start
    finally:
        if process.poll() is None:
            process.kill()
    text = ''.join(output) + rest
    assert process.returncode == 0, text[-3000:]
    assert 'Traceback' not in text and 'terminate called' not in text, text[-3000:]
    assert 'INTERPRETER TEARDOWN' not in text, text[-3000:]
    assert seconds < 30.0, (seconds, text[-3000:])



@pytest.mark.parametrize('argv,said', [
    (['-p', 'input_width:=100'], 'cannot start: input_width x input_height must be multiples '
                                 'of 32'),
    (['-p', 'weights_path:=/nonexistent.safetensors'], 'cannot start: weights file not found'),
    (['-p', 'baseline_m:=-1.0'], 'cannot start:'),
])
@pytest.mark.ros
def test_a_node_that_cannot_start_says_why_in_one_log_line(argv, said):
    """A configuration a node refuses ended in a Python traceback, outside /rosout and the
    launch log's format; now one fatal ROS log line and exit status 1."""
    env = dict(os.environ)     # the suite's own domain (conftest): never one next to the user's
    code = (f'import sys\nsys.argv = ["mono_depth_node", "--ros-args", *{argv!r}]\n'
            'from corr_depth_ros.nodes.mono_depth_node import main\nmain()\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            env=env, timeout=120)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text[-3000:]
    assert said in text and '[FATAL]' in text and '[mono_depth_node]' in text, text[-3000:]
    assert 'Traceback' not in text, text[-3000:]

@pytest.mark.parametrize('argv,code,said', [
    (['--help'], 0, 'usage: stereo_depth_node [--ros-args'),
    (['-p', 'backend:=learned'], 2, 'unknown argument(s) -p: ROS arguments go after --ros-args'),
    (['--ros-args', '--help'], 2, "cannot start: unknown ROS argument(s) ['--help']"),
    (['--ros-args', '-p', 'backend=learned'], 2, "Couldn't parse parameter override rule"),
])
@pytest.mark.ros
def test_a_node_answers_help_and_refuses_arguments_it_would_ignore(argv, code, said):
    """--help started the node; -p without --ros-args was taken as a remap rule and the node
    ran without the setting; a malformed ROS argument ended in a traceback."""
    script = (f'import sys\nsys.argv = ["stereo_depth_node", *{argv!r}]\n'
              'from corr_depth_ros.nodes.stereo_depth_node import main\nmain()\n')
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=60)
    text = result.stdout + result.stderr
    assert result.returncode == code, text[-3000:]
    assert said in text and 'Traceback' not in text and 'ready' not in text, text[-3000:]


@pytest.mark.ros
def test_a_node_that_cannot_start_says_why_on_its_own_logger_in_rosout(ros):
    """The line went out on a logger named after the executable (not cam.mono_depth_node for
    a node in /cam) and the process ended at once: /rosout listeners mostly never saw it."""
    from rcl_interfaces.msg import Log
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    received = []
    listener = ros.node('rosout_listener')
    listener.create_subscription(
        Log, '/rosout', received.append,
        QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.TRANSIENT_LOCAL))
    code = ('import sys\nsys.argv = ["mono_depth_node", "--ros-args", "-r", "__ns:=/cam", "-p", '
            '"weights_path:=/nonexistent.safetensors"]\n'
            'from corr_depth_ros.nodes.mono_depth_node import main\nmain()\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120)
    text = result.stdout + result.stderr
    assert result.returncode == 1 and '[cam.mono_depth_node]: cannot start:' in text, text[-3000:]
    assert ros.wait_for(lambda: any(m.name == 'cam.mono_depth_node' and m.level == Log.FATAL
                                    for m in list(received)), timeout_s=10), \
        [(m.name, m.msg) for m in received]


@pytest.mark.ros
def test_demo_runs_end_to_end(tmp_path):
    """`make demo`'s program: same YAMLs, one process, outputs a person can look at."""
    small = tmp_path / 'small.yaml'
    small.write_text('/**/sim_stereo_camera_node:\n  ros__parameters:\n'
                     '    width: 128\n    height: 96\n    fx_px: 105.0\n    rate_hz: 10.0\n')
    out = tmp_path / 'out'
    env = dict(os.environ)     # the suite's own domain (conftest): never one next to the user's
    result = subprocess.run([sys.executable, '-m', 'corr_depth_ros.demo', '--out', str(out),
                             '--frames', '2', '--timeout', '150', '--params-file', str(small)],
                            capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / 'summary.json').read_text())
    for name in ('left.png', 'disparity_color.png', 'depth_color.png', 'points.ply'):
        assert (out / name).stat().st_size > 0
    # Far background (disparity ~0, infinite depth) is rightly invalid; objects are not. The
    # cloud keeps to where the matcher searched the whole range (sgbm: not its first columns).
    x, y, width, height = summary['ply_window_xywh']
    assert x > 0 and summary['ply_points'] <= width * height
    assert summary['ply_points'] > 0.2 * 128 * 96
    # Against the camera's ground truth the pipeline is in the right ball park.
    assert summary['vs_ground_truth']['epe_px'] < 5.0, summary
    # The scripted grasp-planner conversation: five reference pixels found again later.
    corr = summary['correspondence']
    assert len(corr['matches']) == 5 and corr['live_stamp'] != corr['reference_stamp'], corr
    for match in corr['matches']:
        assert 0 <= match['match_px'][0] < 128 and 0 <= match['match_px'][1] < 96
    for name in ('correspondence.png', 'correspondence_heatmap.png'):
        assert (out / name).stat().st_size > 0


def test_demo_reference_pixels_lie_inside_near_textured_surfaces():
    """The demo clicks where a planner would: on the near object, a few pixels inside its
    outline, on texture (it took the nearest 30 % of pixels, room walls included, and ended on
    an object's edge and on repeated wall texture)."""
    from corr_depth_ros.core.descriptors.evaluate import pick_reference_pixels
    rng = np.random.default_rng(0)
    depth = np.full((120, 160), 8.0, np.float32)          # the room
    depth[30:90, 40:120] = 1.5                             # a box in front of it
    disparity = 100.0 * 0.1 / depth                         # f = 100 px, B = 0.1 m
    image = np.full((120, 160, 3), 128, np.uint8)
    image[30:90, 40:120] = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)   # textured box
    pixels = pick_reference_pixels(disparity, image)
    assert len(pixels) == 5
    for x, y in pixels:
        assert 46 <= x <= 113 and 36 <= y <= 83, (x, y)    # 6 px or more inside the box


def test_demo_refuses_an_output_folder_it_cannot_write_before_starting(tmp_path):
    """It started the nodes and failed with a traceback about references_dir (or, without the
    correspondence node, after the whole run)."""
    (tmp_path / 'afile').write_text('')
    result = subprocess.run([sys.executable, '-m', 'corr_depth_ros.demo', '--out',
                             str(tmp_path / 'afile' / 'out'), '--timeout', '5'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert 'is a file, not a folder' in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'afile' / 'out').exists()


def test_demo_clears_the_outputs_of_an_earlier_run(tmp_path):
    from corr_depth_ros.demo import OUTPUT_FILES, clear_outputs
    for name in OUTPUT_FILES + ('mine.txt',):
        (tmp_path / name).write_text('old')
    clear_outputs(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine.txt']
