"""CloudPublisher: the depth nodes' points2, built and published on a helper thread."""
import threading

import numpy as np
import pytest
from std_msgs.msg import Header

from corr_depth_ros import conversions
from corr_depth_ros.core.geometry import depth_to_points
from corr_depth_ros.nodes.cloud_publisher import CloudPublisher

INTRINSICS = (300.0, 310.0, 4.0, 3.0)


class RecordingPublisher:
    """Stands in for an rclpy publisher: keeps a serialised copy of what is published (the
    real publish() serialises synchronously too) and the thread that published it."""

    def __init__(self, subscribers=1):
        self.subscribers = subscribers
        self.published = []

    def get_subscription_count(self):
        return self.subscribers

    def publish(self, msg):
        self.published.append((bytes(msg.data), msg.height, msg.width,
                               threading.current_thread().name))


def test_publishes_the_cloud_of_the_depth_from_its_own_thread():
    rng = np.random.default_rng(0)
    publisher = RecordingPublisher()
    clouds = CloudPublisher(publisher)
    try:
        for height, width in ((6, 8), (6, 8), (3, 5)):  # a new size gets a new buffer
            depth = rng.uniform(0.5, 3.0, size=(height, width)).astype(np.float32)
            depth[0, 0] = np.nan
            rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            clouds.submit(depth, INTRINSICS, rgb, Header()).result(timeout=10)
            expected = conversions.make_pointcloud2(depth_to_points(depth, *INTRINSICS), rgb,
                                                    Header())
            data, got_height, got_width, thread = publisher.published[-1]
            assert data == bytes(expected.data) and (got_height, got_width) == (height, width)
            assert thread != threading.current_thread().name
    finally:
        clouds.shutdown()


def test_errors_surface_from_the_future_and_wanted_follows_subscribers():
    publisher = RecordingPublisher(subscribers=0)
    clouds = CloudPublisher(publisher)
    try:
        assert not clouds.wanted()
        publisher.subscribers = 2
        assert clouds.wanted()
        future = clouds.submit(np.ones((4, 4), np.float32), INTRINSICS,
                               np.zeros((4, 5, 3), np.uint8), Header())
        with pytest.raises(conversions.ConversionError, match='must be'):
            future.result(timeout=10)
        assert publisher.published == []
    finally:
        clouds.shutdown()


def test_beside_publishes_during_the_block_and_waits_for_the_cloud():
    publisher = RecordingPublisher(subscribers=0)
    clouds = CloudPublisher(publisher)
    depth, rgb = np.ones((4, 4), np.float32), np.zeros((4, 4, 3), np.uint8)
    try:
        with clouds.beside(depth, INTRINSICS, rgb, Header()):
            pass
        assert publisher.published == []  # nobody subscribes: not built
        publisher.subscribers = 1
        with clouds.beside(depth, INTRINSICS, rgb, Header(), enabled=False):
            pass
        assert publisher.published == []  # publish_points off
        with clouds.beside(depth, INTRINSICS, rgb, Header()):
            pass
        assert len(publisher.published) == 1  # done when the block has exited
        with pytest.raises(conversions.ConversionError, match='must be'):
            with clouds.beside(depth, INTRINSICS, np.zeros((4, 5, 3), np.uint8), Header()):
                pass
    finally:
        clouds.shutdown()
