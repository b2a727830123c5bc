"""`corr_depth process-bag`: a recorded stereo MCAP bag in, standard depth messages out."""
import numpy as np
import pytest

pytest.importorskip('mcap_ros2')
from std_msgs.msg import Header  # noqa: E402

from corr_depth_ros import bag, conversions  # noqa: E402
from corr_depth_ros.cli import main as cli_main  # noqa: E402
from corr_depth_ros.core.metrics import disparity_metrics  # noqa: E402
from corr_depth_ros.core.motorcycle import load_motorcycle  # noqa: E402


def _record(path, data, frames=2, compressed_right=False):
    writer = bag.BagWriter(str(path))
    geo = data['geometry']
    for i in range(frames):
        header = Header(frame_id='left_optical')
        header.stamp.sec = 10 + i
        t = (10 + i) * 10 ** 9
        left_info, right_info = conversions.stereo_camera_infos(geo, header, header)
        writer.write('/cam/left/camera_info', 'sensor_msgs/msg/CameraInfo', left_info, t)
        writer.write('/cam/right/camera_info', 'sensor_msgs/msg/CameraInfo', right_info, t)
        writer.write('/cam/left/image_rect', 'sensor_msgs/msg/Image',
                     conversions.array_to_image(data['left'], 'rgb8', header), t)
        if compressed_right:
            writer.write('/cam/right/image_rect/compressed', 'sensor_msgs/msg/CompressedImage',
                         conversions.rgb8_to_compressed(data['right'], header, 'png'), t)
        else:
            writer.write('/cam/right/image_rect', 'sensor_msgs/msg/Image',
                         conversions.array_to_image(data['right'], 'rgb8', header), t)
    writer.close()


def test_message_definition_includes_dependencies():
    text = bag.message_definition('stereo_msgs/msg/DisparityImage')
    for dep in ('MSG: sensor_msgs/Image', 'MSG: std_msgs/Header', 'MSG: sensor_msgs/RegionOfInterest',
                'MSG: builtin_interfaces/Time'):
        assert dep in text


@pytest.mark.parametrize('compressed_right', [False, True])
def test_process_stereo_bag(tmp_path, compressed_right):
    data = load_motorcycle()
    _record(tmp_path / 'in.mcap', data, compressed_right=compressed_right)
    rc = cli_main(['process-bag', str(tmp_path / 'in.mcap'), str(tmp_path / 'out.mcap'),
                   '--namespace', '/cam', '--no-progress'])
    assert rc == 0
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
