"""The 'photo' texture family of the synthetic data engine (core/synth/photos.py)."""
import math

import numpy as np
import pytest
import torch

from corr_depth_ros.core.descriptors.train import synth_configs
from corr_depth_ros.core.synth import SynthConfig, render_multiview_pair, render_stereo_pair
from corr_depth_ros.core.synth.photos import (LEVELS, PHOTO_PX_PER_UNIT, PHOTO_SETS, TILE_PX,
                                              axis_weights, photo_atlas, sample_photo,
                                              triplanar_uv)
from test_synth import warp_right_to_left

PHOTOS_ONLY = SynthConfig(textures=('photo',), texture_weights=(1.0,))


def test_a_zero_photo_weight_renders_what_the_default_renders():
    # The photo index is drawn only for photo materials, so adding the family at weight 0 keeps
    # every other sample's random stream (datasets rendered before stay reproducible).
    zero = SynthConfig().with_photos(0.0)
    for seed in (3, 4):
        assert torch.equal(render_stereo_pair(seed, 48, 64)['left'],
                           render_stereo_pair(seed, 48, 64, zero)['left'])
    with_photos = render_stereo_pair(3, 48, 64, SynthConfig().with_photos(5.0))
    assert not torch.equal(with_photos['left'], render_stereo_pair(3, 48, 64)['left'])


# Channel means of clean renders made by the code before the photo family existed (commit
# 7ea08a5). The photo draws must not shift the random stream of configs without photos:
# datasets rendered before stay reproducible. A shifted stream changes every palette, far
# beyond this tolerance (float differences between CPUs stay well inside it).
BEFORE_PHOTOS = {3: ((0.26208, 0.40921, 0.27352), (0.46014, 0.25895, 0.35892)),
                 4: ((0.48772, 0.85574, 0.50235), (0.77772, 0.81621, 0.31372))}


@pytest.mark.parametrize('seed', sorted(BEFORE_PHOTOS))
def test_renders_without_photos_are_those_from_before_the_family(seed):
    clean = SynthConfig().clean()
    stereo_left = render_stereo_pair(seed, 48, 64, clean)['left'].mean((1, 2))
    multiview_b = render_multiview_pair(seed, 48, 64, clean)['image_b'].mean((1, 2))
    expected_left, expected_b = BEFORE_PHOTOS[seed]
    assert torch.allclose(stereo_left, torch.tensor(expected_left), atol=2e-4)
    assert torch.allclose(multiview_b, torch.tensor(expected_b), atol=2e-4)


@pytest.mark.parametrize('seed', [1, 2])
def test_photo_textures_are_solid_textures_seen_alike_by_both_views(seed):
    sample = render_stereo_pair(seed, 96, 128, PHOTOS_ONLY.clean())
    warped = warp_right_to_left(sample['right'], sample['disparity_left_px'])
    visible = ~sample['occlusion_left'][0]
    error = (warped - sample['left']).abs().amax(dim=0)[visible]
    assert error.mean() < 0.03, f'mean abs error {error.mean():.4f}'
    wrong = warp_right_to_left(sample['right'], sample['disparity_left_px'] * 0.7 + 3.0)
    assert (wrong - sample['left']).abs().amax(dim=0)[visible].mean() > 2 * error.mean()


def test_photo_textures_are_seen_not_faded_to_their_mean():
    # Against the same scenes in one flat colour per surface: the photos add detail (the
    # mean absolute horizontal gradient), so they are sampled and not averaged away.
    def detail(config):
        images = [render_multiview_pair(seed, 96, 128, config.clean())['image_a']
                  for seed in range(4)]
        return float(np.mean([(i[:, :, 1:] - i[:, :, :-1]).abs().mean() for i in images]))
    flat = SynthConfig(textures=('constant',), texture_weights=(1.0,))
    assert detail(PHOTOS_ONLY) > 2.0 * detail(flat)


def test_photo_sets_are_disjoint_and_never_the_evaluation_pair():
    train, validation = set(PHOTO_SETS['train']), set(PHOTO_SETS['validation'])
    assert train and validation and not train & validation
    assert not any('motorcycle' in name for name in train | validation)
    a = render_multiview_pair(2, 48, 64, PHOTOS_ONLY.clean())['image_a']
    b = render_multiview_pair(
        2, 48, 64, SynthConfig(textures=('photo',), texture_weights=(1.0,),
                               photo_set='validation').clean())['image_a']
    assert not torch.equal(a, b)


def test_sample_photo_reads_the_tile_and_fades_when_minified():
    atlas = photo_atlas('train')
    side = TILE_PX + 1
    assert atlas.shape == (1, 1, len(PHOTO_SETS['train']) * LEVELS * side, side)
    pixels = torch.tensor([[3.0, 7.0], [100.0, 20.0], [255.0, 128.0]])  # (u, v) photo pixels
    # uv in texture units, shifted by a whole period: the texture tiles seamlessly.
    period = TILE_PX / PHOTO_PX_PER_UNIT
    uv = pixels.t() / PHOTO_PX_PER_UNIT + torch.tensor([[2.0], [-1.0]]) * period
    photo_index = 4
    got = sample_photo(uv, torch.full((3,), float(photo_index)),
                       torch.full((3,), 0.5 / PHOTO_PX_PER_UNIT), 'train')
    tile = atlas[0, 0, photo_index * LEVELS * side:(photo_index * LEVELS + 1) * side]
    expected = tile[pixels[:, 1].long(), pixels[:, 0].long()]
    assert torch.allclose(got, expected, atol=1e-3)
    # Minified: the sharp photo's spread shrinks level by level, then fades to its mean (0).
    grid = torch.stack(torch.meshgrid(torch.arange(0.0, TILE_PX, 3.0),
                                      torch.arange(0.0, TILE_PX, 3.0), indexing='ij'))
    uv = grid.reshape(2, -1) / PHOTO_PX_PER_UNIT
    count = uv.shape[1]
    spreads = []
    for photo_px_per_image_px in (1.0, 4.0, 16.0, 64.0):
        values = sample_photo(uv, torch.full((count,), float(photo_index)),
                              torch.full((count,), photo_px_per_image_px / PHOTO_PX_PER_UNIT),
                              'train')
        spreads.append(float(values.std()))
    assert 0.8 < spreads[0] < 1.2
    assert spreads == sorted(spreads, reverse=True) and spreads[-1] < 0.25 * spreads[0]


def test_triplanar_mapping_projects_along_the_face_axis():
    weights = torch.as_tensor(axis_weights(np.array([[1.0, 2.0, 4.0],            # a box
                                                     [np.inf, np.inf, 0.0]])),  # a plane
                              dtype=torch.float32)
    q = torch.tensor([[10.0, 11.0, 12.0], [20.0, 21.0, 22.0], [30.0, 31.0, 32.0]]).t()
    points = torch.tensor([[1.0, 0.5, 1.0],    # on the box's +x face: read (y, z)
                           [0.2, -2.0, 1.0],   # -y face: (z, x)
                           [5.0, -7.0, 0.0]]).t()  # the plane: (x, y)
    columns = torch.tensor([0, 0, 1])
    uv = triplanar_uv(q, points, weights[columns].t())
    assert torch.equal(uv, torch.tensor([[11.0, 12.0], [22.0, 20.0], [30.0, 31.0]]).t())


def test_triplanar_mapping_projects_along_z_on_cylinder_caps_only():
    """A cylinder's side is read across its nearest radial axis up to its rims (the nearest
    axis overall put the side's top and bottom on the z projection, smeared into streaks);
    the caps are read as (x, y)."""
    radius, half_height = 1.0, 2.0
    weights = torch.as_tensor(axis_weights(np.array([[radius, radius, half_height]]),
                                           np.array([True])), dtype=torch.float32)
    c = radius * math.cos(math.pi / 4)
    points = torch.tensor([[c, c, 1.8],                 # side, near the top rim
                           [c, c, 1.6],
                           [-c, -c, -1.9],              # side, near the bottom rim
                           [0.9, 0.1, 1.5],             # side, nearest the x axis
                           [0.3, 0.6, half_height],     # top cap
                           [0.9, 0.1, -half_height]]).t()   # bottom cap, near the rim
    q = points * 10.0
    uv = triplanar_uv(q, points, weights[[0] * points.shape[1]].t())
    faces = []
    for column, point in enumerate(points.t() * 10.0):
        u = uv[:, column]
        faces.append('x' if torch.equal(u, point[[1, 2]]) else
                     'y' if torch.equal(u, point[[2, 0]]) else
                     'z' if torch.equal(u, point[[0, 1]]) else '?')
    assert set(faces[:3]) <= {'x', 'y'} and faces[3:] == ['x', 'z', 'z']
    # Distinct heights on the side read distinct coordinates (no streak along z).
    assert len({round(float(v), 4) for v in uv[1, :2]}) == 2


def test_photo_config_checks():
    with pytest.raises(ValueError, match='photo_set'):
        SynthConfig(photo_set='test')
    with pytest.raises(ValueError, match='already'):
        SynthConfig().with_photos(0.5).with_photos(0.5)
    with pytest.raises(ValueError, match='needs the photo'):   # a set that would do nothing
        SynthConfig(photo_set='validation')
    # Without photos the dict reads as before the family existed; with them it round-trips.
    assert 'photo_set' not in SynthConfig().to_dict()
    for config in (SynthConfig(), SynthConfig().with_photos(0.5, 'validation')):
        assert SynthConfig.from_dict(config.to_dict()) == config
    assert synth_configs(0.0) == (None, None)
    train, validation = synth_configs(0.5)
    assert train.textures[-1] == 'photo' and train.texture_weights[-1] == 0.5
    assert (train.photo_set, validation.photo_set) == ('train', 'validation')
    with pytest.raises(ValueError, match='>= 0'):
        synth_configs(-1.0)


def test_synth_cli_writes_photo_textured_datasets(tmp_path):
    import json

    from test_synth import _run_cli
    out = tmp_path / 'photos'
    assert _run_cli(['synth', 'multiview', '--out', str(out), '--count', '1', '--size', '64x48',
                     '--photo-textures', '0.5', '--photo-set', 'validation', '--no-progress',
                     '--contact-sheet-rows', '0']) == 0
    config = SynthConfig.from_dict(json.loads((out / '000000' / 'meta.json').read_text())['config'])
    assert config == SynthConfig().with_photos(0.5, 'validation')
    # A weight that is not a finite number >= 0 is refused while parsing (NaN used to pass
    # both checks and drop the photographs silently; inf made every texture a photo).
    for weight in ('-1', 'nan', 'inf'):
        with pytest.raises(SystemExit) as exit_info:
            _run_cli(['synth', 'stereo', '--out', str(tmp_path / 'bad'), '--count', '1',
                      '--photo-textures', weight, '--no-progress'])
        assert exit_info.value.code == 2
    assert not (tmp_path / 'bad').exists()
    assert _run_cli(['synth', 'stereo', '--out', str(tmp_path / 'bad'), '--count', '1',
                     '--photo-set', 'validation', '--no-progress']) == 2
