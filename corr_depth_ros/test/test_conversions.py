"""conversions: Image encodings (step padding, endianness), CameraInfo, clouds, disparity."""
import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from corr_depth_ros import conversions
from corr_depth_ros.core.motorcycle import motorcycle_geometry

HEADER = Header(frame_id='cam')


@pytest.mark.parametrize('encoding,shape,dtype', [
    ('mono8', (5, 7), np.uint8), ('mono16', (5, 7), np.uint16), ('rgb8', (5, 7, 3), np.uint8),
    ('bgr8', (5, 7, 3), np.uint8), ('rgba8', (5, 7, 4), np.uint8), ('bgra8', (5, 7, 4), np.uint8),
    ('32FC1', (5, 7), np.float32)])
def test_image_round_trip(encoding, shape, dtype):
    rng = np.random.default_rng(1)
    pixels = (rng.uniform(0, 200, size=shape)).astype(dtype)
    msg = conversions.array_to_image(pixels, encoding, HEADER)
    assert msg.header.frame_id == 'cam' and msg.step == shape[1] * np.dtype(dtype).itemsize * (
        shape[2] if len(shape) == 3 else 1)
    np.testing.assert_array_equal(conversions.image_to_array(msg), pixels)


def test_rgb8_from_every_encoding():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 255, size=(4, 6, 3), dtype=np.uint8)
    for enc, pixels in (('rgb8', rgb), ('bgr8', rgb[:, :, ::-1]),
                        ('rgba8', np.dstack([rgb, np.full((4, 6), 9, np.uint8)])),
                        ('bgra8', np.dstack([rgb[:, :, ::-1], np.zeros((4, 6), np.uint8)]))):
        out = conversions.image_to_rgb8(conversions.array_to_image(pixels, enc, HEADER))
        np.testing.assert_array_equal(out, rgb, err_msg=enc)
    grey16 = np.array([[0, 256 * 7 + 3, 255, 51200, 65535]], dtype=np.uint16)
    out = conversions.image_to_rgb8(conversions.array_to_image(grey16, 'mono16', HEADER))
    # round(v * 255 / 65535), as cv_bridge converts mono16 to rgb8 (the high byte gave 0, 200).
    assert out[0, :, 0].tolist() == [0, 7, 1, 199, 255] and out.shape == (1, 5, 3)
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = conversions.image_to_rgb8(conversions.array_to_image(every, 'mono16', HEADER))
    np.testing.assert_array_equal(out[..., 0], np.rint(every * (255 / 65535)).astype(np.uint8))


def test_step_padding_and_big_endian():
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    msg = Image(height=3, width=4, encoding='mono16', is_bigendian=1, step=10)
    padded = np.zeros((3, 10), dtype=np.uint8)
    padded[:, :8] = pixels.astype('>u2').view(np.uint8).reshape(3, 8)
    msg.data = padded.tobytes()
    np.testing.assert_array_equal(conversions.image_to_array(msg), pixels)


@pytest.mark.parametrize('mutate,match', [
    (lambda m: setattr(m, 'encoding', 'yuv422'), 'unsupported image encoding'),
    (lambda m: setattr(m, 'data', m.data[:-1]), 'data length'),
    (lambda m: setattr(m, 'step', 3), 'step'),
    (lambda m: (setattr(m, 'height', 0), setattr(m, 'data', [])), 'empty image'),
])
def test_bad_images_raise_clear_errors(mutate, match):
    msg = conversions.array_to_image(np.zeros((4, 5, 3), np.uint8), 'rgb8', HEADER)
    mutate(msg)
    with pytest.raises(conversions.ConversionError, match=match):
        conversions.image_to_rgb8(msg)


def test_camera_info_pair_round_trip_and_errors():
    geo = motorcycle_geometry()
    left, right = conversions.stereo_camera_infos(geo, HEADER, HEADER)
    assert conversions.stereo_geometry_from_camera_info(left, right) == geo
    right.width = 100
    with pytest.raises(conversions.ConversionError, match='sizes differ'):
        conversions.stereo_geometry_from_camera_info(left, right)
    left2, right2 = conversions.stereo_camera_infos(geo, HEADER, HEADER)
    left2.k = [0.0] * 9
    with pytest.raises(conversions.ConversionError, match='not calibrated'):
        conversions.stereo_geometry_from_camera_info(left2, right2)


def test_camera_intrinsics_of_a_rectified_image_come_from_p():
    """Rectified images are described by P (K is the raw camera's); K only when P is unset."""
    from sensor_msgs.msg import CameraInfo
    info = CameraInfo(width=640, height=480)
    info.k = [600.0, 0.0, 330.0, 0.0, 600.0, 250.0, 0.0, 0.0, 1.0]
    assert conversions.camera_intrinsics(info) == (600.0, 600.0, 330.0, 250.0)   # P all zero
    info.p = [520.0, 0.0, 318.0, 0.0, 0.0, 521.0, 238.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert conversions.camera_intrinsics(info) == (520.0, 521.0, 318.0, 238.0)
    info.p = [0.0, 0.0, 318.0, 0.0, 0.0, 0.0, 238.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    with pytest.raises(conversions.ConversionError, match='P has no valid focal length'):
        conversions.camera_intrinsics(info)
    info.p[0] = info.p[5] = 520.0
    # With the image's shape: the sizes must agree, and binning / ROI are refused.
    assert conversions.camera_intrinsics(info, (480, 640, 3))[0] == 520.0
    with pytest.raises(conversions.ConversionError, match='does not match the image size 320x240'):
        conversions.camera_intrinsics(info, (240, 320))
    info.binning_x = 2
    with pytest.raises(conversions.ConversionError, match='binning'):
        conversions.camera_intrinsics(info, (480, 640))
    info.binning_x = 0
    # An ROI covering the whole image means no ROI (CameraInfo.msg); a real one is refused.
    info.roi.width, info.roi.height = 640, 480
    assert conversions.camera_intrinsics(info, (480, 640))[0] == 520.0
    info.roi.width = 320
    with pytest.raises(conversions.ConversionError, match='region of interest'):
        conversions.camera_intrinsics(info, (480, 640))
    info.roi.width = info.roi.height = 0
    info.p[2] = float('nan')
    with pytest.raises(conversions.ConversionError,
                       match=r'P has no valid principal point \(cx=nan'):
        conversions.camera_intrinsics(info)
    info.p[2] = 318.0
    info.k = [0.0] * 9
    with pytest.raises(conversions.ConversionError, match='calibrated'):
        conversions.camera_intrinsics(info)


def test_stereo_camera_infos_with_binning_or_roi_are_refused():
    """As for one camera: intrinsics of the full-resolution image would be wrong for a binned
    or cropped one (they were used as they are)."""
    from corr_depth_ros.core.motorcycle import load_motorcycle
    from std_msgs.msg import Header
    geometry = load_motorcycle()['geometry']
    for change in ('binning', 'roi'):
        left, right = conversions.stereo_camera_infos(geometry, Header(), Header())
        if change == 'binning':
            right.binning_x = right.binning_y = 2
        else:
            left.roi.x_offset, left.roi.width, left.roi.height = 10, 40, 30
        with pytest.raises(conversions.ConversionError,
                           match=('right' if change == 'binning' else 'left') +
                           ' camera_info has binning or a region of interest'):
            conversions.stereo_geometry_from_camera_info(left, right)


def test_conversion_errors_name_their_input_and_their_cause():
    """A node converting several messages says which one is bad; a 16UC1 step below the row
    length says so; image_transport's compressedDepth is refused for colour images (a colour
    PNG labelled so was decoded and used)."""
    import cv2
    from sensor_msgs.msg import CompressedImage, Image
    with pytest.raises(conversions.ConversionError, match=r'^right image: unsupported'):
        with conversions.naming('right image'):
            conversions.image_to_rgb8(Image(encoding='yuv422', width=2, height=2, step=4,
                                            data=bytes(8)))
    depth = Image(encoding='16UC1', width=8, height=2, step=8, data=bytes(16))
    with pytest.raises(conversions.ConversionError, match='step 8 is less than 2 \\* width = 16'):
        conversions.depth_image_to_metres(depth)
    ok, png = cv2.imencode('.png', np.zeros((4, 4, 3), np.uint8))
    message = CompressedImage(format='32FC1; compressedDepth png', data=png.tobytes())
    with pytest.raises(conversions.ConversionError, match='compressedDepth'):
        conversions.compressed_to_rgb8(message)


def test_image_from_a_one_row_slice_has_its_own_step():
    """numpy keeps a wide parent's row stride on a one-row slice it calls contiguous."""
    big = np.arange(4 * 10, dtype=np.float32).reshape(4, 10)
    msg = conversions.array_to_image(big[1:2, 2:7], '32FC1', HEADER)
    assert msg.step == 5 * 4 and len(msg.data) == 20
    assert np.array_equal(conversions.image_to_array(msg), big[1:2, 2:7])


def test_pointcloud_and_disparity_messages():
    rng = np.random.default_rng(3)
    points = rng.normal(size=(6, 8, 3)).astype(np.float32)
    points[0, 0] = np.nan
    rgb = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
    cloud = conversions.make_pointcloud2(points, rgb, HEADER)
    assert cloud.point_step == 16 and cloud.row_step == 16 * 8 and len(cloud.data) == 16 * 48
    back_points, back_rgb = conversions.pointcloud2_to_arrays(cloud)
    np.testing.assert_array_equal(back_points, points)
    np.testing.assert_array_equal(back_rgb, rgb)
    # PCL/RViz packing: 0x00RRGGBB
    packed = np.frombuffer(bytes(cloud.data), dtype=np.uint32).reshape(48, 4)[1, 3]
    r, g, b = rgb.reshape(-1, 3)[1]
    assert packed == (int(r) << 16) | (int(g) << 8) | int(b)
    # Clouds it cannot read as such are refused, not misread.
    for field, value, match in (('is_bigendian', True, 'little-endian'),
                                ('row_step', 16 * 8 + 4, 'row padding'),
                                ('data', cloud.data[:-16], 'bytes for height')):
        bad = conversions.make_pointcloud2(points, rgb, HEADER)
        setattr(bad, field, value)
        with pytest.raises(conversions.ConversionError, match=match):
            conversions.pointcloud2_to_arrays(bad)
    bad = conversions.make_pointcloud2(points, rgb, HEADER)
    bad.fields[3].offset = 16
    with pytest.raises(conversions.ConversionError, match='offsets'):
        conversions.pointcloud2_to_arrays(bad)


def test_pointcloud_packer_reuses_its_buffer_and_stays_exact():
    """The nodes' packer writes each frame into one buffer: a second frame must fully replace
    the first (no stale points or colours), the 0x00 top byte of rgb must stay zero, and a new
    size must get a new buffer. The message is checked after a real serialise/deserialise."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2

    rng = np.random.default_rng(4)
    packer = conversions.PointCloud2Packer()
    first = packer.pack(np.ones((6, 8, 3), np.float32), np.full((6, 8, 3), 255, np.uint8), HEADER)
    first_buffer = first.data
    for height, width in ((6, 8), (6, 8), (3, 5)):
        points = rng.normal(size=(height, width, 3)).astype(np.float32)
        points[1, 2] = np.nan
        rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        cloud = deserialize_message(serialize_message(packer.pack(points, rgb, HEADER)),
                                    PointCloud2)
        back_points, back_rgb = conversions.pointcloud2_to_arrays(cloud)
        np.testing.assert_array_equal(back_points, points)
        np.testing.assert_array_equal(back_rgb, rgb)
        top_bytes = np.frombuffer(bytes(cloud.data), np.uint8).reshape(-1, 16)[:, 15]
        assert not top_bytes.any()
        assert (packer._data is first_buffer) == ((height, width) == (6, 8))
    with pytest.raises(conversions.ConversionError, match='must be'):
        packer.pack(np.zeros((2, 2, 3), np.float32), np.zeros((2, 3, 3), np.uint8), HEADER)


@pytest.mark.parametrize('dirty', [False, True])
def test_pointcloud_packer_from_planes_equals_packing_points(dirty):
    """pack_planes (x, y, z planes from depth_to_point_planes, as the nodes pack clouds) gives
    the bytes pack gives for depth_to_points, NaN points included, into a buffer with stale
    contents; depth that is clean (NaN invalid) is used as the z plane without a copy."""
    from corr_depth_ros.core.geometry import depth_to_point_planes, depth_to_points
    rng = np.random.default_rng(6)
    depth = rng.uniform(0.5, 3.0, size=(6, 8)).astype(np.float32)
    depth[2, 3] = np.nan
    if dirty:
        depth[0, :3] = [0.0, -1.0, np.inf]
    rgb = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    expected = conversions.make_pointcloud2(depth_to_points(depth, 300.0, 310.0, 4.0, 3.0), rgb,
                                            HEADER)
    packer = conversions.PointCloud2Packer()
    packer.pack(np.ones((6, 8, 3), np.float32), np.full((6, 8, 3), 255, np.uint8), HEADER)
    x, y, z = depth_to_point_planes(depth, 300.0, 310.0, 4.0, 3.0)
    assert (z is depth) == (not dirty)
    cloud = packer.pack_planes(x, y, z, rgb, HEADER)
    assert bytes(cloud.data) == bytes(expected.data)
    assert (cloud.height, cloud.width, cloud.point_step) == (6, 8, 16)
    with pytest.raises(conversions.ConversionError, match='must'):
        packer.pack_planes(x, y, z[:, :4], rgb, HEADER)


def test_disparity_message_fields():
    rng = np.random.default_rng(3)
    geo = motorcycle_geometry(8, 6)
    disp = rng.uniform(40, 60, size=(6, 8)).astype(np.float32)
    msg = conversions.make_disparity_msg(disp, geo, HEADER, 40.0, 60.0, (1, 0, 7, 6))
    assert msg.f == pytest.approx(geo.fx) and msg.t == pytest.approx(geo.baseline_m)
    assert (msg.valid_window.x_offset, msg.valid_window.width) == (1, 7)
    np.testing.assert_array_equal(conversions.disparity_msg_to_array(msg), disp)



def test_depth_camera_info_from_a_decoded_bag_message():
    """process-bag hands over camera_info decoded from MCAP (not rclpy classes): copied field
    by field into a real CameraInfo, the sub-message included."""
    from types import SimpleNamespace
    roi = SimpleNamespace(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    decoded = SimpleNamespace(height=480, width=640, distortion_model='plumb_bob',
                              d=[0.1, 0.0, 0.0, 0.0, 0.0], k=[500.0, 0, 320, 0, 500, 240, 0, 0, 1],
                              r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1],
                              p=[480.0, 0, 318, 0, 0, 480, 242, 0, 0, 0, 1, 0],
                              binning_x=0, binning_y=0, roi=roi)
    info = conversions.depth_camera_info(decoded, HEADER)
    assert info.p[0] == 480.0 and list(info.d) == [0.1, 0.0, 0.0, 0.0, 0.0]
    assert type(info.roi).__name__ == 'RegionOfInterest' and info.header == HEADER


def test_compressed_images_are_checked_before_and_while_decoding():
    """From a fuzzing review: a PNG claiming 40000x40000 made OpenCV raise its own error, which
    ended a whole process-bag run; a 629-byte JPEG claiming 30000x30000 decoded to 5 GB; a PNG
    chunk length past the data sized a 3 GB buffer; a 16-bit PNG was brought to 8 bits by its
    high byte (raw mono16 rounds); a '16UC1; png' depth image was taken as a colour image."""
    import cv2
    import zlib
    from sensor_msgs.msg import CompressedImage

    def png_claiming(width, height):
        def chunk(kind, body):
            return (len(body).to_bytes(4, 'big') + kind + body
                    + zlib.crc32(kind + body).to_bytes(4, 'big'))
        ihdr = width.to_bytes(4, 'big') + height.to_bytes(4, 'big') + bytes([8, 2, 0, 0, 0])
        return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr)
                + chunk(b'IDAT', zlib.compress(b'\x00' * 16)) + chunk(b'IEND', b''))
    bomb = CompressedImage(format='png', data=png_claiming(40000, 40000))
    with pytest.raises(conversions.ConversionError, match='claims 40000x40000 pixels'):
        conversions.compressed_to_rgb8(bomb)
    # Past our limit, OpenCV's own refusal is a ConversionError too (one frame, not the run).
    with pytest.raises(conversions.ConversionError, match='could not decode'):
        conversions.compressed_to_rgb8(bomb, max_pixels=10 ** 12)
    ok, jpeg = cv2.imencode('.jpg', np.zeros((16, 16, 3), np.uint8))
    jpeg = bytearray(jpeg.tobytes())
    sof = next(i for i in range(len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] == 0xC0)
    assert conversions.compressed_size(bytes(jpeg)) == (16, 16)
    jpeg[sof + 5:sof + 9] = (30000).to_bytes(2, 'big') * 2
    with pytest.raises(conversions.ConversionError, match='claims 30000x30000 pixels'):
        conversions.compressed_to_rgb8(CompressedImage(format='jpeg', data=bytes(jpeg)))
    damaged = bytearray(png_claiming(4, 4))
    damaged[33:37] = (3_036_682_027).to_bytes(4, 'big')            # the IDAT length
    with pytest.raises(conversions.ConversionError, match='damaged PNG'):
        conversions.compressed_to_rgb8(CompressedImage(format='png', data=bytes(damaged)))
    # 16 bits as the raw path: every value rounds as mono16 does.
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    ok, png16 = cv2.imencode('.png', values)
    decoded = conversions.compressed_to_rgb8(
        CompressedImage(format='mono16; png compressed mono16', data=png16.tobytes()))
    raw = conversions.image_to_rgb8(conversions.array_to_image(values, 'mono16', Header()))
    np.testing.assert_array_equal(decoded, raw)
    with pytest.raises(conversions.ConversionError, match="encoding '16UC1' for a camera image"):
        conversions.compressed_to_rgb8(
            CompressedImage(format='16UC1; png compressed ', data=png16.tobytes()))
    # A 16-bit colour camera's image decodes too, and bytes after a PNG's end are not read.
    ok, bgr16 = cv2.imencode('.png', np.full((4, 6, 3), 257 * 9, np.uint16))
    assert conversions.compressed_to_rgb8(CompressedImage(
        format='bgr16; png compressed bgr16', data=bgr16.tobytes())).max() == 9
    ok, tail = cv2.imencode('.png', np.zeros((4, 6, 3), np.uint8))
    conversions.compressed_to_rgb8(CompressedImage(format='png', data=tail.tobytes() + bytes(8)))
    # Colour and grey stay as they were.
    rgb = (np.arange(4 * 6 * 3) % 256).astype(np.uint8).reshape(4, 6, 3)
    np.testing.assert_array_equal(conversions.compressed_to_rgb8(
        conversions.rgb8_to_compressed(rgb, Header(), 'png')), rgb)
    ok, grey = cv2.imencode('.png', rgb[:, :, 0])
    np.testing.assert_array_equal(conversions.compressed_to_rgb8(
        CompressedImage(format='png', data=grey.tobytes())), np.repeat(rgb[:, :, :1], 3, 2))


def test_empty_depth_and_empty_arrays_are_refused():
    for height, width in ((7, 0), (0, 5)):
        depth = Image(height=height, width=width, encoding='16UC1', step=2 * width)
        with pytest.raises(conversions.ConversionError, match='empty depth image'):
            conversions.depth_image_to_metres(depth)
    with pytest.raises(conversions.ConversionError, match='empty image'):
        conversions.array_to_image(np.zeros((0, 5), np.uint8), 'mono8', Header())


def test_depth_camera_info_of_a_k_only_camera_has_the_p_depth_was_computed_with():
    """K filled, P all zero (a driver that fills K alone): depth and points come from K, and
    the published depth/camera_info had P all zero, so consumers projecting with P could not
    use it."""
    from sensor_msgs.msg import CameraInfo
    info = CameraInfo(width=64, height=48)
    info.k = [50.0, 0.0, 32.0, 0.0, 51.0, 24.0, 0.0, 0.0, 1.0]
    out = conversions.depth_camera_info(info, Header())
    assert list(out.p) == [50.0, 0.0, 32.0, 0.0, 0.0, 51.0, 24.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert conversions.camera_intrinsics(out, (48, 64)) == \
        conversions.camera_intrinsics(info, (48, 64))


def test_disparity_validity_is_the_messages_own():
    """Invalid is below min_disparity (a negative search minimum puts valid values below 0;
    make demo took "> 0" as the test)."""
    from stereo_msgs.msg import DisparityImage
    msg = DisparityImage(min_disparity=-8.0, max_disparity=56.0)
    msg.image = conversions.array_to_image(np.array([[-9.0, -3.0, 0.0, 12.5]], np.float32),
                                           '32FC1', Header())
    got = conversions.disparity_msg_to_array(msg, invalid_as_nan=True)
    np.testing.assert_array_equal(np.isnan(got), [[True, False, False, False]])
