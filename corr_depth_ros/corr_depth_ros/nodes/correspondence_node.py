"""correspondence_node: find clicked reference pixels again in the live image (Dense Object Nets).

A reference pixel (clicked once on a reference image, or stored under a name) is found in the
newest live image as the pixel with the nearest descriptor (Florence, Manuelli, Tedrake, CoRL
2018); with a REP 118 depth image the match becomes a 3D point and a grasp pose whose z axis
approaches along minus the surface normal.

  in:  image (sensor_msgs/Image), and with use_depth: depth (32FC1 metres, registered to image)
       + camera_info, approximately synchronised;
       <image>_mouse_left (geometry_msgs/Point, pixels: rqt_image_view's click topic) adds the
       clicked pixel of the newest frame to the reference named by click_reference_id.
  srv: find_correspondence (corr_depth_interfaces/FindCorrespondence),
       set_reference (corr_depth_interfaces/SetReference); relative names, so they namespace.
  out: correspondence/heatmap (rgb8, exp(-d/sigma) of the first pixel, only while subscribed),
       correspondence/markers (MarkerArray), correspondence/point (PointStamped of the first found
       match).
Descriptors of the newest frame are computed on a worker as frames arrive, so a request only
costs the arg-min search. Every output carries the matched live image's header.
"""
import copy
import os
import threading
import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
from geometry_msgs.msg import Point, PointStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import ClockType
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data, qos_profile_services_default
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import MarkerArray

from corr_depth_interfaces.msg import Correspondence
from corr_depth_interfaces.srv import FindCorrespondence, SetReference

from .. import conversions
from ..core.colormap import colourise
from ..core.descriptors import HEATMAP_SIGMA, MATCH_THRESHOLD_RANGE, matching, query, references
from ..core.descriptors.network import DEFAULT_SCALES, check_scales, compute_descriptors
from ..core.memory import RecyclingPool
from ..core.threads import pin_torch_threads
from ..sync import make_synchronizer
from .params import IMAGE_TRANSPORT, ParamSpec, declare, validate, warn_unknown_parameters
from .worker import (LatestFrameWorker, ThrottledReporter, image_inputs, output_qos, run_node,
                     start_sync_watchdog, stop_workers)


def _scales_problem(value) -> Optional[str]:
    """declare()'s check of descriptor_scales: None, or why the list is refused (a node that
    started with the default instead would show a value it does not use)."""
    try:
        check_scales(value)
    except ValueError as exc:
        return str(exc)
    return None


DEFAULT_REFERENCES_DIR = '{ros_home}/corr_depth_ros/references/{node}'
# Where versions before {ros_home} and {node} kept every node's references.
EARLIER_REFERENCES_DIR = '~/.ros/corr_depth_ros/references'

PARAMS = [
    ParamSpec('weights', '', 'Descriptor weights (safetensors); empty: the shipped '
              'descriptors_don_small.', read_only=True),
    ParamSpec('device', 'auto', 'Compute device for the descriptor net.', read_only=True,
              choices=('auto', 'cpu', 'cuda')),
    ParamSpec('threads', 0, 'torch CPU threads of the thread that computes the descriptors '
              '(0: torch default); requests and heatmaps run on one.', read_only=True,
              value_range=(0, 256)),
    ParamSpec('descriptor_scales', list(DEFAULT_SCALES), 'Image scales the descriptors are computed at and '
              'concatenated (first 1.0; [1.0] is one pass, fastest). Stored references remember '
              'them: changing this needs new references.', read_only=True,
              validator=_scales_problem),
    IMAGE_TRANSPORT,
    ParamSpec('use_depth', True, 'Subscribe to depth + camera_info (synchronised with image) '
              'for 3D points and grasp poses; false: image only, points are NaN.', read_only=True),
    ParamSpec('queue_size', 30, 'Messages kept per input while synchronising. Depth from a '
              'stereo node arrives after the image it was computed from (same stamp), so the '
              'image queue must cover that latency: at least frame rate x depth latency.',
              read_only=True, value_range=(1, 100)),
    ParamSpec('slop_s', 0.01, 'Stamp tolerance between image, depth and camera_info, seconds. '
              'Keep it under half the frame period: with more, a lost image pairs the next '
              'image with the previous frame\'s depth, and every later frame after it.',
              read_only=True, value_range=(0.0, 1.0)),
    ParamSpec('references_dir', DEFAULT_REFERENCES_DIR, 'Folder where '
              'named references are stored and reloaded at start-up ("" keeps them in memory '
              'only). {node} stands for the node\'s fully qualified name (e.g. '
              'cam_a/correspondence_node), so instances keep their own; give several the same '
              'folder to share references. {ros_home} stands for $ROS_HOME, or ~/.ros where '
              'that is unset (as for ROS\'s logs).', read_only=True),
    ParamSpec('match_threshold', 0.6, 'A match is found only if its descriptor L2 distance is at '
              'most this (DON thresholds the distance the same way).',
              value_range=MATCH_THRESHOLD_RANGE),
    ParamSpec('heatmap_sigma', HEATMAP_SIGMA, 'Scale of the heatmap exp(-distance/sigma), descriptor '
              'units.', value_range=(0.001, 10.0)),
    ParamSpec('normal_radius_px', 5, 'Half-size of the depth window the surface normal is '
              'fitted to, pixels.', value_range=(1, 50)),
    ParamSpec('click_reference_id', 'clicked', 'Reference that clicks on the image extend.',
              validator=references.reference_id_problem),
    ParamSpec('max_pixels_per_request', 200, 'Most reference pixels one request may ask for.',
              value_range=(1, 10000)),
    ParamSpec('max_image_megapixels', 4.0, 'Largest live or reference image described, '
              'megapixels; larger ones are refused with a message (its descriptor image takes '
              'width x height x descriptor size x 4 bytes: 0.5 GB at 1920x1080, 3 GB at 12 MP). '
              'Downscale the camera (e.g. image_proc resize) or raise this. 0: no limit.',
              value_range=(0.0, 1000.0)),
    ParamSpec('max_frame_age_s', 0.0, 'Requests fail (success false, with the reason) when the '
              'newest usable image became live longer ago than this, seconds: the camera or '
              'the depth stopped. 0: no limit (every answer\'s message gives the age).',
              value_range=(0.0, 3600.0)),
]


# Requests waiting to be served, per service (see the constructor).
SERVICE_QUEUE_DEPTH = 100


@dataclass
class LiveFrame:
    header: object
    rgb: np.ndarray                 # (H,W,3) uint8
    descriptors: object             # torch (D,H,W)
    points_m: Optional[np.ndarray]  # (H,W,3) metres, NaN invalid; None without depth
    intrinsics: Optional[tuple]     # (fx, fy, cx, cy) of points_m; None without depth
    received_s: float               # time.monotonic() when it became live
    received_ros_ns: Optional[int]  # the node's clock then, on sim time with a /clock; else None
    index: int                      # frames_processed once it became live (1, 2, ...)
    _norms2: object = None          # torch (H*W,), see norms2()

    def norms2(self):
        """Squared descriptor norms of every pixel, computed by the first request on this frame
        and kept for the others (7-9 ms at 640x480, D=64). Not on the frame path: most frames
        are never queried. Two threads asking at once both compute the same values; harmless."""
        if self._norms2 is None:
            self._norms2 = matching.pixel_norms2(self.descriptors)
        return self._norms2


def ros_home() -> str:
    """ROS's per-user folder, as rcl finds it for its logs: $ROS_HOME, else ~/.ros."""
    return os.path.expanduser(os.environ.get('ROS_HOME') or '~/.ros')


def references_folder(setting: str, node_name: str) -> str:
    """references_dir with {ros_home} (:func:`ros_home`) and ~ expanded and {node} replaced by
    the node's fully qualified name (without its leading slash): one folder per instance unless
    the setting names a shared one. Two nodes writing one folder replaced each other's
    references (and clicks) on disk."""
    return os.path.expanduser(setting.replace('{ros_home}', ros_home())
                              .replace('{node}', node_name.lstrip('/')))


def earlier_references(setting: str, directory: str, node_name: str = '') -> List[str]:
    """Reference files where earlier versions kept them, so that after an upgrade they would
    seem lost: :data:`EARLIER_REFERENCES_DIR` itself (before {node}: every node's), and this
    node's folder under it (before {ros_home}: ~/.ros whatever ROS_HOME said) when that is not
    ``directory``. Looked for with the default setting only (a folder of the user's own is
    theirs)."""
    if setting != DEFAULT_REFERENCES_DIR or not directory:
        return []
    shared = os.path.expanduser(EARLIER_REFERENCES_DIR)
    folders = [shared]
    if node_name:
        folders.append(os.path.join(shared, node_name.lstrip('/')))
    found = []
    for folder in folders:
        # realpath: ~/.ros may be a link to where ROS_HOME points (a container's volume).
        if os.path.realpath(folder) == os.path.realpath(directory):
            continue
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        found += [os.path.join(folder, n) for n in names if n.endswith('.safetensors')
                  and os.path.isfile(os.path.join(folder, n))]
    return found


def _image_given(image_msg) -> bool:
    """Whether a request carries an inline image (its size or data set); one given but unusable
    (e.g. a size without data) is refused by _reference_from_image with the reason."""
    return image_msg.height > 0 or image_msg.width > 0 or len(image_msg.data) > 0


class RequestError(ValueError):
    """A bad request: the text goes back to the caller in ``message``."""


class CorrespondenceNode(Node):
    def __init__(self, **kwargs):
        super().__init__('correspondence_node', **kwargs)
        self._values = declare(self, PARAMS)
        self.add_on_set_parameters_callback(lambda params: self._on_set_parameters(params))
        self._errors = ThrottledReporter(self.get_logger())
        self._load_model()

        directory = references_folder(self._values['references_dir'],
                                      self.get_fully_qualified_name())
        self._store_lock = threading.Lock()
        try:
            self._store = self._reference_store(directory)
        except references.ReferenceError as exc:
            if self._values['references_dir'] != DEFAULT_REFERENCES_DIR:
                raise                 # a folder the user chose: theirs to fix
            # The default under a read-only home (a container, a service user) must not keep
            # the node from serving: references then live as long as the node.
            self.get_logger().warning(f'{exc}; references are kept in memory only')
            directory = ''
            self._store = self._reference_store(directory)
        for problem in self._store.load_errors:
            self.get_logger().warning(f'skipped unreadable reference file {problem}')
        earlier = earlier_references(self._values['references_dir'], directory,
                                     self.get_fully_qualified_name())
        if earlier:
            folders = ', '.join(dict.fromkeys(os.path.dirname(path) for path in earlier))
            self.get_logger().warning(
                f'{len(earlier)} reference file(s) lie in {folders}, where earlier versions '
                f'kept them (before references_dir\'s {{node}}, every node\'s; before '
                f'{{ros_home}}, under ~/.ros whatever ROS_HOME said): move those of this node '
                f'into {directory}')
        foreign = self._store.foreign()
        if foreign:
            self.get_logger().warning(
                f'{len(foreign)} stored reference(s) cannot be used by this node: '
                + '; '.join(f'{k} ({v})' for k, v in sorted(foreign.items()))
                + '; re-create them with set_reference (overwrite=true)')
        if not self._store.writable:
            self.get_logger().warning(f'references_dir {directory} is not writable: its '
                                      f'{len(self._store.ids())} references serve requests, '
                                      'but new ones (set_reference, clicks) cannot be stored')

        self._frame_lock = threading.Lock()
        self._frame: Optional[LiveFrame] = None
        self._buffers = RecyclingPool()
        self.frames_processed = 0
        self._synchronised_sets = 0

        self._pub_heatmap = self.create_publisher(Image, 'correspondence/heatmap', output_qos())
        self._pub_markers = self.create_publisher(MarkerArray, 'correspondence/markers',
                                                  output_qos())
        self._pub_point = self.create_publisher(PointStamped, 'correspondence/point', output_qos())
        # Heatmaps are drawn off the service thread: a request must not wait for a colour map.
        self._heatmap_worker = LatestFrameWorker(self._publish_heatmap, self._on_worker_error,
                                                 name='correspondence_heatmap', torch_threads=1)
        # (frames_processed then, text) of the newest dropped frame: "dropped since frame n"
        # by count, which no clock (sim time, a paused /clock, none yet) can confuse.
        self._last_frame_error = None
        self._worker = LatestFrameWorker(self._process, self._on_frame_error,
                                         name='correspondence_descriptors',
                                         torch_threads=self._values['threads'],
                                         logger=self.get_logger())

        # Frames, finds and references (set_reference, clicks) in separate callback groups:
        # under a multi-threaded executor (the node composed into one) a frame's messages are
        # then taken while a request is served, and a set_reference is not starved by a stream
        # of finds (sharing one group, it waited 30 s: rclpy's executor offers the services in
        # creation order, and find, first, kept the group busy). The store and the frame are
        # guarded by locks; the network keeps no state. main() spins one thread, which
        # measured better here (see main).
        frames_group = MutuallyExclusiveCallbackGroup()
        requests_group = MutuallyExclusiveCallbackGroup()
        references_group = MutuallyExclusiveCallbackGroup()
        overrides = QoSOverridingOptions.with_default_policies()
        self._image_topic = self.resolve_topic_name('image')
        image_type, (image_input,) = image_inputs(self, ['image'], self._values['image_transport'])
        if self._values['use_depth']:
            # Depth stays raw: image_transport's compressed is for 8-bit colour images.
            self._sync, self._subs, sync_impl = make_synchronizer(
                self, [image_type, Image, CameraInfo], [image_input, 'depth', 'camera_info'],
                qos_profile_sensor_data, self._on_frame, approximate=True,
                queue_size=self._values['queue_size'], slop_s=self._values['slop_s'],
                qos_overriding_options=overrides, callback_group=frames_group,
                on_repeated_stamp=lambda text: self._errors.error('stamps', text))
            self._sync_watchdog = start_sync_watchdog(
                self, self._sync, [image_input, 'depth', 'camera_info'],
                'depth computed from these images arrives after them: raise queue_size to '
                'cover that latency (frame rate x latency), or slop_s', self._errors,
                lambda: self._synchronised_sets,
                silent_advice=dict.fromkeys((1, 2), 'without a depth source, set use_depth '
                                            'false to match pixels without 3D points'),
                paired=[(0, 2)])
        else:
            self._sync_watchdog = None
            sync_impl = 'none'
            self._subs = [self.create_subscription(
                image_type, image_input, lambda msg: self._on_frame(msg, None, None),
                copy.copy(qos_profile_sensor_data), qos_overriding_options=overrides,
                callback_group=frames_group)]
        # rqt_image_view publishes clicks on "<displayed image topic>_mouse_left".
        self._click_topic = self._image_topic + '_mouse_left'
        self._click_sub = self.create_subscription(Point, self._click_topic, self._on_click, 10,
                                                   callback_group=references_group)
        # The services' default QoS keeps the newest 10 requests: callers beyond that, arriving
        # while requests are served (~30 ms each), were dropped unanswered. A deeper queue
        # answers them all, later.
        services_qos = copy.copy(qos_profile_services_default)
        services_qos.depth = SERVICE_QUEUE_DEPTH
        self._srv_find = self.create_service(FindCorrespondence, 'find_correspondence',
                                             self._on_find, qos_profile=services_qos,
                                             callback_group=requests_group)
        self._srv_set = self.create_service(SetReference, 'set_reference', self._on_set_reference,
                                            qos_profile=services_qos,
                                            callback_group=references_group)
        self.get_logger().info(
            f'correspondence_node ready: network {self._network_id} '
            f'(weights={self._values["weights"] or "shipped"}, device={self._device}, '
            f'D={self._model.descriptor_dim} at scales {list(self._scales)}), '
            f'references in {self._store.directory or "memory only"}, '
            f'{len(self._store.ids())} stored references, '
            f'depth={"on" if self._values["use_depth"] else "off"} (sync={sync_impl}), '
            f'clicks on {self._click_topic}')
        warn_unknown_parameters(self)

    # --- set-up ------------------------------------------------------------------------------
    def _reference_store(self, directory: str) -> references.ReferenceStore:
        return references.ReferenceStore(
            directory, self._network_id, descriptor_size=self._descriptor_size,
            weights_id=self._weights_id, scales=self._scales)

    def _load_model(self):
        from ..core.descriptors.network import load_descriptor_net
        from ..core.training import resolve_device
        # Torch's threads go to the worker that computes the descriptors (core/threads.py);
        # this thread loads the network and serves requests (matching is mostly numpy: a
        # 10-pixel request took 26.5 ms on one thread, 23.7 on two, at 640x480).
        pin_torch_threads(1)
        self._device = resolve_device(self._values['device'])
        self._model, header = load_descriptor_net(self._values['weights'] or None, self._device)
        self._scales = check_scales(self._values['descriptor_scales'])   # declare() checked
        self._descriptor_size = self._model.descriptor_dim * len(self._scales)
        # The header's identity is of the weights alone; references also carry the scales.
        self._weights_id = references.network_identity(self._model)
        if header.get('identity') not in (None, self._weights_id):
            self.get_logger().warning('weights identity in the file header differs from the '
                                      'loaded tensors; using the recomputed one')
        self._network_id = references.network_identity(self._model, self._scales)

    def _on_set_parameters(self, params):
        result = validate(PARAMS, params)
        if result.successful:
            self._values.update({p.name: p.value for p in params})
        return result

    def _sim_now_ns(self) -> Optional[int]:
        """The node's clock on sim time once a /clock has come (use_sim_time), else None."""
        clock = self.get_clock()
        if clock.clock_type == ClockType.ROS_TIME and clock.ros_time_is_active:
            now = clock.now().nanoseconds
            return now if now > 0 else None
        return None

    def _age_s(self, frame: LiveFrame) -> float:
        """How long ``frame`` has been live: on the node's clock on sim time (a paused bag
        does not age its frames, one played at 10x ages them ten times as fast), else on the
        monotonic clock, also while sim time has no /clock yet (a bag played without --clock:
        frames still age, and max_frame_age_s still trips)."""
        now = self._sim_now_ns()
        if now is not None and frame.received_ros_ns is not None \
                and now >= frame.received_ros_ns:       # not after a bag looped back
            return (now - frame.received_ros_ns) / 1e9
        return time.monotonic() - frame.received_s

    def _describe(self, rgb: np.ndarray, pool=None):
        return compute_descriptors(self._model, rgb, self._device, self._scales, pool=pool)

    # --- live frames -------------------------------------------------------------------------
    def _on_frame(self, image_msg, depth_msg, info_msg):
        self._synchronised_sets += 1
        self._worker.submit((image_msg, depth_msg, info_msg))

    def _check_image_size(self, width: int, height: int, what: str) -> Optional[str]:
        """None, or why a ``what`` of this size is not described: a descriptor image of a
        12-megapixel frame alone takes 3 GB, and the network's activations more."""
        limit = self._values['max_image_megapixels']
        megapixels = width * height / 1e6
        if limit <= 0 or megapixels <= limit:
            return None
        size_mb = width * height * self._descriptor_size * 4 / 1e6
        return (f'{what} is {width}x{height} ({megapixels:.1f} MP), more than '
                f'max_image_megapixels = {limit:g} (its descriptor image would take '
                f'{size_mb:.0f} MB): downscale it (e.g. image_proc\'s resize node) or raise '
                'the parameter')

    def _process(self, item) -> None:
        image_msg, depth_msg, info_msg = item
        rgb = conversions.any_image_to_rgb8(image_msg)
        # After conversion: a compressed image's size is known only once it is decoded.
        too_big = self._check_image_size(rgb.shape[1], rgb.shape[0], 'the live image')
        if too_big:
            raise ValueError(too_big)
        points_m = intrinsics = None
        if depth_msg is not None:
            points_m, intrinsics = conversions.registered_points(depth_msg, info_msg, rgb.shape)
        # The descriptor image (78 MB at 640x480, two scales) is written into a buffer of a
        # frame nobody uses any more (RecyclingPool: the previous frame's, once it is replaced
        # and its last request is served), not into fresh memory: ~10-20 ms a frame less.
        descriptors = self._describe(rgb, pool=self._buffers)
        frame = LiveFrame(image_msg.header, rgb, descriptors, points_m, intrinsics,
                          time.monotonic(), self._sim_now_ns(), self.frames_processed + 1)
        with self._frame_lock:
            self._frame = frame
        self.frames_processed += 1

    def _on_worker_error(self, exc: BaseException) -> None:
        self._errors.frame_dropped(exc, self.context)

    def _on_frame_error(self, exc: BaseException) -> None:
        # Kept for the service's answers: a caller should learn why frames are not coming
        # through, not only whoever reads this node's log.
        self._last_frame_error = (self.frames_processed, str(exc))
        self._on_worker_error(exc)

    def _why_no_newer_frame(self, frame) -> str:
        """'' or why no newer frame replaced ``frame``, where the node knows: frames dropped
        since, or sets that no longer pair (e.g. the depth stopped)."""
        return (self._frame_error_note(frame.index)
                or (self._sync_watchdog and self._sync_watchdog.problem) or '')

    def _frame_error_note(self, since_index: int) -> str:
        """'' or why the frames since live frame ``since_index`` (0: since start) were
        dropped."""
        error = self._last_frame_error
        if error is None or error[0] < since_index:
            return ''
        return f'the newest frames are being dropped ({error[1]})'

    def _live(self) -> LiveFrame:
        with self._frame_lock:
            frame = self._frame
        if frame is None:
            dropped = self._frame_error_note(0)
            if dropped:
                raise RequestError(f'no live image yet: {dropped}')
            problem = self._sync_watchdog and self._sync_watchdog.problem
            if problem:
                raise RequestError(f'no live image yet: {problem}')
            needs = f'{self._image_topic}' + (', depth and camera_info (synchronised)'
                                               if self._values['use_depth'] else '')
            raise RequestError(f'no live image yet: waiting for {needs}; check the topics are '
                               'published and remapped to this node')
        limit = self._values['max_frame_age_s']
        age_s = self._age_s(frame)
        if limit > 0 and age_s > limit:
            cause = self._why_no_newer_frame(frame) or 'no newer image has come in'
            raise RequestError(f'the newest usable image became live {age_s:.1f} s ago, more '
                               f'than max_frame_age_s = {limit:g}: {cause}')
        return frame

    # --- requests ----------------------------------------------------------------------------
    def _reference_from_image(self, image_msg, pixels_xy):
        if image_msg.height == 0 or image_msg.width == 0 or len(image_msg.data) == 0:
            raise RequestError('reference_image is empty: send an image, or give a stored '
                               'reference_id')
        try:
            rgb = conversions.image_to_rgb8(image_msg)
        except conversions.ConversionError as exc:
            raise RequestError(f'reference_image: {exc}') from exc
        # Bad pixels are refused before the descriptor pass (~0.1 s and 78 MB at 640x480),
        # which would hold up the frames meanwhile.
        self._check_pixels(pixels_xy, rgb.shape[:2], 'reference_image')
        too_big = self._check_image_size(rgb.shape[1], rgb.shape[0], 'reference_image')
        if too_big:
            raise RequestError(too_big)
        descriptors = self._describe(rgb)
        return rgb, matching.descriptors_at(descriptors, pixels_xy).cpu().numpy()

    def _check_pixel_count(self, count: int, what: str) -> None:
        limit = self._values['max_pixels_per_request']
        if count > limit:
            raise RequestError(f'{what}; the limit is max_pixels_per_request = {limit} (ask for '
                               'fewer pixels, or raise the parameter)')

    def _requested_pixels(self, request) -> np.ndarray:
        """The request's reference_pixels as (N, 2) (x, y), counted against the limit before
        they are converted or looked up: 100,000 of them took seconds of the request thread
        before being refused."""
        count = len(request.reference_pixels)
        self._check_pixel_count(count, f'{count} reference_pixels requested')
        return conversions.pixels_from_points(request.reference_pixels)

    def _check_pixels(self, pixels_xy, size_hw, what):
        if len(pixels_xy) == 0:
            raise RequestError('reference_pixels is empty: give at least one (x = column, '
                               'y = row) pixel')
        if not np.all(np.isfinite(pixels_xy)):
            raise RequestError('the click is at NaN or inf' if what == 'click' else
                               'reference_pixels contain NaN or inf')
        try:
            matching.check_pixels_inside(pixels_xy, *size_hw)
        except ValueError as exc:
            raise RequestError(f'{what}: {exc}') from exc

    def _descriptors_at(self, descriptors, pixels_xy, what):
        self._check_pixels(pixels_xy, descriptors.shape[1:], what)
        return matching.descriptors_at(descriptors, pixels_xy).cpu().numpy()

    def _on_find(self, request, response):
        try:
            self._find(request, response)
            response.success = True
        except (RequestError, references.ReferenceError) as exc:
            response.success = False
            response.message = str(exc)
            response.matches = []
        except Exception as exc:  # noqa: BLE001 - a bug must not take the service down
            response.success = False
            response.message = f'internal error: {type(exc).__name__}: {exc}'
            self._errors.error('find', f'find_correspondence failed: {exc!r}')
        return response

    def _find(self, request, response):
        import torch
        frame = self._live()
        pixels_xy = self._requested_pixels(request)
        if request.reference_id:
            if _image_given(request.reference_image):
                raise RequestError('give either reference_id (a stored reference) or '
                                   'reference_image (inline), not both')
            with self._store_lock:
                pixels_xy, ref_desc = references.lookup(self._store, request.reference_id,
                                                        pixels_xy)
            # An empty reference_pixels asks for every stored pixel (clicks add up).
            self._check_pixel_count(len(pixels_xy), f'{len(pixels_xy)} pixels of reference '
                                    f'{request.reference_id!r} requested')
            source = f'reference {request.reference_id!r}'
        else:
            if not _image_given(request.reference_image):
                raise RequestError('empty request: set reference_id (a stored reference) or '
                                   'reference_image + reference_pixels')
            _, ref_desc = self._reference_from_image(request.reference_image, pixels_xy)
            source = 'the inline reference image'
        values = dict(self._values)
        matches = query.match_references(
            ref_desc, frame.descriptors, frame.points_m, intrinsics=frame.intrinsics,
            match_threshold=values['match_threshold'],
            normal_radius_px=values['normal_radius_px'],
            no_depth_reason='no depth: use_depth is false', frame_norms2=frame.norms2())
        header = frame.header
        response.image_header = header
        for pixel, match in zip(pixels_xy, matches):
            response.matches.append(Correspondence(
                reference_pixel=conversions.pixel_point(pixel),
                match_pixel=conversions.pixel_point(match.match_px),
                descriptor_distance=match.distance, confidence=match.confidence,
                found=match.found, reason=match.reason,
                point=conversions.make_point_stamped(match.position_m, header),
                grasp_pose=conversions.make_pose_stamped(match.position_m,
                                                         match.quaternion_xyzw, header)))
        positions = [m.position_m for m in matches]
        quats = [m.quaternion_xyzw for m in matches]
        founds = [m.found for m in matches]
        count = sum(founds)
        response.message = (f'{count}/{len(founds)} found for {source} in the image of '
                            f'{header.stamp.sec}.{header.stamp.nanosec:09d} ({header.frame_id}), '
                            f'live since {self._age_s(frame):.2f} s')
        # A planner can also set max_frame_age_s.
        stale = self._why_no_newer_frame(frame)
        if stale:
            response.message += f'; note: that image may be old, {stale}'

        # Outputs for people and RViz (after the work for the caller is done).
        # The first found match (so it has a 3D point: a NaN one would be refused by RViz): a
        # point on this topic, which has no found flag, is one to act on, as process-bag
        # writes only found matches' poses. The markers show every match, coloured by found.
        if any(founds):
            self._pub_point.publish(response.matches[founds.index(True)].point)
        self._pub_markers.publish(conversions.make_grasp_markers(positions, quats, founds, header))
        if self._pub_heatmap.get_subscription_count():
            self._heatmap_worker.submit((torch.from_numpy(np.ascontiguousarray(ref_desc[0])),
                                         frame, values['heatmap_sigma']))

    def _publish_heatmap(self, item) -> None:
        reference, frame, sigma = item
        heat = matching.descriptor_heatmap(reference, frame.descriptors, sigma, frame.norms2())
        rgb = colourise(heat, vmin=0.0, vmax=1.0)
        self._pub_heatmap.publish(conversions.array_to_image(rgb, 'rgb8', frame.header))

    def _on_set_reference(self, request, response):
        try:
            response.message = self._set_reference(request)
            response.success = True
        except (RequestError, references.ReferenceError) as exc:
            response.success = False
            response.message = str(exc)
        except Exception as exc:  # noqa: BLE001
            response.success = False
            response.message = f'internal error: {type(exc).__name__}: {exc}'
            self._errors.error('set', f'set_reference failed: {exc!r}')
        return response

    def _set_reference(self, request) -> str:
        references.validate_reference_id(request.reference_id)
        pixels_xy = self._requested_pixels(request)
        if _image_given(request.reference_image):
            rgb, desc = self._reference_from_image(request.reference_image, pixels_xy)
            where = 'the given image'
        else:
            frame = self._live()
            rgb = frame.rgb
            desc = self._descriptors_at(frame.descriptors, pixels_xy, 'newest live image')
            where = 'the newest live image'
        ref = self._new_reference(request.reference_id, pixels_xy, desc, rgb)
        with self._store_lock:
            self._store.put(ref, overwrite=request.overwrite)
        return f'stored reference {request.reference_id!r}: {len(pixels_xy)} pixels from {where}'

    def _on_click(self, msg: Point) -> None:
        reference_id = self._values['click_reference_id']
        try:
            frame = self._live()
            pixel = conversions.pixels_from_points([msg])
            # rqt_image_view rounds x / widget width * image width: a click on the last half
            # pixel gives x = W (or y = H). Such clicks mean the last pixel; requests stay strict.
            height, width = frame.rgb.shape[:2]
            pixel[0] = np.where(pixel[0] == (width, height), (width - 1, height - 1), pixel[0])
            desc = self._descriptors_at(frame.descriptors, pixel, 'click')
            with self._store_lock:
                if self._store.known(reference_id):
                    # get() refuses one another network made, rather than a click replacing
                    # its pixels on disk.
                    ref = self._store.get(reference_id)
                    # A double click (or the same pixel again) adds nothing: stored pixels are
                    # picked by position (within 0.5 px), and a copy would only repeat a match.
                    if np.hypot(*(ref.pixels_xy - pixel).T).min() <= 0.5:
                        self.get_logger().info(f'click ({msg.x:g}, {msg.y:g}) is already in '
                                               f'reference {reference_id!r}')
                        return
                    # Beyond the limit, a find of all its pixels would be refused.
                    self._check_pixel_count(len(ref.pixels_xy) + 1,
                                            f'reference {reference_id!r} would have '
                                            f'{len(ref.pixels_xy) + 1} pixels')
                    ref = ref.extended(pixel, desc)
                else:
                    ref = self._new_reference(reference_id, pixel, desc, frame.rgb)
                self._store.put(ref, overwrite=True)
            self.get_logger().info(f'click ({msg.x:g}, {msg.y:g}) added to reference '
                                   f'{reference_id!r} ({len(ref.pixels_xy)} pixels)')
        except (RequestError, references.ReferenceError) as exc:
            self._errors.error('click', f'click ignored: {exc}')
        except Exception as exc:  # noqa: BLE001 - e.g. references_dir not writable: keep running
            self._errors.error('click', f'click not stored: {type(exc).__name__}: {exc}')

    def _new_reference(self, reference_id, pixels_xy, descriptors, rgb):
        return references.Reference(reference_id, pixels_xy, descriptors, self._network_id,
                                    rgb.shape[:2], references.make_thumbnail(rgb),
                                    weights_id=self._weights_id, scales=self._scales)

    def reference_ids(self):
        with self._store_lock:
            return self._store.ids()

    def destroy_node(self):
        stop_workers(self.get_logger(), self._worker, self._heatmap_worker)
        super().destroy_node()


def main(args=None):
    # One executor thread: frame callbacks only hand messages to the descriptor worker, so a
    # frame waits at most for one request (~30 ms). rclpy's MultiThreadedExecutor (2 threads)
    # measured worse on the 2-core CPU (scripts/bench_correspondence_node.py, polling at
    # 10 Hz): new frames queryable after 0.36-0.59 s median, up to 2.7 s, against 0.18-0.19 s,
    # up to 0.35 s, single-threaded; requests 25-29 against 29-34 ms median.
    run_node(CorrespondenceNode, args)


if __name__ == '__main__':
    main()
