#!/usr/bin/env python3
"""Example client of correspondence_node, for a grasp planner to copy from.

    # store pixels of the newest live image as reference "mug_handle", then find them again:
    python scripts/example_grasp_client.py --set mug_handle --pixels 320,240 300,260
    python scripts/example_grasp_client.py --find mug_handle
    # inline reference image (PNG/JPG on disk) + pixels, timing 20 calls:
    python scripts/example_grasp_client.py --image ref.png --pixels 120,80 --repeat 20
    # or store that image's pixels as a reference:
    python scripts/example_grasp_client.py --set mug_handle --image ref.png --pixels 120,80

Prints, per pixel: match pixel, descriptor distance, confidence, found/reason, the 3D point and
the grasp pose (camera optical frame; pose z axis = approach direction into the surface).
A planner would transform ``grasp_pose`` into its planning frame with tf2 and check ``found``.
"""
import argparse
import statistics
import sys
import time


def pixel(text):
    """argparse type of --pixels: 'x,y' -> (x, y), or a usage error saying what is wrong."""
    try:
        x, y = text.split(',')
        return float(x), float(y)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: a pixel is x,y (column,row), '
                                         'e.g. 320,240') from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--namespace', default='', help='namespace of the node (services under it)')
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--set', metavar='ID', help='store the pixels as reference ID (of the '
                       'newest live image, or of --image)')
    group.add_argument('--find', metavar='ID', help='find a stored reference in the live image')
    parser.add_argument('--image', metavar='PATH', help='reference image file (+ --pixels): found '
                        'in the live image inline, or stored with --set')
    parser.add_argument('--pixels', nargs='*', default=[], type=pixel,
                        help='x,y pixels (column,row)')
    parser.add_argument('--overwrite', action='store_true', help='with --set: replace ID')
    parser.add_argument('--repeat', type=int, default=1, help='call N times, print latency')
    parser.add_argument('--timeout', type=float, default=10.0, help='seconds per call')
    args = parser.parse_args(argv)
    if not (args.set or args.find or args.image):
        parser.error('give --set ID, --find ID or --image PATH')
    if args.find and args.image:
        parser.error('--find uses the stored reference: leave out --image')

    import rclpy
    from geometry_msgs.msg import Point
    from corr_depth_interfaces.srv import FindCorrespondence, SetReference

    rclpy.init()
    node = rclpy.create_node('example_grasp_client')
    prefix = args.namespace.rstrip('/') + '/' if args.namespace else ''
    pixels = [Point(x=x, y=y, z=0.0) for x, y in args.pixels]
    try:
        if args.set:
            client = node.create_client(SetReference, prefix + 'set_reference')
            request = SetReference.Request(reference_id=args.set, overwrite=args.overwrite)
        else:
            client = node.create_client(FindCorrespondence, prefix + 'find_correspondence')
            request = FindCorrespondence.Request(reference_id=args.find or '')
        request.reference_pixels = pixels
        if args.image:
            import cv2
            from std_msgs.msg import Header
            from corr_depth_ros.conversions import array_to_image
            bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
            if bgr is None:
                print(f'cannot read {args.image}', file=sys.stderr)
                return 2
            request.reference_image = array_to_image(bgr, 'bgr8', Header())
        if not client.wait_for_service(timeout_sec=args.timeout):
            print(f'service {client.srv_name} not available', file=sys.stderr)
            return 2
        latencies_s = []
        response = None
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            future = client.call_async(request)
            rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
            if not future.done():
                print('call timed out', file=sys.stderr)
                return 1
            latencies_s.append(time.perf_counter() - start)
            response = future.result()
        print(f'success={response.success}: {response.message}')
        for m in getattr(response, 'matches', []):
            p, q = m.grasp_pose.pose.position, m.grasp_pose.pose.orientation
            print(f'  ({m.reference_pixel.x:g}, {m.reference_pixel.y:g}) -> '
                  f'({m.match_pixel.x:.1f}, {m.match_pixel.y:.1f})  d={m.descriptor_distance:.3f} '
                  f'conf={m.confidence:.2f}  found={m.found} {m.reason}')
            print(f'      point [m] ({p.x:.3f}, {p.y:.3f}, {p.z:.3f})  grasp q(xyzw) '
                  f'({q.x:.3f}, {q.y:.3f}, {q.z:.3f}, {q.w:.3f})  frame '
                  f'{m.grasp_pose.header.frame_id!r}')
        if args.repeat > 1:
            ms = sorted(1000 * s for s in latencies_s)
            print(f'latency over {len(ms)} calls: median {statistics.median(ms):.1f} ms, '
                  f'min {ms[0]:.1f} ms, max {ms[-1]:.1f} ms')
        return 0 if response.success else 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    sys.exit(main())
