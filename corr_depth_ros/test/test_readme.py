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
