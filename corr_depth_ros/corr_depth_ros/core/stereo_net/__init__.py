"""GwcNet-style learned stereo, small enough for a CPU: one file per pipeline stage.

features -> cost_volume -> aggregation -> regression -> refinement, composed in ``model.py``.
Import the factory from here: ``from corr_depth_ros.core.stereo_net import build_stereo_net``.
"""
from .model import ARCH, StereoNet, build_stereo_net

__all__ = ['ARCH', 'StereoNet', 'build_stereo_net']
