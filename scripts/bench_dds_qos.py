#!/usr/bin/env python3
"""How many large images survive DDS between two processes on this host? Prints and writes JSON.

For each configuration a subscriber process (best-effort = sensor-data QoS, or reliable) counts
the 741x500 rgb8 images (1.1 MB each) that a publisher process sends back to back.
Configurations: Fast DDS defaults vs. config/fastdds_large_data.xml.

    python scripts/bench_dds_qos.py --json bench_output/dds_qos.json
"""
import argparse
import json
import os
import subprocess
import sys
import time

from bench_common import machine_info, write_result

PROFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'corr_depth_ros', 'config',
                       'fastdds_large_data.xml')


def subscriber(reliable: bool, expect: int, wait_s: float) -> None:
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node('qos_bench_sub')
    # Best effort as the sensor-data profile, but with a history as deep as the burst, so that
    # what is measured is the transport, not KEEP_LAST overwriting unread samples.
    qos = QoSProfile(depth=expect, reliability=ReliabilityPolicy.RELIABLE if reliable
                     else ReliabilityPolicy.BEST_EFFORT)
    got = []
    node.create_subscription(Image, 'qos_bench/image', lambda m: got.append(m.header.stamp.sec), qos)
    print('READY', flush=True)
    deadline = None
    while True:
        rclpy.spin_once(node, timeout_sec=0.05)
        if got and deadline is None:
            deadline = time.monotonic() + wait_s
        if deadline and (time.monotonic() > deadline or len(got) >= expect):
            break
        if deadline is None and sys.stdin.closed:
            break
    print(json.dumps({'received': len(set(got))}), flush=True)
    rclpy.try_shutdown()


def publisher_run(reliable: bool, count: int, env: dict) -> int:
    sub = subprocess.Popen([sys.executable, __file__, '--role', 'sub', '--count', str(count)]
                           + (['--reliable'] if reliable else []),
                           env=env, stdout=subprocess.PIPE, text=True)
    assert sub.stdout.readline().strip() == 'READY'
    pub = subprocess.run([sys.executable, __file__, '--role', 'pub', '--count', str(count)]
                         + (['--reliable'] if reliable else []),
                         env=env, capture_output=True, text=True, timeout=60)
    try:
        out, _ = sub.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        sub.kill()
        out, _ = sub.communicate()
    if pub.returncode != 0:
        raise RuntimeError(pub.stderr)
    for line in out.splitlines():
        if line.startswith('{'):
            return json.loads(line)['received']
    return 0


def publisher(reliable: bool, count: int) -> None:
    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'corr_depth_ros'))
    from corr_depth_ros import conversions
    rclpy.init()
    node = rclpy.create_node('qos_bench_pub')
    qos = QoSProfile(depth=count, reliability=ReliabilityPolicy.RELIABLE if reliable
                     else ReliabilityPolicy.BEST_EFFORT)
    pub = node.create_publisher(Image, 'qos_bench/image', qos)
    deadline = time.monotonic() + 20
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(0.5)  # let discovery finish both ways
    pixels = np.random.default_rng(0).integers(0, 255, (500, 741, 3), dtype=np.uint8)
    msgs = []
    for i in range(count):
        header = Header(frame_id='cam')
        header.stamp.sec = i + 1
        msgs.append(conversions.array_to_image(pixels, 'rgb8', header))
    for msg in msgs:
        pub.publish(msg)
    time.sleep(2.0)  # keep the writer alive while reliable repairs finish
    rclpy.try_shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--role', choices=['main', 'pub', 'sub'], default='main')
    parser.add_argument('--count', type=int, default=10)
    parser.add_argument('--reliable', action='store_true')
    parser.add_argument('--json', default='bench_output/dds_qos.json')
    args = parser.parse_args()
    if args.role == 'sub':
        return subscriber(args.reliable, args.count, wait_s=3.0)
    if args.role == 'pub':
        return publisher(args.reliable, args.count)
    base = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=os.environ.get(
        'ROS_DOMAIN_ID', str(50 + os.getpid() % 50)))
    base.pop('FASTRTPS_DEFAULT_PROFILES_FILE', None)
    results = []
    for name, extra in (('fastdds_defaults', {}),
                        ('corr_depth_profile', {'FASTRTPS_DEFAULT_PROFILES_FILE': os.path.abspath(PROFILE)})):
        for reliable in (False, True):
            received = publisher_run(reliable, args.count, dict(base, **extra))
            row = {'transport_config': name, 'reliability': 'reliable' if reliable else 'best_effort',
                   'sent': args.count, 'received': received}
            print(json.dumps(row), flush=True)
            results.append(row)
    write_result({'benchmark': 'dds_large_images', 'image': '741x500 rgb8 (1.1 MB)',
                  'machine': machine_info(), 'results': results}, args.json)
    return 0


if __name__ == '__main__':
    sys.exit(main())
