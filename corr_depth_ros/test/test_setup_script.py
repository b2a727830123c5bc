"""scripts/setup_env.sh's checks that run before it touches anything."""
import os
import subprocess

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), '..', '..', 'scripts', 'setup_env.sh')


def test_a_torch_spec_with_pip_options_is_refused_with_the_way_to_give_them(tmp_path):
    """pytorch.org's install line ("torch ... --index-url URL") in TORCH_SPEC reached pip as one
    invalid requirement after the venv was made."""
    if not os.path.isfile(SCRIPT):
        pytest.skip('scripts/ is not beside the package (installed elsewhere)')
    env = dict(os.environ, VENV=str(tmp_path / 'venv'),
               TORCH_SPEC='torch==2.13.0+cu126 --index-url https://download.pytorch.org/whl/cu126')
    result = subprocess.run(['bash', SCRIPT], capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'PIP_EXTRA_INDEX_URL=' in result.stderr
    assert not (tmp_path / 'venv').exists()
