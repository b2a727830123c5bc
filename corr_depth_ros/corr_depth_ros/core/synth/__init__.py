"""Procedural synthetic data engine: rectified stereo and two-view samples with exact GT.

A vectorised torch ray caster renders random clutter (ellipsoids, boxes, cylinders, rods,
boards, discs) in a textured room; solid 3D textures keep every surface point's colour the
same in all views; a camera model adds exposure, white balance, vignetting, blur, noise, gamma
and JPEG. Entry points::

    render_stereo_pair(seed, height, width, config=None, *, layout=None, device='cpu')
    render_multiview_pair(seed, height, width, config=None, *, layout=None, device='cpu')
    SyntheticStereoDataset / SyntheticMultiViewDataset   (on the fly)
    write_dataset / SyntheticFolderDataset / RectifiedPairFolder   (on disk, see FORMAT.md)

torch + numpy only (OpenCV for PNG/JPEG); no ROS.
"""
from .config import LAYOUTS, SHAPES, SYNTH_VERSION, TEXTURES, SynthConfig
from .dataset import SyntheticMultiViewDataset, SyntheticStereoDataset
from .io import (RectifiedPairFolder, SyntheticFolderDataset, load_sample, read_pfm,
                 sample_seed, write_dataset, write_pfm)
from .multiview import render_multiview_pair
from .stereo import render_stereo_pair

__all__ = [
    'LAYOUTS', 'SHAPES', 'SYNTH_VERSION', 'TEXTURES', 'SynthConfig',
    'SyntheticMultiViewDataset', 'SyntheticStereoDataset',
    'RectifiedPairFolder', 'SyntheticFolderDataset', 'load_sample', 'read_pfm', 'sample_seed',
    'write_dataset', 'write_pfm', 'render_multiview_pair', 'render_stereo_pair',
]
