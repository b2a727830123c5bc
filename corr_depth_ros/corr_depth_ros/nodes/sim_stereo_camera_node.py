"""sim_stereo_camera_node: a rectified stereo camera made of procedural scenes (or a folder).

Publishes, as a calibrated stereo driver + rectification would:
  left/image_rect, right/image_rect (rgb8), left/camera_info, right/camera_info (P with
  Tx = -fx * baseline), and with procedural scenes the left view's ground truth
  `ground_truth/depth` (32FC1 metres, NaN where nothing was hit) for checking what the depth
  nodes compute (a folder of pairs has none).
Rendering runs on its own thread, at `rate_hz` at most (slower if rendering cannot keep up).
"""
import threading
import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from .. import conversions
from ..core.sim_camera import FrameCancelled, SimRig, SimStereoCamera
from ..core.threads import pin_torch_threads
from .params import ParamSpec, declare, warn_unknown_parameters
from .worker import output_qos, run_node

# How often the render thread looks whether sim time has advanced: at first (right after a
# frame, the /clock's next tick is due), and once it has stood still for CLOCK_STILL_S.
CLOCK_MOMENT_S = 0.005
CLOCK_STILL_S = 1.0
CLOCK_POLL_S = 0.2

PARAMS = [
    ParamSpec('source', 'synthetic', 'Where frames come from: procedural scenes, or a folder '
              'with left/ and right/ rectified pairs (matched by name).',
              read_only=True, choices=('synthetic', 'folder')),
    ParamSpec('folder', '', 'Folder of rectified pairs when source is folder: left/NAME.ext and '
              'right/NAME.ext (png, jpg, ...; as train mono --data folder: reads them) of one '
              'size, played in natural name order (frame2 before frame10).', read_only=True),
    ParamSpec('loop', True, 'Replay the folder forever.', read_only=True),
    ParamSpec('rate_hz', 5.0, 'Publishing rate (an upper bound: rendering may be slower).',
              value_range=(0.1, 120.0)),
    ParamSpec('width', 640, 'Image width, pixels (synthetic).', read_only=True, value_range=(16, 4096)),
    ParamSpec('height', 480, 'Image height, pixels (synthetic).', read_only=True, value_range=(16, 4096)),
    ParamSpec('fx_px', 525.0, 'Focal length, pixels.', read_only=True, value_range=(1.0, 100000.0)),
    ParamSpec('baseline_m', 0.12, 'Stereo baseline, metres.', read_only=True, value_range=(0.001, 10.0)),
    ParamSpec('seed', 0, 'Seed of the scene stream (same seed, same frames).', read_only=True,
              value_range=(0, 2 ** 31 - 1)),
    ParamSpec('frames_per_scene', 30, 'Frames before a new scene is drawn.', read_only=True,
              value_range=(1, 100000)),
    ParamSpec('motion_m', 0.05, 'Amplitude of the camera drift within a scene, metres.',
              read_only=True, value_range=(0.0, 10.0)),
    ParamSpec('frame_id', 'sim_left_optical', 'frame_id of the left camera (optical frame, REP 103).',
              read_only=True),
    ParamSpec('right_frame_id', 'sim_right_optical', 'frame_id of the right camera.', read_only=True),
    ParamSpec('max_frames', 0, 'Stop publishing after this many frames (0: never).', read_only=True,
              value_range=(0, 10 ** 9)),
]


class PairSkipped(ValueError):
    """A replayed pair that cannot be used, raised once per pair (later turns skip it)."""


class FolderPairs:
    """Rectified pairs from ``folder/left/NAME.ext`` and ``folder/right/NAME.ext``, read as
    training reads them (core.synth.io.rectified_pairs: matched by name, png or jpg, natural
    order, frame2 before frame10); names without a partner are skipped (``unmatched``). Every
    pair must have the first pair's size: the camera's CameraInfo is that size's, so a pair of
    another size is refused (logged, skipped) rather than published with intrinsics that are
    not its own."""

    def __init__(self, folder: str):
        import cv2

        from ..core.synth.io import rectified_pairs
        self._cv2 = cv2
        self.size_hw = None         # the first pair's, set when it is read
        try:
            pairs, self.unmatched = rectified_pairs(folder)
        except ValueError as exc:
            raise ValueError(f'source folder {folder!r}: {exc}') from exc
        self.pairs = [(str(left), str(right)) for left, right in pairs]
        self.bad: set = set()       # indices of pairs that could not be used (said once)

    def __len__(self):
        return len(self.pairs)

    def frame(self, i: int, cancelled=None):   # two reads: quick, nothing to cancel
        """Pair ``i`` (modulo the folder) as RGB arrays; ValueError naming the file and the
        fault the first time a pair cannot be used, None on later turns of that pair (a
        looped folder read a damaged file, and libpng printed its error, every loop)."""
        index = i % len(self.pairs)
        if index in self.bad:
            return None
        try:
            return self._read(*self.pairs[index])
        except ValueError as exc:
            self.bad.add(index)
            raise PairSkipped(str(exc)) from exc

    def _read(self, left_path: str, right_path: str):
        left = self._cv2.imread(left_path, self._cv2.IMREAD_COLOR)
        right = self._cv2.imread(right_path, self._cv2.IMREAD_COLOR)
        for path, image in ((left_path, left), (right_path, right)):
            if image is None:
                raise ValueError(f'{path} cannot be read as an image (damaged, or not an '
                                 'image): its pair is skipped')
        if left.shape != right.shape:
            raise ValueError(f'{left_path} is {left.shape[1]}x{left.shape[0]} but '
                             f'{right_path} is {right.shape[1]}x{right.shape[0]}: the pair is '
                             'skipped')
        if self.size_hw is None:
            self.size_hw = left.shape[:2]
        elif left.shape[:2] != self.size_hw:
            raise ValueError(f'{left_path} is {left.shape[1]}x{left.shape[0]}, but the camera '
                             f'publishes {self.size_hw[1]}x{self.size_hw[0]} (the first pair\'s '
                             'size, in its camera_info): a replayed folder holds one size')
        return {'left': np.ascontiguousarray(left[:, :, ::-1]),
                'right': np.ascontiguousarray(right[:, :, ::-1])}


class SimStereoCameraNode(Node):
    def __init__(self, **kwargs):
        super().__init__('sim_stereo_camera_node', **kwargs)
        self._values = declare(self, PARAMS)
        v = self._values
        if v['source'] == 'folder':
            self._frames = FolderPairs(v['folder'])
            if self._frames.unmatched:
                self.get_logger().warning(
                    f'{len(self._frames.unmatched)} image(s) in {v["folder"]} without a partner '
                    f'are skipped, e.g. {self._frames.unmatched[:5]}')
            first = None
            for i in range(len(self._frames)):     # the first usable pair gives the size
                try:
                    first = self._frames.frame(i)['left']
                    break
                except PairSkipped as exc:
                    self.get_logger().error(f'pair {i} skipped: {exc}')
            if first is None:
                raise ValueError(f'source folder {v["folder"]!r}: no pair in it can be used')
            rig = SimRig(width=first.shape[1], height=first.shape[0], fx_px=v['fx_px'],
                         baseline_m=v['baseline_m'])
        else:
            rig = SimRig(width=v['width'], height=v['height'], fx_px=v['fx_px'],
                         baseline_m=v['baseline_m'])
            self._frames = SimStereoCamera(rig, seed=v['seed'], frames_per_scene=v['frames_per_scene'],
                                           motion_m=v['motion_m'])
        self.geometry = rig.geometry()
        self._pubs = {name: self.create_publisher(t, name, output_qos()) for name, t in (
            ('left/image_rect', Image), ('right/image_rect', Image),
            ('left/camera_info', CameraInfo), ('right/camera_info', CameraInfo),
            ('ground_truth/depth', Image))}
        self.frames_published = 0
        self.last_render_s = 0.0
        self._last_stamp_ns = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='sim_camera', daemon=True)
        self._thread.start()
        self.get_logger().info(f'sim stereo camera: {v["source"]}, {rig.width}x{rig.height}, '
                               f'fx={rig.fx_px} px, baseline={rig.baseline_m} m')
        warn_unknown_parameters(self)

    def _run(self):
        # This thread renders with torch: it gets torch's threads (core/threads.py), whatever
        # other nodes composed into the process (make demo) pinned for theirs.
        pin_torch_threads(0)
        index = 0
        next_time = time.monotonic()
        still_since = None      # when the sim clock was last seen not to have moved
        while not self._stop.is_set():
            max_frames = self._values['max_frames']
            if max_frames and self.frames_published >= max_frames:
                return
            if self._values['source'] == 'folder' and not self._values['loop'] \
                    and index >= len(self._frames):
                return
            if self._new_stamp() is None:
                # On sim time the clock has not moved since the last frame: no frame is rendered
                # or used up (a folder replay used up its pairs before the clock started). Right
                # after a render slower than the /clock's period that is only a moment, so
                # look often; once it has stood still a while (no /clock yet, or a paused one),
                # say so and look five times a second (at 0.05 s the wait alone took 1.4 % of a
                # core while a bag stood paused; at 0.2 s from the start, each slow frame lost
                # 0.2 s and the line was logged under a running /clock).
                now = time.monotonic()
                still_since = now if still_since is None else still_since
                standing = now - still_since >= CLOCK_STILL_S
                if standing:
                    self._waiting_for_clock()
                self._stop.wait(CLOCK_POLL_S if standing else CLOCK_MOMENT_S)
                continue
            if still_since is not None:
                # After a wait for the clock the period counts from this frame (from the
                # schedule before the wait, the next frame went out at once: two frames back
                # to back when sim time started or resumed).
                next_time = time.monotonic()
            still_since = None
            start = time.perf_counter()
            try:
                frame = self._frames.frame(index, cancelled=self._stop.is_set)
            except FrameCancelled:
                return
            except PairSkipped as exc:
                # Said once per pair (FolderPairs), so not throttled: a second damaged pair
                # within 5 s of the first was never named.
                self.get_logger().error(f'frame {index} skipped: {exc}')
                frame = None
            except Exception as exc:  # noqa: BLE001 - report and keep the camera alive
                self.get_logger().error(f'frame {index} failed: {exc}', throttle_duration_sec=5.0)
                frame = None    # and still wait for the next frame's time: no busy loop
            if frame is not None:
                self.last_render_s = time.perf_counter() - start
                if self._stop.is_set() or not self.context.ok():
                    return  # shutting down: the publishers may already be gone
                try:
                    self._publish(frame)
                except Exception as exc:  # noqa: BLE001 - a failed publish must not stop it
                    if self._stop.is_set() or not self.context.ok():
                        return
                    self.get_logger().error(f'frame {index} not published: {exc}',
                                            throttle_duration_sec=5.0)
            index += 1
            # Wait in short slices, re-reading rate_hz: a higher rate set during a long wait
            # (0.1 Hz is allowed) takes effect at once, not after the old period.
            last_time, done_time = next_time, time.monotonic()
            while not self._stop.is_set():
                # Behind schedule: the next frame now, no catching up.
                next_time = max(last_time + 1.0 / self.get_parameter('rate_hz').value, done_time)
                remaining = next_time - time.monotonic()
                if remaining <= 0:
                    break
                self._stop.wait(min(remaining, 0.1))

    def _new_stamp(self):
        """The clock's time now if a frame stamped with it has a stamp of its own, else None:
        on sim time a stamp of 0 (no /clock yet) or the previous frame's (a paused /clock)
        would give consecutive frames one stamp, which no synchroniser can pair (the nodes drop
        such sets). Frames are still paced on real time."""
        now = self.get_clock().now()
        return None if now.nanoseconds in (0, self._last_stamp_ns) else now

    def _waiting_for_clock(self) -> None:
        self.get_logger().info('waiting for the clock to advance (use_sim_time without a running '
                               '/clock): no frames meanwhile', throttle_duration_sec=5.0)

    def _publish(self, frame):
        now = self._new_stamp()
        if now is None:                     # it stood still while the frame was rendered
            self._waiting_for_clock()
            return
        self._last_stamp_ns = now.nanoseconds
        stamp = now.to_msg()
        left_header = Header(stamp=stamp, frame_id=self._values['frame_id'])
        right_header = Header(stamp=stamp, frame_id=self._values['right_frame_id'])
        left_info, right_info = conversions.stereo_camera_infos(self.geometry, left_header, right_header)
        self._pubs['left/camera_info'].publish(left_info)
        self._pubs['right/camera_info'].publish(right_info)
        self._pubs['right/image_rect'].publish(conversions.array_to_image(frame['right'], 'rgb8', right_header))
        self._pubs['left/image_rect'].publish(conversions.array_to_image(frame['left'], 'rgb8', left_header))
        if 'depth_m' in frame:
            self._pubs['ground_truth/depth'].publish(
                conversions.array_to_image(frame['depth_m'], '32FC1', left_header))
        self.frames_published += 1

    def destroy_node(self):
        self._stop.set()
        # The render stops at its next stage (SimStereoCamera.frame's `cancelled`): one raycast
        # or shading pass, well under a second even where three nodes share two cores (a whole
        # frame there took over 2 s, and the thread left inside torch aborted the process at
        # exit: SIGABRT under ros2 launch). Within launch's 5 s between SIGINT and SIGTERM, a
        # thread still busy after 4 s is stuck (say so) and is left behind (a daemon thread).
        self._thread.join(timeout=4.0)
        if self._thread.is_alive():
            self.get_logger().warning('the render thread did not stop within 4 s; exiting '
                                      'without it')
        super().destroy_node()


def main(args=None):
    run_node(SimStereoCameraNode, args)


if __name__ == '__main__':
    main()
