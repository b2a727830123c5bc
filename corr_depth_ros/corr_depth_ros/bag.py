"""Run our pipelines over a recorded rosbag2 MCAP file, without a ROS runtime (no DDS, no rclpy
context): `corr_depth process-bag IN.mcap OUT.mcap --pipeline stereo ...`.

Reading uses the `mcap` / `mcap-ros2-support` libraries, writing `mcap` and rclpy's serialiser
(BagWriter says why); the per-frame work is the
same conversions and core code the nodes run (`conversions`, `core.stereo_pipeline`, `core.mono.inference`,
`core.descriptors.query`). The output bag holds standard ROS 2 messages (stereo_msgs/DisparityImage,
sensor_msgs/Image, sensor_msgs/PointCloud2, sensor_msgs/CameraInfo, geometry_msgs/PoseArray,
visualization_msgs/MarkerArray) that `ros2 bag play` and Foxglove read.
Message definitions for the output schemas come from the installed interface packages
(share/<package>/msg/*.msg, found through the ament index or AMENT_PREFIX_PATH).
"""
import os
import re
import sys
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

from .core.mono import POST_PROCESS_DEFAULT

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


_MESSAGE_TYPE = re.compile(r'\w+/\w+')


def as_rclpy_message(datatype: str, message):
    """``message`` as an instance of the rclpy class of ``datatype`` ('sensor_msgs/msg/Image'
    or 'sensor_msgs/Image'): an rclpy message as it is; any attribute-compatible object (e.g.
    one mcap_ros2 decoded from a bag) copied field by field."""
    import array
    import importlib
    package, name = datatype.split('/')[0], datatype.split('/')[-1]
    cls = getattr(importlib.import_module(f'{package}.msg'), name)
    if isinstance(message, cls):
        return message
    out = cls()
    for field, field_type in cls.get_fields_and_field_types().items():
        value = getattr(message, field)
        # rclpy names message fields 'pkg/Name', also in 'sequence<pkg/Name>',
        # 'sequence<pkg/Name, 3>' and 'pkg/Name[3]'.
        nested_type = field_type.split('<')[-1].split(',')[0].rstrip('>').split('[')[0]
        if _MESSAGE_TYPE.fullmatch(nested_type):
            value = ([as_rclpy_message(nested_type, v) for v in value]
                     if field_type.startswith('sequence<') or field_type.endswith(']')
                     else as_rclpy_message(nested_type, value))
        elif isinstance(getattr(out, field), array.array) and not isinstance(value, array.array):
            value = array.array(getattr(out, field).typecode, value)   # e.g. uint8[] from bytes
        setattr(out, field, value)
    return out


def offered_qos_profiles(qos) -> str:
    """The ``offered_qos_profiles`` channel metadata that rosbag2's MCAP storage writes (and
    `ros2 bag play` offers the topic with; without it, rosbag2's default) for one publisher
    with the rclpy QoSProfile ``qos``: the YAML of rosbag2_storage's qos.cpp in Jazzy (metadata
    version 9), a list of profiles with policies by their rmw names (rmw_qos_*_to_str, the same
    as rclpy's ``short_key``) and durations as sec/nsec. Jazzy's MCAP reader parses it with the
    bag's metadata version, and for a file without rosbag2's own metadata record (ours) that is
    its current one, 9, which reads policies by name."""
    import yaml

    def duration(value):
        sec, nsec = divmod(value.nanoseconds, 1_000_000_000)
        return {'sec': sec, 'nsec': nsec}
    profile = {'history': qos.history.short_key, 'depth': qos.depth,
               'reliability': qos.reliability.short_key,
               'durability': qos.durability.short_key,
               'deadline': duration(qos.deadline), 'lifespan': duration(qos.lifespan),
               'liveliness': qos.liveliness.short_key,
               'liveliness_lease_duration': duration(qos.liveliness_lease_duration),
               'avoid_ros_namespace_conventions': bool(qos.avoid_ros_namespace_conventions)}
    return yaml.safe_dump([profile], sort_keys=False, default_flow_style=False)


class BagWriter:
    """Writes rclpy (or any attribute-compatible) message objects to an MCAP rosbag2 file, as
    rosbag2's MCAP storage does: ros2msg schemas, CDR serialised by rclpy (the bytes a recording
    holds), and each channel's ``offered_qos_profiles``: ``offered_qos`` (an rclpy QoSProfile;
    by default the nodes' outputs', nodes.worker.output_qos, since the pipelines write what the
    nodes publish). mcap_ros2's Writer has no public way to give a channel metadata, so the
    channels are registered on mcap's own Writer."""

    def __init__(self, path: str, offered_qos=None):
        import tempfile

        from mcap.well_known import Profile
        from mcap.writer import Writer
        if not path:
            # '' wrote the partial file beside the working folder, and failed to rename it to
            # '' only once every frame was processed.
            raise ValueError('the output path is empty: give a .mcap file path')
        if os.path.isdir(path) or path.endswith(os.sep):
            # Said before the work: the finished file could not be moved there at the end.
            raise ValueError(f'the output {path} is a folder: give a .mcap file path')
        from .paths import nearest_existing
        folder = os.path.dirname(os.path.abspath(path))
        existing = nearest_existing(folder)
        if not os.path.isdir(existing):
            # os.makedirs said "[Errno 17] File exists" of it, as if the output existed.
            raise ValueError(f'the output {path} lies under {existing}, which is a file, not a '
                             'folder: give a .mcap path in a folder')
        if not os.access(existing, os.W_OK | os.X_OK):
            # The partial file goes beside the output: its name was the one in the error.
            raise ValueError(f'the output {path} cannot be written: no permission to write in '
                             f'{existing}; give a path in another folder')
        if offered_qos is None:
            from .nodes.worker import output_qos
            offered_qos = output_qos()
        self._qos_metadata = {'offered_qos_profiles': offered_qos_profiles(offered_qos)}
        # Written to a new file beside the target (a unique name: never an existing file, such
        # as an input) and moved into place only when complete: a run that fails leaves neither
        # a broken file nor an existing output destroyed.
        self.path = path
        name = os.path.basename(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        handle, self._partial = tempfile.mkstemp(dir=folder, prefix=f'.{name}.', suffix='.partial')
        # mkstemp makes the file 0600, which os.replace would keep: give it the mode a plain
        # open() would (0666 less the umask), as `ros2 bag record` leaves its files.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(handle, 0o666 & ~umask)
        self._file = os.fdopen(handle, 'wb')
        self._writer = Writer(self._file)
        self._writer.start(profile=Profile.ROS2)
        self._schemas: Dict[str, int] = {}
        self._channels: Dict[str, Tuple[int, str]] = {}   # topic -> (channel id, datatype)

    def write(self, topic: str, datatype: str, message, log_time_ns: int) -> None:
        from mcap.well_known import MessageEncoding, SchemaEncoding
        from rclpy.serialization import serialize_message
        if datatype not in self._schemas:
            self._schemas[datatype] = self._writer.register_schema(
                datatype, SchemaEncoding.ROS2, message_definition(datatype).encode())
        if topic not in self._channels:
            channel = self._writer.register_channel(topic, MessageEncoding.CDR,
                                                    self._schemas[datatype],
                                                    metadata=self._qos_metadata)
            self._channels[topic] = (channel, datatype)
        channel, channel_type = self._channels[topic]
        if channel_type != datatype:
            raise ValueError(f'{topic} was written as {channel_type}, not {datatype}')
        self._writer.add_message(channel, log_time=log_time_ns,
                                 data=serialize_message(as_rclpy_message(datatype, message)),
                                 publish_time=log_time_ns)

    def close(self, complete: bool = True) -> None:
        """Finish the file and move it to ``path``; with ``complete`` False, delete it
        unfinished. Whatever fails on the way (a full disk), the partial file is removed and
        the first error is the one raised."""
        try:
            try:
                if complete:
                    self._writer.finish()
            finally:
                self._file.close()
            if complete:
                os.replace(self._partial, self.path)
        finally:
            if os.path.exists(self._partial):
                os.remove(self._partial)


_MCAP_MAGIC = b'\x89MCAP0\r\n'


def bag_files(path: str) -> List[str]:
    """The MCAP files of a recording: ``path`` itself, or, for a rosbag2 folder (what
    `ros2 bag record -s mcap` writes), the files its metadata.yaml lists, in order.
    ValueError with what to do for anything else (sqlite3 bags, missing paths, other files)."""
    if os.path.isdir(path):
        meta_path = os.path.join(path, 'metadata.yaml')
        if not os.path.isfile(meta_path):
            if any(name.endswith('.mcap') for name in os.listdir(path)):
                # rosbag2 writes metadata.yaml when a recording is closed: a killed one has none.
                raise ValueError(f'{path} has .mcap files but no metadata.yaml (a recording '
                                 'that was not closed?): run `ros2 bag reindex` on the folder, '
                                 'or give the .mcap files one at a time')
            raise ValueError(f'{path} is a folder without metadata.yaml: not a rosbag2 bag')
        import yaml
        with open(meta_path, encoding='utf-8') as f:
            info = (yaml.safe_load(f) or {}).get('rosbag2_bagfile_information', {})
        storage = info.get('storage_identifier', '')
        if storage != 'mcap':
            raise ValueError(f'{path} is a {storage or "non-MCAP"} bag; only MCAP is read here: '
                             f'convert it (ros2 bag convert) or record with -s mcap')
        mode = str(info.get('compression_mode') or '').upper()
        if mode and mode != 'NONE':
            # rosbag2's own compression (whole files, or each message): MCAP's chunk
            # compression, the usual kind, is read as is.
            raise ValueError(f'{path} is compressed by rosbag2 (compression_mode {mode}, '
                             f'format {info.get("compression_format") or "?"}), which is not '
                             'read here: write an uncompressed copy with `ros2 bag convert` '
                             '(an output options file without compression), or record with '
                             'MCAP\'s own chunk compression (the default)')
        files = [os.path.join(path, name) for name in info.get('relative_file_paths', [])]
    elif os.path.isfile(path):
        files = [path]
    else:
        raise ValueError(f'input bag {path} does not exist')
    for name in files:
        if not os.path.isfile(name):
            raise ValueError(f'{name} (listed in the bag\'s metadata.yaml) does not exist')
        with open(name, 'rb') as f:
            if f.read(len(_MCAP_MAGIC)) != _MCAP_MAGIC:
                if name.endswith(('.zstd', '.lz4')):
                    raise ValueError(f'{name} is compressed by rosbag2: decompress it (e.g. '
                                     'zstd -d) or write an uncompressed copy with ros2 bag '
                                     'convert')
                raise ValueError(f'{name} is not an MCAP file (sqlite3 .db3 bags are not read '
                                 'here: convert with ros2 bag convert, or record with -s mcap)')
    if not files:
        raise ValueError(f'{path}: the bag lists no files')
    return files


def _output_writer(in_path: str, out_path: str) -> BagWriter:
    """The writer of a pipeline's output, once it is sure the output is not the input (the
    finished file replaces ``out_path``)."""
    check_bag_paths(in_path, out_path)
    return BagWriter(out_path)


def check_bag_paths(in_path: str, out_path: str) -> List[str]:
    """bag_files(in_path), after making sure writing ``out_path`` cannot destroy the input."""
    files = bag_files(in_path)
    if os.path.exists(out_path) and any(os.path.samefile(out_path, f) for f in files):
        raise ValueError(f'the output {out_path} is the input: give another output path')
    return files


def read_messages(path: str, topics: Optional[Iterable[str]] = None):
    """Yield (topic, datatype, message, log_time_ns) in log-time order (file by file for a
    split bag), from an MCAP file or rosbag2 MCAP folder."""
    from mcap.exceptions import McapError
    from mcap_ros2.reader import read_ros2_messages
    for name in bag_files(path):
        with open(name, 'rb') as f:
            try:
                for item in read_ros2_messages(f, topics=list(topics) if topics else None):
                    yield item.channel.topic, item.schema.name, item.ros_msg, item.log_time_ns
            except McapError as exc:
                raise ValueError(_damaged(name, exc)) from exc


def _damaged(name: str, exc: Exception) -> str:
    return (f'{name} is unfinished or damaged ({type(exc).__name__}: {str(exc)[:120]}), e.g. '
            'a recording that was killed: `mcap recover` (the mcap CLI) can repair it')


def _summary_counts(path: str) -> Tuple[Dict[str, int], bool]:
    """(topic -> message count over the bag's files, from their summaries; whether every file
    had a summary with statistics, i.e. whether the counts are complete)."""
    from mcap.exceptions import McapError
    from mcap.reader import make_reader
    counts: Dict[str, int] = {}
    complete = True
    for name in bag_files(path):
        with open(name, 'rb') as f:
            try:
                summary = make_reader(f).get_summary()
            except McapError as exc:
                raise ValueError(_damaged(name, exc)) from exc
        if summary is None or summary.statistics is None:
            complete = False
            continue
        for cid, channel in summary.channels.items():
            counts[channel.topic] = counts.get(channel.topic, 0) + \
                summary.statistics.channel_message_counts.get(cid, 0)
    return counts, complete


class _Item:
    """A decoded bag message with the ``header`` the synchroniser reads."""
    __slots__ = ('header', 'datatype', 'message', 'log_time_ns')

    def __init__(self, datatype, message, log_time_ns):
        self.header = message.header
        self.datatype, self.message, self.log_time_ns = datatype, message, log_time_ns


def _image_topics(topic: str) -> List[str]:
    """A raw image topic and its image_transport ``compressed`` sibling."""
    return [topic, topic + '/compressed']


def _stereo_inputs(ns: str) -> Dict[str, int]:
    """Inputs of the stereo pipeline, as stereo_depth_node subscribes to them."""
    return {**{t: 0 for t in _image_topics(f'{ns}/left/image_rect')},
            **{t: 1 for t in _image_topics(f'{ns}/right/image_rect')},
            f'{ns}/left/camera_info': 2, f'{ns}/right/camera_info': 3}


def _camera_inputs(ns: str, image_topic: str = '') -> Dict[str, int]:
    """Inputs of a one-camera pipeline: the image (raw or compressed, input 0) and the
    camera_info beside it (input 1): `<ns>/image` and `<ns>/camera_info`, or for an explicit
    ``image_topic`` such as /stereo/left/image_rect, /stereo/left/camera_info (the ROS
    convention: camera_info lives in the image's namespace)."""
    image = _resolve(image_topic or 'image', ns)
    if image.endswith('/compressed'):   # as `ros2 bag info` lists it: the base name is meant
        image = image[:-len('/compressed')]
    info = image.rsplit('/', 1)[0] + '/camera_info'
    return {**{t: 0 for t in _image_topics(image)}, info: 1}


def _prefer_raw(inputs: Dict[str, int], available: Dict[str, int]) -> Dict[str, int]:
    """Drop an image's ``/compressed`` sibling when the raw topic has messages: a recording of
    both (`ros2 bag record -a` on an image_transport camera) must use the lossless copy, not
    whichever arrived first."""
    return {t: i for t, i in inputs.items()
            if not (t.endswith('/compressed') and available.get(t[:-len('/compressed')], 0))}


def _run_pipeline(in_path: str, inputs: Dict[str, int], num_inputs: int, on_set,
                  progress: bool, counts: Dict[str, int],
                  writer: Optional['BagWriter'] = None, *, queue_size: int = 60,
                  topic_hint: str = '--namespace or --image-topic',
                  types: Optional[Dict[str, str]] = None, slop_s: float = 0.0,
                  label: str = 'process-bag') -> Dict[str, int]:
    """Feed the messages of ``inputs`` (topic -> input index) through a stamp synchroniser
    (exact, or within ``slop_s`` seconds) into ``on_set(*items)``, in log-time order, with a
    progress bar; close ``writer`` at the end, also on error (an MCAP file needs its footer to
    be readable). Returns ``counts`` ({'sets', 'errors'} kept by ``on_set``) with 'unmatched':
    frames of the first input that were neither processed nor skipped had no partner on
    another input (a dropped message), counted rather than silently lost. ``queue_size``:
    messages kept per input while its partners are awaited (an input logged fewer than that
    many frames late still pairs). Any error, or no frame processed, deletes the unfinished output
    (BagWriter.close) and leaves an existing one as it was. ``label``: the command its notes
    are said for.
    """
    from .sync import StampSynchronizer, stamp_to_ns
    complete = False
    try:
        available, summaries_complete = _summary_counts(in_path)
        if summaries_complete:  # the summaries say which topics exist: check before reading
            inputs = _prefer_raw(inputs, available)
            _check_inputs(inputs, num_inputs, available, available, topic_hint)
        # Every frame is wanted offline: a set takes only its own messages, so a frame whose
        # message was logged after a later frame's still pairs (the nodes drop it as stale).
        # Frames that share a stamp cannot be paired by it: offline every input's repeated
        # stamps are known as they are read (_feed), and a set with one is skipped, not built
        # from two frames' messages (stricter than the nodes' RepeatedStampGuard, which
        # cannot look ahead).
        repeated: set = set()

        def unambiguous(*items):
            if stamp_to_ns(items[0]) in repeated:
                _skipped(counts, 'its stamp is carried by more than one frame of an input, so '
                                 'its inputs cannot be paired by stamp; fix the stamps',
                         f'stamped {stamp_to_ns(items[0]) / 1e9:.9f} s')
                return
            on_set(*items)
        sync = StampSynchronizer(num_inputs, queue_size, unambiguous, slop_s, keep_older=True)
        seen, frames = _feed(in_path, inputs, sync, progress, available, types or {}, repeated,
                             label)
        _check_inputs(inputs, num_inputs, seen, available, topic_hint)
        counts['unmatched'] = max(0, frames - counts['sets'] - counts['errors'])
        # A run that processed no frame writes nothing: an existing output stays as it was.
        complete = counts['sets'] > 0
    finally:
        _say_skips(counts, label)
        if writer is not None:
            writer.close(complete)
    return counts


def _check_inputs(inputs: Dict[str, int], num_inputs: int, seen: Dict[str, int],
                  available: Dict[str, int], topic_hint: str) -> None:
    """ValueError naming the inputs without any message among ``seen`` (topic -> count), beside
    the topics the bag has (``available``)."""
    missing = [i for i in range(num_inputs)
               if not any(seen.get(t, 0) for t, j in inputs.items() if j == i)]
    if missing:
        wanted = ', '.join(sorted(t for t, i in inputs.items() if i in missing))
        present = ', '.join(sorted(available)) or 'none'
        raise ValueError(f'no messages on {wanted} (check {topic_hint}); the bag has: {present}')


def _feed(in_path, inputs, sync, progress, available: Dict[str, int],
          types: Dict[str, str], repeated: set, label: str = 'process-bag'
          ) -> Tuple[Dict[str, int], int]:
    """Read the messages of ``inputs`` into ``sync`` -> (topic -> messages seen, frames of the
    first input); ``types``: topic -> the one message type it may hold, where its name does
    not tell (:func:`_check_type`). ``repeated`` gets every stamp a topic carries more than
    once, before the message that repeats it reaches ``sync``."""
    from .sync import stamp_to_ns
    stamps: Dict[str, set] = {}
    bar = None
    seen: Dict[str, int] = {}
    # The first input's frames, by message (a frame whose stamp repeats another's still counts);
    # raw and compressed topics of one image count once: the larger of their counts.
    primary: Dict[str, int] = {}
    try:
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=sum(available.get(t, 0) for t in inputs), desc=label,
                       unit='msg', dynamic_ncols=True)
        for topic, datatype, message, log_time in read_messages(in_path, inputs):
            if topic not in seen:
                _check_type(topic, datatype, types.get(topic))
            item = _Item(datatype, message, log_time)
            seen[topic] = seen.get(topic, 0) + 1
            stamp = stamp_to_ns(item)
            if stamp in stamps.setdefault(topic, set()):
                repeated.add(stamp)
            stamps[topic].add(stamp)
            if inputs[topic] == 0:
                primary[topic] = primary.get(topic, 0) + 1
            sync.add(inputs[topic], item)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return seen, max(primary.values(), default=0)


_IMAGE, _COMPRESSED = 'sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage'
_CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'


def _check_type(topic: str, datatype: str, wanted: Optional[str] = None) -> None:
    """ValueError unless ``topic`` holds ``wanted``, by default a type the pipeline can read
    there: CameraInfo for `.../camera_info`, CompressedImage for an image's `/compressed`
    sibling, a raw or compressed image on any other image input (both are decoded). The depth
    input passes ``wanted`` = a raw Image: image_transport's `compressedDepth`, say, is refused
    here rather than failing mid-run."""
    if wanted is not None:
        allowed = (wanted,)
    elif topic.endswith('/camera_info'):
        allowed = (_CAMERA_INFO,)
    elif topic.endswith('/compressed'):
        allowed = (_COMPRESSED,)
    else:
        allowed = (_IMAGE, _COMPRESSED)
    if datatype not in allowed:
        raise ValueError(f'{topic} holds {datatype}, but it is read as '
                         f'{" or ".join(allowed)}: give a topic of that type')


def normal_namespace(namespace: str) -> str:
    """'' or '/a/b': a namespace as ROS takes it ('stereo' and '/stereo/' are '/stereo', as
    `namespace:=stereo` puts a node under /stereo)."""
    parts = [part for part in namespace.split('/') if part]
    return '/' + '/'.join(parts) if parts else ''


def _resolve(name: str, ns: str) -> str:
    """A topic name as a node in namespace ``ns`` ('' or '/a/b') resolves it: absolute names
    as they are, relative ones under ``ns``."""
    return name if name.startswith('/') else f'{ns}/{name}'


def _output_namespace(output_prefix: str, ns: str) -> str:
    """Where a pipeline writes: ``output_prefix`` (resolved as a topic name) or ``ns``."""
    return _resolve(output_prefix, ns).rstrip('/') if output_prefix else ns


_SKIPS = 'skipped_by_reason'     # counts' key while a bag is read (see _skipped)


def _skip(counts: Dict[str, int], log_time_ns: int, exc: Exception) -> None:
    _skipped(counts, str(exc), f'logged at {log_time_ns} ns')


def _skipped(counts: Dict[str, Any], reason: str, where: str) -> None:
    """Count a skipped set; each reason is printed the first time only (a long bag with a bad
    camera_info printed one line a frame), and :func:`_say_skips` gives the counts at the end.
    To stderr: the closing line on stdout is the result."""
    counts['errors'] += 1
    skips = counts.setdefault(_SKIPS, {})
    skips[reason] = skips.get(reason, 0) + 1
    if skips[reason] == 1:
        from tqdm import tqdm
        # tqdm.write: printed above the progress bar, not into it.
        tqdm.write(f'skipped a set {where}: {reason}', file=sys.stderr)


def _say_skips(counts: Dict[str, Any], label: str) -> None:
    """Remove the per-reason counts from ``counts`` and print those of repeated reasons."""
    for reason, count in counts.pop(_SKIPS, {}).items():
        if count > 1:
            print(f'{label}: {count} sets skipped: {reason}', file=sys.stderr)


def _write_cloud_and_depth(writer, out_ns, depth_m, points_m, rgb, info, header, log_time):
    from . import conversions
    writer.write(f'{out_ns}/depth', _IMAGE,
                 conversions.array_to_image(depth_m, '32FC1', header), log_time)
    writer.write(f'{out_ns}/depth/camera_info', 'sensor_msgs/msg/CameraInfo', info, log_time)
    writer.write(f'{out_ns}/points2', 'sensor_msgs/msg/PointCloud2',
                 conversions.make_pointcloud2(points_m, rgb, header), log_time)


def process_stereo(in_path: str, out_path: str, *, namespace: str = '', backend: str = 'sgbm',
                   backend_params: Optional[dict] = None, output_prefix: str = '',
                   progress: bool = True, slop_s: float = 0.0, **run_kwargs) -> Dict[str, int]:
    """Stereo depth over a bag: inputs `<ns>/left/image_rect[/compressed]`, `<ns>/right/...`,
    `<ns>/left/camera_info`, `<ns>/right/camera_info` (exact stamps, or within ``slop_s``
    seconds); outputs under `<output_prefix or ns>/`: disparity, depth, depth/camera_info,
    points2, confidence.
    Returns counts {'sets': n, 'errors': m}."""
    from . import conversions
    from .core.backends import create_backend
    from .core.stereo_pipeline import (confidence_unused_warning, depth_reach_warning,
                                       run_stereo, search_range_problem)
    ns = normal_namespace(namespace)
    inputs = _stereo_inputs(ns)
    out_ns = _output_namespace(output_prefix, ns)
    engine = create_backend(backend, **(backend_params or {}))
    # The node's start-up checks of the search range, before a whole bag is read: an sgbm
    # range that cannot be searched is refused (every frame was skipped for it), and one past
    # the learned net's trained range is said (the node warns; here it cut the depth silently).
    max_disparity_px = run_kwargs.get('max_disparity_px')
    if engine.name == 'sgbm':
        from .core.backends.sgbm import SgbmParams
        params = SgbmParams(**engine.get_params())
        try:
            params.search_count(max_disparity_px or None)
        except ValueError:      # said with process-bag's own option names
            raise ValueError(f'--max-disparity-px ({max_disparity_px}) must be greater than '
                             f'--sgbm min_disparity ({params.min_disparity})') from None
    beyond = search_range_problem(engine, max_disparity_px)
    if beyond:
        from tqdm import tqdm
        tqdm.write(f'process-bag: {beyond}: it searches that range only')
    writer = _output_writer(in_path, out_path)
    counts = {'sets': 0, 'errors': 0}
    said = set()    # each warning once, as the node's (throttled) ones

    def say_once(text: str) -> None:
        if text and text not in said:
            from tqdm import tqdm
            said.add(text)
            tqdm.write(f'process-bag: {text}')

    def on_set(left, right, left_info, right_info):
        log_time = left.log_time_ns
        try:
            geometry = conversions.stereo_geometry_from_camera_info(left_info.message,
                                                                     right_info.message)
            left_rgb = conversions.any_image_to_rgb8(left.message)
            right_rgb = conversions.any_image_to_rgb8(right.message)
            out = run_stereo(left_rgb, right_rgb, geometry, engine, **run_kwargs)
        except ValueError as exc:
            _skip(counts, log_time, exc)
            return
        say_once(confidence_unused_warning(out, engine.name,
                                           run_kwargs.get('confidence_threshold', 0.0),
                                           '--confidence-threshold'))
        say_once(depth_reach_warning(geometry, out.farthest_depth_m, engine.name,
                                     '--sgbm min_disparity'))
        header = conversions.copy_header(left.message.header)
        writer.write(f'{out_ns}/disparity', 'stereo_msgs/msg/DisparityImage',
                     conversions.make_disparity_msg(out.message_disparity_px, geometry, header,
                                                    out.min_disparity_px, out.max_disparity_px,
                                                    out.valid_window,
                                                    delta_d=getattr(engine, 'disparity_step_px',
                                                                    1.0 / 16.0)), log_time)
        _write_cloud_and_depth(writer, out_ns, out.depth_m, out.points_m, left_rgb,
                               conversions.depth_camera_info(left_info.message, header),
                               header, log_time)
        if out.confidence is not None:
            writer.write(f'{out_ns}/confidence', _IMAGE,
                         conversions.array_to_image(out.confidence.astype('float32'), '32FC1', header),
                         log_time)
        counts['sets'] += 1

    return _run_pipeline(in_path, inputs, 4, on_set, progress, counts, writer, slop_s=slop_s)


def process_mono(in_path: str, out_path: str, *, namespace: str = '', output_prefix: str = '',
                 weights_path: str = '', depth_mode: str = 'metric', baseline_m: float = 0.0,
                 post_process: bool = POST_PROCESS_DEFAULT, max_depth_m: float = 0.0, device: str = 'auto',
                 progress: bool = True, image_topic: str = '', slop_s: float = 0.0,
                 **_unused) -> Dict[str, int]:
    """Monocular depth over a bag, as mono_depth_node: inputs `<ns>/image[/compressed]` and
    `<ns>/camera_info` (or ``image_topic`` and the camera_info beside it; exact stamps or
    within ``slop_s``); outputs under `<output_prefix or ns>/`: depth, depth/camera_info,
    points2. ``depth_mode`` and ``baseline_m`` as the node's parameters."""
    from . import conversions
    from .core.geometry import depth_to_points
    from .core.mono.inference import (estimate_depth, input_size_from_header, load_mono_model,
                                      mask_beyond, resolve_baseline_m)
    from .core.training import resolve_device
    ns = normal_namespace(namespace)
    inputs = _camera_inputs(ns, image_topic)
    out_ns = _output_namespace(output_prefix, ns)
    torch_device = resolve_device(device)
    model, header = load_mono_model(weights_path, torch_device)
    input_size = input_size_from_header(header)
    if depth_mode == 'metric':
        baseline_m = resolve_baseline_m(baseline_m, header, '--baseline-m B (metres)')
    writer = _output_writer(in_path, out_path)
    counts = {'sets': 0, 'errors': 0}

    def on_set(image, info):
        log_time = image.log_time_ns
        try:
            rgb = conversions.any_image_to_rgb8(image.message)
            fx, fy, cx, cy = conversions.camera_intrinsics(info.message, rgb.shape)
            depth, _, _ = estimate_depth(model, rgb, fx, mode=depth_mode,
                                         baseline_m=baseline_m if depth_mode == 'metric' else None,
                                         input_size=input_size, post_process=post_process,
                                         device=torch_device)
        except ValueError as exc:
            _skip(counts, log_time, exc)
            return
        mask_beyond(depth, max_depth_m)
        out_header = conversions.copy_header(image.message.header)
        _write_cloud_and_depth(writer, out_ns, depth, depth_to_points(depth, fx, fy, cx, cy), rgb,
                               conversions.depth_camera_info(info.message, out_header),
                               out_header, log_time)
        counts['sets'] += 1

    return _run_pipeline(in_path, inputs, 2, on_set, progress, counts, writer, slop_s=slop_s)


def process_corr(in_path: str, out_path: str, *, namespace: str = '', output_prefix: str = '',
                 reference_image: str = '', reference_pixels: str = '',
                 depth_topic: str = '', weights_path: str = '', match_threshold: float = 0.6,
                 normal_radius_px: int = 5, device: str = 'auto', progress: bool = True,
                 image_topic: str = '', slop_s: float = 0.0, **_unused) -> Dict[str, int]:
    """Grasp-point transfer over a bag, as correspondence_node answers find_correspondence on
    every frame: the reference is an image file with pixels "x,y;x,y;..." (x = column).
    Inputs `<ns>/image[/compressed]`, `<ns>/camera_info` and, with ``depth_topic``, a REP 118
    depth image (exact stamps, or within ``slop_s``). Outputs under
    `<output_prefix or ns>/correspondence/`:
    `poses` (geometry_msgs/PoseArray, one grasp pose per reference pixel, NaN where not found),
    `markers` (visualization_msgs/MarkerArray) and `heatmap` (rgb8, first pixel)."""
    import cv2
    from geometry_msgs.msg import PoseArray
    from . import conversions
    from .core.colormap import colourise
    from .core.descriptors import HEATMAP_SIGMA, matching, query
    from .core.descriptors.network import compute_descriptors, load_descriptor_net
    from .core.memory import RecyclingPool
    from .core.training import resolve_device
    pixels = parse_pixels(reference_pixels)
    reference_bgr = cv2.imread(reference_image, cv2.IMREAD_COLOR) if reference_image else None
    if reference_bgr is None:
        raise ValueError(f'could not read the reference image {reference_image!r} '
                         '(--reference-image PATH)')
    ns = normal_namespace(namespace)
    inputs = _camera_inputs(ns, image_topic)
    types = {}
    if depth_topic:
        depth_topic = _resolve(depth_topic, ns)
        if depth_topic in inputs:
            raise ValueError(f'--depth-topic {depth_topic} is an input already (the image or '
                             'its camera_info): give the depth image\'s topic')
        inputs[depth_topic] = 2
        types[depth_topic] = _IMAGE     # REP 118 depth, never compressed
    out_ns = _output_namespace(output_prefix, ns) + '/correspondence'
    torch_device = resolve_device(device)
    model, _ = load_descriptor_net(weights_path or None, torch_device)
    reference = matching.descriptors_at(
        compute_descriptors(model, np.ascontiguousarray(reference_bgr[:, :, ::-1]), torch_device),
        pixels)
    writer = _output_writer(in_path, out_path)
    counts = {'sets': 0, 'errors': 0}
    buffers = RecyclingPool()   # each set's descriptor image reuses the previous one's memory

    def on_set(image, info, depth=None):
        log_time = image.log_time_ns
        try:
            rgb = conversions.any_image_to_rgb8(image.message)
            points_m = intrinsics = None
            if depth is not None:
                points_m, intrinsics = conversions.registered_points(depth.message,
                                                                     info.message, rgb.shape)
            descriptors = compute_descriptors(model, rgb, torch_device, pool=buffers)
        except ValueError as exc:
            _skip(counts, log_time, exc)
            return
        matches = query.match_references(reference, descriptors, points_m,
                                         intrinsics=intrinsics,
                                         match_threshold=match_threshold,
                                         normal_radius_px=normal_radius_px,
                                         no_depth_reason='no --depth-topic given')
        header = conversions.copy_header(image.message.header)
        # A PoseArray has no found flag: a match that is not found (beyond --match-threshold,
        # or without depth) is a NaN pose, so a consumer cannot take it for a grasp.
        nan3, nan4 = (float('nan'),) * 3, (float('nan'),) * 4
        poses = PoseArray(header=header, poses=[
            conversions.make_pose_stamped(m.position_m if m.found else nan3,
                                          m.quaternion_xyzw if m.found else nan4, header).pose
            for m in matches])
        writer.write(f'{out_ns}/poses', 'geometry_msgs/msg/PoseArray', poses, log_time)
        writer.write(f'{out_ns}/markers', 'visualization_msgs/msg/MarkerArray',
                     conversions.make_grasp_markers([m.position_m for m in matches],
                                                    [m.quaternion_xyzw for m in matches],
                                                    [m.found for m in matches], header), log_time)
        heat = matching.descriptor_heatmap(reference[0], descriptors, HEATMAP_SIGMA)
        writer.write(f'{out_ns}/heatmap', _IMAGE,
                     conversions.array_to_image(colourise(heat, vmin=0.0, vmax=1.0), 'rgb8', header),
                     log_time)
        counts['sets'] += 1

    return _run_pipeline(in_path, inputs, 3 if depth_topic else 2, on_set, progress, counts,
                         writer, types=types, slop_s=slop_s)


def extract_stereo_pairs(in_path: str, out_dir: str, *, namespace: str = '',
                         progress: bool = True) -> Dict[str, object]:
    """Write a recording's rectified pairs as a RectifiedPairFolder (``out_dir/left/NNNNNN.png``
    and ``out_dir/right/NNNNNN.png``) for `corr_depth train mono --data bag:...`: the inputs of
    process_stereo (exact stamps). Returns {'pairs', 'baseline_m', 'fx_px', 'width', 'height',
    'doffs_px_removed'} from the first pair's camera_info (the rig that self-supervision learns
    the scale of). ``out_dir`` must hold no pairs yet (ValueError): a mix of two recordings
    would train on both under one rig's record.

    Where the cameras' principal points differ (doffs = cx_right - cx_left != 0, as in
    Middlebury's calibrations; ROS's zero-disparity rectification has 0), a pixel's image
    disparity is f*B/Z - doffs, which metric mode (Z = f*B/d) would misread and a positive
    doffs would make negative for far points, below what the network outputs. The right image
    is therefore written resampled by doffs (right'(x) = right(x + doffs)), so that the pairs'
    disparity is f*B/Z as for a zero-disparity rig."""
    from . import conversions
    from .core.synth.io import write_rgb8_png
    ns = normal_namespace(namespace)
    inputs = _stereo_inputs(ns)
    check_bag_paths(in_path, out_dir)
    for side in ('left', 'right'):
        folder = os.path.join(out_dir, side)
        if os.path.isdir(folder) and any(n.endswith('.png') for n in os.listdir(folder)):
            raise ValueError(f'{folder} holds images already: extract into an empty folder')
        os.makedirs(folder, exist_ok=True)
    counts = {'sets': 0, 'errors': 0}
    rig: Dict[str, object] = {}

    def on_set(left, right, left_info, right_info):
        try:
            geometry = conversions.stereo_geometry_from_camera_info(left_info.message,
                                                                     right_info.message)
            images = [conversions.any_image_to_rgb8(m.message) for m in (left, right)]
            for side, rgb in zip(('left', 'right'), images):
                # Written as a pair of the camera_info's size (pairs of other sizes were
                # written side by side, and trained as one rig).
                if rgb.shape[:2] != (geometry.height, geometry.width):
                    raise ValueError(f'the {side} image is {rgb.shape[1]}x{rgb.shape[0]}, its '
                                     f'camera_info {geometry.width}x{geometry.height}')
        except ValueError as exc:
            _skip(counts, left.log_time_ns, exc)
            return
        this_rig = dict(baseline_m=geometry.baseline_m, fx_px=geometry.fx,
                        width=geometry.width, height=geometry.height)
        if not rig:
            rig.update(this_rig, doffs_px_removed=geometry.doffs_px)
        elif any(not np.isclose(this_rig[k], rig[k], rtol=1e-6) for k in this_rig):
            # The pairs train one rig's scale (source.json keeps the first pair's): a pair of
            # another calibration or size (a camera re-calibrated mid-recording) is left out.
            _skip(counts, left.log_time_ns, ValueError(
                f'another rig than the first pair\'s ({this_rig} against '
                f'{ {k: rig[k] for k in this_rig} }): left out'))
            return
        if geometry.doffs_px:
            images[1] = shift_columns(images[1], geometry.doffs_px)
        name = f'{counts["sets"]:06d}.png'
        for side, rgb in zip(('left', 'right'), images):
            write_rgb8_png(os.path.join(out_dir, side, name), rgb)
        counts['sets'] += 1

    _run_pipeline(in_path, inputs, 4, on_set, progress, counts, topic_hint='--bag-namespace',
                  label='train mono')
    if counts['sets'] == 0:
        raise ValueError(f'no usable stereo pair in {in_path} under namespace {ns or "/"!r}')
    return {'pairs': counts['sets'], 'skipped': counts['errors'],
            'unmatched': counts['unmatched'], **rig}


def shift_columns(image: np.ndarray, shift_px: float) -> np.ndarray:
    """(H,W,C) uint8 -> the image sampled at x + ``shift_px`` (linear interpolation; columns
    that fall outside repeat the edge), i.e. its content moved ``shift_px`` to the left."""
    import cv2
    matrix = np.array([[1.0, 0.0, shift_px], [0.0, 1.0, 0.0]], np.float64)
    return cv2.warpAffine(image, matrix, (image.shape[1], image.shape[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def parse_pixels(text: str) -> np.ndarray:
    """"x,y;x,y" (x = column, y = row, pixels) -> (N, 2) float32; ValueError if malformed."""
    try:
        pixels = [[float(v) for v in item.split(',')] for item in text.split(';') if item.strip()]
        array = np.array(pixels, dtype=np.float32)
    except ValueError as exc:
        raise ValueError(f'reference pixels must look like "120,80;200,95", got {text!r}') from exc
    if array.ndim != 2 or array.shape[1] != 2 or len(array) == 0:
        raise ValueError(f'reference pixels must look like "120,80;200,95", got {text!r}')
    return array


PIPELINES = {'stereo': process_stereo, 'mono': process_mono, 'corr': process_corr}
