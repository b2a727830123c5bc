#!/usr/bin/env python3
"""Benchmark of correspondence_node over DDS at 640x480; prints and writes JSON.

The node runs in its own process (as `ros2 run` starts it) with the shipped descriptor weights
and depth; this process plays camera and grasp planner:
(a) request latency: /find_correspondence for a stored reference of 10 pixels, call to
    response (arg-min search, confidence, 3D point and grasp pose per pixel), once the live
    frame's descriptors exist (issue 6 target: <= 50 ms);
(b) frame to queryable: publish of a new live frame (image, depth, camera_info) to the first
    response that matched it, polling every --poll-period-s (0.1 s): transport, the node's descriptor
    computation while requests keep arriving, and one request.

    python scripts/bench_correspondence_node.py --json bench_output/correspondence_node.json
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from bench_common import machine_info, node_process, timing_summary, write_result

HEIGHT, WIDTH = 480, 640
FX = FY = 600.0


def scene():
    """A 640x480 crop of the Motorcycle left image, a tilted-plane depth, 10 textured pixels."""
    from corr_depth_ros.core.motorcycle import load_motorcycle
    left = load_motorcycle()['left']
    top, lft = (left.shape[0] - HEIGHT) // 2, (left.shape[1] - WIDTH) // 2
    image = np.ascontiguousarray(left[top:top + HEIGHT, lft:lft + WIDTH])
    u, v = np.meshgrid(np.arange(WIDTH), np.arange(HEIGHT))
    depth = (1.0 + 0.001 * u + 0.0005 * v).astype(np.float32)
    rng = np.random.default_rng(0)
    pixels = np.stack([rng.uniform(40, WIDTH - 40, 10), rng.uniform(40, HEIGHT - 40, 10)], 1)
    return image, depth, pixels


def run(runs, frames, poll_period_s, timeout_s=120.0):
    """(request latencies, frame-to-queryable times, matches found per request)."""
    image, depth, pixels = scene()
    with tempfile.TemporaryDirectory(prefix='corr_bench_refs_') as refs, \
            node_process('correspondence_node', {'references_dir': refs},
                         'correspondence_bench_client') as node:
        return measure(node, image, depth, pixels, runs, frames, poll_period_s, timeout_s)


def measure(node, image, depth, pixels, runs, frames, poll_period_s, timeout_s):
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Header
    from corr_depth_interfaces.srv import FindCorrespondence, SetReference
    from corr_depth_ros import conversions

    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    pub_image = node.create_publisher(Image, 'image', qos)
    pub_depth = node.create_publisher(Image, 'depth', qos)
    pub_info = node.create_publisher(CameraInfo, 'camera_info', qos)
    find = node.create_client(FindCorrespondence, 'find_correspondence')
    set_reference = node.create_client(SetReference, 'set_reference')
    stamp = [1000]

    def publish_frame():
        stamp[0] += 1
        header = Header(frame_id='camera_color_optical_frame')
        header.stamp.sec = stamp[0]
        info = CameraInfo(header=header, width=WIDTH, height=HEIGHT)
        info.k = [FX, 0.0, (WIDTH - 1) / 2, 0.0, FY, (HEIGHT - 1) / 2, 0.0, 0.0, 1.0]
        pub_info.publish(info)
        pub_depth.publish(conversions.array_to_image(depth, '32FC1', header))
        pub_image.publish(conversions.array_to_image(image, 'rgb8', header))
        return stamp[0]

    def call(client, request, deadline_s=30.0):
        future = client.call_async(request)
        end = time.monotonic() + deadline_s
        while not future.done():
            rclpy.spin_once(node, timeout_sec=0.005)
            if time.monotonic() > end:
                raise RuntimeError(f'{client.srv_name}: no response in {deadline_s} s')
        return future.result()

    find_request = FindCorrespondence.Request(reference_id='bench')
    deadline = time.monotonic() + timeout_s
    for client in (find, set_reference):
        while not client.wait_for_service(timeout_sec=0.5):
            if time.monotonic() > deadline:
                raise RuntimeError('correspondence_node did not come up')
    # A live frame, then the reference (made from it, as a click would).
    while True:
        publish_frame()
        probe = call(find, FindCorrespondence.Request(
            reference_image=conversions.array_to_image(image, 'rgb8', Header()),
            reference_pixels=[conversions.pixel_point(pixels[0])]))
        if probe.success:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f'no live frame processed: {probe.message}')
        time.sleep(0.5)
    made = call(set_reference, SetReference.Request(
        reference_id='bench', reference_pixels=[conversions.pixel_point(p) for p in pixels]))
    if not made.success:
        raise RuntimeError(f'set_reference failed: {made.message}')
    # (a) request latency on a computed frame
    latencies, found = [], []
    for i in range(runs + 2):                      # two warm-up calls
        start = time.perf_counter()
        response = call(find, find_request)
        elapsed = time.perf_counter() - start
        if not response.success or len(response.matches) != len(pixels):
            raise RuntimeError(f'find_correspondence failed: {response.message}')
        if i >= 2:
            latencies.append(elapsed)
            found.append(sum(m.found for m in response.matches))
    # (b) frame to queryable
    to_queryable = []
    for _ in range(frames):
        start = time.perf_counter()
        sec = publish_frame()
        while True:
            response = call(find, find_request)
            if response.success and response.image_header.stamp.sec == sec:
                break
            if time.perf_counter() - start > 30.0:
                raise RuntimeError('a published frame never became queryable')
            time.sleep(poll_period_s)
        to_queryable.append(time.perf_counter() - start)
        time.sleep(0.1)
    return latencies, to_queryable, found


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=30, help='timed requests')
    parser.add_argument('--frames', type=int, default=10, help='timed new frames')
    parser.add_argument('--poll-period-s', type=float, default=0.1,
                        help='pause between the requests that poll for a new frame')
    parser.add_argument('--json', default='bench_output/correspondence_node.json')
    args = parser.parse_args()
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    latencies, to_queryable, found = run(args.runs, args.frames, args.poll_period_s)
    request = timing_summary(latencies)
    result = {
        'benchmark': 'correspondence_node', 'size': f'{WIDTH}x{HEIGHT}', 'pixels_per_request': 10,
        'machine': machine_info(),
        'request_latency': request,
        'matches_found_per_request_median': statistics.median(found),
        'frame_to_queryable': timing_summary(to_queryable),
        'targets': {'request_latency_ms<=50': request['median_ms'] <= 50.0},
    }
    write_result(result, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
