"""core.training.fit resuming: what a rerun in a run folder continues, and what it refuses."""
import os

import pytest
import torch

from corr_depth_ros.core import training
# The tiny network and data of test_training.py; one torch thread (conftest.py).
from test_training import _Line, _loss, _tiny

pytestmark = pytest.mark.usefixtures('one_torch_thread')


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


class _Noisy(_Line):
    """_Line with noise from torch's global generator, as train mono's augmentation draws it."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        return {**item, 'x': item['x'] + 0.1 * torch.rand(2)}


class _Interrupted(Exception):
    pass


def _stopping_after(loss_fn, steps):
    """``loss_fn`` that stops the run (as a kill would) when asked for step ``steps`` + 1."""
    calls = {'n': 0}

    def stopping(model, batch):
        calls['n'] += 1
        if calls['n'] > steps:
            raise _Interrupted
        return loss_fn(model, batch)
    return stopping


def test_a_run_resumed_with_one_process_ends_as_the_uninterrupted_one(tmp_path):
    """fit reseeded torch's generator from the step on resume: augmentation drawn from it
    (train mono's, the descriptor loss's sampling) took other values, and a resumed run ended
    with other weights than one that ran through. The checkpoint now keeps the random state.
    Stops inside an epoch (5 of its 8 batches) and at its end (step 8)."""
    torch.manual_seed(0)
    start = _tiny().state_dict()

    def model():
        net = _tiny()
        net.load_state_dict(start)
        return net
    through = model()
    training.fit(through, _Noisy(), _loss, _cfg(tmp_path / 'through', steps=12,
                                                 checkpoint_every=1))
    pieces = model()
    for more in (5, 3):         # stopped at step 5, then at step 8
        with pytest.raises(_Interrupted):
            training.fit(model(), _Noisy(), _stopping_after(_loss, more),
                         _cfg(tmp_path / 'pieces', steps=12, checkpoint_every=1))
    training.fit(pieces, _Noisy(), _loss, _cfg(tmp_path / 'pieces', steps=12,
                                               checkpoint_every=1))
    for name, value in through.state_dict().items():
        assert torch.equal(value, pieces.state_dict()[name]), name


def test_train_mono_resumed_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    """train mono's augmentation draws from torch's global generator: a run killed at step 2
    and resumed ended with other weights than one run through (train stereo's did not)."""
    from safetensors.torch import load_file

    from corr_depth_ros.core.mono import train as mono_train
    spec = dict(height=64, width=64, base_channels=4, train_count=6,
                cache_dir=str(tmp_path / 'cache'), val_images=0, select='last', half=False)

    def cfg(name):
        return _cfg(tmp_path / name, steps=4, batch_size=2, checkpoint_every=2)
    mono_train.train_mono(mono_train.MonoTrainSpec(**spec), cfg('through'))
    make_loss_fn = mono_train.make_loss_fn
    monkeypatch.setattr(mono_train, 'make_loss_fn',
                        lambda weights: _stopping_after(make_loss_fn(weights), 2))
    with pytest.raises(_Interrupted):       # inside the first epoch of 3 batches
        mono_train.train_mono(mono_train.MonoTrainSpec(**spec), cfg('pieces'))
    monkeypatch.setattr(mono_train, 'make_loss_fn', make_loss_fn)
    mono_train.train_mono(mono_train.MonoTrainSpec(**spec), cfg('pieces'))
    through = load_file(str(tmp_path / 'through' / 'mono.safetensors'))
    pieces = load_file(str(tmp_path / 'pieces' / 'mono.safetensors'))
    assert through.keys() == pieces.keys()
    for name, value in through.items():
        assert torch.equal(value, pieces[name]), name


def test_the_descriptor_pair_pool_goes_on_from_its_saved_state(monkeypatch):
    """A resumed PairPool rendered a new pool of the pairs that came next and drew from a new
    generator: a resumed descriptor run read other pairs than an uninterrupted one. Restored
    from stream_state() (kept in the checkpoint), it reads exactly what the first would."""
    from corr_depth_ros.core.descriptors import data
    monkeypatch.setattr(data, 'render_sample',
                        lambda kind, seed, h, w, config=None: {'seed': seed, 'kind': kind})

    def pool():
        return data.PairPool(100, 8, 8, pool_size=4, renew_per_item=0.5, seed=2)
    first = pool()
    for i in range(7):
        first[i]
    resumed = pool()
    resumed.start_stream(rank=0, items_read=7)
    resumed.restore_stream(torch.load(_saved(first.stream_state()), weights_only=True))
    assert [resumed[i] for i in range(20)] == [first[i] for i in range(20)]
    with pytest.raises(RuntimeError, match='before the first read'):
        resumed.restore_stream(first.stream_state())


def _saved(value):
    """``value`` through torch.save, as a checkpoint holds it."""
    import io
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return buffer


def test_train_descriptors_resumed_ends_with_the_weights_of_an_uninterrupted_run(
        tmp_path, monkeypatch):
    """The descriptor run resumed with a new pool and a reseeded generator (augmentation, the
    loss's match sampling): it ended with other weights than one run through."""
    from safetensors.torch import load_file

    from corr_depth_ros.core.descriptors import train as desc_train
    from corr_depth_ros.core.descriptors.loss import ContrastiveConfig

    def spec():
        return desc_train.DescriptorTrainSpec(descriptor_dim=4, base_channels=4, height=48,
                                              width=64, pool_size=2, val_pairs=1, val_points=20,
                                              loss=ContrastiveConfig(num_matches=32))

    def cfg(name):
        return _cfg(tmp_path / name, steps=4, batch_size=1, checkpoint_every=2, val_every=4,
                    lr=1e-2)
    desc_train.train_descriptors(spec(), cfg('through'), 'test')
    make_loss_fn = desc_train.make_loss_fn
    monkeypatch.setattr(desc_train, 'make_loss_fn',
                        lambda spec: _stopping_after(make_loss_fn(spec), 2))
    with pytest.raises(_Interrupted):
        desc_train.train_descriptors(spec(), cfg('pieces'), 'test')
    monkeypatch.setattr(desc_train, 'make_loss_fn', make_loss_fn)
    desc_train.train_descriptors(spec(), cfg('pieces'), 'test')
    through = load_file(str(tmp_path / 'through' / 'last.safetensors'))
    pieces = load_file(str(tmp_path / 'pieces' / 'last.safetensors'))
    for name, value in through.items():
        assert torch.equal(value, pieces[name]), name
