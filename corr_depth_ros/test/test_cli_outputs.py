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
        raise FloatingPointError("10 non-finite losses in a row at step 52: {'loss': nan}")
    assert _run_func(monkeypatch, diverges) == 1
    err = _one_line(capsys)
    assert 'training diverged (10 non-finite losses in a row at step 52' in err
    assert 'goes on from its last checkpoint' in err
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
