"""Launch arguments that override a params file only when they are given.

ROS 2 launch files usually pass launch arguments as node parameters after the params file, so
they win. With a non-empty default that means the default always wins: `params_file:=my.yaml`
with `backend: learned` in it would run sgbm. Our launch files therefore default such
arguments to '' ("take it from params_file") and hand the node only those that were set.
Imported by the launch files (inside an OpaqueFunction); needs no launch package itself.
"""
from typing import Any, Dict


def given_arguments(context, *names: str) -> Dict[str, Any]:
    """``{name: value}`` for the launch arguments among ``names`` that are set and not empty;
    'true' / 'false' become booleans (as the nodes declare them). ``context``: the launch
    context an OpaqueFunction receives (only its ``launch_configurations`` is read)."""
    out: Dict[str, Any] = {}
    for name in names:
        value = context.launch_configurations.get(name, '')
        if value == '':
            continue
        out[name] = {'true': True, 'false': False}.get(value.lower(), value)
    return out
