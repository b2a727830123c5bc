"""`corr_depth train stereo|mono|descriptors ...`"""
from ._dispatch import register_group


def register(subparsers):
    register_group(subparsers, 'train', 'train a model on synthetic (or your own) data',
                   ('train_stereo', 'train_mono', 'train_descriptors'))
