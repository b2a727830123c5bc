"""Random scene description: analytic primitives, their poses, materials, light and cameras.

Frames: the world frame is z-up for the tabletop layout (table top at z = 0) and equal to the
first camera's optical frame for the chaotic and fronto-plane layouts. Cameras are REP 103
optical frames (x right, y down, z forward); poses are ``T_world_from_cam`` 4x4 float64.

A scene is a handful of numpy arrays (one row per primitive) so that it is cheap to build,
scale and hand to the ray caster; all randomness comes from one ``torch.Generator`` through
:class:`Rng`, so the same seed gives the same scene on any device.
"""
import colorsys
import dataclasses
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..seeding import seeded_generator
from .config import LAYOUTS, SynthConfig
from .photos import PHOTO_SETS

# Primitive kinds. Every primitive lives in its own local frame:
#   PLANE     rectangle in z = 0, half sizes (hx, hy, unused); inf half sizes = infinite plane
#   ELLIPSOID semi-axes (a, b, c)
#   BOX       half extents (hx, hy, hz)
#   CYLINDER  elliptic cross-section radii (rx, ry) in xy, half height hz along z, capped
#   ROOM      the inside of a box with half extents (hx, hy, hz): the camera is inside it
PLANE, ELLIPSOID, BOX, CYLINDER, ROOM = 0, 1, 2, 3, 4

# Texture family codes, in the order of config.TEXTURES.
TEXTURE_CODES = {'constant': 0, 'fbm': 1, 'stripes': 2, 'checker': 3, 'blobs': 4, 'dots': 5,
                 'photo': 6}

# Columns of Scene.texture_params: why these numbers is explained in textures.py; PHOTO is the
# photograph's index in the scene's photo set (photos.py; 0 for the other families).
SOFTNESS, WARP, THRESHOLD, DOT_RADIUS, CONTRAST, PHOTO = range(6)
# Photo textures' frequency relative to the procedural families' (log-uniform factor).
PHOTO_FREQ_FACTOR_RANGE = (0.5, 8.0)


class Rng:
    """Scalar/array draws from one ``torch.Generator`` (CPU), returned as Python/numpy values.

    All sampling goes through here so that a sample depends only on its seed, never on a
    global RNG or on the render device. Values are drawn from the generator in blocks and
    handed out one by one: a scene needs a few hundred scalars, and one torch call per scalar
    would cost more than the ray casting of a small image.
    """

    _BLOCK = 512

    def __init__(self, seed: int):
        # All 64 bits of the seed count (manual_seed alone keeps the low 32: seeds 2**32 apart
        # rendered the same sample).
        self.generator = seeded_generator(seed)
        self._uniform = np.empty(0)
        self._normal = np.empty(0)

    def _take(self, pool: str, count: int) -> np.ndarray:
        buffer = getattr(self, pool)
        if buffer.size < count:
            draw = torch.rand if pool == '_uniform' else torch.randn
            fresh = draw(max(self._BLOCK, count), generator=self.generator,
                         dtype=torch.float64).numpy()
            buffer = np.concatenate([buffer, fresh])
        setattr(self, pool, buffer[count:])
        return buffer[:count]

    def uniform(self, lo: float, hi: float, size: Optional[int] = None):
        u = self._take('_uniform', 1 if size is None else size)
        value = lo + (hi - lo) * u
        return float(value[0]) if size is None else value

    def log_uniform(self, lo: float, hi: float, size: Optional[int] = None):
        value = np.exp(self.uniform(math.log(lo), math.log(hi), size))
        return float(value) if size is None else value

    def integer(self, lo: int, hi_inclusive: int) -> int:
        """Uniform integer in [lo, hi_inclusive]."""
        span = int(hi_inclusive) - int(lo) + 1
        return int(lo) + min(int(self.uniform(0.0, 1.0) * span), span - 1)

    def bernoulli(self, p: float) -> bool:
        return self.uniform(0.0, 1.0) < p

    def choice(self, weights: Sequence[float]) -> int:
        cumulative = np.cumsum(np.asarray(weights, dtype=np.float64))
        return int(np.searchsorted(cumulative, self.uniform(0.0, cumulative[-1]), side='right')
                   .clip(0, len(weights) - 1))

    def normal(self, size: int) -> np.ndarray:
        return self._take('_normal', size).copy()

    def unit_vector(self) -> np.ndarray:
        v = self.normal(3)
        return v / max(np.linalg.norm(v), 1e-12)

    def rotation(self) -> np.ndarray:
        """Uniformly random rotation matrix (3, 3), from a normalised Gaussian quaternion."""
        q = self.normal(4)
        w, x, y, z = q / max(np.linalg.norm(q), 1e-12)
        return np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@dataclass
class Scene:
    """Primitives (P rows), light and layout of one sample. Lengths in metres.

    ``rotation`` (P,3,3) and ``translation`` (P,3) are ``T_world_from_object``. ``instance``
    is 0 for background (room, table, fronto plane is an object) and 1..n for objects.
    ``bound_radius_m`` is the radius of a sphere around the local origin that contains the
    primitive (inf for unbounded ones); the ray caster uses it to restrict each primitive to
    its screen-space box. Materials: see textures.py and shading.py.
    """

    kind: np.ndarray  # (P,) int
    size: np.ndarray  # (P,3) float64, metres, meaning per kind (see module constants)
    rotation: np.ndarray  # (P,3,3)
    translation: np.ndarray  # (P,3), metres
    instance: np.ndarray  # (P,) int
    bound_radius_m: np.ndarray  # (P,)
    texture: np.ndarray  # (P,) int, TEXTURE_CODES
    texture_freq_per_m: np.ndarray  # (P,) texture units per metre of local coordinates
    texture_offset: np.ndarray  # (P,3) texture units
    texture_dir: np.ndarray  # (P,3) unit stripe direction
    texture_params: np.ndarray  # (P,6) softness, warp, threshold, dot radius, contrast, photo
    palette: np.ndarray  # (P,2,3) linear albedo of the two pattern colours
    colour_jitter: np.ndarray  # (P,)
    specular_strength: np.ndarray  # (P,)
    shininess: np.ndarray  # (P,)
    light_dir_world: np.ndarray  # (3,) unit vector towards the light
    light_intensity: float
    ambient: float
    layout: str
    target_world: np.ndarray  # (3,) point the cameras look at (clutter centre)
    up_world: np.ndarray  # (3,) the layout's up direction (for look-at cameras)
    photo_set: str = 'train'  # photographs of the 'photo' family (photos.PHOTO_SETS)

    @property
    def num_primitives(self) -> int:
        return int(self.kind.shape[0])

    def scaled(self, factor: float, centre_world: np.ndarray) -> 'Scene':
        """The scene scaled by ``factor`` about ``centre_world`` (a camera centre).

        Seen from a camera at ``centre_world`` the image is unchanged and every depth is
        multiplied by ``factor``. Texture frequencies are divided by it so that every surface
        point keeps its texture coordinate (and thus its colour).
        """
        centre = np.asarray(centre_world, dtype=np.float64)
        return dataclasses.replace(
            self, size=self.size * factor,
            translation=centre + factor * (self.translation - centre),
            bound_radius_m=self.bound_radius_m * factor,
            texture_freq_per_m=self.texture_freq_per_m / factor,
            target_world=centre + factor * (self.target_world - centre))


@dataclass
class _Primitive:
    kind: int
    size: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    instance: int


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray,
            roll_rad: float = 0.0) -> Optional[np.ndarray]:
    """``T_world_from_cam`` (4,4) of an optical-frame camera at ``position`` looking at
    ``target`` with image-up towards ``up``; None if the view direction is parallel to up."""
    forward = np.asarray(target, np.float64) - np.asarray(position, np.float64)
    norm = np.linalg.norm(forward)
    if norm < 1e-9:
        return None
    z = forward / norm
    x = np.cross(z, up)
    if np.linalg.norm(x) < 0.05:
        return None
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # optical y points down the image
    c, s = math.cos(roll_rad), math.sin(roll_rad)
    rotation = np.stack([x, y, z], axis=1) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = position
    return pose


def support_m(kind: int, size: np.ndarray, direction_local: np.ndarray) -> float:
    """Support function: max over the primitive of ``p . direction`` (unit direction, local)."""
    u = np.asarray(direction_local, np.float64)
    if kind == BOX:
        return float(np.abs(u) @ size)
    if kind == ELLIPSOID:
        return float(np.linalg.norm(u * size))
    if kind == CYLINDER:
        return float(size[2] * abs(u[2]) + math.hypot(size[0] * u[0], size[1] * u[1]))
    raise ValueError(f'support_m: no support function for primitive kind {kind}')


def bound_radius(kind: int, size: np.ndarray) -> float:
    """Radius of a local-origin sphere containing the primitive (inf when unbounded)."""
    if kind == ELLIPSOID:
        return float(size.max())
    if kind == BOX:
        return float(np.linalg.norm(size))
    if kind == CYLINDER:
        return float(math.hypot(max(size[0], size[1]), size[2]))
    return math.inf


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _sample_shape(rng: Rng, config: SynthConfig, extent_m: float) -> Tuple[int, np.ndarray]:
    """(kind, size) of one object whose largest extent is about ``extent_m``."""
    shape = config.shapes[rng.choice(config.shape_weights)]
    half = 0.5 * extent_m
    if shape == 'ellipsoid':
        return ELLIPSOID, half * np.array([1.0, rng.uniform(0.4, 1.0), rng.uniform(0.4, 1.0)])
    if shape == 'box':
        return BOX, half * np.array([1.0, rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)])
    if shape == 'cylinder':
        radius = half * rng.uniform(0.3, 0.8)
        return CYLINDER, np.array([radius, radius * rng.uniform(0.7, 1.0), half])
    if shape == 'rod':  # thin structure: a few pixels wide or less
        radius = half * rng.log_uniform(0.01, 0.06)
        return CYLINDER, np.array([radius, radius, half * rng.uniform(1.0, 2.0)])
    if shape == 'board':
        return BOX, half * np.array([1.0, rng.uniform(0.4, 1.0), rng.log_uniform(0.01, 0.06)])
    # disc: a plate or lid
    return CYLINDER, np.array([half, half, half * rng.log_uniform(0.01, 0.05)])


def _hsv_to_rgb_linear(h: float, s: float, v: float) -> np.ndarray:
    rgb = np.array(colorsys.hsv_to_rgb(h % 1.0, s, v))
    return rgb ** 2.2  # sRGB-ish display colour to linear albedo


def _sample_material(rng: Rng, config: SynthConfig, cycles_per_m: float) -> dict:
    """Texture family, palette and specular parameters of one primitive."""
    family = config.textures[rng.choice(config.texture_weights)]
    jitter = rng.uniform(*config.colour_jitter_range)
    hue = rng.uniform(0.0, 1.0)
    sat = rng.uniform(0.0, 0.9)
    value = rng.uniform(0.25, 0.95)
    c0 = _hsv_to_rgb_linear(hue, sat, value)
    # Second colour: analogous, complementary or a light/dark version; low contrast sometimes,
    # because weakly textured surfaces are a real failure case of matchers.
    mode = rng.integer(0, 2)
    hue1 = hue + (rng.uniform(-0.1, 0.1) if mode != 1 else 0.5 + rng.uniform(-0.08, 0.08))
    value1 = float(np.clip(value + rng.uniform(-0.7, 0.7), 0.05, 1.0))
    c1 = _hsv_to_rgb_linear(hue1, rng.uniform(0.0, 0.9), value1)
    params = np.array([
        rng.log_uniform(0.03, 1.0),  # softness of stripe/checker/dot edges (1 = sinusoid)
        rng.uniform(0.0, 1.5) if rng.bernoulli(0.5) else 0.0,  # noise warp of stripes, cycles
        rng.uniform(-0.6, 0.6),  # blob threshold, noise standard deviations
        rng.uniform(0.15, 0.42),  # dot radius, cells
        rng.uniform(1.0, 5.0),  # fbm/blob contrast
        # Drawn only for photos, so that configs without them render as before.
        rng.integer(0, len(PHOTO_SETS[config.photo_set]) - 1) if family == 'photo' else 0,
    ])
    if family == 'photo':
        # Photographs are drawn at a random scale (log-uniform), drawn only for them so that
        # configs without photos render as before: fine detail from near to far surfaces.
        cycles_per_m *= rng.log_uniform(*PHOTO_FREQ_FACTOR_RANGE)
    return dict(
        texture=TEXTURE_CODES[family],
        texture_freq_per_m=cycles_per_m,
        texture_offset=rng.uniform(0.0, 64.0, 3),
        texture_dir=rng.unit_vector(),
        texture_params=params,
        palette=np.stack([c0, c1]),
        # Colour variation rides on the noise field, so only noise-based families get it
        # (printed patterns stay crisp, and their pixels skip the noise lookup).
        colour_jitter=jitter if family in ('fbm', 'blobs') else 0.0,
        specular_strength=rng.uniform(*config.specular_strength_range),
        shininess=rng.log_uniform(*config.shininess_range),
    )


def _resting_translation(kind, size, rotation, xy, base_z) -> np.ndarray:
    """Translation that puts the primitive's lowest point on the plane z = base_z."""
    down_local = rotation.T @ np.array([0.0, 0.0, -1.0])
    return np.array([xy[0], xy[1], base_z + support_m(kind, size, down_local)])


def _tabletop_objects(rng, config, scale) -> Tuple[List[_Primitive], float]:
    clutter_radius = scale * rng.uniform(*config.clutter_radius_m_range)
    count = rng.integer(*config.num_objects_range)
    objects: List[_Primitive] = []
    for i in range(count):
        extent = clutter_radius * rng.log_uniform(*config.object_size_over_clutter_range)
        kind, size = _sample_shape(rng, config, extent)
        yaw = _rot_z(rng.uniform(0.0, 2 * math.pi))
        if rng.bernoulli(config.tilt_prob):
            rotation = rng.rotation()
        elif kind == CYLINDER and size[2] > 2 * size[0] and rng.bernoulli(0.5):
            rotation = yaw @ _rot_x(math.pi / 2)  # a rod or bottle lying on the table
        else:
            rotation = yaw
        stack_on = rng.integer(0, i - 1) if i > 0 and rng.bernoulli(config.stack_prob) else -1
        if stack_on >= 0:
            below = objects[stack_on]
            top = below.translation[2] + support_m(below.kind, below.size,
                                                   below.rotation.T @ np.array([0.0, 0.0, 1.0]))
            xy = below.translation[:2] + 0.3 * extent * rng.normal(2)
            translation = _resting_translation(kind, size, rotation, xy, top)
        else:
            radius, angle = clutter_radius * math.sqrt(rng.uniform(0, 1)), rng.uniform(0, 6.3)
            xy = np.array([radius * math.cos(angle), radius * math.sin(angle)])
            translation = _resting_translation(kind, size, rotation, xy, 0.0)
        objects.append(_Primitive(kind, size, rotation, translation, i + 1))
    return objects, clutter_radius


def _chaotic_objects(rng, config, scale, fx, cx, cy, width, height) -> List[_Primitive]:
    """Objects at log-uniform depth inside the first camera's frustum (world = its frame)."""
    count = rng.integer(*config.num_objects_range)
    objects = []
    for i in range(count):
        depth = scale * rng.log_uniform(*config.chaotic_depth_m_range)
        # Slightly beyond the image border so that objects also enter from the sides.
        u = rng.uniform(-0.1 * width, 1.1 * width)
        v = rng.uniform(-0.1 * height, 1.1 * height)
        extent = depth * rng.log_uniform(*config.chaotic_size_frac_range)
        kind, size = _sample_shape(rng, config, extent)
        centre = np.array([(u - cx) / fx * depth, (v - cy) / fx * depth, depth])
        objects.append(_Primitive(kind, size, rng.rotation(), centre, i + 1))
    return objects


def _room(rng, config, scale, rotation, points, radii, floor_z=None) -> _Primitive:
    """ROOM primitive enclosing the given points (+radii) with a random margin per side."""
    local = (np.asarray(points) @ rotation)  # rows: R^T p
    lo = (local - np.asarray(radii)[:, None]).min(axis=0)
    hi = (local + np.asarray(radii)[:, None]).max(axis=0)
    margins = scale * rng.log_uniform(*config.room_margin_m_range, size=6)
    lo = lo - margins[:3]
    hi = hi + margins[3:]
    if floor_z is not None:
        lo[2] = floor_z  # rotation is a yaw, so local z is world z
    centre_local = 0.5 * (lo + hi)
    return _Primitive(ROOM, 0.5 * (hi - lo), rotation, rotation @ centre_local, 0)


def sample_scene(rng: Rng, config: SynthConfig, layout: str, fx: float, cx: float, cy: float,
                 width: int, height: int, num_cameras: int = 1,
                 camera_margin_m: float = 0.0) -> Tuple[Scene, List[np.ndarray]]:
    """A random scene and ``num_cameras`` (1 or 2) look-at camera poses ``T_world_from_cam``.

    The second camera (multiview) orbits the clutter centre by a random angle from
    ``config.view_angle_deg_range`` and is kept out of every object's bounding sphere.
    ``camera_margin_m`` makes the room leave space for a rig (e.g. the stereo baseline) around
    the first camera. Raises ValueError for an unknown layout.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'unknown layout {layout!r}; choose from {LAYOUTS}')
    scale = rng.log_uniform(*config.scene_scale_range)
    background: List[_Primitive] = []
    floor_z = None
    up = np.array([0.0, 0.0, 1.0])
    if layout == 'tabletop':
        objects, clutter_radius = _tabletop_objects(rng, config, scale)
        target = np.array([0.0, 0.0, 0.0])
        if objects:
            target = np.mean([o.translation for o in objects], axis=0)
        target = target + 0.2 * clutter_radius * np.append(rng.normal(2), 0.0)
        distance = clutter_radius * rng.uniform(*config.camera_distance_over_clutter_range)
        elevation = math.radians(rng.uniform(*config.camera_elevation_deg_range))
        azimuth = rng.uniform(0.0, 2 * math.pi)
        position = target + distance * np.array([math.cos(elevation) * math.cos(azimuth),
                                                 math.cos(elevation) * math.sin(azimuth),
                                                 math.sin(elevation)])
        # Back off until the camera is outside every object (a tall stack can reach it).
        for _ in range(20):
            if not _inside_any(position, objects):
                break
            position = target + 1.25 * (position - target)
        roll = math.radians(rng.uniform(*config.camera_roll_deg_range))
        first = look_at(position, target, up, roll)
        table_half = np.array([clutter_radius * rng.uniform(1.6, 4.0),
                               clutter_radius * rng.uniform(1.6, 4.0), 0.02 * scale])
        table_rotation = _rot_z(rng.uniform(0.0, 2 * math.pi))
        background.append(_Primitive(BOX, table_half, table_rotation,
                                     np.array([0.0, 0.0, -table_half[2]]), 0))
        floor_z = -scale * rng.uniform(0.6, 0.9)
        light_elevation = math.radians(rng.uniform(25.0, 85.0))
        light_azimuth = rng.uniform(0.0, 2 * math.pi)
        light = np.array([math.cos(light_elevation) * math.cos(light_azimuth),
                          math.cos(light_elevation) * math.sin(light_azimuth),
                          math.sin(light_elevation)])
        room_rotation = _rot_z(rng.uniform(0.0, 2 * math.pi))
    else:
        first = np.eye(4)
        up = np.array([0.0, -1.0, 0.0])  # image-up of the first camera
        if layout == 'chaotic':
            objects = _chaotic_objects(rng, config, scale, fx, cx, cy, width, height)
            depth = float(np.median([o.translation[2] for o in objects]))
        else:  # fronto_plane: one textured infinite plane facing the camera
            depth = scale * rng.log_uniform(*config.chaotic_depth_m_range)
            objects = [_Primitive(PLANE, np.array([math.inf, math.inf, 0.0]), np.eye(3),
                                  np.array([0.0, 0.0, depth]), 1)]
        target = np.array([0.0, 0.0, depth])
        # Light from the camera's hemisphere so that most visible faces are lit.
        light = rng.unit_vector() + np.array([0.0, -0.5, -1.2])
        light /= np.linalg.norm(light)
        room_rotation = rng.rotation() if layout == 'chaotic' else np.eye(3)

    poses = [first]
    if num_cameras == 2:
        poses.append(_second_camera(rng, config, layout, first, target, up, objects))
    elif num_cameras != 1:
        raise ValueError(f'num_cameras must be 1 or 2, got {num_cameras}')

    bounded = [o for o in objects if o.kind != PLANE]
    points = [p[:3, 3] for p in poses] + [o.translation for o in bounded]
    radii = [camera_margin_m] * len(poses) + [bound_radius(o.kind, o.size) for o in bounded]
    if layout == 'tabletop':
        corners = np.array([[sx, sy, 0.0] for sx in (-1, 1) for sy in (-1, 1)]) * table_half
        points += list(corners @ background[0].rotation.T)
        radii += [0.0] * 4
    elif layout == 'fronto_plane':
        # The room must not hide the plane: it encloses where each camera's image corners
        # meet the plane, pushed just behind it, so that the far wall lies behind the plane
        # and the side walls outside the views (a view that reaches past the plane's horizon
        # still sees walls there). The rig margin covers the stereo camera beside the first.
        plane_z = float(objects[0].translation[2])
        for index, pose in enumerate(poses):
            for u, v in ((-0.5, -0.5), (width - 0.5, -0.5), (-0.5, height - 0.5),
                         (width - 0.5, height - 0.5)):
                ray = pose[:3, :3] @ np.array([(u - cx) / fx, (v - cy) / fx, 1.0])
                if ray[2] <= 1e-9:
                    continue
                t = (plane_z - pose[2, 3]) / ray[2]
                if 0 < t < 1e3 * plane_z:
                    points.append(pose[:3, 3] + t * ray + np.array([0.0, 0.0, 0.01 * plane_z]))
                    radii.append(camera_margin_m if index == 0 else 0.0)
    background.append(_room(rng, config, scale, room_rotation, points, radii, floor_z))

    primitives = background + objects
    materials = []
    for prim in primitives:
        if prim.instance == 0 or prim.kind == PLANE:
            cycles = rng.uniform(*config.background_cycles_per_m_range) / scale
        else:
            cycles = (rng.log_uniform(*config.texture_cycles_per_object_range)
                      / (2 * prim.size.max()))
        materials.append(_sample_material(rng, config, cycles))

    def stack(key):
        return np.stack([np.asarray(m[key], dtype=np.float64) for m in materials])

    scene = Scene(
        kind=np.array([p.kind for p in primitives], dtype=np.int64),
        size=np.stack([p.size for p in primitives]).astype(np.float64),
        rotation=np.stack([p.rotation for p in primitives]),
        translation=np.stack([p.translation for p in primitives]).astype(np.float64),
        instance=np.array([p.instance for p in primitives], dtype=np.int64),
        bound_radius_m=np.array([bound_radius(p.kind, p.size) for p in primitives]),
        texture=np.array([m['texture'] for m in materials], dtype=np.int64),
        texture_freq_per_m=stack('texture_freq_per_m'),
        texture_offset=stack('texture_offset'),
        texture_dir=stack('texture_dir'),
        texture_params=stack('texture_params'),
        palette=stack('palette'),
        colour_jitter=stack('colour_jitter'),
        specular_strength=stack('specular_strength'),
        shininess=stack('shininess'),
        light_dir_world=light,
        light_intensity=rng.uniform(*config.light_intensity_range),
        ambient=rng.uniform(*config.ambient_range),
        layout=layout,
        target_world=np.asarray(target, np.float64),
        up_world=up,
        photo_set=config.photo_set,
    )
    return scene, poses


def _second_camera(rng, config, layout, first, target, up, objects) -> np.ndarray:
    """Camera B: camera A's position rotated about the clutter centre, looking at it."""
    offset = first[:3, 3] - target
    distance = np.linalg.norm(offset)
    pose = None
    for attempt in range(32):
        angle = math.radians(rng.uniform(*config.view_angle_deg_range))
        if attempt < 24:
            axis = np.cross(offset / distance, rng.unit_vector())
            axis /= max(np.linalg.norm(axis), 1e-9)
        else:  # fall back to orbiting about up, which keeps the elevation
            axis = up
        ratio = rng.uniform(*config.view_distance_ratio_range)
        position = target + ratio * (_axis_angle(axis, angle) @ offset)
        roll = math.radians(rng.uniform(*config.camera_roll_deg_range))
        candidate = look_at(position, target, up, roll)
        if candidate is None:
            continue
        if layout == 'tabletop' and position[2] < 0.15 * distance:
            continue  # stay above the table
        inside = _inside_any(position, objects, margin_m=0.02 * distance)
        if layout == 'fronto_plane':
            inside = position[2] > objects[0].translation[2] - 0.05 * distance
        if not inside:
            pose = candidate
            break
    if pose is None:  # degenerate draws only: halfway from the target to A, on A's ray
        # (not checked against the objects; never taken in 3000 sampled multiview scenes)
        pose = look_at(target + 0.5 * offset, target, up, 0.0)
    return pose


def _inside_any(position, objects, margin_m: float = 0.0) -> bool:
    """Whether ``position`` lies within (5 % + margin beyond) any object's bounding sphere."""
    return any(np.linalg.norm(position - o.translation)
               < 1.05 * bound_radius(o.kind, o.size) + margin_m
               for o in objects if o.kind != PLANE)


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
