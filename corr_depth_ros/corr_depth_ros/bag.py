"""Run our pipelines over a recorded rosbag2 MCAP file, without a ROS runtime (no DDS, no rclpy
context): `corr_depth process-bag IN.mcap OUT.mcap --pipeline stereo ...`.

Reading and writing use the `mcap` / `mcap-ros2-support` libraries; the per-frame work is the
same conversions and core code the nodes run (`conversions`, `core.stereo_pipeline`). The output
bag holds standard ROS 2 messages (stereo_msgs/DisparityImage, sensor_msgs/Image,
sensor_msgs/PointCloud2, sensor_msgs/CameraInfo) that `ros2 bag play` and Foxglove read.
Message definitions for the output schemas come from the installed interface packages
(share/<package>/msg/*.msg, found through the ament index or AMENT_PREFIX_PATH).
"""
import os
import re
from typing import Dict, Iterable, List, Optional

_SEPARATOR = '=' * 80
_PRIMITIVES = {'bool', 'byte', 'char', 'float32', 'float64', 'int8', 'uint8', 'int16', 'uint16',
               'int32', 'uint32', 'int64', 'uint64', 'string', 'wstring'}


def _msg_file(package: str, name: str) -> str:
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    try:
        from ament_index_python.packages import get_package_share_directory
        prefixes.insert(0, os.path.dirname(os.path.dirname(get_package_share_directory(package))))
    except Exception:  # noqa: BLE001 - fall back to AMENT_PREFIX_PATH
        pass
    for prefix in prefixes:
        path = os.path.join(prefix, 'share', package, 'msg', f'{name}.msg')
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f'no definition of {package}/msg/{name} under AMENT_PREFIX_PATH; '
                            'source a ROS 2 install (or scripts/env.sh)')


def message_definition(datatype: str) -> str:
    """The concatenated ros2msg definition (rosbag2's MCAP schema) of e.g. 'sensor_msgs/msg/Image'."""
    package, _, name = datatype.split('/')
    order: List[str] = []
    texts: Dict[str, str] = {}

    def visit(pkg: str, msg: str):
        key = f'{pkg}/{msg}'
        if key in texts:
            return
        with open(_msg_file(pkg, msg), encoding='utf-8') as f:
            text = f.read()
        texts[key] = text
        order.append(key)
        for line in text.splitlines():
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            # 'Type name', 'Type[] name', 'Type[<=N] name', 'string<=N name'; constants are primitive.
            field_type = re.sub(r'\[.*\]$', '', line.split()[0]).split('<=')[0]
            if field_type in _PRIMITIVES:
                continue
            if '/' in field_type:
                dep_pkg, dep_name = field_type.split('/')[0], field_type.split('/')[-1]
            elif field_type == 'Header':
                dep_pkg, dep_name = 'std_msgs', 'Header'
            else:
                dep_pkg, dep_name = pkg, field_type
            visit(dep_pkg, dep_name)

    visit(package, name)
    parts = [texts[order[0]].rstrip('\n')]
    for key in order[1:]:
        parts.append(f'{_SEPARATOR}\nMSG: {key}\n{texts[key].rstrip(chr(10))}')
    return '\n'.join(parts) + '\n'


def to_plain(message):
    """An rclpy message as nested dicts the MCAP encoder accepts (numpy fixed arrays -> lists,
    uint8[] -> bytes); decoded bag messages pass through unchanged."""
    import array
    import numpy as np
    if not hasattr(message, 'get_fields_and_field_types'):
        return message
    out = {}
    for name in message.get_fields_and_field_types():
        value = getattr(message, name)
        if hasattr(value, 'get_fields_and_field_types'):
            value = to_plain(value)
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, array.array):
            value = value.tobytes() if value.typecode == 'B' else value.tolist()
        elif isinstance(value, list):
            value = [to_plain(v) for v in value]
        out[name] = value
    return out


class BagWriter:
    """Writes rclpy (or any attribute-compatible) message objects to an MCAP rosbag2 file."""

    def __init__(self, path: str):
        from mcap_ros2.writer import Writer
        self._file = open(path, 'wb')
        self._writer = Writer(self._file)
        self._schemas = {}

    def write(self, topic: str, datatype: str, message, log_time_ns: int) -> None:
        if datatype not in self._schemas:
            self._schemas[datatype] = self._writer.register_msgdef(datatype, message_definition(datatype))
        self._writer.write_message(topic, self._schemas[datatype], to_plain(message),
                                   log_time=log_time_ns,
                                   publish_time=log_time_ns)

    def close(self) -> None:
        self._writer.finish()
        self._file.close()


def read_messages(path: str, topics: Optional[Iterable[str]] = None):
    """Yield (topic, datatype, message, log_time_ns) in log-time order."""
    from mcap_ros2.reader import read_ros2_messages
    with open(path, 'rb') as f:
        for item in read_ros2_messages(f, topics=list(topics) if topics else None):
            yield item.channel.topic, item.schema.name, item.ros_msg, item.log_time_ns


def count_messages(path: str, topics: Iterable[str]) -> int:
    from mcap.reader import make_reader
    wanted = set(topics)
    with open(path, 'rb') as f:
        summary = make_reader(f).get_summary()
    if summary is None or summary.statistics is None:
        return 0
    ids = [cid for cid, ch in summary.channels.items() if ch.topic in wanted]
    return sum(summary.statistics.channel_message_counts.get(cid, 0) for cid in ids)


def process_stereo(in_path: str, out_path: str, *, namespace: str = '', backend: str = 'sgbm',
                   backend_params: Optional[dict] = None, output_prefix: str = '',
                   progress: bool = True, **run_kwargs) -> Dict[str, int]:
    """Stereo depth over a bag: inputs `<ns>/left/image_rect[/compressed]`, `<ns>/right/...`,
    `<ns>/left/camera_info`, `<ns>/right/camera_info` (exact stamps); outputs under
    `<output_prefix or ns>/`: disparity, depth, depth/camera_info, points2, confidence.
    Returns counts {'sets': n, 'errors': m}."""
    from . import conversions
    from .core.backends import create_backend
    from .core.stereo_pipeline import run_stereo
    from .sync import StampSynchronizer
    ns = namespace.rstrip('/')
    names = {'left': f'{ns}/left/image_rect', 'right': f'{ns}/right/image_rect',
             'left_info': f'{ns}/left/camera_info', 'right_info': f'{ns}/right/camera_info'}
    inputs = {names['left']: 0, names['left'] + '/compressed': 0,
              names['right']: 1, names['right'] + '/compressed': 1,
              names['left_info']: 2, names['right_info']: 3}
    out_ns = (output_prefix or ns).rstrip('/')
    engine = create_backend(backend, **(backend_params or {}))
    writer = BagWriter(out_path)
    counts = {'sets': 0, 'errors': 0}

    def on_set(left, right, left_info, right_info):
        left_msg, right_msg = left.payload[1], right.payload[1]
        log_time = left.log_time_ns
        try:
            geometry = conversions.stereo_geometry_from_camera_info(left_info.payload[1],
                                                                     right_info.payload[1])
            left_rgb = conversions.any_image_to_rgb8(left_msg)
            right_rgb = conversions.any_image_to_rgb8(right_msg)
            out = run_stereo(left_rgb, right_rgb, geometry, engine, **run_kwargs)
        except ValueError as exc:
            counts['errors'] += 1
            print(f'skipped a set at {log_time} ns: {exc}')
            return
        header = conversions.copy_header(left_msg.header)
        valid = out.valid
        min_d = float(out.message_disparity_px[valid].min()) if valid.any() else 0.0
        max_d = float(out.message_disparity_px[valid].max()) if valid.any() else 0.0
        writer.write(f'{out_ns}/disparity', 'stereo_msgs/msg/DisparityImage',
                     conversions.make_disparity_msg(out.message_disparity_px, geometry, header,
                                                    min_d, max_d, out.valid_window), log_time)
        writer.write(f'{out_ns}/depth', 'sensor_msgs/msg/Image',
                     conversions.array_to_image(out.depth_m, '32FC1', header), log_time)
        writer.write(f'{out_ns}/depth/camera_info', 'sensor_msgs/msg/CameraInfo',
                     conversions.stereo_camera_infos(geometry, header, header)[0], log_time)
        writer.write(f'{out_ns}/points2', 'sensor_msgs/msg/PointCloud2',
                     conversions.make_pointcloud2(out.points_m, left_rgb, header), log_time)
        if out.confidence is not None:
            writer.write(f'{out_ns}/confidence', 'sensor_msgs/msg/Image',
                         conversions.array_to_image(out.confidence.astype('float32'), '32FC1', header),
                         log_time)
        counts['sets'] += 1

    class Item:  # a decoded message with the header the synchroniser reads
        __slots__ = ('header', 'payload', 'log_time_ns')

        def __init__(self, datatype, message, log_time_ns):
            self.header = message.header
            self.payload = (datatype, message)
            self.log_time_ns = log_time_ns

    sync = StampSynchronizer(4, 10, on_set)
    total = count_messages(in_path, inputs)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc='process-bag', unit='msg', dynamic_ncols=True)
    try:
        for topic, datatype, message, log_time in read_messages(in_path, inputs):
            sync.add(inputs[topic], Item(datatype, message, log_time))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    return counts


PIPELINES = {'stereo': process_stereo}
