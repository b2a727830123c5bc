"""The README's parameter reference is generated from the nodes' own parameter tables."""
import os

import pytest

pytest.importorskip('rclpy')
from corr_depth_ros.nodes import params  # noqa: E402

README = os.path.join(os.path.dirname(__file__), '..', '..', 'README.md')


def test_readme_parameter_tables_are_up_to_date():
    if not os.path.isfile(README):
        pytest.skip('README.md is not beside the package (installed elsewhere)')
    with open(README, encoding='utf-8') as f:
        text = f.read()
    block = text.split(params.README_BEGIN, 1)[1].split(params.README_END, 1)[0]
    assert block.strip() == params.reference_markdown().strip(), (
        'README parameter tables are stale: run python -m corr_depth_ros.nodes.params '
        '--readme README.md')
    for node_name, _ in params.DOCUMENTED_NODES:
        assert f'#### {node_name}' in block


@pytest.mark.parametrize('config,module', [('stereo', 'stereo_depth_node'),
                                           ('mono', 'mono_depth_node'),
                                           ('correspondence', 'correspondence_node'),
                                           ('sim_camera', 'sim_stereo_camera_node')])
def test_config_yaml_holds_every_parameter_with_its_default(config, module):
    """config/*.yaml is where the README says the defaults live: every declared parameter,
    with the value the node declares (nested YAML keys are the dotted names)."""
    import importlib

    import yaml
    path = os.path.join(os.path.dirname(__file__), '..', 'config', f'{config}.yaml')
    with open(path, encoding='utf-8') as f:
        (params,) = [v['ros__parameters'] for v in yaml.safe_load(f).values()]
    flat = {}

    def walk(tree, prefix=''):
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, f'{prefix}{key}.')
            else:
                flat[prefix + key] = value
    walk(params)
    declared = {spec.name: spec.default
                for spec in importlib.import_module(f'corr_depth_ros.nodes.{module}').PARAMS}
    assert flat == declared
