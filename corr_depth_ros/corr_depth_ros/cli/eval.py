"""`corr_depth eval stereo|mono|corr ...`"""
from ._dispatch import register_group


def register(subparsers):
    register_group(subparsers, 'eval', 'evaluate models and baselines, write JSON and figures',
                   ('eval_stereo', 'eval_mono', 'eval_corr'))


def add_json_argument(parser, default_name: str) -> None:
    """``--json``: where the numbers go, by default ``eval_output/<default_name>`` (the file
    `make eval` writes for the same run), so the README's commands run as printed."""
    parser.add_argument('--json', default=f'eval_output/{default_name}',
                        help=f'output JSON path (default: eval_output/{default_name})')


def resolve_json(args) -> str:
    """``--json`` with ``<dataset>`` replaced by the ``--dataset`` chosen (the defaults')."""
    args.json = args.json.replace('<dataset>', str(getattr(args, 'dataset', '')))
    return args.json


def add_figure_argument(parser, what: str) -> None:
    """``--figure``: the issues' evaluations each write a figure, so by default it goes beside
    the JSON (``out.json`` -> ``out.png``); ``--figure ''`` writes none."""
    parser.add_argument('--figure', default=None,
                        help=f'output PNG: {what} (default: the --json path with .png; "" for '
                             'none)')


def figure_path(args) -> str:
    """The figure to write: ``--figure`` as given, else the JSON's path with ``.png``."""
    import os
    if args.figure is not None:
        return args.figure
    return os.path.splitext(args.json)[0] + '.png'


# What cv2.imwrite writes in any OpenCV build, for one without cv2.haveImageWriter.
FIGURE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp')


def check_outputs(args, figure_out: str) -> None:
    """ValueError, before the evaluation, if the JSON or the figure (``figure_out``, '' for
    none) could not be written: they were tried after it, so a path inside a file, a folder
    named like the JSON or a figure extension OpenCV has no writer for lost the whole run."""
    import os

    import cv2

    from . import check_output
    check_output(args.json, '--json')
    if not figure_out:
        return
    option = '--figure' if args.figure else 'the figure (the --json path with .png)'
    check_output(figure_out, option)
    extension = os.path.splitext(figure_out)[1].lower()
    writable = (cv2.haveImageWriter(figure_out) if hasattr(cv2, 'haveImageWriter')
                else extension in FIGURE_EXTENSIONS)
    if not writable:
        raise ValueError(f'{option} {figure_out}: OpenCV has no writer for '
                         f'{extension or "a name without an extension"}; end it in .png')


def write_figure(path: str, rgb) -> None:
    """Write an (H,W,3) uint8 RGB figure as PNG, creating its folder; OSError if it failed
    (cv2.imwrite only returns False)."""
    import os

    from ..core.synth.io import write_rgb8_png
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_rgb8_png(path, rgb)
    print(f'wrote {path}')
