"""Every random range of the synthetic data engine, in one frozen dataclass.

A range ``(lo, hi)`` is sampled uniformly unless its name or comment says log-uniform. Lengths
are metres *before* the per-sample scene scale is applied (see ``scene_scale_range``); angles
are degrees. The defaults aim at varied, realistic-looking indoor clutter and FlyingThings-like
chaos; tests switch the photometric nuisances off with :meth:`SynthConfig.clean`.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple

# Bumped whenever the same seed and config would render a different sample, so that a dataset
# on disk can tell which generator made it (stored in every meta.json).
# 1.1: specular highlight clamped (no NaN pixels). 1.2: the right view is re-rendered after
# the last disparity-cap rescale (a few small renders kept the unscaled scene's right view).
# 1.3: sample seeds of 2**32 and more count whole (core/seeding.py): before, only their low
# 32 bits did, so seeds 2**32 apart rendered the same sample; seeds below 2**32 are unchanged.
# Also in 1.3: the fronto_plane layout's room encloses the plane (its far wall could hide it),
# and photo textures read cylinder sides across a radial axis up to the rims (not streaked).
SYNTH_VERSION = 'corr_depth_synth-1.3'

LAYOUTS = ('tabletop', 'chaotic', 'fronto_plane')
SHAPES = ('ellipsoid', 'box', 'cylinder', 'rod', 'board', 'disc')
# 'photo' (photographs, see photos.py) is a family a config may add; the default is procedural.
PROCEDURAL_TEXTURES = ('constant', 'fbm', 'stripes', 'checker', 'blobs', 'dots')
TEXTURES = PROCEDURAL_TEXTURES + ('photo',)
PHOTO_SET_NAMES = ('train', 'validation')

Range = Tuple[float, float]


@dataclass(frozen=True)
class SynthConfig:
    """Ranges of every randomised quantity; defaults documented field by field."""

    # --- intrinsics (fx = fy, square pixels; the same K for both cameras) ---
    # fx / image width: 0.55 .. 1.1 is a horizontal field of view of about 85 .. 49 degrees.
    fx_over_width_range: Range = (0.55, 1.1)
    # Principal point = image centre + U(-j, j) * size, per axis (rectified cameras share it).
    principal_point_jitter_frac: float = 0.03

    # --- stereo rig ---
    baseline_m_range: Range = (0.04, 0.3)
    # The scene is scaled up (about the left camera) until no pixel of either view has a
    # disparity above this fraction of the image width.
    max_disparity_frac: float = 0.35
    # Relative depth tolerance of the z-buffer visibility test (stereo occlusion, multiview
    # visibility); an extra 0.02 px absolute slack covers float rounding at tiny disparities.
    visibility_rel_tol: float = 0.01

    # --- scene layout ---
    layouts: Tuple[str, ...] = ('tabletop', 'chaotic')
    layout_weights: Tuple[float, ...] = (0.5, 0.5)
    num_objects_range: Tuple[int, int] = (5, 14)  # inclusive
    # Global scale of the whole scene (log-uniform); widens the metric depth range.
    scene_scale_range: Range = (0.6, 3.0)
    shapes: Tuple[str, ...] = SHAPES
    shape_weights: Tuple[float, ...] = (0.25, 0.25, 0.2, 0.1, 0.1, 0.1)
    # Tabletop: spread of the clutter, and an object's largest extent in clutter radii
    # (log-uniform).
    clutter_radius_m_range: Range = (0.15, 0.5)
    object_size_over_clutter_range: Range = (0.25, 1.0)
    # Chance that an object is stacked on an earlier one / lies tilted.
    stack_prob: float = 0.2
    tilt_prob: float = 0.35
    # Tabletop camera: distance to the clutter centre, in clutter radii, and elevation.
    camera_distance_over_clutter_range: Range = (1.3, 3.2)
    camera_elevation_deg_range: Range = (20.0, 75.0)
    camera_roll_deg_range: Range = (-10.0, 10.0)
    # Chaotic: object depth in the left camera (log-uniform) and angular size (fraction of depth).
    chaotic_depth_m_range: Range = (0.4, 12.0)
    chaotic_size_frac_range: Range = (0.08, 0.5)
    # Room (background box) margin around cameras and objects, metres (log-uniform). Large values
    # give background disparities near zero.
    room_margin_m_range: Range = (1.0, 40.0)

    # --- multiview: camera B relative to camera A, both looking at the clutter ---
    view_angle_deg_range: Range = (10.0, 70.0)  # rotation of B about the clutter centre
    view_distance_ratio_range: Range = (0.7, 1.4)  # |B - target| / |A - target|

    # --- textures (solid, evaluated in the object's frame) ---
    textures: Tuple[str, ...] = PROCEDURAL_TEXTURES
    texture_weights: Tuple[float, ...] = (0.1, 0.35, 0.15, 0.15, 0.15, 0.1)
    # Photographs the 'photo' family draws from (photos.PHOTO_SETS): 'validation' holds
    # photographs that training never sees.
    photo_set: str = 'train'
    # Pattern cycles across one object (log-uniform); background: cycles per metre / scene scale.
    texture_cycles_per_object_range: Range = (1.5, 12.0)
    background_cycles_per_m_range: Range = (0.5, 8.0)
    colour_jitter_range: Range = (0.0, 0.15)

    # --- shading (linear radiance) ---
    specular: bool = True
    ambient_range: Range = (0.15, 0.45)
    light_intensity_range: Range = (0.6, 1.1)
    specular_strength_range: Range = (0.0, 0.5)
    shininess_range: Range = (8.0, 96.0)  # Blinn-Phong exponent, log-uniform

    # --- imaging (per camera) ---
    # Left/right (A/B) cameras get different exposure, gains and gamma when True.
    photometric_asymmetry: bool = True
    exposure_range: Range = (0.75, 1.35)  # shared base exposure
    exposure_asymmetry_range: Range = (0.85, 1.15)  # per-camera factor on top of the base
    colour_gain_range: Range = (0.85, 1.15)  # per camera, per channel (white balance)
    gamma_range: Range = (1.9, 2.4)  # encoding gamma; per camera when asymmetric
    vignetting_range: Range = (0.0, 0.25)  # fractional darkening at the image corner
    noise: bool = True
    read_noise_std_range: Range = (0.0, 0.015)  # additive Gaussian, linear units
    shot_noise_scale_range: Range = (0.0, 0.01)  # variance = scale * signal (Poisson-like)
    blur: bool = True
    blur_prob: float = 0.5
    blur_sigma_px_range: Range = (0.3, 1.0)
    jpeg: bool = True
    jpeg_prob: float = 0.5
    jpeg_quality_range: Tuple[int, int] = (60, 97)  # inclusive

    def __post_init__(self):
        ranges = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name.endswith('_range')}
        for name, value in ranges.items():
            if len(value) != 2 or not all(math.isfinite(v) for v in value):
                raise ValueError(f'SynthConfig.{name} must be a finite (lo, hi) pair, got {value}')
            if value[0] > value[1]:
                raise ValueError(f'SynthConfig.{name}: lo > hi in {value}')
        positive = ('fx_over_width_range', 'baseline_m_range', 'scene_scale_range',
                    'object_size_over_clutter_range', 'clutter_radius_m_range',
                    'camera_distance_over_clutter_range',
                    'chaotic_depth_m_range', 'chaotic_size_frac_range', 'room_margin_m_range',
                    'view_distance_ratio_range', 'texture_cycles_per_object_range',
                    'background_cycles_per_m_range', 'shininess_range', 'exposure_range',
                    'exposure_asymmetry_range', 'colour_gain_range', 'gamma_range',
                    'blur_sigma_px_range')
        for name in positive:
            if ranges[name][0] <= 0:
                raise ValueError(f'SynthConfig.{name} must be > 0, got {ranges[name]}')
        if self.num_objects_range[0] < 1:
            raise ValueError(f'SynthConfig.num_objects_range must start at >= 1, '
                             f'got {self.num_objects_range}')
        if not 0 < self.max_disparity_frac <= 1:
            raise ValueError(f'SynthConfig.max_disparity_frac must be in (0, 1], '
                             f'got {self.max_disparity_frac}')
        if not 1 <= self.jpeg_quality_range[0] <= self.jpeg_quality_range[1] <= 100:
            raise ValueError(f'SynthConfig.jpeg_quality_range must be within 1..100, '
                             f'got {self.jpeg_quality_range}')
        for name in ('stack_prob', 'tilt_prob', 'blur_prob', 'jpeg_prob'):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f'SynthConfig.{name} must be a probability, '
                                 f'got {getattr(self, name)}')
        if not (self.visibility_rel_tol > 0 and math.isfinite(self.visibility_rel_tol)):
            raise ValueError(f'SynthConfig.visibility_rel_tol must be finite and > 0, '
                             f'got {self.visibility_rel_tol}')
        for name in ('read_noise_std_range', 'shot_noise_scale_range', 'colour_jitter_range',
                     'specular_strength_range'):
            if getattr(self, name)[0] < 0:
                raise ValueError(f'SynthConfig.{name} must be >= 0, got {getattr(self, name)}')
        for name in ('ambient_range', 'vignetting_range'):
            if not 0 <= getattr(self, name)[0] <= getattr(self, name)[1] <= 1:
                raise ValueError(f'SynthConfig.{name} must be within [0, 1], '
                                 f'got {getattr(self, name)}')
        # A look-at camera straight above the clutter has no defined image-up (look_at fails).
        if not 0.0 <= self.camera_elevation_deg_range[0] <= \
                self.camera_elevation_deg_range[1] <= 85.0:
            raise ValueError(f'SynthConfig.camera_elevation_deg_range must be within '
                             f'[0, 85] degrees, got {self.camera_elevation_deg_range}')
        _check_choices('layouts', self.layouts, self.layout_weights, LAYOUTS)
        _check_choices('shapes', self.shapes, self.shape_weights, SHAPES)
        _check_choices('textures', self.textures, self.texture_weights, TEXTURES)
        if self.photo_set not in PHOTO_SET_NAMES:
            raise ValueError(f'SynthConfig.photo_set must be one of {PHOTO_SET_NAMES}, '
                             f'got {self.photo_set!r}')
        if self.photo_set != 'train' and 'photo' not in self.textures:
            raise ValueError(f'SynthConfig.photo_set {self.photo_set!r} needs the photo '
                             "texture family in textures (see with_photos)")

    def with_photos(self, weight: float, photo_set: str = 'train') -> 'SynthConfig':
        """This config with the 'photo' family added at ``weight`` (the others keep theirs)."""
        if 'photo' in self.textures:
            raise ValueError('SynthConfig.with_photos: photo textures are already in')
        return dataclasses.replace(self, textures=self.textures + ('photo',),
                                   texture_weights=self.texture_weights + (float(weight),),
                                   photo_set=photo_set)

    def clean(self) -> 'SynthConfig':
        """This config with every photometric nuisance off (asymmetry, specular, noise, blur,
        JPEG, vignetting): the two views then differ only by geometry, for GT checks."""
        return dataclasses.replace(self, photometric_asymmetry=False, specular=False, noise=False,
                                   blur=False, jpeg=False, vignetting_range=(0.0, 0.0))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (tuples become lists). ``photo_set`` only when photos are in, so
        that a config without them reads as it did before the family existed."""
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items()
                if k != 'photo_set' or 'photo' in self.textures}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> 'SynthConfig':
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError (a newer generator's file)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f'SynthConfig: unknown keys {unknown}')
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


def _check_choices(name, chosen, weights, allowed):
    if len(chosen) == 0:
        raise ValueError(f'SynthConfig.{name} is empty')
    for item in chosen:
        if item not in allowed:
            raise ValueError(f'SynthConfig.{name}: unknown {name[:-1]} {item!r}; '
                             f'choose from {allowed}')
    if len(weights) != len(chosen):
        raise ValueError(f'SynthConfig.{name[:-1]}_weights has {len(weights)} entries for '
                         f'{len(chosen)} {name}')
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f'SynthConfig.{name[:-1]}_weights must be >= 0 with a positive sum, '
                         f'got {weights}')
