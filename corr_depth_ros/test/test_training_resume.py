"""core.training.fit resuming: what a rerun in a run folder continues, and what it refuses."""
import os

import pytest
import torch
from torch import nn

from corr_depth_ros.core import training


@pytest.fixture(autouse=True)
def _one_thread():
    # A shared machine: one thread keeps the tiny trainings fast (see test_mono.py).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tiny(*, hidden: int = 4):
    return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))


class _Line(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        x = torch.tensor([i / 64.0, 1.0 - i / 64.0])
        return {'x': x, 'y': (3 * x[0] - x[1]).reshape(1)}


def _loss(model, batch):
    err = model(batch['x']) - batch['y']
    return (err ** 2).mean(), {'abs_err': err.abs().mean().item()}


def _cfg(out_dir, **options):
    return training.TrainConfig(out_dir=str(out_dir), **{
        'steps': 6, 'batch_size': 8, 'warmup_steps': 1, 'log_every': 1, 'checkpoint_every': 2,
        'device': 'cpu', 'threads': 1, **options})


def test_a_damaged_checkpoint_is_refused_in_one_sentence_naming_it(tmp_path):
    """A truncated checkpoint.pt (a full disk, a copy cut short) gave torch.load's raw
    RuntimeError, without the file's name; now a ValueError says which file and what to do."""
    cfg = _cfg(tmp_path / 'run', steps=2)
    training.fit(_tiny(), _Line(), _loss, cfg)
    path = tmp_path / 'run' / 'checkpoint.pt'
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=f'{path} cannot be read .*delete it to start the run '
                                         'over'):
        training.fit(_tiny(), _Line(), _loss, _cfg(tmp_path / 'run', steps=4))
    path.write_bytes(b'')
    with pytest.raises(ValueError, match='cannot be read'):
        training.resume_state(_cfg(tmp_path / 'run', steps=4))


def test_train_mono_refuses_a_run_of_another_signature_before_rendering_its_data(
        tmp_path, monkeypatch):
    """train mono rendered its training cache and its validation cache (15.9 s for 60 pairs,
    minutes at the defaults) before fit() found the checkpoint of another run and refused."""
    from corr_depth_ros.core.mono import train as mono_train
    run = tmp_path / 'run'
    old = mono_train.MonoTrainSpec(height=64, width=64, base_channels=4)
    # A checkpoint of a 64x64 run, as train_mono's fit() would have written it.
    training.fit(_tiny(), _Line(), _loss, _cfg(run, steps=2),
                 signature={'loss': {}, 'data': 'synthetic', 'size_hw': [64, 64],
                            'net': {'base_channels': 4}, 'train_count': old.train_count})
    rendered = []
    monkeypatch.setattr(mono_train, 'build_synthetic_cache',
                        lambda *args, **kwargs: rendered.append(args))
    spec = mono_train.MonoTrainSpec(height=96, width=64, base_channels=4, train_count=8,
                                    cache_dir=str(tmp_path / 'cache'),
                                    val_cache_dir=str(tmp_path / 'val'), val_images=2)
    with pytest.raises(ValueError, match=f'{run}/checkpoint.pt is of another run'):
        mono_train.train_mono(spec, _cfg(run, steps=4))
    assert rendered == []


def test_a_fresh_run_does_not_take_weights_it_did_not_write(tmp_path):
    """best.safetensors of an earlier run in the folder was read by BestWeights as this run's
    best so far: a 3-step mono run wrote a 30-step run's weights with its own metadata, and
    descriptors --no-resume --ship shipped them. A run that does not resume a checkpoint now
    refuses such a folder, as it refused one with a checkpoint or a log without --resume."""
    old = tmp_path / 'old'
    training.save_weights(str(old / 'best.safetensors'), _tiny(), arch='tiny',
                          config={}, metadata={'validation': {'mse': 0.0, 'step': 30}})
    # Resuming when it can (train mono): there is no checkpoint to resume.
    with pytest.raises(FileExistsError, match=f'{old} holds weights of a previous run '
                                              r'\(best.safetensors\) but no checkpoint.pt'):
        training.fit(_tiny(), _Line(), _loss, _cfg(old))
    # --no-resume (train descriptors, stereo without --resume).
    os.replace(old / 'best.safetensors', old / 'last.safetensors')
    with pytest.raises(FileExistsError, match=r'holds a previous run \(last.safetensors\)'):
        training.fit(_tiny(), _Line(), _loss, _cfg(old, resume=False))
    # A run with its checkpoint resumes with the best weights it wrote, as before.
    run = tmp_path / 'run'
    best = training.BestWeights(str(run / 'best.safetensors'), 'mse')

    def val_fn(model, step):
        metrics = {'mse': 1.0 / step, 'step': step}
        best.offer(model, metrics, arch='tiny', config={}, metadata={})
        return metrics
    training.fit(_tiny(), _Line(), _loss, _cfg(run, steps=2, val_every=2), val_fn=val_fn)
    training.fit(_tiny(), _Line(), _loss, _cfg(run, steps=4, val_every=2), val_fn=val_fn)
    assert training.BestWeights(str(run / 'best.safetensors'), 'mse').best['step'] == 4


def test_resume_refuses_another_seed_or_batch_size_and_fewer_steps_than_done(tmp_path):
    """A resume quietly took a changed --seed or --batch-size (another data stream: the
    sampler's position is counted in batches), and --steps below the step reached trained
    nothing and rewrote the weights' metadata with the smaller number."""
    run = tmp_path / 'run'
    training.fit(_tiny(), _Line(), _loss, _cfg(run, steps=4, seed=3))
    ckpt = str(run / 'checkpoint.pt')
    with pytest.raises(ValueError, match=f'{ckpt} is of a run with another data stream '
                                         r'\(--seed 3 there, 5 now\)'):
        training.fit(_tiny(), _Line(), _loss, _cfg(run, steps=6, seed=5))
    with pytest.raises(ValueError, match=r'--batch-size 8 there, 4 now'):
        training.fit(_tiny(), _Line(), _loss, _cfg(run, steps=6, seed=3, batch_size=4))
    with pytest.raises(ValueError, match=f'{ckpt} is at step 4, beyond --steps 2: give --steps 4 '
                                         'or more'):
        training.fit(_tiny(), _Line(), _loss, _cfg(run, steps=2, seed=3))
    # The same options resume, and a finished run resumed at its own length returns.
    assert training.fit(_tiny(), _Line(), _loss, _cfg(run, steps=4, seed=3))['step'] == 4
    assert training.fit(_tiny(), _Line(), _loss, _cfg(run, steps=6, seed=3))['step'] == 6
