"""The `corr_depth` command: one entry point, one module per sub-command.

Each sub-command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (``args -> int`` exit code). Modules are imported only when listed here, and keep their
heavy imports (torch, cv2) inside their functions so ``corr_depth --help`` stays fast.
"""
import argparse
import importlib
import os
import sys

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


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        # Bad input (a missing file, a folder of another run, a value the command refuses):
        # the reason in one line, as argparse does. CORR_DEPTH_TRACEBACK=1 shows where.
        if os.environ.get('CORR_DEPTH_TRACEBACK'):
            raise
        print(f'corr_depth: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is how a training run is paused: no traceback, and how to go on.
        print('\ncorr_depth: interrupted. A training run goes on from its last checkpoint '
              'when the same command is run again (train stereo: add --resume).',
              file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
