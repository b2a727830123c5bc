"""`corr_depth eval stereo|mono|corr ...`"""
from ._dispatch import register_group


def register(subparsers):
    register_group(subparsers, 'eval', 'evaluate models and baselines, write JSON and figures',
                   ('eval_stereo', 'eval_mono', 'eval_corr'))


def write_figure(path: str, rgb) -> None:
    """Write an (H,W,3) uint8 RGB figure as PNG, creating its folder; OSError if it failed
    (cv2.imwrite only returns False)."""
    import os

    import cv2
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write the figure {path} (a .png path?)')
    print(f'wrote {path}')
