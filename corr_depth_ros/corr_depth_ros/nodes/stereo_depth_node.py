"""stereo_depth_node: rectified stereo pair -> disparity, depth (REP 118) and a point cloud.

Topics follow stereo_image_proc so the node drops into existing graphs:
  in:  left/image_rect, right/image_rect, left/camera_info, right/camera_info
  out: disparity (stereo_msgs/DisparityImage), depth (32FC1 metres, NaN invalid) + depth/camera_info,
       points2 (organised PointCloud2 x y z rgb), confidence (32FC1), disparity/color (rgb8, only
       computed while someone subscribes).
Every output carries the left image's header.
"""
import threading
from dataclasses import asdict

import numpy as np
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from stereo_msgs.msg import DisparityImage

from .. import conversions
from ..core.backends import available_backends, create_backend
from ..core.backends.learned import INPUT_SCALE_RANGE, PROBE_EVERY_RANGE, STREAM_PROBE_EVERY
from ..core.backends.onnx_backend import INPUT_SIZE_RANGE_PX
from ..core.backends.sgbm import SGBM_RANGES, JointSettingsError, SgbmParams
from ..core.colormap import colourise
from ..core.threads import limit_opencv_threads, pin_torch_threads
from ..core.stereo_pipeline import (CONFIDENCE_THRESHOLD_RANGE, MAX_DEPTH_RANGE_M,
                                    MAX_DISPARITY_RANGE_PX, confidence_unused_warning,
                                    depth_reach_warning, run_stereo, search_range_problem)
from ..sync import make_synchronizer
from .cloud_publisher import CloudPublisher
from .params import IMAGE_TRANSPORT, ParamSpec, declare, validate, warn_unknown_parameters
from .worker import (LatestFrameWorker, ThrottledReporter, image_inputs, output_qos, run_node,
                     start_sync_watchdog, stop_workers, sync_advice)

_SGBM_DEFAULTS = asdict(SgbmParams())
_SGBM_HELP = {
    'min_disparity': 'Smallest disparity searched, pixels.',
    'num_disparities': 'Disparity search range, pixels (multiple of 16).',
    'block_size': 'Matched block size, pixels (odd).',
    'p1': 'Smoothness penalty for +-1 disparity changes (0: 8*block_size^2).',
    'p2': 'Smoothness penalty for larger changes (0: 32*block_size^2; must exceed p1, both '
          'as used).',
    'disp12_max_diff': 'Left-right check tolerance, pixels (-1 disables).',
    'pre_filter_cap': 'Truncation of the pre-filtered image derivative.',
    'uniqueness_ratio': 'Margin (%) by which the best cost must beat the second best.',
    'speckle_window_size': 'Largest speckle region removed, pixels (0 disables).',
    'speckle_range': 'Disparity variation within a speckle region.',
    'mode': 'SGBM variant: sgbm (5 paths), sgbm_3way (fast), hh (8 paths, full), hh4.',
    'fill_holes': 'Fill invalid pixels along scanlines with the background disparity (dense output).',
}

PARAMS = [
    ParamSpec('backend', 'sgbm', 'Stereo backend (see README: trade-offs). learned or onnx fall '
              'back to sgbm when their weights/model cannot be loaded at start-up or fail while '
              'running; a runtime switch that cannot start is refused.',
              choices=('sgbm', 'learned', 'onnx')),
    ParamSpec('device', 'auto', 'Compute device for learned backends.', read_only=True,
              choices=('auto', 'cpu', 'cuda')),
    ParamSpec('threads', 0, 'CPU threads of the backend: torch\'s on the thread that runs the '
              'network (learned) and OpenCV\'s (sgbm, and image operations). 0: the '
              'libraries\' defaults, every core (OMP_NUM_THREADS caps torch\'s, '
              'OPENCV_FOR_THREADS_NUM OpenCV\'s); set it to leave cores to a robot\'s other '
              'nodes.', read_only=True, value_range=(0, 256)),
    IMAGE_TRANSPORT,
    ParamSpec('approximate_sync', False, 'Match left/right by nearest stamp within slop_s '
              'instead of exactly equal stamps.', read_only=True),
    ParamSpec('queue_size', 5, 'Messages kept per input while synchronising.', read_only=True,
              value_range=(1, 100)),
    ParamSpec('slop_s', 0.01, 'Stamp tolerance for approximate_sync, seconds.', read_only=True,
              value_range=(0.0, 1.0)),
    ParamSpec('max_disparity_px', 0, 'Largest disparity wanted, pixels (0: backend default). '
              'sgbm searches from sgbm.min_disparity (which must be lower) to it, or to one '
              'less where that range is a multiple of 16 (64 from 0: 0..63, as '
              'stereo_image_proc); learned and onnx search their trained range; all mark '
              'pixels beyond it invalid, also with hole filling (learned and onnx: no faster, '
              'within the trained range only).',
              value_range=MAX_DISPARITY_RANGE_PX),
    ParamSpec('confidence_threshold', 0.0, 'Pixels with confidence below this are invalid '
              '(NaN depth). 0 keeps every pixel the backend outputs; a backend without '
              'confidence (an ONNX model without that output) keeps them all, with a warning.',
              value_range=CONFIDENCE_THRESHOLD_RANGE),
    ParamSpec('max_depth_m', 0.0, 'Pixels farther than this are invalid (0: no limit), metres.',
              value_range=MAX_DEPTH_RANGE_M),
    ParamSpec('publish_points', True, 'Publish points2 (skip the cloud to save CPU). The cloud '
              'is built only while points2 has a subscriber (~6 ms of CPU a 741x500 frame).'),
    ParamSpec('learned.weights_path', '', 'learned: safetensors weights file (empty: the shipped '
              'stereo_gwc_small weights).', read_only=True),
    ParamSpec('learned.refine', True, 'learned: run the weights\' 1/4-resolution local refiner '
              'when they have one (the shipped ones do); false skips it: less accurate, '
              '~13 ms faster a 741x500 pair on a 2-core CPU.', read_only=True),
    ParamSpec('learned.input_scale', 0.0, 'learned: resize the pair by this factor before the '
              'network (disparity rescaled back). 0 = auto, per pair: a small probe pass '
              'measures the disparities and a near scene is shrunk (down to 0.375) until they '
              'fall within what the network was trained on. 1.0 = as trained; above 1 enlarges '
              '(finer on far scenes, slower by the square).',
              value_range=INPUT_SCALE_RANGE),
    ParamSpec('learned.probe_every', STREAM_PROBE_EVERY, 'learned, auto input scale: on a stream, probe only '
              'every N-th pair while each pair\'s own output calls for the scale it ran at '
              '(an output calling for another scale, a new image size or a new setting makes '
              'the next pair probe; a probe costs ~15 ms a 741x500 pair on a 2-core CPU). '
              '1 = probe every pair.',
              value_range=PROBE_EVERY_RANGE),
    ParamSpec('onnx.model_path', '', 'onnx: path of the ONNX stereo model (inputs left/right '
              '(1,3,H,W) float32, output disparity in pixels).', read_only=True),
    ParamSpec('onnx.input_width', 0, 'onnx: model input width, pixels (0: the model\'s fixed '
              'width if it has one, else the image width; images are resized and the disparity '
              'rescaled).', read_only=True, value_range=INPUT_SIZE_RANGE_PX),
    ParamSpec('onnx.input_height', 0, 'onnx: model input height, pixels (0: the model\'s fixed '
              'height if it has one, else the image height).', read_only=True,
              value_range=INPUT_SIZE_RANGE_PX),
    ParamSpec('onnx.mean', [0.0, 0.0, 0.0], 'onnx: per-channel mean subtracted from RGB in [0, 1].',
              read_only=True),
    ParamSpec('onnx.std', [1.0, 1.0, 1.0], 'onnx: per-channel std dividing RGB in [0, 1].',
              read_only=True),
    ParamSpec('onnx.input_names', ['left', 'right'], 'onnx: names of the left and right inputs.',
              read_only=True),
    ParamSpec('onnx.output_name', 'disparity', 'onnx: name of the disparity output.',
              read_only=True),
    ParamSpec('onnx.confidence_name', '', 'onnx: name of a confidence output in [0, 1] (\'\': '
              'one named confidence if the model has it, as export-onnx writes).',
              read_only=True),
] + [ParamSpec(f'sgbm.{k}', v, _SGBM_HELP[k], value_range=SGBM_RANGES.get(k),
               choices=('sgbm', 'hh', 'sgbm_3way', 'hh4') if k == 'mode' else None)
     for k, v in _SGBM_DEFAULTS.items()]


def _check_sgbm_settings(values: dict, backend: str) -> None:
    """ValueError with the reason unless the ``sgbm.*`` parameters in ``values`` hold together
    and, when ``backend`` is sgbm, max_disparity_px lies above sgbm.min_disparity (sgbm searches
    from one to the other)."""
    sgbm = SgbmParams(**{k.split('.', 1)[1]: v for k, v in values.items()
                         if k.startswith('sgbm.')})
    sgbm.validate()
    if backend == 'sgbm':
        sgbm.search_count(values['max_disparity_px'] or None)


class StereoDepthNode(Node):
    def __init__(self, **kwargs):
        super().__init__('stereo_depth_node', **kwargs)
        self._values = declare(self, PARAMS)
        self._errors = ThrottledReporter(self.get_logger())
        self._lock = threading.Lock()   # guards the backend and parameter values
        # fallback_to: the backend choice (_choice) a runtime fallback made
        self._local = threading.local()
        self._backend = None
        self._backend_name = None
        # Counts backend choices (start-up, switches, fallbacks), not the changed copies a
        # parameter change swaps in: "is the backend still the one this frame began with?"
        self._choice = 0
        self._far_limit_warned = None   # see _warn_far_limit
        # Settings valid one by one but not together are refused here with their reason (the
        # set-parameters callback checks them on changes; declare() checks each alone).
        _check_sgbm_settings(self._values, self._values['backend'])
        self._switch_backend(self._values['backend'])
        self._warn_beyond_trained_range()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self._backend_name != self._values['backend']:
            # A start-up fallback: the parameter names what runs, as after a runtime one.
            self.set_parameters([Parameter('backend', value=self._backend_name)])

        overrides = QoSOverridingOptions.with_default_policies()
        self._pub_disparity = self.create_publisher(DisparityImage, 'disparity', output_qos(),
                                                    qos_overriding_options=overrides)
        self._pub_depth = self.create_publisher(Image, 'depth', output_qos(),
                                                qos_overriding_options=overrides)
        self._pub_depth_info = self.create_publisher(CameraInfo, 'depth/camera_info', output_qos(),
                                                     qos_overriding_options=overrides)
        self._pub_points = self.create_publisher(PointCloud2, 'points2', output_qos(),
                                                 qos_overriding_options=overrides)
        self._pub_confidence = self.create_publisher(Image, 'confidence', output_qos(),
                                                     qos_overriding_options=overrides)
        self._pub_colour = self.create_publisher(Image, 'disparity/color', output_qos(),
                                                 qos_overriding_options=overrides)

        self._clouds = CloudPublisher(self._pub_points)
        limit_opencv_threads(self._values['threads'])
        self._worker = LatestFrameWorker(self._process, self._on_worker_error,
                                         name='stereo_depth', torch_threads=self._values['threads'],
                                         logger=self.get_logger())
        # Sensor-data (best-effort) inputs like stereo_image_proc; users override per topic with
        # qos_overrides./<ns>/left/image_rect.subscription.reliability etc.
        image_type, images = image_inputs(self, ['left/image_rect', 'right/image_rect'],
                                          self._values['image_transport'])
        topics = images + ['left/camera_info', 'right/camera_info']
        self._sync, self._subs, sync_impl = make_synchronizer(
            self, [image_type, image_type, CameraInfo, CameraInfo], topics,
            qos_profile_sensor_data, self._on_synchronised,
            approximate=self._values['approximate_sync'], queue_size=self._values['queue_size'],
            slop_s=self._values['slop_s'], qos_overriding_options=overrides,
            on_repeated_stamp=lambda text: self._errors.error('stamps', text))
        self.get_logger().info(
            f'stereo_depth_node ready: backend={self.backend_summary()}, sync={sync_impl} '
            f'({"approximate" if self._values["approximate_sync"] else "exact"})')
        self.synchronised_sets = 0
        self._sync_watchdog = start_sync_watchdog(
            self, self._sync, topics, sync_advice(self._values['approximate_sync']), self._errors,
            lambda: self.synchronised_sets, paired=[(0, 2), (1, 3)])
        warn_unknown_parameters(self)

    # --- parameters -------------------------------------------------------------------------
    def _switch_backend(self, name: str, fallback: bool = True) -> None:
        """Start backend ``name``. If it fails: at start-up (``fallback``) log why and use sgbm,
        so the node publishes anyway; at run time raise, and the current backend stays."""
        sgbm = {k.split('.', 1)[1]: v for k, v in self._values.items() if k.startswith('sgbm.')}
        if name == 'sgbm':
            backend = create_backend('sgbm', **sgbm)
        else:
            if name == 'learned':
                # Torch's threads go to the worker that runs the network (core/threads.py);
                # this thread only loads it.
                pin_torch_threads(1)
            try:
                backend = create_backend(name, device=self._values['device'],
                                         **self._backend_params(name))
            except Exception as exc:  # noqa: BLE001 - keep publishing with a backend that works
                if not fallback:
                    raise
                self.get_logger().error(f'backend {name!r} failed to start ({exc}); '
                                        'falling back to sgbm so the node keeps publishing')
                backend, name = create_backend('sgbm', **sgbm), 'sgbm'
        self._backend, self._backend_name = backend, name
        self._choice += 1

    def backend_summary(self) -> str:
        """The running backend and what a reader of the log needs to know of it: on which
        device, from which weights or model."""
        params = self._backend.get_params()
        keys = {'learned': ('weights_path', 'device', 'half', 'refine', 'input_scale'),
                'onnx': ('model_path', 'providers'),
                'sgbm': ('mode', 'num_disparities', 'block_size')}.get(self._backend_name, ())
        return f'{self._backend_name} (' + ', '.join(
            f'{k}={params[k]}' for k in keys if k in params) + ')'

    def _warn_beyond_trained_range(self) -> None:
        """After the backend changed under a set max_disparity_px (start-up, runtime switch)."""
        beyond = search_range_problem(self._backend, self._values['max_disparity_px'])
        if beyond:
            self.get_logger().warning(f'{beyond}: it searches that range only')

    def _backend_params(self, name: str) -> dict:
        """The ``<name>.*`` parameters as keyword arguments of that backend."""
        if name == 'learned':
            return {'weights_path': self._values['learned.weights_path'],
                    'refine': self._values['learned.refine'],
                    'input_scale': self._values['learned.input_scale'],
                    'probe_every': self._values['learned.probe_every']}
        if name == 'onnx':
            v = self._values
            return {'model_path': v['onnx.model_path'], 'input_width': v['onnx.input_width'],
                    'input_height': v['onnx.input_height'], 'mean': list(v['onnx.mean']),
                    'std': list(v['onnx.std']), 'input_names': list(v['onnx.input_names']),
                    'output_name': v['onnx.output_name'],
                    'confidence_name': v['onnx.confidence_name']}
        return {}

    def _on_set_parameters(self, params):
        result = validate(PARAMS, params)
        if not result.successful:
            return result
        ours = getattr(self._local, 'fallback_to', None)
        if ours is not None and self._choice != ours:
            result.successful, result.reason = False, 'a newer backend choice stands'
            return result
        changes = {p.name: p.value for p in params}
        sgbm_changes = {k.split('.', 1)[1]: v for k, v in changes.items() if k.startswith('sgbm.')}
        learned_changes = {k.split('.', 1)[1]: v for k, v in changes.items()
                           if k in ('learned.input_scale', 'learned.probe_every')}
        if 'backend' in changes and changes['backend'] not in available_backends():
            result.successful = False
            result.reason = (f'backend {changes["backend"]!r} is not available here; '
                             f'available: {available_backends()}')
            return result
        # A new input scale moves the learned range: the range set stays checked against it.
        scale_change = changes.get('learned.input_scale')
        beyond = search_range_problem(self._backend, 
            changes.get('max_disparity_px',
                        0 if scale_change is None else self._values['max_disparity_px']),
            scale_change)
        if beyond and changes.get('backend', self._backend_name) == self._backend_name:
            result.successful, result.reason = False, beyond
            return result
        backend_after = changes.get('backend', self._backend_name)
        # Only a request that touches them checks the sgbm settings (rclpy also runs this for
        # the QoS-override parameters it declares while the node starts).
        if sgbm_changes or (backend_after == 'sgbm' and
                            ('backend' in changes or 'max_disparity_px' in changes)):
            try:
                _check_sgbm_settings({**self._values, **changes}, backend_after)
            except JointSettingsError as exc:
                # ros2 param load sets a file's parameters one by one, each checked against
                # the values in use: a file consistent as a whole was refused part-way.
                result.successful = False
                result.reason = (f'{exc} (checked against the values in use: ros2 param load '
                                 'and ros2 param set change one parameter at a time, so order '
                                 'the changes so that each step holds, e.g. raise sgbm.p2 '
                                 'before sgbm.p1, or run the same ros2 param load again)')
                return result
            except ValueError as exc:
                result.successful = False
                result.reason = str(exc)
                return result
        with self._lock:
            previous = dict(self._values)
            self._values.update(changes)
            if 'backend' in changes and changes['backend'] != self._backend_name:
                try:
                    self._switch_backend(changes['backend'], fallback=False)
                except Exception as exc:  # noqa: BLE001 - refuse the change, keep running
                    self._values = previous
                    result.successful = False
                    result.reason = (f'backend {changes["backend"]!r} failed to start ({exc}); '
                                     f'still running {self._backend_name!r}')
                    return result
                self.get_logger().info(f'backend switched to {self.backend_summary()}')
                self._warn_beyond_trained_range()
            # A changed copy is swapped in, never the running backend changed in place: a
            # frame takes the backend together with self._values (under this lock), so it
            # cannot meet new backend settings with old node settings, or the other way round.
            elif sgbm_changes and self._backend_name == 'sgbm':
                self._backend = self._backend.with_params(**sgbm_changes)
            elif self._backend_name == 'learned' and learned_changes:
                # Its range follows the scale (checked above against max_disparity_px).
                self._backend = self._backend.with_params(**learned_changes)
        return result

    # --- data path ---------------------------------------------------------------------------
    def _on_synchronised(self, left_img, right_img, left_info, right_info):
        self.synchronised_sets += 1
        self._worker.submit((left_img, right_img, left_info, right_info))

    def _on_worker_error(self, exc: BaseException) -> None:
        self._errors.frame_dropped(exc, self.context)

    def _process(self, item) -> None:
        left_img, right_img, left_info, right_info = item
        with conversions.naming('left image'):
            left = conversions.any_image_to_rgb8(left_img)
        with conversions.naming('right image'):
            right = conversions.any_image_to_rgb8(right_img)
        if left.shape != right.shape:
            raise ValueError(f'image size mismatch: left is {left.shape[1]}x{left.shape[0]}, '
                             f'right is {right.shape[1]}x{right.shape[0]}')
        geometry = conversions.stereo_geometry_from_camera_info(left_info, right_info)
        with self._lock:
            values = dict(self._values)
            backend, choice = self._backend, self._choice
        options = dict(max_disparity_px=values['max_disparity_px'] or None,
                       confidence_threshold=values['confidence_threshold'],
                       max_depth_m=values['max_depth_m'], compute_points=False)
        try:
            out = run_stereo(left, right, geometry, backend, **options)
        except ValueError:
            raise           # this frame's input: dropped with its reason, the backend stays
        except Exception as exc:  # noqa: BLE001 - the model failed (CUDA error, out of memory, ...)
            if backend.name == 'sgbm':
                raise
            backend = self._fall_back_to_sgbm(backend, choice, exc)
            out = run_stereo(left, right, geometry, backend, **options)
        unused = confidence_unused_warning(out, backend.name, values['confidence_threshold'],
                                           'confidence_threshold')
        if unused:
            self._errors.warn('confidence', unused)
        self._warn_far_limit(geometry, out.farthest_depth_m, backend.name)
        header = left_img.header
        intrinsics = (geometry.fx, geometry.fy, geometry.cx_left, geometry.cy)
        with self._clouds.beside(out.depth_m, intrinsics, left, header,
                                 enabled=values['publish_points']):
            self._pub_disparity.publish(conversions.make_disparity_msg(
                out.message_disparity_px, geometry, header, out.min_disparity_px,
                out.max_disparity_px, out.valid_window,
                delta_d=getattr(backend, 'disparity_step_px', 1.0 / 16.0)))
            self._pub_depth.publish(conversions.array_to_image(out.depth_m, '32FC1', header))
            self._pub_depth_info.publish(conversions.depth_camera_info(left_info, header))
        if out.confidence is not None and self._pub_confidence.get_subscription_count():
            self._pub_confidence.publish(conversions.array_to_image(
                out.confidence.astype(np.float32), '32FC1', header))
        if self._pub_colour.get_subscription_count():
            # Over the disparity range the DisparityImage gives (as stereo_image_proc's
            # stereo_view colours it), so a colour means one disparity from frame to frame (each
            # frame's own percentiles made the colours flicker).
            self._pub_colour.publish(conversions.array_to_image(
                colourise(out.disparity_px, vmin=out.min_disparity_px - geometry.doffs_px,
                          vmax=out.max_disparity_px - geometry.doffs_px), 'rgb8', header))

    def _warn_far_limit(self, geometry, farthest_m: float, backend_name: str) -> None:
        """Once per calibration and backend range (core.stereo_pipeline.depth_reach_warning)."""
        key = (backend_name, geometry.doffs_px, farthest_m)
        if key == self._far_limit_warned:
            return
        self._far_limit_warned = key
        text = depth_reach_warning(geometry, farthest_m, backend_name, 'sgbm.min_disparity')
        if text:
            self.get_logger().warning(text)

    def _fall_back_to_sgbm(self, failed, choice: int, exc: BaseException):
        """A learned/onnx backend that fails while running: switch to sgbm (once), say why, and
        set the backend parameter to match, so the node keeps publishing. ``choice``: the
        backend choice the failed frame ran with (a changed copy swapped in since is the same
        choice)."""
        with self._lock:
            switched = self._choice == choice
            if switched:
                self._switch_backend('sgbm')
                self._values['backend'] = 'sgbm'
            backend, mine = self._backend, self._choice
        if switched:
            self._errors.error('fallback', f'backend {failed.name!r} failed while running '
                               f'({type(exc).__name__}: {exc}); switched to sgbm so the node '
                               'keeps publishing (set backend again to retry)')
            # Make the parameter say so; if a user switched again meanwhile, theirs stands
            # (the callback refuses this update when the backend is no longer ours).
            self._local.fallback_to = mine
            try:
                self.set_parameters([Parameter('backend', value='sgbm')])
            finally:
                self._local.fallback_to = None
        return backend

    def destroy_node(self):
        stop_workers(self.get_logger(), self._worker)
        self._clouds.shutdown()
        super().destroy_node()


def main(args=None):
    run_node(StereoDepthNode, args)


if __name__ == '__main__':
    main()
