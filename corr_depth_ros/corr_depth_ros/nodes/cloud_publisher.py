"""Organised point clouds built and published beside a node's other outputs.

A 741x500 x y z rgb cloud is 5.9 MB, the largest thing the depth nodes send: computing its
points, packing and publishing it take longer than building and publishing the disparity and
depth images together. :class:`CloudPublisher` does that work on its own thread while the
node's worker publishes the rest (numpy and the DDS write run without the GIL for most of it).
Timed in the stereo node on the 2-core CPU: disparity and depth take ~1.8 ms to build and
publish; the cloud, alongside, ~5.5 ms to build and 3 ms to publish (docs/results.md, issue 2). Built
from contiguous planes in one interleaving pass since (PointCloud2Packer.pack_planes), its
packing alone went from 2.5 to 1.3 ms.
"""
import contextlib
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .. import conversions
from ..core.geometry import depth_to_point_planes


class CloudPublisher:
    """Publishes ``points2`` from a depth image on a helper thread.

    One cloud at a time: the caller waits for the returned future before it submits the next
    frame (the wire buffer is reused from frame to frame, see PointCloud2Packer), and errors
    raised while building or publishing surface from ``future.result()``.
    """

    def __init__(self, publisher):
        self._publisher = publisher
        self._packer = conversions.PointCloud2Packer()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix='cloud')

    def wanted(self) -> bool:
        """Whether anyone subscribes (a cloud nobody reads is neither built nor sent)."""
        return self._publisher.get_subscription_count() > 0

    def submit(self, depth_m: np.ndarray, intrinsics, rgb: np.ndarray, header) -> Future:
        """Build and publish the cloud of ``depth_m`` ((H, W) metres, NaN invalid) coloured by
        ``rgb`` ((H, W, 3) uint8), with ``intrinsics`` (fx, fy, cx, cy) in pixels."""
        return self._thread.submit(self._publish, depth_m, intrinsics, rgb, header)

    @contextlib.contextmanager
    def beside(self, depth_m: np.ndarray, intrinsics, rgb: np.ndarray, header,
               enabled: bool = True):
        """``with clouds.beside(...):`` publish the frame's other outputs in the block while
        the cloud is built and published (when ``enabled`` and someone subscribes); the block's
        exit waits for it and raises its error, so the next frame may reuse the buffer."""
        future = self.submit(depth_m, intrinsics, rgb, header) \
            if enabled and self.wanted() else None
        try:
            yield
        finally:
            if future is not None:
                future.result()

    def _publish(self, depth_m, intrinsics, rgb, header) -> None:
        # Contiguous x y z planes, interleaved with the colours into the reused wire buffer in
        # one pass (PointCloud2Packer.pack_planes).
        x, y, z = depth_to_point_planes(depth_m, *intrinsics)
        self._publisher.publish(self._packer.pack_planes(x, y, z, rgb, header))

    def shutdown(self) -> None:
        self._thread.shutdown(wait=True)
