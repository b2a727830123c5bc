"""`corr_depth process-bag`: a recorded stereo MCAP bag in, standard depth messages out."""
import math
import os

import numpy as np
import pytest

pytest.importorskip('mcap_ros2')
from std_msgs.msg import Header  # noqa: E402

from corr_depth_ros import bag, conversions  # noqa: E402
from corr_depth_ros.cli import main as cli_main  # noqa: E402
from corr_depth_ros.core.metrics import disparity_metrics  # noqa: E402
from corr_depth_ros.core.motorcycle import load_motorcycle  # noqa: E402


def _record(path, data, frames=2, compressed_right=False):
    _record_frames(path, data['geometry'], [(10 + i, (10 + i) * 10 ** 9, data['left'],
                                             data['right']) for i in range(frames)],
                   compressed_right)


def _record_frames(path, geometry, frames, compressed_right=False):
    """A stereo bag under /cam: per frame (stamp s, log time ns, left, right or None: lost)."""
    writer = bag.BagWriter(str(path))
    for sec, t, left, right in frames:
        header = Header(frame_id='left_optical')
        header.stamp.sec = sec
        left_info, right_info = conversions.stereo_camera_infos(geometry, header, header)
        writer.write('/cam/left/camera_info', 'sensor_msgs/msg/CameraInfo', left_info, t)
        writer.write('/cam/right/camera_info', 'sensor_msgs/msg/CameraInfo', right_info, t)
        writer.write('/cam/left/image_rect', 'sensor_msgs/msg/Image',
                     conversions.array_to_image(left, 'rgb8', header), t)
        if right is None:
            continue
        if compressed_right:
            writer.write('/cam/right/image_rect/compressed', 'sensor_msgs/msg/CompressedImage',
                         conversions.rgb8_to_compressed(right, header, 'png'), t)
        else:
            writer.write('/cam/right/image_rect', 'sensor_msgs/msg/Image',
                         conversions.array_to_image(right, 'rgb8', header), t)
    writer.close()


def test_message_definition_includes_dependencies():
    text = bag.message_definition('stereo_msgs/msg/DisparityImage')
    for dep in ('MSG: sensor_msgs/Image', 'MSG: std_msgs/Header', 'MSG: sensor_msgs/RegionOfInterest',
                'MSG: builtin_interfaces/Time'):
        assert dep in text


@pytest.mark.parametrize('compressed_right', [False, True])
def test_process_stereo_bag(tmp_path, compressed_right, capsys):
    data = load_motorcycle()
    _record(tmp_path / 'in.mcap', data, compressed_right=compressed_right)
    rc = cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap'),
                   '--namespace', '/cam', '--no-progress'])
    assert rc == 0
    # Middlebury's cx_right - cx_left = 31.086 px: beyond f B / doffs a search from 0 cannot
    # reach, and process-bag says so once, as the node does.
    said = capsys.readouterr().out
    assert said.count('reaches depths up to 6.18 m only') == 1, said
    assert 'set --sgbm min_disparity to -32 or lower' in said
    out = {}
    for topic, datatype, message, _ in bag.read_messages(str(tmp_path / 'out.mcap')):
        out.setdefault(topic, []).append((datatype, message))
    assert {len(v) for v in out.values()} == {2}
    assert out['/cam/disparity'][0][0] == 'stereo_msgs/msg/DisparityImage'
    disparity_msg = out['/cam/disparity'][0][1]
    assert disparity_msg.header.frame_id == 'left_optical' and disparity_msg.header.stamp.sec == 10
    disparity = conversions.image_to_array(disparity_msg.image)
    raw = np.where(disparity > 0, disparity - data['geometry'].doffs_px, np.nan)
    assert disparity_metrics(raw, data['disparity_px'])['bad_2_pct'] < 12.0
    depth = conversions.image_to_array(out['/cam/depth'][0][1])
    assert depth.dtype == np.float32 and 1.0 < np.nanmedian(depth) < 8.0
    cloud = out['/cam/points2'][0][1]
    assert (cloud.height, cloud.width, cloud.point_step) == (500, 741, 16)
    # Every output offers the QoS the stereo node publishes it with, for `ros2 bag play`.
    offered = _offered_qos(tmp_path / 'out.mcap')
    assert set(offered) == set(out) and all(q == [NODE_OUTPUT_QOS] for q in offered.values())


def test_process_stereo_bag_passes_the_onnx_options(tmp_path, monkeypatch, capsys):
    """--onnx KEY=VALUE reaches the onnx backend as the node's onnx.* parameters do (only the
    model path did, so a model needing names or normalisation could not be used here)."""
    torch = pytest.importorskip('torch')
    pytest.importorskip('onnxruntime')

    class Named(torch.nn.Module):        # 3 px wherever left is white, in its own names
        def forward(self, img_l, img_r):
            return img_l.mean(dim=1, keepdim=True) * 0.0 + 3.0 + 0.0 * img_r[:, :1]
    model = tmp_path / 'named.onnx'
    torch.onnx.export(Named(), (torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)), str(model),
                      input_names=['img_l', 'img_r'], output_names=['disp'], dynamo=False,
                      dynamic_axes={'img_l': {2: 'h', 3: 'w'}, 'img_r': {2: 'h', 3: 'w'}})
    data = load_motorcycle()
    _record(tmp_path / 'in.mcap', data, frames=1)
    base = ['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap'), '--namespace',
            '/cam', '--backend', 'onnx', '--weights', str(model), '--no-progress']
    import corr_depth_ros.core.backends as backends
    made, real = [], backends.create_backend
    monkeypatch.setattr(backends, 'create_backend',
                        lambda name, **params: made.append(params) or real(name, **params))
    assert cli_main(base + ['--onnx', 'input_names=img_r,img_l', '--onnx', 'output_name=disp',
                            '--onnx', 'mean=0.5,0.5,0.5', '--onnx', 'input_width=64',
                            '--onnx', 'input_height=48']) == 0
    assert made[-1] == {'device': 'auto', 'model_path': str(model),
                        'input_names': ['img_r', 'img_l'], 'output_name': 'disp',
                        'mean': [0.5, 0.5, 0.5], 'input_width': 64, 'input_height': 48}
    disparity = next(m for t, _, m, _ in bag.read_messages(str(tmp_path / 'out.mcap'))
                     if t == '/cam/disparity')
    # 3 px at the model's 64 columns is 3 * 741 / 64 at the image's, plus doffs.
    assert np.nanmedian(conversions.image_to_array(disparity.image)) == pytest.approx(
        3.0 * 741 / 64 + data['geometry'].doffs_px, rel=1e-4)
    # A confidence threshold this model cannot apply is said, as the node says it.
    assert cli_main(base + ['--onnx', 'output_name=disp', '--confidence-threshold', '0.5']) == 0
    assert '--confidence-threshold 0.5 is not applied' in capsys.readouterr().out
    # A wrong name is the backend's refusal, as in the node.
    assert cli_main(base + ['--onnx', 'output_name=nope']) == 2
    assert "output 'nope' not in the model outputs ['disp']" in capsys.readouterr().err
    for item, reason in (('mean=a,b', 'mean takes numbers separated by commas'),
                         ('input_width=-1', 'input_width must be in [0, 8192]'),
                         ('size=3', 'expected KEY=VALUE with KEY one of')):
        with pytest.raises(SystemExit):
            cli_main(base + ['--onnx', item])
        assert reason in capsys.readouterr().err


def test_process_stereo_bag_passes_the_learned_options(tmp_path, monkeypatch):
    """--input-scale and --no-refine reach the learned backend as the node's learned.* do: at
    half size its range (DisparityImage max_disparity) doubles, and so does delta_d; without
    the refiner the range ends at the network's last candidate, 184 px (the refiner searches
    8 px past it, to 192)."""
    pytest.importorskip('torch')
    data = load_motorcycle()
    _record(tmp_path / 'in.mcap', data)
    rc = cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap'),
                   '--namespace', '/cam', '--backend', 'learned', '--input-scale', '0.5',
                   '--no-refine', '--no-progress'])
    assert rc == 0
    messages = [m for t, _, m, _ in bag.read_messages(str(tmp_path / 'out.mcap'))
                if t == '/cam/disparity']
    top = int(184 * 741 / 370)          # the network's 184 px at 370 of 741 columns
    assert messages[0].max_disparity == pytest.approx(top + data['geometry'].doffs_px)
    assert messages[0].delta_d == pytest.approx(2.0 / 64.0)
    # --probe-every reaches the backend (1 by default here), and is range-checked.
    import corr_depth_ros.core.backends as backends
    made = []
    real = backends.create_backend

    def spy(name, **params):
        made.append(params)
        return real(name, **params)
    monkeypatch.setattr(backends, 'create_backend', spy)
    for i, (extra, expected) in enumerate((([], 1), (['--probe-every', '4'], 4))):
        rc = cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / f'out{i}.mcap'),
                       '--namespace', '/cam', '--backend', 'learned', '--input-scale', '0.5',
                       '--no-progress', *extra])
        assert rc == 0 and made[-1]['probe_every'] == expected
    with pytest.raises(SystemExit):
        cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap'),
                  '--backend', 'learned', '--probe-every', '0'])


@pytest.mark.parametrize('argv,named', [
    (['--pipeline', 'mono', '--backend', 'learned'], '--backend applies to --pipeline stereo'),
    (['--pipeline', 'mono', '--sgbm', 'uniqueness_ratio=5'], '--sgbm applies to'),
    (['--pipeline', 'corr', '--max-depth-m', '3'], '--max-depth-m applies to'),
    (['--backend', 'sgbm', '--input-scale', '0.5'],
     '--input-scale applies to --pipeline stereo --backend learned'),
    (['--backend', 'sgbm', '--weights', 'x.safetensors'], '--weights applies to'),
    (['--device', 'cpu'], '--device applies to'),
    (['--backend', 'learned', '--sgbm', 'uniqueness_ratio=5'],
     '--sgbm applies to --pipeline stereo --backend sgbm'),
    (['--onnx', 'output_name=disp'], '--onnx applies to --pipeline stereo --backend onnx'),
    (['--image-topic', '/cam/image'], '--image-topic applies to --pipeline mono or --pipeline corr'),
    (['--pipeline', 'stereo', '--depth-mode', 'relative'], '--depth-mode applies to --pipeline mono'),
    (['--pipeline', 'mono', '--match-threshold', '0.3'], '--match-threshold applies to --pipeline corr'),
    (['--pipeline', 'mono', '--depth-mode', 'relative', '--baseline-m', '0.2'],
     '--baseline-m applies to --depth-mode metric'),
])
def test_process_bag_refuses_options_its_pipeline_would_ignore(tmp_path, capsys, argv, named):
    from corr_depth_ros.cli import main as cli_main
    assert cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap'),
                     '--no-progress', *argv]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / 'out.mcap').exists()


def test_process_bag_protects_its_input_and_says_what_is_missing(tmp_path, capsys):
    """Output == input is refused before anything is written; a bag folder is read through its
    metadata.yaml; absent inputs are named with the bag's topics; a frame whose partner is
    missing is counted; sqlite3 bags get a clear error."""
    data = load_motorcycle()
    small = {**data, 'left': data['left'][:64, :160], 'right': data['right'][:64, :160]}
    geo = data['geometry']
    from corr_depth_ros.core.geometry import StereoGeometry
    small['geometry'] = StereoGeometry(width=160, height=64, fx=geo.fx, fy=geo.fy,
                                       cx_left=80.0, cx_right=80.0 + geo.doffs_px, cy=32.0,
                                       baseline_m=geo.baseline_m)
    path = tmp_path / 'in.mcap'
    _record(path, small, frames=3)
    size = os.path.getsize(path)
    assert cli_main(['process-bag', str(path), str(path), '--namespace', '/cam',
                     '--no-progress']) == 2
    assert 'is the input' in capsys.readouterr().err and os.path.getsize(path) == size
    # A rosbag2 folder (metadata.yaml + files) is read like the file it lists.
    folder = tmp_path / 'rec'
    folder.mkdir()
    os.replace(path, folder / 'rec_0.mcap')
    (folder / 'metadata.yaml').write_text(
        'rosbag2_bagfile_information:\n  version: 9\n  storage_identifier: mcap\n'
        '  relative_file_paths:\n    - rec_0.mcap\n')
    counts = bag.process_stereo(str(folder), str(tmp_path / 'out.mcap'), namespace='/cam',
                                progress=False)
    assert counts == {'sets': 3, 'errors': 0, 'unmatched': 0}
    # Wrong namespace: which topics are missing, and what the bag has instead.
    assert cli_main(['process-bag', str(folder), str(tmp_path / 'out2.mcap'), '--namespace',
                     '/other', '--no-progress']) == 2
    text = capsys.readouterr().err
    assert 'no messages on /other/left/camera_info' in text and '/cam/left/image_rect' in text
    # A failed run neither leaves an output behind nor destroys an existing one.
    assert not os.path.exists(tmp_path / 'out2.mcap')
    good = (tmp_path / 'out.mcap').read_bytes()
    assert cli_main(['process-bag', str(folder), str(tmp_path / 'out.mcap'), '--namespace',
                     '/other', '--no-progress']) == 2
    assert (tmp_path / 'out.mcap').read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.partial')]
    # An output path that is a folder is refused before any work, leaving nothing behind.
    (tmp_path / 'outdir').mkdir()
    assert cli_main(['process-bag', str(folder), str(tmp_path / 'outdir'), '--namespace', '/cam',
                     '--no-progress']) == 2
    assert 'is a folder' in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.partial')]
    # A damaged (cut) file: one line saying so, exit 2, no output.
    cut = tmp_path / 'cut.mcap'
    cut.write_bytes((folder / 'rec_0.mcap').read_bytes()[:len(good) // 3])
    assert cli_main(['process-bag', str(cut), str(tmp_path / 'out3.mcap'), '--namespace', '/cam',
                     '--no-progress']) == 2
    assert 'unfinished or damaged' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / 'out3.mcap')
    # sgbm parameters as the node's sgbm.* ones; a malformed one is refused.
    assert cli_main(['process-bag', str(folder), str(tmp_path / 'out4.mcap'), '--namespace',
                     '/cam', '--sgbm', 'num_disparities=32', '--sgbm', 'block_size=7',
                     '--max-disparity-px', '32', '--no-progress']) == 0
    disparity = next(m for t, _, m, _ in bag.read_messages(str(tmp_path / 'out4.mcap'))
                     if t == '/cam/disparity')
    assert disparity.max_disparity == pytest.approx(31 + geo.doffs_px)
    # p1 and p2 are checked together, whatever their order on the command line.
    assert cli_main(['process-bag', str(folder), str(tmp_path / 'out4.mcap'), '--namespace',
                     '/cam', '--sgbm', 'p2=100', '--sgbm', 'p1=50', '--no-progress']) == 0
    assert cli_main(['process-bag', str(folder), str(tmp_path / 'out4.mcap'), '--namespace',
                     '/cam', '--sgbm', 'p2=100', '--no-progress']) == 2
    assert 'p2 must be greater than p1' in capsys.readouterr().err
    # A bad item is refused while parsing (usage line, exit 2), before the bag is opened.
    for item, reason in (('blocksize=7', 'expected KEY=VALUE with KEY one of'),
                         ('block_size', 'expected KEY=VALUE with KEY one of'),
                         ('block_size=x', 'block_size takes a int'),
                         ('fill_holes=maybe', 'fill_holes is true or false'),
                         ('num_disparities=30', 'positive multiple of 16'),
                         # the node's ranges (they ran before: OpenCV took pre_filter_cap 1000)
                         ('uniqueness_ratio=150', 'uniqueness_ratio must be in [0, 100]'),
                         ('pre_filter_cap=1000', 'pre_filter_cap must be in [0, 255]'),
                         ('block_size=41', 'block_size must be in [1, 31]')):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(['process-bag', str(tmp_path / 'absent.mcap'), str(tmp_path / 'out5.mcap'),
                      '--sgbm', item, '--no-progress'])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith('usage: ') and f'argument --sgbm: {item!r}: ' in err
        assert reason in err
    # A frame whose right image was not recorded is counted, not silently lost.
    writer = bag.BagWriter(str(tmp_path / 'gap.mcap'))
    for topic, datatype, message, t in bag.read_messages(str(folder)):
        if not (topic == '/cam/right/image_rect' and message.header.stamp.sec == 11):
            writer.write(topic, datatype, message, t)
    writer.close()
    counts = bag.process_stereo(str(tmp_path / 'gap.mcap'), str(tmp_path / 'out3.mcap'),
                                namespace='/cam', progress=False)
    assert counts == {'sets': 2, 'errors': 0, 'unmatched': 1}
    # A namespace is taken as ROS takes it ('cam' is /cam, as namespace:=cam puts a node), and
    # a missing output folder is made.
    counts = bag.process_stereo(str(folder), str(tmp_path / 'new' / 'out6.mcap'),
                                namespace='cam/', progress=False)
    assert counts['sets'] == 3 and (tmp_path / 'new' / 'out6.mcap').exists()
    (tmp_path / 'old.db3').write_bytes(b'SQLite format 3\x00' + bytes(64))
    with pytest.raises(ValueError, match='not an MCAP file'):
        bag.bag_files(str(tmp_path / 'old.db3'))


def test_compressed_round_trip_and_errors():
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    msg = conversions.rgb8_to_compressed(rgb, Header(), 'png')
    np.testing.assert_array_equal(conversions.compressed_to_rgb8(msg), rgb)
    ramp_x, ramp_y = np.meshgrid(np.linspace(0, 255, 30), np.linspace(0, 255, 20))
    smooth = np.dstack([ramp_x, ramp_y, np.full((20, 30), 128.0)]).astype(np.uint8)
    jpeg = conversions.rgb8_to_compressed(smooth, Header(), 'jpeg', quality=95)
    assert np.abs(conversions.compressed_to_rgb8(jpeg).astype(int) - smooth).mean() < 4
    msg.format = 'tiff'
    with pytest.raises(conversions.ConversionError, match='unsupported compressed'):
        conversions.compressed_to_rgb8(msg)
    msg.format = 'png'
    msg.data = [1, 2, 3]
    with pytest.raises(conversions.ConversionError, match='could not decode'):
        conversions.compressed_to_rgb8(msg)


def _record_mono(path, rgb, fx, frames=2, compressed=False, depth_m=None):
    """image (+ compressed), camera_info and optionally a REP 118 depth under /cam."""
    from sensor_msgs.msg import CameraInfo
    writer = bag.BagWriter(str(path))
    height, width = rgb.shape[:2]
    for i in range(frames):
        header = Header(frame_id='cam_optical')
        header.stamp.sec = 20 + i
        t = (20 + i) * 10 ** 9
        info = CameraInfo(header=header, width=width, height=height)
        info.k = [fx, 0.0, width / 2, 0.0, fx, height / 2, 0.0, 0.0, 1.0]
        info.p = [fx, 0.0, width / 2, 0.0, 0.0, fx, height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
        writer.write('/cam/camera_info', 'sensor_msgs/msg/CameraInfo', info, t)
        if compressed:
            writer.write('/cam/image/compressed', 'sensor_msgs/msg/CompressedImage',
                         conversions.rgb8_to_compressed(rgb, header, 'png'), t)
        else:
            writer.write('/cam/image', 'sensor_msgs/msg/Image',
                         conversions.array_to_image(rgb, 'rgb8', header), t)
        if depth_m is not None:
            writer.write('/cam/depth', 'sensor_msgs/msg/Image',
                         conversions.array_to_image(depth_m, '32FC1', header), t)
    writer.close()


# The outputs' QoS (nodes.worker.output_qos: reliable, depth 1, the rest rclpy's defaults) as
# rosbag2 Jazzy's MCAP storage writes a publisher's profile in a channel's offered_qos_profiles.
NODE_OUTPUT_QOS = {'history': 'keep_last', 'depth': 1, 'reliability': 'reliable',
                   'durability': 'volatile', 'deadline': {'sec': 0, 'nsec': 0},
                   'lifespan': {'sec': 0, 'nsec': 0}, 'liveliness': 'system_default',
                   'liveliness_lease_duration': {'sec': 0, 'nsec': 0},
                   'avoid_ros_namespace_conventions': False}


def _offered_qos(path):
    """topic -> its channel's offered_qos_profiles, parsed, read with mcap's own reader."""
    import yaml
    from mcap.reader import make_reader
    with open(path, 'rb') as f:
        channels = make_reader(f).get_summary().channels.values()
    return {c.topic: yaml.safe_load(c.metadata['offered_qos_profiles']) for c in channels}


def test_bag_writer_offers_qos_and_copies_decoded_messages(tmp_path):
    """Channels carry rosbag2's offered_qos_profiles (the nodes' output QoS by default, or the
    profile given); messages decoded from a bag are written again field by field, nested
    messages and sequences of them included."""
    from geometry_msgs.msg import Pose, PoseArray
    from rclpy.duration import Duration
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    header = Header(frame_id='cam_optical')
    header.stamp.sec, header.stamp.nanosec = 3, 500
    poses = PoseArray(header=header, poses=[Pose(), Pose()])
    poses.poses[1].position.x, poses.poses[1].orientation.w = 0.25, 1.0
    image = conversions.array_to_image(np.arange(24, dtype=np.uint8).reshape(2, 4, 3), 'rgb8',
                                       header)
    writer = bag.BagWriter(str(tmp_path / 'a.mcap'))
    writer.write('/cam/poses', 'geometry_msgs/msg/PoseArray', poses, 7)
    writer.write('/cam/image', 'sensor_msgs/msg/Image', image, 7)
    with pytest.raises(ValueError, match='written as sensor_msgs/msg/Image'):
        writer.write('/cam/image', 'geometry_msgs/msg/PoseArray', poses, 8)
    writer.close()
    assert _offered_qos(tmp_path / 'a.mcap') == {'/cam/poses': [NODE_OUTPUT_QOS],
                                                '/cam/image': [NODE_OUTPUT_QOS]}
    latched = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL,
                         deadline=Duration(seconds=2, nanoseconds=5))
    writer = bag.BagWriter(str(tmp_path / 'b.mcap'), offered_qos=latched)
    for topic, datatype, message, t in bag.read_messages(str(tmp_path / 'a.mcap')):
        writer.write(topic, datatype, message, t)      # mcap_ros2's decoded objects
    writer.close()
    assert _offered_qos(tmp_path / 'b.mcap')['/cam/poses'] == [{
        **NODE_OUTPUT_QOS, 'depth': 5, 'reliability': 'best_effort',
        'durability': 'transient_local', 'deadline': {'sec': 2, 'nsec': 5}}]
    copy = _read_all(tmp_path / 'b.mcap')
    poses_back = copy['/cam/poses'][0][1]
    assert (poses_back.header.stamp.sec, poses_back.header.stamp.nanosec) == (3, 500)
    assert [(p.position.x, p.orientation.w) for p in poses_back.poses] == [(0.0, 1.0),
                                                                           (0.25, 1.0)]
    np.testing.assert_array_equal(conversions.image_to_array(copy['/cam/image'][0][1]),
                                  conversions.image_to_array(image))


def _read_all(path):
    out = {}
    for topic, datatype, message, _ in bag.read_messages(str(path)):
        out.setdefault(topic, []).append((datatype, message))
    return out


def test_process_mono_bag(tmp_path):
    torch = pytest.importorskip('torch')
    from corr_depth_ros.core.mono.network import ARCH, build_mono_net
    from corr_depth_ros.core.training import save_weights
    torch.manual_seed(0)
    weights = str(tmp_path / 'tiny_mono.safetensors')
    save_weights(weights, build_mono_net(base_channels=4), arch=ARCH,
                 config={'base_channels': 4, 'max_disparity_fraction': 0.35},
                 metadata={'training_rig': {'baseline_m': 0.1}, 'input_size_hw': [64, 96]})
    rgb = np.random.default_rng(1).integers(0, 255, (72, 100, 3), dtype=np.uint8)
    _record_mono(tmp_path / 'in.mcap', rgb, fx=90.0, compressed=True)
    rc = cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap'),
                   '--pipeline', 'mono', '--namespace', '/cam', '--output-prefix', '/mono',
                   '--weights', weights, '--device', 'cpu', '--no-progress'])
    assert rc == 0
    out = _read_all(tmp_path / 'out.mcap')
    assert set(out) == {'/mono/depth', '/mono/depth/camera_info', '/mono/points2'}
    assert {len(v) for v in out.values()} == {2}
    depth_msg = out['/mono/depth'][1][1]
    assert depth_msg.header.stamp.sec == 21 and depth_msg.header.frame_id == 'cam_optical'
    depth = conversions.image_to_array(depth_msg)
    assert depth.shape == (72, 100) and depth.dtype == np.float32
    assert np.isfinite(depth).any() and np.nanmin(depth) > 0
    cloud = out['/mono/points2'][0][1]
    assert (cloud.height, cloud.width) == (72, 100)
    # The image named by --image-topic, with the camera_info beside it: the same frames.
    assert cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'by_topic.mcap'),
                     '--pipeline', 'mono', '--image-topic', '/cam/image', '--output-prefix',
                     '/mono', '--weights', weights, '--device', 'cpu', '--no-progress']) == 0
    by_topic = [t for t, _, _, _ in bag.read_messages(str(tmp_path / 'by_topic.mcap'))]
    assert by_topic.count('/mono/depth') == len(out['/mono/depth'])
    # The compressed name, as `ros2 bag info` lists it, means the same image.
    assert cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'by_cmp.mcap'),
                     '--pipeline', 'mono', '--image-topic', '/cam/image/compressed',
                     '--output-prefix', '/mono', '--weights', weights, '--device', 'cpu',
                     '--no-progress']) == 0
    by_cmp = [t for t, _, _, _ in bag.read_messages(str(tmp_path / 'by_cmp.mcap'))]
    assert by_cmp.count('/mono/depth') == len(out['/mono/depth'])
    assert cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'x.mcap'),
                     '--image-topic', '/cam/image', '--no-progress']) == 2   # stereo: refused
    # A missing weights file is a clear error, not a traceback.
    assert cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'x.mcap'),
                     '--pipeline', 'mono', '--namespace', '/cam', '--weights',
                     str(tmp_path / 'missing.safetensors'), '--no-progress']) == 2


def test_process_corr_bag_finds_reference_pixels_with_depth(tmp_path):
    pytest.importorskip('torch')
    import cv2
    data = load_motorcycle()
    left = np.ascontiguousarray(data['left'][100:292, 200:456])   # a 256x192 crop
    depth_m = np.full(left.shape[:2], 1.5, dtype=np.float32)
    cv2.imwrite(str(tmp_path / 'reference.png'), left[:, :, ::-1])
    _record_mono(tmp_path / 'in.mcap', left, fx=200.0, depth_m=depth_m)
    pixels = [(60.0, 50.0), (180.0, 120.0), (128.0, 96.0)]
    rc = cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap'),
                   '--pipeline', 'corr', '--namespace', '/cam', '--depth-topic', '/cam/depth',
                   '--reference-image', str(tmp_path / 'reference.png'), '--reference-pixels',
                   ';'.join(f'{x:g},{y:g}' for x, y in pixels), '--device', 'cpu',
                   '--no-progress'])
    assert rc == 0
    out = _read_all(tmp_path / 'out.mcap')
    assert set(out) == {'/cam/correspondence/poses', '/cam/correspondence/markers',
                        '/cam/correspondence/heatmap'}
    poses = out['/cam/correspondence/poses'][0][1]
    assert poses.header.frame_id == 'cam_optical' and len(poses.poses) == 3
    # The live frame IS the reference image: every pixel is found where it was clicked, at
    # the constant depth, with the camera-facing plane's normal as approach axis.
    for (x, y), pose in zip(pixels, poses.poses):
        assert pose.position.z == pytest.approx(1.5, abs=1e-4)
        assert pose.position.x == pytest.approx((x - 128) * 1.5 / 200.0, abs=0.02)
        assert pose.position.y == pytest.approx((y - 96) * 1.5 / 200.0, abs=0.02)
    heatmap = conversions.image_to_array(out['/cam/correspondence/heatmap'][0][1])
    assert heatmap.shape == (192, 256, 3)
    # Matches beyond --match-threshold are not found: a PoseArray has no found flag, so those
    # poses are NaN (they had the match's 3D point before), never a pose a planner could take
    # for a grasp. (Without depth they are NaN anyway: no 3D point.)
    # A reference a little different from the live frame, so no distance is exactly 0.
    cv2.imwrite(str(tmp_path / 'other.png'), np.roll(left, 3, axis=1)[:, :, ::-1])
    assert cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'strict.mcap'),
                     '--pipeline', 'corr', '--namespace', '/cam', '--depth-topic', '/cam/depth',
                     '--reference-image', str(tmp_path / 'other.png'), '--reference-pixels',
                     '60,50;180,120', '--match-threshold', '0', '--device', 'cpu',
                     '--no-progress']) == 0
    poses = _read_all(tmp_path / 'strict.mcap')['/cam/correspondence/poses'][0][1].poses
    assert len(poses) == 2
    for pose in poses:
        assert all(math.isnan(v) for v in (pose.position.x, pose.position.y, pose.position.z,
                                           pose.orientation.w))
    # Bad pixel text: a clear error (exit 2).
    assert cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'x.mcap'),
                     '--pipeline', 'corr', '--namespace', '/cam', '--reference-image',
                     str(tmp_path / 'reference.png'), '--reference-pixels', '12;4',
                     '--no-progress']) == 2


def test_train_mono_on_a_recorded_bag(tmp_path):
    """`corr_depth train mono --data bag:PATH`: the recording's pairs are extracted, and the
    rig's baseline from its camera_info is stored for metric depth."""
    import json
    from corr_depth_ros.core.training import read_weights_header
    data = load_motorcycle()
    geo = data['geometry']
    from corr_depth_ros.core.geometry import StereoGeometry
    small = {'left': data['left'][:96, :128], 'right': data['right'][:96, :128],
             'geometry': StereoGeometry(width=128, height=96, fx=geo.fx, fy=geo.fy, cx_left=64.0,
                                        cx_right=64.0 + geo.doffs_px, cy=48.0,
                                        baseline_m=geo.baseline_m)}
    _record(tmp_path / 'rig.mcap', small, frames=3)
    out = tmp_path / 'run'
    assert cli_main(['train', 'mono', '--data', f'bag:{tmp_path / "rig.mcap"}',
                     '--bag-namespace', '/cam', '--out-dir', str(out), '--steps', '2',
                     '--batch-size', '1', '--height', '64', '--width', '96',
                     '--base-channels', '4', '--warmup-steps', '1', '--checkpoint-every', '2',
                     '--threads', '1', '--device', 'cpu']) == 0
    source = json.loads((out / 'bag_pairs' / 'source.json').read_text())
    assert source['pairs'] == 3 and len(list((out / 'bag_pairs' / 'left').iterdir())) == 3
    meta = read_weights_header(str(out / 'mono.safetensors'))['metadata']
    # Trained on the rig's own pairs: not judged on synthetic scenes unless asked to.
    assert meta['selected']['rule'] == 'last step' and not (out / 'best.safetensors').exists()
    assert meta['training_rig']['baseline_m'] == pytest.approx(geo.baseline_m)
    assert meta['data_source']['bag'].endswith('rig.mcap')
    # The run signature names the extracted folder, resolved, so a resume must use the same.
    import torch
    state = torch.load(out / 'checkpoint.pt', weights_only=True)
    assert json.loads(state['signature'])['data'] == \
        f'folder:{os.path.realpath(out / "bag_pairs")}'
    # The same recording into the folder of a run of other options: refused before the bag
    # is extracted into it (that took the extraction's time and wrote into that folder).
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'checkpoint.pt').write_bytes((out / 'checkpoint.pt').read_bytes())
    assert cli_main(['train', 'mono', '--data', f'bag:{tmp_path / "rig.mcap"}',
                     '--bag-namespace', '/cam', '--out-dir', str(other), '--steps', '2',
                     '--batch-size', '1', '--height', '64', '--width', '96',
                     '--base-channels', '4', '--threads', '1', '--device', 'cpu']) == 2
    assert sorted(p.name for p in other.iterdir()) == ['checkpoint.pt']


def _stereo_texture_pair(shift_px: int, doffs_px: int, height=48, width=96):
    """A textured fronto-parallel pair whose image disparity is ``shift_px`` (left x = right
    x - shift), recorded by a rig with principal-point offset ``doffs_px``."""
    from corr_depth_ros.core.geometry import StereoGeometry
    rng = np.random.default_rng(5)
    texture = rng.integers(0, 255, (height, width + shift_px, 3), dtype=np.uint8)
    return {'left': np.ascontiguousarray(texture[:, :width]),
            'right': np.ascontiguousarray(texture[:, shift_px:]),
            'geometry': StereoGeometry(width=width, height=height, fx=100.0, fy=100.0,
                                       cx_left=48.0, cx_right=48.0 + doffs_px, cy=24.0,
                                       baseline_m=0.1)}


def test_extracted_pairs_have_the_disparity_of_a_zero_offset_rig_and_never_mix(tmp_path):
    """`train mono --data bag:` pairs: with a principal-point offset (doffs) the right image is
    resampled so that disparity is f*B/Z (image disparity + doffs), what metric mode assumes;
    a folder that holds pairs already is refused (two recordings would mix under one record);
    the CLI's own unfinished extraction is started afresh."""
    import cv2
    shift, doffs = 6, 4
    _record(tmp_path / 'rig.mcap', _stereo_texture_pair(shift, doffs), frames=2)
    out = tmp_path / 'pairs'
    rig = bag.extract_stereo_pairs(str(tmp_path / 'rig.mcap'), str(out), namespace='/cam',
                                   progress=False)
    assert rig['pairs'] == 2 and rig['doffs_px_removed'] == pytest.approx(doffs)
    left = cv2.imread(str(out / 'left' / '000000.png'))
    right = cv2.imread(str(out / 'right' / '000000.png'))
    disparity = shift + doffs                   # f*B/Z: left x = right' x - (shift + doffs)
    np.testing.assert_array_equal(left[:, disparity:-doffs - 1],
                                  right[:, :-disparity - doffs - 1])
    with pytest.raises(ValueError, match='holds images already'):
        bag.extract_stereo_pairs(str(tmp_path / 'rig.mcap'), str(out), namespace='/cam',
                                 progress=False)
    from corr_depth_ros.cli.train_mono import _pairs_from_bag
    run = tmp_path / 'run'
    (run / 'bag_pairs' / 'left').mkdir(parents=True)       # a killed extraction's leftovers
    cv2.imwrite(str(run / 'bag_pairs' / 'left' / '000007.png'), left)
    source = _pairs_from_bag(str(tmp_path / 'rig.mcap'), '/cam', str(run))
    assert source['pairs'] == 2
    assert sorted(p.name for p in (run / 'bag_pairs' / 'left').iterdir()) == \
        ['000000.png', '000001.png']


def test_process_bag_without_a_processed_frame_leaves_the_output_alone(tmp_path, capsys):
    """A run in which every frame is skipped writes nothing: an existing output stays, as a
    failed run leaves it (the README's promise); the run exits 1."""
    data = _stereo_texture_pair(6, 0)
    _record(tmp_path / 'in.mcap', data, frames=2)
    out = tmp_path / 'out.mcap'
    assert cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(out), '--namespace', '/cam',
                     '--no-progress']) == 0
    good = out.read_bytes()
    # A 256 px search does not fit the 96 px images: every frame is skipped.
    assert cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(out), '--namespace', '/cam',
                     '--max-disparity-px', '256', '--no-progress']) == 1
    assert '0 frames processed' in capsys.readouterr().out
    assert out.read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if p.name.endswith('.partial')]


def test_bag_writer_output_mode_and_cleanup_when_finishing_fails(tmp_path, monkeypatch):
    """The output gets a plain file's mode (0666 less the umask), not mkstemp's 0600; if
    finishing the file fails (a full disk), the partial file goes and that error is raised."""
    import stat
    umask = os.umask(0o022)
    try:
        writer = bag.BagWriter(str(tmp_path / 'a.mcap'))
        writer.close()
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / 'a.mcap').st_mode) == 0o644
    writer = bag.BagWriter(str(tmp_path / 'b.mcap'))

    def full_disk():
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(writer._writer, 'finish', full_disk)
    with pytest.raises(OSError, match='No space left'):
        writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.mcap']
    writer = bag.BagWriter(str(tmp_path / 'c.mcap'))      # given up: not finished at all
    monkeypatch.setattr(writer._writer, 'finish', full_disk)
    writer.close(complete=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.mcap']


def test_process_bag_checks_input_types_and_resolves_relative_names(tmp_path, capsys):
    """An input topic of another type than the pipeline reads there (image_transport's
    compressedDepth as --depth-topic, a CameraInfo as the image) is a clear error, exit 2, no
    output; relative --image-topic, --depth-topic and --output-prefix resolve under
    --namespace, as a node's relative names do."""
    pytest.importorskip('torch')
    import cv2
    rgb = np.ascontiguousarray(load_motorcycle()['left'][100:196, 200:328])
    cv2.imwrite(str(tmp_path / 'reference.png'), rgb[:, :, ::-1])
    depth_m = np.full(rgb.shape[:2], 1.5, dtype=np.float32)
    _record_mono(tmp_path / 'in.mcap', rgb, fx=100.0, depth_m=depth_m)
    corr = ['--pipeline', 'corr', '--reference-image', str(tmp_path / 'reference.png'),
            '--reference-pixels', '60,50', '--device', 'cpu', '--no-progress']
    writer = bag.BagWriter(str(tmp_path / 'with_cmp.mcap'))    # + compressedDepth
    for topic, datatype, message, t in bag.read_messages(str(tmp_path / 'in.mcap')):
        writer.write(topic, datatype, message, t)
        if topic == '/cam/depth':
            header = Header(frame_id=message.header.frame_id)
            header.stamp.sec = message.header.stamp.sec
            writer.write('/cam/depth/compressedDepth', 'sensor_msgs/msg/CompressedImage',
                         conversions.rgb8_to_compressed(rgb, header, 'png'), t)
            writer.write('/cam/jpeg', 'sensor_msgs/msg/CompressedImage',
                         conversions.rgb8_to_compressed(rgb, header, 'png'), t)
    writer.close()
    # A compressed image on a topic of any name is an image input still (decoded as before).
    assert cli_main(['process-bag', str(tmp_path / 'with_cmp.mcap'), str(tmp_path / 'j.mcap'),
                     '--image-topic', '/cam/jpeg', '--depth-topic', '/cam/depth'] + corr) == 0
    out = tmp_path / 'out.mcap'
    for topic, datatype in (('/cam/depth/compressedDepth', 'CompressedImage'),
                            ('/cam/image/compressedDepth', None)):
        rc = cli_main(['process-bag', str(tmp_path / 'with_cmp.mcap'), str(out), '--namespace',
                       '/cam', '--depth-topic', topic] + corr)
        text = capsys.readouterr().err
        assert rc == 2 and not out.exists()
        if datatype:
            assert f'{topic} holds sensor_msgs/msg/{datatype}, but it is read as ' \
                'sensor_msgs/msg/Image' in text
        else:
            assert f'no messages on {topic}' in text
    # A depth topic that is another input already is refused, not silently swapped in.
    assert cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(out), '--namespace', '/cam',
                     '--depth-topic', 'camera_info'] + corr) == 2
    assert '--depth-topic /cam/camera_info is an input already' in capsys.readouterr().err
    assert cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(out), '--namespace', '/cam',
                     '--image-topic', 'image', '--depth-topic', 'depth', '--output-prefix',
                     'processed'] + corr) == 0
    assert set(_read_all(out)) == {'/cam/processed/correspondence/poses',
                                   '/cam/processed/correspondence/markers',
                                   '/cam/processed/correspondence/heatmap'}
    poses = _read_all(out)['/cam/processed/correspondence/poses'][0][1].poses
    assert poses[0].position.z == pytest.approx(1.5, abs=1e-4)     # the depth topic was read


def test_process_bag_slop_pairs_a_camera_info_stamped_apart(tmp_path, capsys):
    """A camera_info stamped 1 ms after its image pairs within --slop-s, as the nodes' slop_s
    pairs it; with exact stamps (the default) no frame pairs, and that is what is said."""
    from sensor_msgs.msg import CameraInfo
    pytest.importorskip('torch')
    from corr_depth_ros.core.mono.network import ARCH, build_mono_net
    from corr_depth_ros.core.training import save_weights
    weights = str(tmp_path / 'tiny_mono.safetensors')
    save_weights(weights, build_mono_net(base_channels=4), arch=ARCH,
                 config={'base_channels': 4, 'max_disparity_fraction': 0.35},
                 metadata={'training_rig': {'baseline_m': 0.1}, 'input_size_hw': [64, 96]})
    rgb = np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    writer = bag.BagWriter(str(tmp_path / 'skew.mcap'))
    for i in range(3):
        header = Header(frame_id='cam_optical')
        header.stamp.sec = 30 + i
        info_header = Header(frame_id='cam_optical')
        info_header.stamp.sec, info_header.stamp.nanosec = 30 + i, 1_000_000
        info = CameraInfo(header=info_header, width=64, height=48)
        info.k = [60.0, 0.0, 32.0, 0.0, 60.0, 24.0, 0.0, 0.0, 1.0]
        info.p = [60.0, 0.0, 32.0, 0.0, 0.0, 60.0, 24.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        t = (30 + i) * 10 ** 9
        writer.write('/cam/image', 'sensor_msgs/msg/Image',
                     conversions.array_to_image(rgb, 'rgb8', header), t)
        writer.write('/cam/camera_info', 'sensor_msgs/msg/CameraInfo', info, t + 1_000_000)
    writer.close()
    argv = ['process-bag', str(tmp_path / 'skew.mcap'), str(tmp_path / 'out.mcap'),
            '--pipeline', 'mono', '--namespace', '/cam', '--weights', weights, '--device', 'cpu',
            '--no-progress']
    assert cli_main(argv) == 1
    text = capsys.readouterr().out
    assert '0 frames processed' in text and '3 without a partner of the same stamp' in text
    assert 'nothing written' in text and not (tmp_path / 'out.mcap').exists()
    assert cli_main(argv + ['--slop-s', '0.01']) == 0
    assert '3 frames processed' in capsys.readouterr().out
    assert [t for t, _, _, _ in bag.read_messages(str(tmp_path / 'out.mcap'))].count(
        '/cam/depth') == 3


def test_hostile_recordings_are_read_or_refused_before_the_work(tmp_path):
    """From a review with bags a robot could produce: a frame whose message was logged after a
    later frame's still pairs offline (it was dropped as stale and reported as having no
    partner); `train mono --data bag:` leaves out pairs of another calibration than the first
    (they were mixed under the first one's record); an output path ending in a separator is
    refused at the start (it failed after the whole bag); rosbag2-compressed bags and a killed
    split recording (no metadata.yaml) are named for what they are."""
    data = _stereo_texture_pair(6, 0)
    geo = data['geometry']
    writer = bag.BagWriter(str(tmp_path / 'late.mcap'))
    order = [10, 11, 13, 12, 14]          # frame 12's right image is logged after frame 13's
    for i, sec in enumerate(range(10, 15)):
        header = Header(frame_id='left_optical')
        header.stamp.sec = sec
        t = sec * 10 ** 9
        left_info, right_info = conversions.stereo_camera_infos(geo, header, header)
        writer.write('/cam/left/camera_info', 'sensor_msgs/msg/CameraInfo', left_info, t)
        writer.write('/cam/right/camera_info', 'sensor_msgs/msg/CameraInfo', right_info, t)
        writer.write('/cam/left/image_rect', 'sensor_msgs/msg/Image',
                     conversions.array_to_image(data['left'], 'rgb8', header), t)
        late = Header(frame_id='left_optical')
        late.stamp.sec = order[i]
        writer.write('/cam/right/image_rect', 'sensor_msgs/msg/Image',
                     conversions.array_to_image(data['right'], 'rgb8', late), t + 1)
    writer.close()
    counts = bag.process_stereo(str(tmp_path / 'late.mcap'), str(tmp_path / 'out.mcap'),
                                namespace='/cam', progress=False)
    assert counts == {'sets': 5, 'errors': 0, 'unmatched': 0}

    # A recalibrated rig mid-recording: its pairs are left out of the extraction.
    writer = bag.BagWriter(str(tmp_path / 'recal.mcap'))
    for sec in range(10, 14):
        header = Header(frame_id='left_optical')
        header.stamp.sec = sec
        rig_geo = geo if sec < 12 else type(geo)(**{**geo.__dict__, 'fx': geo.fx * 1.5,
                                                    'fy': geo.fy * 1.5})
        left_info, right_info = conversions.stereo_camera_infos(rig_geo, header, header)
        t = sec * 10 ** 9
        writer.write('/cam/left/camera_info', 'sensor_msgs/msg/CameraInfo', left_info, t)
        writer.write('/cam/right/camera_info', 'sensor_msgs/msg/CameraInfo', right_info, t)
        for side in ('left', 'right'):
            writer.write(f'/cam/{side}/image_rect', 'sensor_msgs/msg/Image',
                         conversions.array_to_image(data[side], 'rgb8', header), t)
    writer.close()
    rig = bag.extract_stereo_pairs(str(tmp_path / 'recal.mcap'), str(tmp_path / 'pairs'),
                                   namespace='/cam', progress=False)
    assert (rig['pairs'], rig['skipped']) == (2, 2) and rig['fx_px'] == pytest.approx(geo.fx)
    assert len(list((tmp_path / 'pairs' / 'left').iterdir())) == 2

    with pytest.raises(ValueError, match='is a folder: give a .mcap file path'):
        bag.BagWriter(str(tmp_path / 'not_yet') + os.sep)
    folder = tmp_path / 'compressed'
    folder.mkdir()
    (folder / 'compressed_0.mcap').write_bytes((tmp_path / 'late.mcap').read_bytes())
    (folder / 'metadata.yaml').write_text(
        'rosbag2_bagfile_information:\n  storage_identifier: mcap\n  compression_mode: MESSAGE\n'
        '  compression_format: zstd\n  relative_file_paths: [compressed_0.mcap]\n')
    with pytest.raises(ValueError, match='compressed by rosbag2 .compression_mode MESSAGE'):
        bag.bag_files(str(folder))
    (folder / 'metadata.yaml').unlink()
    with pytest.raises(ValueError, match='no metadata.yaml .*ros2 bag reindex'):
        bag.bag_files(str(folder))
    zstd = tmp_path / 'whole_0.mcap.zstd'
    zstd.write_bytes(b'(\xb5/\xfd' + bytes(20))
    with pytest.raises(ValueError, match='compressed by rosbag2: decompress it'):
        bag.bag_files(str(zstd))


@pytest.mark.parametrize('argv,named', [
    (['--max-depth-m', '-5'], '--max-depth-m'), (['--pipeline', 'mono', '--baseline-m', '50'],
                                                 '--baseline-m'),
    (['--pipeline', 'corr', '--match-threshold', '50'], '--match-threshold'),
])
def test_process_bag_refuses_what_the_nodes_refuse(tmp_path, capsys, argv, named):
    """Options share the ranges of the nodes' parameters of the same names (a negative
    --max-depth-m meant no limit, --baseline-m -0.5 the weights' baseline)."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap')] + argv)
    assert exit_info.value.code == 2 and f'argument {named}:' in capsys.readouterr().err


def test_process_bag_skips_frames_whose_stamp_is_not_their_own(tmp_path, capsys):
    """Two frames stamped alike (a driver that does not stamp) with the first right image lost:
    the left image of one frame was matched with the right image of the other (EPE 24.5 px),
    counted as processed, and the lost frame was not counted at all. Now the set is skipped
    with the reason, and the lost frame shows as without a partner."""
    data = load_motorcycle()
    other = np.ascontiguousarray(data['left'][::-1])          # another scene, same size
    # (stamp, log time, left, right): frames A and B both stamped 10 s, A's right image lost.
    _record_frames(tmp_path / 'in.mcap', data['geometry'], [
        (10, 10 ** 9, data['left'], None), (10, 11 * 10 ** 8, other, other),
        (11, 12 * 10 ** 8, data['left'], data['right'])])
    rc = cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap'),
                   '--namespace', '/cam', '--no-progress'])
    said = capsys.readouterr()
    assert rc == 0, said
    assert 'carried by more than one frame of an input' in said.err, said
    assert 'process-bag: 1 frames processed, 1 skipped, 1 without a partner' in said.out, said
    stamps = [m.header.stamp.sec for topic, _, m, _ in bag.read_messages(str(tmp_path / 'out.mcap'))
              if topic == '/cam/disparity']
    assert stamps == [11]


def test_process_bag_checks_the_search_range_as_the_node_does(tmp_path, capsys):
    """An sgbm range that cannot be searched was found only frame by frame (every frame
    skipped, after reading the whole bag); one past the learned net's trained range cut the
    depth without a word, where the node warns."""
    data = load_motorcycle()
    _record(tmp_path / 'in.mcap', data, frames=1)
    rc = cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap'),
                   '--namespace', '/cam', '--no-progress', '--sgbm', 'min_disparity=64',
                   '--max-disparity-px', '32'])
    assert rc == 2 and '--max-disparity-px (32) must be greater than --sgbm min_disparity ' \
        '(64)' in capsys.readouterr().err
    assert not (tmp_path / 'out.mcap').exists()
    rc = cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap'),
                   '--namespace', '/cam', '--no-progress', '--backend', 'learned',
                   '--max-disparity-px', '1000', '--device', 'cpu'])
    assert rc == 0 and "max_disparity_px 1000 is beyond the learned backend's trained range" \
        in capsys.readouterr().out
    from corr_depth_ros.core.stereo_pipeline import search_range_problem

    class Learned:
        name, max_disparity_px = 'learned', 192
    assert search_range_problem(Learned(), 1000) == \
        "max_disparity_px 1000 is beyond the learned backend's trained range (192 px)"
    assert search_range_problem(Learned(), 0) == search_range_problem(Learned(), 192) == ''


def test_each_reason_for_skipping_is_printed_once_with_its_count(tmp_path, capsys):
    """A bag whose every set is bad (here the right image of another size) printed one line a
    set on stdout, beside the result: a 10-minute 30 Hz bag gave 18,000 lines."""
    from corr_depth_ros.core.geometry import StereoGeometry
    geometry = StereoGeometry(width=64, height=48, fx=60.0, fy=60.0, cx_left=31.5, cy=23.5,
                              cx_right=31.5, baseline_m=0.1)
    left = np.zeros((48, 64, 3), np.uint8)
    right = np.zeros((40, 64, 3), np.uint8)
    path = tmp_path / 'bad.mcap'
    _record_frames(path, geometry, [(10 + i, (10 + i) * 10 ** 9, left, right) for i in range(4)])
    counts = bag.process_stereo(str(path), str(tmp_path / 'out.mcap'), namespace='/cam',
                                progress=False)
    assert counts == {'sets': 0, 'errors': 4, 'unmatched': 0}
    said = capsys.readouterr()
    assert said.out == ''
    assert said.err.count('skipped a set') == 1, said.err
    assert 'process-bag: 4 sets skipped: right_rgb: dim 0 (H) is 40' in said.err, said.err


def test_extraction_leaves_out_pairs_whose_images_are_not_their_camera_infos_size(
        tmp_path, capsys):
    """train mono --data bag: wrote a right image of another size beside its left one (and
    trained them as one rig); its notes said 'process-bag'."""
    from corr_depth_ros.core.geometry import StereoGeometry
    geometry = StereoGeometry(width=64, height=48, fx=60.0, fy=60.0, cx_left=31.5, cy=23.5,
                              cx_right=31.5, baseline_m=0.1)
    good = np.full((48, 64, 3), 90, np.uint8)
    short = np.zeros((40, 64, 3), np.uint8)
    _record_frames(tmp_path / 'in.mcap', geometry, [
        (10, 10 ** 10, good, good), (11, 11 * 10 ** 9, good, short),
        (12, 12 * 10 ** 9, good, short)])
    out = bag.extract_stereo_pairs(str(tmp_path / 'in.mcap'), str(tmp_path / 'pairs'),
                                   namespace='/cam', progress=False)
    assert out['pairs'] == 1 and out['skipped'] == 2
    assert sorted(os.listdir(tmp_path / 'pairs' / 'right')) == ['000000.png']
    err = capsys.readouterr().err
    assert 'the right image is 64x40, its camera_info 64x48' in err, err
    assert 'train mono: 2 sets skipped' in err and 'process-bag' not in err, err
