"""Launch files: exercised when launch/launch_ros are importable (a real ROS install), skipped
otherwise (they are not on PyPI); their argument helper is tested everywhere."""
import importlib.util
import os

import pytest

from corr_depth_ros.launch_arguments import given_arguments


class _Context:
    """What an OpaqueFunction's context offers given_arguments."""

    def __init__(self, **configurations):
        self.launch_configurations = configurations


def test_only_given_launch_arguments_override_the_params_file():
    context = _Context(backend='', device='cuda', approximate_sync='true', use_rviz='false')
    assert given_arguments(context, 'backend', 'device', 'approximate_sync', 'missing') == \
        {'device': 'cuda', 'approximate_sync': True}
    assert given_arguments(context, 'use_rviz') == {'use_rviz': False}
    assert given_arguments(_Context()) == {}

LAUNCH_DIR = os.path.join(os.path.dirname(__file__), '..', 'launch')
EXPECTED_ARGS = {
    'stereo.launch.py': {'namespace', 'left_namespace', 'right_namespace', 'backend', 'device',
                         'approximate_sync', 'params_file', 'use_rviz', 'use_sim_camera',
                         'use_sim_time'},
    'demo.launch.py': {'backend', 'device', 'use_rviz'},
    'mono.launch.py': {'namespace', 'image', 'camera_info', 'params_file', 'device', 'depth_mode',
                       'use_sim_time'},
}


def _need_launch():
    # launch_ros first: the repository's launch/ folder can pass for a `launch` package.
    pytest.importorskip('launch_ros')
    pytest.importorskip('launch.actions')


def _load(name):
    spec = importlib.util.spec_from_file_location(name.replace('.', '_'), os.path.join(LAUNCH_DIR, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


@pytest.mark.parametrize('name', sorted(EXPECTED_ARGS))
def test_launch_file_declares_documented_arguments(name):
    if not os.path.isfile(os.path.join(LAUNCH_DIR, name)):
        pytest.skip(f'{name} not present')
    _need_launch()
    from launch.actions import DeclareLaunchArgument
    description = _load(name)
    declared = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert EXPECTED_ARGS[name] <= set(declared)
    for arg in declared.values():
        assert arg.description and arg.description != 'no description given'


def _declared_by_source(name):
    """The DeclareLaunchArgument names in a launch file's source, and which have a description:
    read with ast, so this runs where launch_ros is not installed (CI)."""
    import ast
    with open(os.path.join(LAUNCH_DIR, name), encoding='utf-8') as f:
        tree = ast.parse(f.read())
    declared = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'DeclareLaunchArgument':
            if node.args and isinstance(node.args[0], ast.Constant):
                declared[node.args[0].value] = any(k.arg == 'description' for k in node.keywords)
    return declared


@pytest.mark.parametrize('name', sorted(EXPECTED_ARGS))
def test_launch_arguments_match_the_readme_table(name):
    """Every argument the README's launch table lists is declared, with a description, and
    every declared one is listed (checked from the source: no launch_ros needed)."""
    import re
    readme = os.path.join(os.path.dirname(__file__), '..', '..', 'README.md')
    if not os.path.isfile(readme) or not os.path.isfile(os.path.join(LAUNCH_DIR, name)):
        pytest.skip('README.md or the launch file is not beside the package')
    with open(readme, encoding='utf-8') as f:
        row = next(line for line in f if line.startswith(f'| `{name}` |'))
    documented = set(re.findall(r'`([a-z_]+)`', row.split('|')[3]))
    declared = _declared_by_source(name)
    assert documented == set(declared), (documented ^ set(declared))
    assert all(declared.values()), [k for k, v in declared.items() if not v]
    assert EXPECTED_ARGS[name] <= set(declared)
