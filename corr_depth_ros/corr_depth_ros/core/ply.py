"""Binary PLY point clouds (MeshLab, CloudCompare, Open3D read them)."""
import numpy as np


def write_ply(path: str, points_m: np.ndarray, rgb: np.ndarray) -> int:
    """Write the finite points of (..., 3) ``points_m`` with (..., 3) uint8 ``rgb`` colours.

    Invalid (NaN) points are left out: PLY has no notion of an organised cloud.
    Returns the number of points written.
    """
    points = points_m.reshape(-1, 3)
    colours = rgb.reshape(-1, 3)
    if points.shape[0] != colours.shape[0]:
        raise ValueError(f'{points.shape[0]} points but {colours.shape[0]} colours')
    keep = np.isfinite(points).all(axis=1)
    vertex = np.empty(int(keep.sum()), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                                              ('red', 'u1'), ('green', 'u1'), ('blue', 'u1')])
    for i, axis in enumerate('xyz'):
        vertex[axis] = points[keep, i]
    for i, channel in enumerate(('red', 'green', 'blue')):
        vertex[channel] = colours[keep, i]
    header = ('ply\nformat binary_little_endian 1.0\n'
              f'element vertex {vertex.shape[0]}\n'
              'property float x\nproperty float y\nproperty float z\n'
              'property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n')
    with open(path, 'wb') as f:
        f.write(header.encode('ascii'))
        f.write(vertex.tobytes())
    return int(vertex.shape[0])


def read_ply(path: str):
    """Read back what :func:`write_ply` wrote: (N, 3) float32 points, (N, 3) uint8 colours."""
    with open(path, 'rb') as f:
        count = None
        while True:
            line = f.readline().decode('ascii').strip()
            if line.startswith('element vertex'):
                count = int(line.split()[-1])
            if line == 'end_header':
                break
        data = np.frombuffer(f.read(), dtype=[('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                                              ('red', 'u1'), ('green', 'u1'), ('blue', 'u1')],
                             count=count)
    points = np.stack([data['x'], data['y'], data['z']], axis=1)
    colours = np.stack([data['red'], data['green'], data['blue']], axis=1)
    return points, colours
