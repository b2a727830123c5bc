"""Shared helper for two-level commands (`corr_depth train <model>`, `corr_depth eval <model>`)."""
import importlib


def register_group(subparsers, group: str, help_text: str, modules):
    """Add ``group`` with one sub-command per importable module in ``modules``."""
    parser = subparsers.add_parser(group, help=help_text)
    children = parser.add_subparsers(dest=f'{group}_target', metavar='MODEL')
    for name in modules:
        try:
            module = importlib.import_module(f'{__package__}.{name}')
        except ModuleNotFoundError as exc:
            if exc.name == f'{__package__}.{name}':
                continue  # that model's tools are not in this tree
            raise
        module.register(children)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    return parser
