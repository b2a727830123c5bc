"""mono_depth_node: one camera image -> depth (REP 118) and a point cloud, self-supervised model.

The network (Godard et al., CVPR 2017; core/mono/) predicts disparity from a single image.
  in:  image (rectified), camera_info (approximately synchronised)
  out: depth (32FC1, NaN invalid) + depth/camera_info, points2 (organised x y z rgb),
       depth/color (rgb8, only computed while someone subscribes).
Every output carries the input image's header.

``depth_mode``:
  * ``metric``: metres, ``Z = fx * B / d_px`` with the camera's fx and the *training rig's*
    baseline ``baseline_m`` (from the weights metadata unless set). Monocular scale is learned
    from the training scenes, so expect a global scale error on other scenes.
  * ``relative``: unitless depth / median depth of the frame (1.0 = median). NOT metres: the
    depth topic then breaks REP 118's unit on purpose, and points2 is in the same unit.
"""
import threading

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from .. import conversions
from ..core.colormap import colourise
from ..core.mono import BASELINE_RANGE_M, POST_PROCESS_DEFAULT
from ..core.mono.inference import (DEPTH_MODES, estimate_depth, input_size_from_header,
                                   load_mono_model, mask_beyond, resolve_baseline_m)
from ..core.stereo_pipeline import MAX_DEPTH_RANGE_M
from ..core.threads import pin_torch_threads
from ..core.training import resolve_device
from ..sync import make_synchronizer
from .cloud_publisher import CloudPublisher
from .params import IMAGE_TRANSPORT, ParamSpec, declare, validate, warn_unknown_parameters
from .worker import (LatestFrameWorker, ThrottledReporter, image_inputs, output_qos, run_node,
                     start_sync_watchdog, stop_workers, sync_advice)

PARAMS = [
    ParamSpec('depth_mode', 'metric', 'metric: metres with the training rig baseline; relative: '
              'unitless depth / frame median depth (not metres).', choices=DEPTH_MODES),
    ParamSpec('baseline_m', 0.0, 'Baseline of the rig the network was trained on, metres, for '
              'metric mode (0: from the weights metadata).', value_range=BASELINE_RANGE_M),
    ParamSpec('post_process', POST_PROCESS_DEFAULT, 'Average with the mirrored image\'s '
              'prediction (Godard 2017 "pp"): cleaner borders, twice the compute.'),
    ParamSpec('device', 'auto', 'Compute device.', read_only=True, choices=('auto', 'cpu', 'cuda')),
    ParamSpec('weights_path', '', 'Model weights (safetensors); empty: the shipped '
              'mono_lr_small.', read_only=True),
    ParamSpec('input_width', 0, 'Network input width, px, multiple of 32 (0: training size '
              'from the weights).', read_only=True, value_range=(0, 4096)),
    ParamSpec('input_height', 0, 'Network input height, px, multiple of 32 (0: training size '
              'from the weights).', read_only=True, value_range=(0, 4096)),
    ParamSpec('torch_threads', 0, 'torch CPU threads of the thread that runs the network (0: '
              'torch default); on a busy CPU 1 can be faster than 2.', read_only=True,
              value_range=(0, 256)),
    ParamSpec('max_depth_m', 0.0, 'Pixels farther than this are invalid (0: no limit), in the '
              'depth topic\'s unit.', value_range=MAX_DEPTH_RANGE_M),
    ParamSpec('publish_points', True, 'Publish points2 (skip the cloud to save CPU). The cloud '
              'is built only while points2 has a subscriber.'),
    IMAGE_TRANSPORT,
    ParamSpec('approximate_sync', True, 'Match image and camera_info by nearest stamp within '
              'slop_s (false: exactly equal stamps).', read_only=True),
    ParamSpec('queue_size', 5, 'Messages kept per input while synchronising.', read_only=True,
              value_range=(1, 100)),
    ParamSpec('slop_s', 0.01, 'Stamp tolerance for approximate_sync, seconds.', read_only=True,
              value_range=(0.0, 1.0)),
]


class MonoDepthNode(Node):
    def __init__(self, **kwargs):
        super().__init__('mono_depth_node', **kwargs)
        self._values = declare(self, PARAMS)
        self._errors = ThrottledReporter(self.get_logger())
        self._lock = threading.Lock()   # guards parameter values read by the worker
        self._device = resolve_device(self._values['device'])
        # Torch's threads go to the worker that runs the network (core/threads.py); this
        # thread only loads it.
        pin_torch_threads(1)
        # No fallback model exists: a missing or foreign weights file stops the node at once
        # with load_weights' reason, rather than publishing nothing forever.
        self._model, header = load_mono_model(self._values['weights_path'], self._device)
        self._header = header
        trained_hw = input_size_from_header(header)
        self._input_size = (self._values['input_height'] or trained_hw[0],
                            self._values['input_width'] or trained_hw[1])
        if self._input_size[0] % 32 or self._input_size[1] % 32:
            raise ValueError(f'input_width x input_height must be multiples of 32, got '
                             f'{self._input_size[1]}x{self._input_size[0]}')
        if self._values['depth_mode'] == 'metric':
            self._baseline_m(self._values)      # no baseline at all: say so now, not per frame
        self.add_on_set_parameters_callback(self._on_set_parameters)

        overrides = QoSOverridingOptions.with_default_policies()
        self._pub_depth = self.create_publisher(Image, 'depth', output_qos(),
                                                qos_overriding_options=overrides)
        self._pub_depth_info = self.create_publisher(CameraInfo, 'depth/camera_info', output_qos(),
                                                     qos_overriding_options=overrides)
        self._pub_points = self.create_publisher(PointCloud2, 'points2', output_qos(),
                                                 qos_overriding_options=overrides)
        self._pub_colour = self.create_publisher(Image, 'depth/color', output_qos(),
                                                 qos_overriding_options=overrides)

        self._clouds = CloudPublisher(self._pub_points)
        self._worker = LatestFrameWorker(self._process, self._on_worker_error, name='mono_depth',
                                         torch_threads=self._values['torch_threads'],
                                         logger=self.get_logger())
        # Sensor-data (best-effort) inputs like image_proc; override per topic with
        # qos_overrides./<ns>/image.subscription.reliability etc.
        image_type, (image_topic,) = image_inputs(self, ['image'], self._values['image_transport'])
        self._sync, self._subs, sync_impl = make_synchronizer(
            self, [image_type, CameraInfo], [image_topic, 'camera_info'], qos_profile_sensor_data,
            self._on_synchronised, approximate=self._values['approximate_sync'],
            queue_size=self._values['queue_size'], slop_s=self._values['slop_s'],
            qos_overriding_options=overrides,
            on_repeated_stamp=lambda text: self._errors.error('stamps', text))
        self.synchronised_sets = 0
        self._sync_watchdog = start_sync_watchdog(
            self, self._sync, [image_topic, 'camera_info'],
            sync_advice(self._values['approximate_sync']), self._errors,
            lambda: self.synchronised_sets, paired=[(0, 1)])
        self.get_logger().info(
            f'mono_depth_node ready: weights={self._values["weights_path"] or "shipped"} '
            f'(identity {header.get("identity")}), input {self._input_size[1]}x'
            f'{self._input_size[0]}, depth_mode={self._values["depth_mode"]}, '
            f'device={self._device}, sync={sync_impl}')
        if self._values['depth_mode'] == 'relative':
            self.get_logger().warning('depth_mode=relative: the depth topic is unitless '
                                      '(1.0 = median depth of each frame), not metres')
        warn_unknown_parameters(self)

    # --- parameters -------------------------------------------------------------------------
    def _on_set_parameters(self, params):
        result = validate(PARAMS, params)
        if not result.successful:
            return result
        changes = {p.name: p.value for p in params}
        with self._lock:
            merged = {**self._values, **changes}
            if merged['depth_mode'] == 'metric' and {'depth_mode', 'baseline_m'} & set(changes):
                try:
                    self._baseline_m(merged)
                except ValueError as exc:   # every frame would fail: refuse the change
                    result.successful, result.reason = False, str(exc)
                    return result
            self._values.update(changes)
        return result

    def _baseline_m(self, values) -> float:
        return resolve_baseline_m(values['baseline_m'], self._header,
                                  'the baseline_m parameter')

    # --- data path ---------------------------------------------------------------------------
    def _on_synchronised(self, image, info):
        self.synchronised_sets += 1
        self._worker.submit((image, info))

    def _on_worker_error(self, exc: BaseException) -> None:
        self._errors.frame_dropped(exc, self.context)

    def _process(self, item) -> None:
        image_msg, info = item
        rgb = conversions.any_image_to_rgb8(image_msg)
        fx, fy, cx, cy = conversions.camera_intrinsics(info, rgb.shape)
        with self._lock:
            values = dict(self._values)
        mode = values['depth_mode']
        depth, valid, _ = estimate_depth(
            self._model, rgb, fx, mode=mode,
            baseline_m=self._baseline_m(values) if mode == 'metric' else None,
            input_size=self._input_size, post_process=values['post_process'],
            device=self._device)
        mask_beyond(depth, values['max_depth_m'])
        header = image_msg.header
        with self._clouds.beside(depth, (fx, fy, cx, cy), rgb, header,
                                 enabled=values['publish_points']):
            self._pub_depth.publish(conversions.array_to_image(depth, '32FC1', header))
            self._pub_depth_info.publish(conversions.depth_camera_info(info, header))
            if self._pub_colour.get_subscription_count():
                # Inverse depth reads like disparity: near is red, far dark blue (turbo),
                # stretched over each frame's own range (2nd-98th percentiles): mono depth's
                # scale is the network's guess, so a fixed range would fit few scenes.
                self._pub_colour.publish(conversions.array_to_image(
                    colourise(1.0 / depth), 'rgb8', header))

    def destroy_node(self):
        stop_workers(self.get_logger(), self._worker)
        self._clouds.shutdown()
        super().destroy_node()


def main(args=None):
    run_node(MonoDepthNode, args)


if __name__ == '__main__':
    main()
