"""`corr_depth` output paths: checked before the work, and every failure said in one line."""
import argparse
import os

import numpy as np
import pytest

from corr_depth_ros import cli
from corr_depth_ros.cli import main as cli_main


def _run_func(monkeypatch, func):
    """main() with a parsed command whose work is ``func``."""
    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args',
                        lambda self, argv=None: argparse.Namespace(func=func))
    return cli_main(['train', 'stereo'])


def _locked(monkeypatch, folder):
    """``folder`` unwritable as os.access sees it: permission bits do not stop root, who runs
    these tests in containers."""
    real_access = os.access
    locked = os.path.abspath(folder)
    monkeypatch.setattr(os, 'access', lambda path, mode, *a, **k: (
        os.path.abspath(path) != locked and real_access(path, mode, *a, **k)))


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert 'Traceback' not in err and err.count('\n') == 1, err
    return err


def _cv2_error():
    import cv2
    try:
        cv2.imwrite('figure_without_extension', np.zeros((4, 4, 3), np.uint8))
    except cv2.error as exc:
        return exc
    pytest.skip('this OpenCV writes files without an extension')


@pytest.mark.parametrize('make_error, said', [
    (lambda tmp: PermissionError(13, 'Permission denied', str(tmp / 'run')),
     'run: Permission denied; give another path or change its permissions'),
    (lambda tmp: IsADirectoryError(21, 'Is a directory', str(tmp)),
     'is a folder, not a file'),
    (lambda tmp: _cv2_error(), 'OpenCV: could not find a writer for the specified extension'),
], ids=['PermissionError', 'IsADirectoryError', 'cv2.error'])
def test_main_says_other_errors_in_one_line(monkeypatch, capsys, tmp_path, make_error, said):
    error = make_error(tmp_path)

    def fails(args):
        raise error
    assert _run_func(monkeypatch, fails) == 2
    err = _one_line(capsys)
    assert err.startswith('corr_depth: error: ') and said in err
    monkeypatch.setenv('CORR_DEPTH_TRACEBACK', '1')
    with pytest.raises(type(error)):
        _run_func(monkeypatch, fails)


def test_a_diverged_training_run_says_how_to_go_on(monkeypatch, capsys):
    def diverges(args):
        raise FloatingPointError('training diverged: 10 non-finite losses in a row at step 52 '
                                 '(loss nan); run the same command again with a lower --lr')
    assert _run_func(monkeypatch, diverges) == 1
    err = _one_line(capsys)
    assert err.rstrip().endswith('error: training diverged: 10 non-finite losses in a row at step 52 '
                        '(loss nan); run the same command again with a lower --lr'), err
    monkeypatch.setenv('CORR_DEPTH_TRACEBACK', '1')
    with pytest.raises(FloatingPointError):
        _run_func(monkeypatch, diverges)


@pytest.mark.parametrize('out', ['afile', 'afile/run', 'afile/a/b'])
def test_an_output_folder_inside_a_file_is_named_as_such(monkeypatch, capsys, tmp_path, out):
    """os.makedirs said "[Errno 17] File exists: '.../afile'" (or Errno 20 naming the run),
    as if the output existed: train --out goes through here."""
    (tmp_path / 'afile').write_bytes(b'')

    def makes_folder(args):
        os.makedirs(tmp_path / out, exist_ok=True)
    assert _run_func(monkeypatch, makes_folder) == 2
    assert f'{tmp_path / "afile"} is a file, not a folder' in _one_line(capsys)


# Each evaluation's first step of the work: the output checks come before it.
_WORK = {'stereo': ('corr_depth_ros.core.stereo_net.evaluate', 'motorcycle_pairs'),
         'mono': ('corr_depth_ros.core.mono.evaluate', 'run_evaluation'),
         'corr': ('corr_depth_ros.core.descriptors.evaluate', 'load_model')}


@pytest.fixture
def no_work(monkeypatch):
    import importlib

    def started(*args, **kwargs):
        raise ValueError('the work started')
    for module, name in _WORK.values():
        monkeypatch.setattr(importlib.import_module(module), name, started)


@pytest.mark.parametrize('model', sorted(_WORK))
@pytest.mark.parametrize('outputs, said', [
    (['--json', 'afile/out.json'], '--json afile/out.json: {tmp}/afile is a file, not a folder'),
    (['--json', 'taken.json'], '--json taken.json is a folder, not a file'),
    (['--json', 'locked/out.json'], '--json locked/out.json: {tmp}/locked cannot be written'),
    (['--json', ''], '--json is empty'),
    (['--json', 'out.json', '--figure', 'noext'], '--figure noext: OpenCV has no writer for a '
                                                  'name without an extension'),
    (['--json', 'out.json', '--figure', 'fig.txt'], '--figure fig.txt: OpenCV has no writer '
                                                    'for .txt'),
    (['--json', 'out.json', '--figure', 'afile/fig.png'], '--figure afile/fig.png: {tmp}/afile '
                                                          'is a file'),
    (['--json', 'taken'], 'the figure (the --json path with .png) taken.png is a folder'),
])
def test_eval_outputs_are_checked_before_the_work(model, outputs, said, tmp_path, monkeypatch,
                                                  capsys, no_work):
    """They were tried after the whole evaluation, which a bad path then lost."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'afile').write_bytes(b'')
    (tmp_path / 'taken.json').mkdir()
    (tmp_path / 'taken.png').mkdir()
    (tmp_path / 'locked').mkdir()
    _locked(monkeypatch, tmp_path / 'locked')
    dataset = ['--dataset', 'motorcycle'] if model != 'mono' else []
    assert cli_main(['eval', model, *dataset, *outputs]) == 2
    err = _one_line(capsys)
    assert said.format(tmp=tmp_path) in err


@pytest.mark.parametrize('model', sorted(_WORK))
def test_eval_outputs_that_can_be_written_reach_the_work(model, tmp_path, monkeypatch, capsys,
                                                         no_work):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'old.json').write_text('{}')
    dataset = ['--dataset', 'motorcycle'] if model != 'mono' else []
    for outputs in (['--json', 'new/folder/out.json', '--figure', 'figs/out.jpg'],
                    ['--json', 'old.json'], ['--json', 'out.json', '--figure', '']):
        assert cli_main(['eval', model, *dataset, *outputs]) == 2
        assert 'the work started' in _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['old.json']   # nothing made early


def test_synth_out_is_checked_before_rendering(tmp_path, monkeypatch, capsys):
    import corr_depth_ros.core.synth as synth

    def renders(*args, **kwargs):
        raise AssertionError('rendered')
    monkeypatch.setattr(synth, 'write_dataset', renders)
    (tmp_path / 'afile').write_bytes(b'')
    (tmp_path / 'locked').mkdir()
    _locked(monkeypatch, tmp_path / 'locked')
    for out, said in (('afile', f'{tmp_path}/afile is a file, not a folder'),
                      ('afile/ds', f'{tmp_path}/afile is a file, not a folder'),
                      ('locked', f'{tmp_path}/locked cannot be written'),
                      ('locked/ds', f'{tmp_path}/locked cannot be written')):
        assert cli_main(['synth', 'stereo', '--out', str(tmp_path / out), '--count', '1',
                         '--no-progress']) == 2
        err = _one_line(capsys)
        assert err.startswith('corr_depth synth: error: --out ') and said in err


def test_export_onnx_out_is_checked_before_loading(tmp_path, monkeypatch, capsys):
    from corr_depth_ros.core import training

    def loads(*args, **kwargs):
        raise ValueError('the weights were loaded')
    monkeypatch.setattr(training, 'load_weights', loads)
    (tmp_path / 'afile').write_bytes(b'')
    assert cli_main(['export-onnx', 'stereo', '--out', str(tmp_path / 'afile' / 'm.onnx'),
                     '--height', '64', '--width', '64']) == 2
    assert f'--out {tmp_path}/afile/m.onnx: {tmp_path}/afile is a file, not a folder' in \
        _one_line(capsys)
    # The model is written beside the path and renamed over it: the folder must be writable,
    # not the file (a read-only old model was refused, one in a read-only folder accepted).
    import os
    real_access = os.access
    (tmp_path / 'ro').mkdir()
    (tmp_path / 'ro' / 'm.onnx').write_bytes(b'')
    (tmp_path / 'rw').mkdir()
    (tmp_path / 'rw' / 'm.onnx').write_bytes(b'')
    monkeypatch.setattr(os, 'access', lambda p, mode: (
        os.path.basename(str(p)) not in ('ro',) and not str(p).endswith('rw/m.onnx')
        and real_access(p, mode)))
    assert cli_main(['export-onnx', 'stereo', '--out', str(tmp_path / 'ro' / 'm.onnx'),
                     '--height', '64', '--width', '64']) == 2
    assert f'{tmp_path}/ro cannot be written' in _one_line(capsys)
    assert cli_main(['export-onnx', 'stereo', '--out', str(tmp_path / 'rw' / 'm.onnx'),
                     '--height', '64', '--width', '64']) == 2
    assert 'the weights were loaded' in _one_line(capsys)      # past the check: the work


def test_an_onnx_model_path_that_is_a_folder_is_named_as_such(tmp_path):
    pytest.importorskip('onnxruntime')
    from corr_depth_ros.core.backends import create_backend
    (tmp_path / 'model.onnx').mkdir()
    with pytest.raises(IsADirectoryError, match='model.onnx is a folder, not a file'):
        create_backend('onnx', model_path=str(tmp_path / 'model.onnx'), device='cpu')


class TestProcessBagOutput:
    """The output is checked before the first frame: an empty path processed every frame and
    then failed to rename a partial file written beside the working folder; one inside a file
    said "[Errno 17] File exists"."""

    @pytest.fixture(autouse=True)
    def _bag(self, tmp_path, monkeypatch):
        pytest.importorskip('mcap_ros2')
        from corr_depth_ros import bag
        writer = bag.BagWriter(str(tmp_path / 'in.mcap'))
        writer.close()
        (tmp_path / 'afile').write_bytes(b'')
        monkeypatch.chdir(tmp_path)

    def _run(self, output, *extra):
        return cli_main(['process-bag', 'in.mcap', output, '--namespace', '/cam',
                         '--no-progress', *extra])

    def test_an_empty_output_is_refused_while_parsing(self, capsys):
        with pytest.raises(SystemExit) as exit_info:
            self._run('')
        assert exit_info.value.code == 2
        assert 'argument output: the output path is empty' in capsys.readouterr().err

    @pytest.mark.parametrize('output', ['afile/out.mcap', 'afile/sub/out.mcap'])
    def test_an_output_inside_a_file(self, output, tmp_path, capsys):
        assert self._run(output) == 2
        assert f'lies under {tmp_path}/afile, which is a file, not a folder' in \
            _one_line(capsys)

    def test_an_output_in_a_folder_that_cannot_be_written(self, tmp_path, monkeypatch, capsys):
        (tmp_path / 'locked').mkdir()
        _locked(monkeypatch, tmp_path / 'locked')
        assert self._run('locked/out.mcap') == 2
        err = _one_line(capsys)
        assert f'no permission to write in {tmp_path}/locked' in err and '.partial' not in err

    def test_an_onnx_model_that_is_a_folder(self, tmp_path, capsys):
        pytest.importorskip('onnxruntime')
        (tmp_path / 'model.onnx').mkdir()
        assert self._run('out.mcap', '--backend', 'onnx', '--weights', 'model.onnx') == 2
        assert 'ONNX model model.onnx is a folder, not a file' in _one_line(capsys)
