"""Print the parameter reference of every node as Markdown, from the nodes' own PARAMS tables
(so the README never drifts from the code): `python -m corr_depth_ros.nodes.reference`."""
import importlib
import sys

from .params import markdown_table

NODES = ('stereo_depth_node', 'mono_depth_node', 'correspondence_node', 'sim_stereo_camera_node')


def main() -> int:
    for name in NODES:
        try:
            module = importlib.import_module(f'{__package__}.{name}')
        except ModuleNotFoundError as exc:
            if exc.name == f'{__package__}.{name}':
                continue
            raise
        print(f'### {name}\n\n{markdown_table(module.PARAMS)}\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
