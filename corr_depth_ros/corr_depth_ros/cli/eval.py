"""`corr_depth eval stereo|mono|corr ...`"""
from ._dispatch import register_group


def register(subparsers):
    register_group(subparsers, 'eval', 'evaluate models and baselines, write JSON and figures',
                   ('eval_stereo', 'eval_mono', 'eval_corr'))
