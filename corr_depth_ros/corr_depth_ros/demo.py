"""`make demo`: the stereo pipeline on the embedded synthetic camera, in one process.

Composes the same nodes that launch/demo.launch.py starts (sim_stereo_camera_node,
stereo_depth_node, and correspondence_node when present) with the same YAML files, in one
process on a multi-threaded executor — ROS 2 supports several nodes per process, and this works
where `ros2 launch` is not installed. It records the outputs, writes what a person would look at
to the output folder, and prints per-node rates and latency:
  left.png, disparity_color.png, depth_color.png, confidence.png, points.ply, summary.json
"""
import argparse
import json
import os
import sys
import threading
import time

import numpy as np


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

    def __init__(self, node):
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image, PointCloud2
        from stereo_msgs.msg import DisparityImage
        qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.node = node
        self.latest = {}
        self.arrivals = {}
        self.latency_s = {}
        self.lock = threading.Lock()
        for topic, msg_type in (('left/image_rect', Image), ('ground_truth/depth', Image),
                                ('disparity', DisparityImage), ('depth', Image),
                                ('points2', PointCloud2), ('confidence', Image),
                                ('disparity/color', Image)):
            node.create_subscription(msg_type, topic, self._callback(topic), qos)

    def _callback(self, topic):
        def store(msg):
            now = self.node.get_clock().now()
            stamp = msg.header.stamp
            with self.lock:
                self.latest.setdefault(topic, {})[(stamp.sec, stamp.nanosec)] = msg
                if len(self.latest[topic]) > 8:
                    self.latest[topic].pop(next(iter(self.latest[topic])))
                self.arrivals.setdefault(topic, []).append(time.monotonic())
                self.latency_s.setdefault(topic, []).append(
                    (now.nanoseconds - (stamp.sec * 10 ** 9 + stamp.nanosec)) / 1e9)
        return store

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
    disparity = conversions.disparity_msg_to_array(disparity_msg)
    disparity = np.where(disparity > 0, disparity, np.nan)
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
    count = write_ply(os.path.join(out_dir, 'points.ply'), points, rgb)
    files.append('points.ply')
    summary = {'stamp': list(stamp), 'valid_pixels_pct': float(100 * np.isfinite(depth).mean()),
               'ply_points': count, 'median_depth_m': float(np.nanmedian(depth))}
    if 'ground_truth/depth' in pick:
        gt_depth = conversions.image_to_array(pick['ground_truth/depth'])
        gt_disparity = geometry.fx * geometry.baseline_m / gt_depth - geometry.doffs_px
        raw = disparity - geometry.doffs_px
        summary['vs_ground_truth'] = disparity_metrics(raw, gt_disparity.astype(np.float32))
        save('ground_truth_disparity_color.png', colourise(gt_disparity))
        files.append('ground_truth_disparity_color.png')
    summary['files'] = files
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default='demo_output', help='output folder')
    parser.add_argument('--frames', type=int, default=5, help='complete output sets to wait for')
    parser.add_argument('--timeout', type=float, default=300.0, help='give up after this many seconds')
    parser.add_argument('--params-file', action='append', default=[],
                        help='extra ROS parameter files (applied after the package YAMLs)')
    args = parser.parse_args(argv)

    os.environ.setdefault('FASTRTPS_DEFAULT_PROFILES_FILE',
                          os.path.join(config_dir(), 'fastdds_large_data.xml'))
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
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
        recorder = Recorder(recorder_node)
        for node in nodes:
            executor.add_node(node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        topics = ['left/image_rect', 'disparity', 'depth', 'points2']
        print(f'demo: sim camera {camera.geometry.width}x{camera.geometry.height} -> '
              f'stereo_depth_node (backend {stereo._backend_name}); waiting for {args.frames} frames')
        deadline = time.monotonic() + args.timeout
        started = time.monotonic()
        while time.monotonic() < deadline and len(recorder.complete_stamps(topics)) < args.frames:
            time.sleep(0.1)
        complete = recorder.complete_stamps(topics)
        if not complete:
            print('demo: no complete output set arrived', file=sys.stderr)
            return 1
        summary = write_outputs(args.out, recorder, complete[-1], camera.geometry)
        elapsed = time.monotonic() - started
        summary.update({
            'backend': stereo._backend_name,
            'frames': len(complete), 'elapsed_s': elapsed,
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
        executor.shutdown(timeout_sec=2.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=context)


if __name__ == '__main__':
    sys.exit(main())
