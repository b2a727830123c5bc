"""Command-line options refused while parsing, or before any work, where they would otherwise be
ignored or give wrong results (found by a review of the documented surface against the code)."""
import pytest

from corr_depth_ros.cli import main as cli_main


def _refused_at_parsing(argv, capsys, said):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert said in err, err


@pytest.mark.parametrize('side', ['16', '31', '8193'])
def test_export_onnx_refuses_sizes_the_learned_backend_refuses(side, capsys, tmp_path):
    """A 16x16 model exported, passed its parity check, and the onnx backend then resized a
    741x500 pair down to it: every pixel valid, EPE 20.8 px."""
    _refused_at_parsing(['export-onnx', 'stereo', '--out', str(tmp_path / 'm.onnx'),
                         '--width', side, '--height', '64'], capsys, 'must be in [32, 8192]')
    assert not (tmp_path / 'm.onnx').exists()


def test_export_onnx_smallest_side_is_the_learned_backends():
    from corr_depth_ros.cli.export_onnx import SIDE_RANGE_PX
    from corr_depth_ros.core.backends.learned import MIN_NETWORK_SIDE_PX
    from corr_depth_ros.core.backends.onnx_backend import INPUT_SIZE_RANGE_PX
    assert SIDE_RANGE_PX == (MIN_NETWORK_SIDE_PX, INPUT_SIZE_RANGE_PX[1])


@pytest.mark.parametrize('value', ['-0.12', 'nan', 'inf', '120'])
def test_train_mono_baseline_is_range_checked_as_the_node_does(value, capsys):
    """Accepted before: a negative or NaN one was stored as "none", inf and 120 m were stored
    in the weights, and the node used them as they were."""
    _refused_at_parsing(['train', 'mono', '--data', 'folder:/nonexistent', '--baseline-m', value],
                        capsys, 'must be in [0, 10]')


@pytest.fixture
def no_training(monkeypatch):
    """A refusal is said before any training: a trainer reached fails the test at once (on
    code without the refusal it trained for real, thousands of steps)."""
    def reached(*args, **kwargs):
        raise AssertionError('the trainer was reached')
    from corr_depth_ros.core.mono import train as mono_train
    from corr_depth_ros.core.stereo_net import train as stereo_train
    monkeypatch.setattr(mono_train, 'train_mono', reached)
    monkeypatch.setattr(stereo_train, 'train_stereo_net', reached)


def test_train_mono_refuses_a_baseline_for_synthetic_pairs(capsys, tmp_path, no_training):
    """Synthetic pairs have their own rig: --baseline-m 0.3 was silently dropped (0.1 stored)."""
    rc = cli_main(['train', 'mono', '--baseline-m', '0.3', '--out-dir', str(tmp_path / 'run')])
    assert rc == 2 and '--baseline-m is for your own pairs' in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


def test_eval_mono_input_size_is_checked_while_parsing(capsys):
    """It failed after the evaluation's rendering (minutes with the default 200 images)."""
    _refused_at_parsing(['eval', 'mono', '--input-size', '100x100'], capsys,
                        'both sides must be multiples of 32')


@pytest.mark.parametrize('argv,said', [
    (['--no-augment', '--scale-aug', '0.8'], '--scale-aug applies to augmentation'),
    (['--no-augment', '--scale-aug-max', '2.0'], '--scale-aug-max applies to augmentation'),
    (['--scale-aug-min', '0.8'], '--scale-aug-min applies to --scale-aug above 0 only'),
    (['--refine-channels', '32'], '--refine-channels applies to --refine-from only'),
    (['--refine-radius', '3'], '--refine-radius applies to --refine-from only'),
    (['--recalibrate-batches', '0'], '--recalibrate-batches applies to --ship only'),
    (['--init-from', 'base.safetensors', '--max-disparity', '96'],
     '--max-disparity is taken from the --init-from weights'),
    (['--refine-from', 'base.safetensors', '--groups', '4'],
     '--groups is taken from the --refine-from weights'),
])
def test_train_stereo_refuses_options_that_would_be_ignored(argv, said, capsys, tmp_path,
                                                            no_training):
    rc = cli_main(['train', 'stereo', '--out', str(tmp_path / 'run'), *argv])
    assert rc == 2 and said in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


def test_eval_mono_device_is_one_of_the_choices(capsys):
    """'gpu' ended in a torch traceback after the model had loaded."""
    _refused_at_parsing(['eval', 'mono', '--device', 'gpu'], capsys, "invalid choice: 'gpu'")


@pytest.mark.parametrize('value', [0.0, -0.1, float('nan'), None, 'x'])
def test_a_weights_baseline_that_is_no_baseline_is_refused_at_once(value):
    """0, -0.1 and NaN started the mono node, which then dropped every frame; null ended in a
    TypeError."""
    from corr_depth_ros.core.mono.inference import baseline_from_header
    with pytest.raises(ValueError, match='not a baseline'):
        baseline_from_header({'metadata': {'training_rig': {'baseline_m': value}}})
    assert baseline_from_header({'metadata': {'training_rig': {'baseline_m': 0.1}}}) == 0.1
