"""The `corr_depth` command: one entry point, one module per sub-command.

Each sub-command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (``args -> int`` exit code). Modules are imported only when listed here, and keep their
heavy imports (torch) inside their functions so ``corr_depth --help`` stays fast (eval stereo
and process-bag take their parameter ranges from core.backends.learned, which loads numpy and
cv2: ~0.3 s).
"""
import argparse
import importlib
import os
import sys

from ..paths import nearest_existing

# Sub-command modules, in help order. A module missing from the installed tree is skipped.
COMMAND_MODULES = ('synth', 'train', 'eval', 'export_onnx', 'process_bag')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='corr_depth',
        description='corr_depth_ros tools: synthetic data, training, evaluation, export.')
    subparsers = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f'{__name__}.{name}')
        except ModuleNotFoundError as exc:
            if exc.name == f'{__name__}.{name}':
                continue
            raise
        module.register(subparsers)
    return parser


def file_in_the_way(path: str) -> str:
    """The file that stops ``path`` being a folder or being created in one: ``path`` or its
    nearest existing ancestor when that is not a folder, else ''. os.makedirs names it in
    "[Errno 17] File exists", which reads as if the output existed already."""
    existing = nearest_existing(path)
    return existing if os.path.exists(existing) and not os.path.isdir(existing) else ''


def check_output(path: str, option: str, folder: bool = False,
                 renamed_into_place: bool = False) -> None:
    """ValueError naming ``option`` if ``path`` (a file, or with ``folder`` a folder) cannot be
    written: an empty path, a folder where a file goes, a file on the way, or no permission.
    Called before the work: the same failure at its end lost all of it. ``renamed_into_place``:
    the file is written beside ``path`` and renamed over it, so its folder must be writable,
    the file itself need not be."""
    if not path:
        raise ValueError(f'{option} is empty: give a path')
    in_the_way = file_in_the_way(path if folder else os.path.dirname(os.path.abspath(path)))
    if in_the_way:
        raise ValueError(f'{option} {path}: {in_the_way} is a file, not a folder; give another '
                         f'{option}')
    if not folder and os.path.isdir(path):
        raise ValueError(f'{option} {path} is a folder, not a file; give a file path')
    # The path if it exists (a file to overwrite, a folder to fill), else the folder it would
    # be made in. os.access rather than a trial write, so nothing is created before the work;
    # it also answers for root, whom permission bits do not stop, on a chattr +i folder or a
    # read-only mount.
    existing = nearest_existing(os.path.dirname(os.path.abspath(path)) if renamed_into_place
                                 else path)
    if not os.access(existing, os.W_OK | (os.X_OK if os.path.isdir(existing) else 0)):
        raise ValueError(f'{option} {path}: {existing} cannot be written (permission denied); '
                         f'give another {option} or change its permissions')


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: the path at fault and what is wrong with it, instead of
    "[Errno 17] File exists: 'afile'" for an output under a file."""
    if exc.filename is None:
        return str(exc)     # raised with a message of ours
    path = os.fspath(exc.filename)
    if isinstance(exc, (FileExistsError, NotADirectoryError)) and file_in_the_way(path):
        return f'{file_in_the_way(path)} is a file, not a folder: give another output path'
    if isinstance(exc, IsADirectoryError):
        return f'{path} is a folder, not a file: give a file path'
    if isinstance(exc, PermissionError):
        return f'{path}: {exc.strerror}; give another path or change its permissions'
    target = f' -> {os.fspath(exc.filename2)}' if exc.filename2 is not None else ''
    return f'{path}{target}: {exc.strerror}'


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        # Bad input (a missing file, a folder of another run, a value the command refuses, a
        # path that cannot be written): the reason in one line, as argparse does.
        # CORR_DEPTH_TRACEBACK=1 shows where.
        if os.environ.get('CORR_DEPTH_TRACEBACK'):
            raise
        message = os_error_message(exc) if isinstance(exc, OSError) else str(exc)
        print(f'corr_depth: error: {message}', file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        # A training run that diverged (core/training.fit): no checkpoint of bad weights is
        # written, and the message says how to go on.
        if os.environ.get('CORR_DEPTH_TRACEBACK'):
            raise
        # core.training says how it diverged and what to do ("training diverged: ...").
        print(f'corr_depth: error: {exc}', file=sys.stderr)
        return 1
    except Exception as exc:
        # OpenCV's own errors (cv2.error, e.g. an image format it cannot write), looked up
        # rather than imported: a command that never used OpenCV has nothing of it to catch.
        cv2 = sys.modules.get('cv2')
        if cv2 is None or not isinstance(exc, cv2.error) or \
                os.environ.get('CORR_DEPTH_TRACEBACK'):
            raise
        print(f'corr_depth: error: OpenCV: {exc.err} (in {exc.func})', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is how a training run is paused: no traceback, and how to go on.
        if args.command == 'train':
            print('\ncorr_depth: interrupted. A training run goes on from its last checkpoint '
                  'when the same command is run again (train stereo: add --resume).',
                  file=sys.stderr)
        else:
            print(f'\ncorr_depth {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
