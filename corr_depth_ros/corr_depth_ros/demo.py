"""`make demo`: the stereo pipeline on the embedded synthetic camera, in one process.

Composes the same nodes that launch/demo.launch.py starts (sim_stereo_camera_node,
stereo_depth_node, and correspondence_node when present) with the same YAML files, in one
process on a multi-threaded executor — ROS 2 supports several nodes per process, and this works
where `ros2 launch` is not installed. It records the outputs, writes what a person would look at
to the output folder, and prints per-node rates and latency:
  left.png, disparity_color.png, depth_color.png, confidence.png, points.ply, summary.json,
and, from a scripted grasp-planner conversation with correspondence_node (set_reference on one
frame, find_correspondence a second later while the camera drifts):
  correspondence.png (reference pixels | their matches), correspondence_heatmap.png
"""
import argparse
import json
import os
import sys
import threading
import time

import numpy as np

from .cli import check_output
from .cli._args import positive_int

# Every file the demo may write into its output folder: removed before a run, so a folder of an
# earlier run never keeps a picture this run did not make (e.g. correspondence.png after
# --no-correspondence).
OUTPUT_FILES = ('left.png', 'disparity_color.png', 'depth_color.png', 'confidence.png',
                'points.ply', 'ground_truth_disparity_color.png', 'correspondence.png',
                'correspondence_heatmap.png', 'summary.json')
# A match drawn green must be found *and* unambiguous: found alone is only a descriptor distance
# under the threshold, which a look-alike elsewhere (a repeated texture) also passes.
CONFIDENT = 0.1


def config_dir() -> str:
    """The installed share/corr_depth_ros/config, or the source tree's config/."""
    try:
        from ament_index_python.packages import get_package_share_directory
        path = os.path.join(get_package_share_directory('corr_depth_ros'), 'config')
        if os.path.isdir(path):
            return path
    except Exception:  # noqa: BLE001 - not installed: fall back to the source tree
        pass
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'config')


class Recorder:
    """Subscribes to the pipeline's outputs; keeps the newest of each and arrival statistics."""

    def __init__(self, node, with_correspondence: bool = False):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, PointCloud2
        from stereo_msgs.msg import DisparityImage
        qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.node = node
        self.latest = {}
        self.seen = {}      # topic -> every stamp received (for counting complete frames)
        self.arrivals = {}
        self.latency_s = {}
        self.lock = threading.Lock()
        topics = [('left/image_rect', Image), ('ground_truth/depth', Image),
                  ('disparity', DisparityImage), ('depth', Image), ('points2', PointCloud2),
                  ('confidence', Image), ('disparity/color', Image)]
        if with_correspondence:
            topics.append(('correspondence/heatmap', Image))
        for topic, msg_type in topics:
            node.create_subscription(msg_type, topic, self._callback(topic), qos)

    def _callback(self, topic):
        def store(msg):
            now = self.node.get_clock().now()
            stamp = msg.header.stamp
            with self.lock:
                self.seen.setdefault(topic, set()).add((stamp.sec, stamp.nanosec))
                self.latest.setdefault(topic, {})[(stamp.sec, stamp.nanosec)] = msg
                if len(self.latest[topic]) > 8:
                    self.latest[topic].pop(next(iter(self.latest[topic])))
                self.arrivals.setdefault(topic, []).append(time.monotonic())
                self.latency_s.setdefault(topic, []).append(
                    (now.nanoseconds - (stamp.sec * 10 ** 9 + stamp.nanosec)) / 1e9)
        return store

    def complete_count(self, topics) -> int:
        """Stamps seen on every one of ``topics`` so far (the messages kept are only the
        newest 8 per topic)."""
        with self.lock:
            return len(set.intersection(*[self.seen.get(t, set()) for t in topics]))

    def complete_stamps(self, topics):
        with self.lock:
            sets = [set(self.latest.get(t, {})) for t in topics]
        return sorted(set.intersection(*sets)) if sets else []

    def rate_hz(self, topic):
        times = self.arrivals.get(topic, [])
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])


def write_outputs(out_dir, recorder, stamp, geometry):
    import cv2
    from . import conversions
    from .core.colormap import colourise
    from .core.metrics import disparity_metrics
    from .core.ply import write_ply
    os.makedirs(out_dir, exist_ok=True)
    pick = {t: recorder.latest[t][stamp] for t in recorder.latest if stamp in recorder.latest[t]}
    left = conversions.image_to_rgb8(pick['left/image_rect'])
    disparity_msg = pick['disparity']
    disparity = conversions.disparity_msg_to_array(disparity_msg, invalid_as_nan=True)
    depth = conversions.image_to_array(pick['depth'])

    def save(name, rgb):
        cv2.imwrite(os.path.join(out_dir, name), rgb[:, :, ::-1])
    save('left.png', left)
    save('disparity_color.png', colourise(disparity))
    save('depth_color.png', colourise(-depth))  # near = warm colours
    files = ['left.png', 'disparity_color.png', 'depth_color.png']
    if 'confidence' in pick:
        save('confidence.png', colourise(conversions.image_to_array(pick['confidence']), 0.0, 1.0))
        files.append('confidence.png')
    points, rgb = conversions.pointcloud2_to_arrays(pick['points2'])
    # Only where the matcher searched the whole range (the DisparityImage's valid_window): the
    # node's output is dense, and left of it (sgbm's first num_disparities columns) the hole
    # filling's guesses were ~10 % of the cloud and a third of its error, streaks in a viewer.
    window = disparity_msg.valid_window
    inside = np.zeros(points.shape[:2], bool)
    inside[window.y_offset:window.y_offset + window.height,
           window.x_offset:window.x_offset + window.width] = True
    points = np.where(inside[..., None], points, np.float32(np.nan))
    count = write_ply(os.path.join(out_dir, 'points.ply'), points, rgb)
    files.append('points.ply')
    summary = {'stamp': list(stamp), 'valid_pixels_pct': float(100 * np.isfinite(depth).mean()),
               'ply_points': count, 'ply_window_xywh': [window.x_offset, window.y_offset,
                                                        window.width, window.height],
               'median_depth_m': float(np.nanmedian(depth))}
    if 'ground_truth/depth' in pick:
        gt_depth = conversions.image_to_array(pick['ground_truth/depth'])
        gt_disparity = geometry.fx * geometry.baseline_m / gt_depth - geometry.doffs_px
        raw = disparity - geometry.doffs_px
        summary['vs_ground_truth'] = disparity_metrics(raw, gt_disparity.astype(np.float32))
        save('ground_truth_disparity_color.png', colourise(gt_disparity))
        files.append('ground_truth_disparity_color.png')
    summary['files'] = files
    return summary


def _call(client, request, timeout_s: float):
    """Call a service from the main thread while the executor spins elsewhere."""
    if not client.wait_for_service(timeout_sec=timeout_s):
        raise RuntimeError(f'service {client.srv_name} is not available')
    future = client.call_async(request)
    deadline = time.monotonic() + timeout_s
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not future.done():
        raise RuntimeError(f'service {client.srv_name} did not answer in {timeout_s:.0f} s')
    return future.result()


def correspondence_demo(out_dir, recorder, corr_node, geometry, wait_s: float = 1.5):
    """What a grasp planner does: store a reference (pixels on one frame), then find those pixels
    again in a later live frame. Writes correspondence.png / correspondence_heatmap.png and
    returns a summary (matches, request latency)."""
    import cv2
    from corr_depth_interfaces.srv import FindCorrespondence, SetReference
    from . import conversions
    from .core.descriptors.evaluate import pick_reference_pixels
    node = recorder.node
    set_client = node.create_client(SetReference, 'set_reference')
    find_client = node.create_client(FindCorrespondence, 'find_correspondence')
    deadline = time.monotonic() + 60.0
    while corr_node.frames_processed < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    with recorder.lock:
        stamp, reference_msg = list(recorder.latest['left/image_rect'].items())[-1]
        depth_msg = recorder.latest.get('ground_truth/depth', {}).get(stamp) or \
            recorder.latest.get('depth', {}).get(stamp)
    reference_rgb = conversions.image_to_rgb8(reference_msg)
    depth_m = (conversions.image_to_array(depth_msg) if depth_msg is not None
               else np.full(reference_rgb.shape[:2], np.nan, np.float32))
    with np.errstate(divide='ignore', invalid='ignore'):
        disparity_px = geometry.fx * geometry.baseline_m / depth_m     # NaN depth: NaN
    pixels = pick_reference_pixels(disparity_px, reference_rgb)
    request = SetReference.Request(reference_id='demo', reference_image=reference_msg,
                                   reference_pixels=[conversions.pixel_point(p) for p in pixels],
                                   overwrite=True)
    answer = _call(set_client, request, 30.0)
    if not answer.success:
        raise RuntimeError(f'set_reference failed: {answer.message}')
    time.sleep(wait_s)                     # the simulated camera drifts meanwhile
    start = time.perf_counter()
    response = _call(find_client, FindCorrespondence.Request(reference_id='demo'), 30.0)
    latency_s = time.perf_counter() - start
    if not response.success:
        raise RuntimeError(f'find_correspondence failed: {response.message}')
    stamp = (response.image_header.stamp.sec, response.image_header.stamp.nanosec)
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        with recorder.lock:
            live_msg = recorder.latest['left/image_rect'].get(stamp)
            heatmap = recorder.latest.get('correspondence/heatmap', {}).get(stamp)
        if live_msg is not None and heatmap is not None:
            break
        time.sleep(0.05)
    live_rgb = conversions.image_to_rgb8(live_msg) if live_msg is not None else np.zeros_like(reference_rgb)
    left_panel, right_panel = reference_rgb.copy(), live_rgb.copy()
    for index, (pixel, match) in enumerate(zip(pixels, response.matches)):
        # Green: found and unambiguous; yellow: found, but another place matches nearly as
        # well (a look-alike); red: not found.
        colour = ((40, 220, 40) if match.found and match.confidence >= CONFIDENT else
                  (240, 200, 0) if match.found else (230, 60, 40))
        ref_xy = (int(round(pixel[0])), int(round(pixel[1])))
        live_xy = (int(round(match.match_pixel.x)), int(round(match.match_pixel.y)))
        for panel, xy in ((left_panel, ref_xy), (right_panel, live_xy)):
            cv2.circle(panel, xy, 6, colour, 2, cv2.LINE_AA)
        cv2.putText(left_panel, str(index), (ref_xy[0] + 7, ref_xy[1] - 7),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        cv2.putText(right_panel, f'{index} ({match.confidence:.2f})',
                    (live_xy[0] + 7, live_xy[1] - 7),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    cv2.imwrite(os.path.join(out_dir, 'correspondence.png'),
                np.concatenate([left_panel, right_panel], axis=1)[:, :, ::-1])
    files = ['correspondence.png']
    if heatmap is not None:
        cv2.imwrite(os.path.join(out_dir, 'correspondence_heatmap.png'),
                    conversions.image_to_rgb8(heatmap)[:, :, ::-1])
        files.append('correspondence_heatmap.png')
    return {'request_latency_ms': 1000.0 * latency_s, 'message': response.message,
            'reference_stamp': [reference_msg.header.stamp.sec, reference_msg.header.stamp.nanosec],
            'live_stamp': list(stamp), 'files': files,
            'matches': [{'reference_px': [round(p[0], 1), round(p[1], 1)],
                         'match_px': [round(m.match_pixel.x, 1), round(m.match_pixel.y, 1)],
                         'descriptor_distance': round(m.descriptor_distance, 4),
                         'confidence': round(m.confidence, 4), 'found': m.found,
                         'point_m': [round(v, 4) for v in (m.point.point.x, m.point.point.y,
                                                           m.point.point.z)],
                         'reason': m.reason} for p, m in zip(pixels, response.matches)]}


def clear_outputs(out_dir: str) -> None:
    """Remove the files an earlier run left in ``out_dir`` (OUTPUT_FILES only)."""
    for name in OUTPUT_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            os.remove(path)


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:       # also while rclpy and torch are still being imported
        print('\ndemo: interrupted', file=sys.stderr)
        return 130


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='demo_output', help='output folder')
    parser.add_argument('--frames', type=positive_int, default=5,
                        help='complete output sets to wait for')
    parser.add_argument('--timeout', type=float, default=300.0, help='give up after this many seconds')
    parser.add_argument('--params-file', action='append', default=[],
                        help='extra ROS parameter files (applied after the package YAMLs)')
    parser.add_argument('--no-correspondence', action='store_true',
                        help='leave correspondence_node and its scripted query out')
    args = parser.parse_args(argv)
    try:
        # Before the nodes start: an unwritable --out failed only at the end, or in the
        # correspondence node's references folder, with a traceback about a setting never given.
        check_output(args.out, '--out', folder=True)
    except ValueError as exc:
        parser.error(str(exc))
    clear_outputs(args.out)

    os.environ.setdefault('FASTRTPS_DEFAULT_PROFILES_FILE',
                          os.path.join(config_dir(), 'fastdds_large_data.xml'))
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from .nodes.sim_stereo_camera_node import SimStereoCameraNode
    from .nodes.stereo_depth_node import StereoDepthNode

    yaml_files = [os.path.join(config_dir(), name) for name in
                  ('sim_camera.yaml', 'stereo.yaml', 'correspondence.yaml')]
    ros_args = ['--ros-args']
    for path in [p for p in yaml_files if os.path.isfile(p)] + args.params_file:
        ros_args += ['--params-file', path]
    context = rclpy.Context()
    rclpy.init(args=ros_args, context=context)
    nodes = []
    executor = MultiThreadedExecutor(num_threads=4, context=context)
    try:
        camera = SimStereoCameraNode(context=context)
        stereo = StereoDepthNode(context=context)
        recorder_node = rclpy.create_node('demo_recorder', context=context)
        nodes = [camera, stereo, recorder_node]
        corr_node = None
        if not args.no_correspondence:
            from .nodes.correspondence_node import CorrespondenceNode
            # Wired as in stereo.launch.py: the left image and the stereo depth go in. The demo's
            # reference is kept in the output folder, not in the user's ~/.ros.
            corr_node = CorrespondenceNode(
                context=context,
                cli_args=['--ros-args', '-r', 'image:=left/image_rect',
                          '-r', 'camera_info:=left/camera_info'],
                parameter_overrides=[Parameter('references_dir', value=os.path.join(
                    os.path.abspath(args.out), 'references'))])
            nodes.append(corr_node)
        recorder = Recorder(recorder_node, with_correspondence=corr_node is not None)
        for node in nodes:
            executor.add_node(node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        topics = ['left/image_rect', 'disparity', 'depth', 'points2']
        print(f'demo: sim camera {camera.geometry.width}x{camera.geometry.height} -> '
              f'stereo_depth_node (backend {stereo._backend_name}); waiting for {args.frames} frames')
        deadline = time.monotonic() + args.timeout
        started = time.monotonic()
        while time.monotonic() < deadline and recorder.complete_count(topics) < args.frames:
            time.sleep(0.1)
        frames = recorder.complete_count(topics)   # within elapsed_s, before the corr phase
        complete = recorder.complete_stamps(topics)
        if not complete:
            print('demo: no complete output set arrived', file=sys.stderr)
            return 1
        if frames < args.frames:
            print(f'demo: only {frames} of {args.frames} frames within --timeout '
                  f'{args.timeout:g} s; writing the newest', file=sys.stderr)
        summary = write_outputs(args.out, recorder, complete[-1], camera.geometry)
        elapsed = time.monotonic() - started
        if corr_node is not None:
            summary['correspondence'] = correspondence_demo(args.out, recorder, corr_node,
                                                            camera.geometry)
            summary['files'] += summary['correspondence'].pop('files')
            summary['correspondence']['descriptor_compute_s'] = corr_node._worker.last_duration_s
            summary['correspondence']['frames_described'] = corr_node.frames_processed
        summary.update({
            'backend': stereo._backend_name,
            'frames': frames, 'elapsed_s': elapsed,
            'camera_render_s': camera.last_render_s,
            'stereo_compute_s': stereo._worker.last_duration_s,
            'rates_hz': {t: recorder.rate_hz(t) for t in ('left/image_rect', 'disparity', 'depth', 'points2')},
            'latency_s_median': {t: float(np.median(v)) for t, v in recorder.latency_s.items()
                                 if t in ('disparity', 'depth', 'points2')},
            'stereo_frames_dropped_as_stale': stereo._worker.dropped,
        })
        with open(os.path.join(args.out, 'summary.json'), 'w') as f:
            json.dump(summary, f, indent=2)
        print(json.dumps(summary, indent=2))
        print(f'demo: wrote {", ".join(summary["files"])} and summary.json to {args.out}/')
        return 0
    finally:
        # Callbacks in flight finish before their nodes go (cut short, they fail in tasks
        # nobody awaits: "exception was never retrieved" at exit).
        executor.shutdown(timeout_sec=10.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=context)


if __name__ == '__main__':
    sys.exit(main())
