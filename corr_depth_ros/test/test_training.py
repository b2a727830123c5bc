"""core.training: weights files carry their config and load strictly; fit trains and resumes."""
import json
import os

import pytest
import torch
from torch import nn

from corr_depth_ros.core import training


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


def test_weights_round_trip_and_strict(tmp_path):
    model = _tiny(hidden=5)
    path = str(tmp_path / 'w.safetensors')
    header = training.save_weights(path, model, arch='tiny', config={'hidden': 5},
                                   metadata={'steps': 3})
    assert json.load(open(path + '.json'))['identity'] == header['identity']
    loaded, read = training.load_weights(path, _tiny, expected_arch='tiny')
    assert read['config'] == {'hidden': 5} and read['metadata'] == {'steps': 3}
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match='expected'):
        training.load_weights(path, _tiny, expected_arch='other')
    # A factory producing a different shape must fail loudly (strict=True), not half-load.
    with pytest.raises(ValueError, match=r'0\.weight is \(5, 2\), the network has \(6, 2\)'):
        training.load_weights(path, lambda hidden: _tiny(hidden=hidden + 1), expected_arch='tiny')
    assert training.weights_identity(loaded, 'tiny', {'hidden': 5}) == header['identity']


def test_fit_learns_and_resumes(tmp_path):
    torch.manual_seed(0)
    cfg = training.TrainConfig(out_dir=str(tmp_path / 'run'), steps=150, batch_size=16, lr=2e-2,
                               warmup_steps=5, log_every=10, val_every=75, checkpoint_every=50,
                               device='cpu', threads=1)
    data = _Line()
    model = _tiny()
    out = training.fit(model, data, _loss, cfg, val_fn=lambda m, step: {'mse': _loss(m, {
        'x': torch.stack([data[i]['x'] for i in range(64)]),
        'y': torch.stack([data[i]['y'] for i in range(64)])})[0].item()})
    assert out['step'] == 150 and out['val_mse'] < 0.05
    lines = [json.loads(line) for line in open(tmp_path / 'run' / 'log.jsonl')]
    assert any(r['event'] == 'val' for r in lines)
    # Resume: a longer schedule continues from the checkpoint, not from scratch.
    cfg.steps = 160
    out2 = training.fit(_tiny(), data, _loss, cfg)
    assert out2['step'] == 160
    new_lines = [json.loads(line) for line in open(tmp_path / 'run' / 'log.jsonl')][len(lines):]
    assert new_lines[0] == {'event': 'resumed', 'step': 150}      # where the second run begins
    assert len(new_lines) > 1 and new_lines[1]['step'] > 150


def test_resume_uses_the_learning_rate_and_weight_decay_given_now(tmp_path, capsys, monkeypatch):
    """AdamW's and LambdaLR's saved state hold the first run's rate and decay; the options of
    the resumed run win (its weights' metadata records them), and the first resumed step
    already follows the new schedule."""
    torch.manual_seed(0)
    cfg = training.TrainConfig(out_dir=str(tmp_path / 'run'), steps=40, batch_size=16, lr=2e-2,
                               weight_decay=1e-4, warmup_steps=5, log_every=1, val_every=1000,
                               checkpoint_every=20, device='cpu', threads=1)
    training.fit(_tiny(), _Line(), _loss, cfg)
    logged = len(open(tmp_path / 'run' / 'log.jsonl').readlines())
    cfg.lr, cfg.weight_decay, cfg.steps = 1e-3, 0.05, 44
    used = []        # (lr, weight decay) of every optimizer step of the resumed run
    step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, 'step', lambda self, *a, **k: (used.append(
        (self.param_groups[0]['lr'], self.param_groups[0]['weight_decay'])), step(self, *a, **k))[1])
    training.fit(_tiny(), _Line(), _loss, cfg)
    # The first resumed step (41 of 44) already runs on the new schedule.
    assert len(used) == 4
    assert used[0] == (pytest.approx(1e-3 * training.lr_factor(40, 5, 44)), 0.05)
    assert 'resuming with lr 0.001 and weight decay 0.05 (the checkpoint had 0.02 and 0.0001)' \
        in capsys.readouterr().out
    new = [json.loads(line) for line in open(tmp_path / 'run' / 'log.jsonl')][logged:]
    rates = [r['lr'] for r in new if r['event'] == 'train']
    assert rates and all(rate <= 1e-3 for rate in rates)
    group = torch.load(tmp_path / 'run' / 'checkpoint.pt', weights_only=True)[
        'optimizer']['param_groups'][0]
    assert group['initial_lr'] == 1e-3 and group['weight_decay'] == 0.05


def test_fit_refuses_fewer_items_than_a_batch(tmp_path):
    """With drop_last, 64 items and a batch of 100 yield no batch: a clear error, not a hang."""
    cfg = training.TrainConfig(out_dir=str(tmp_path / 'run'), steps=2, batch_size=100,
                               device='cpu', threads=1)
    with pytest.raises(ValueError, match='64 training items are fewer than one batch of 100'):
        training.fit(_tiny(), _Line(), _loss, cfg)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    """The run signature (e.g. the loss) is kept in the checkpoint; resuming with another one is
    refused, naming what differs. A longer schedule with the same signature resumes."""
    cfg = training.TrainConfig(out_dir=str(tmp_path / 'run'), steps=4, batch_size=16,
                               checkpoint_every=2, device='cpu', threads=1)
    training.fit(_tiny(), _Line(), _loss, cfg, signature={'loss': {'use_lr': True}})
    cfg.steps = 6
    with pytest.raises(ValueError, match=r"another run \(loss: \{'use_lr': True\} there, "
                                         r"\{'use_lr': False\} now\)"):
        training.fit(_tiny(), _Line(), _loss, cfg, signature={'loss': {'use_lr': False}})
    assert training.fit(_tiny(), _Line(), _loss, cfg,
                        signature={'loss': {'use_lr': True}})['step'] == 6
    # Path options are stored resolved: one folder however it is spelled.
    assert training.path_key(str(tmp_path / 'run')) == training.path_key(
        os.path.relpath(tmp_path / 'run') + '/') and training.path_key('') is None



def test_resume_reads_fields_added_later_as_the_old_code_had_them():
    """A signature stored before a trainer added fields (here augment.scale_*) is read with the
    values the older code implicitly had: the same run resumes, a run that sets them otherwise
    is refused, and a stored signature without the parent (no augmentation) is left as it is."""
    added_later = {'augment.scale_prob': 0.0, 'augment.scale_range': (1.0, 1.6)}
    older = json.dumps({'net': {'groups': 4}, 'augment': {'mirror_prob': 0.5}})
    same = {'net': {'groups': 4},
            'augment': {'mirror_prob': 0.5, 'scale_prob': 0.0, 'scale_range': (1.0, 1.6)}}
    training.check_signature('ckpt', older, same, added_later)
    with pytest.raises(ValueError, match='is of another run'):
        training.check_signature('ckpt', older, same)             # as before: refused
    scaled = {**same, 'augment': {**same['augment'], 'scale_prob': 0.8}}
    with pytest.raises(ValueError, match=r"augment: \{'mirror_prob': 0.5, 'scale_prob': 0.0, "
                                         r"'scale_range': \[1.0, 1.6\]\} there"):
        training.check_signature('ckpt', older, scaled, added_later)
    without = json.dumps({'net': {'groups': 4}, 'augment': None})
    training.check_signature('ckpt', without, {'net': {'groups': 4}, 'augment': None}, added_later)
    with pytest.raises(ValueError, match='is of another run'):
        training.check_signature('ckpt', without, same, added_later)

class _Recorded(_Line):
    """_Line that records the indices read, and a start_stream() call if any."""

    def __init__(self):
        self.read, self.stream = [], None

    def __getitem__(self, i):
        self.read.append(int(i))
        return super().__getitem__(i)

    def start_stream(self, rank, items_read, world_size):
        self.stream = (rank, items_read)


def test_resume_continues_the_data_stream_and_refuses_to_mix_runs(tmp_path):
    def config(steps, resume=True):
        return training.TrainConfig(out_dir=str(tmp_path / 'run'), steps=steps, batch_size=4,
                                    lr=1e-2, warmup_steps=1, log_every=3, val_every=4,
                                    checkpoint_every=4, device='cpu', threads=1, resume=resume)
    first = _Recorded()
    training.fit(_tiny(), first, _loss, config(4), val_fn=lambda m, step: {'v': 1.0})
    assert first.stream == (0, 0)
    resumed = _Recorded()
    training.fit(_tiny(), resumed, _loss, config(8))
    assert resumed.stream == (0, 16)        # told where the stream stood: 4 steps x 4 items
    # Batches after the resume are not the run's first batches again.
    assert resumed.read[:16] != first.read[:16]
    state = torch.load(tmp_path / 'run' / 'checkpoint.pt', weights_only=True)
    assert state['step'] == 8 and 'scaler' in state
    with pytest.raises(FileExistsError, match='previous run'):
        training.fit(_tiny(), _Line(), _loss, config(8, resume=False))


def _read_through_and_in_pieces(tmp_path, loss_fn, stops, checkpoint_every):
    """The items _Line gives a run of stops[-1] steps of 4, read in one go and in runs resumed
    at each of ``stops`` -> (items read through, items read in pieces)."""
    def config(name, steps):
        return training.TrainConfig(out_dir=str(tmp_path / name), steps=steps, batch_size=4,
                                    lr=1e-2, warmup_steps=1, checkpoint_every=checkpoint_every,
                                    device='cpu', threads=1, resume=True)
    through = _Recorded()
    training.fit(_tiny(), through, loss_fn, config('through', stops[-1]))
    pieces = []
    for steps in stops:
        data = _Recorded()
        training.fit(_tiny(), data, loss_fn, config('pieces', steps))
        pieces += data.read
    return through.read, pieces


def test_an_interrupted_run_reads_the_same_items_as_an_uninterrupted_one(tmp_path):
    """_Line has 64 items: 40 steps of 4 read two and a half epochs. Stopped at step 12
    (inside the first epoch) and at 22 (inside the second) and resumed, a run reads exactly
    the items, in the order, of one that ran through (a resume used to draw a new shuffle,
    reading some items twice and others never)."""
    through, pieces = _read_through_and_in_pieces(tmp_path, _loss, (12, 22, 40), 2)
    assert pieces == through and len(through) == 160
    first_epoch = through[:64]
    assert sorted(first_epoch) == list(range(64)) and first_epoch != list(range(64))
    assert through[64:128] != first_epoch                   # each epoch a new order
    # Any int seed works, as it did before the sampler (negative and 64-bit ones too).
    for seed in (-1, 2 ** 40, 2 ** 70):
        order = list(training.EpochSampler(8, seed))
        assert sorted(order) == list(range(8))


def test_in_order_reading_goes_on_into_a_set_grown_by_more_steps():
    """train stereo's on-the-fly set has steps x batch x processes items: a resume with more
    --steps makes it longer. Read in order, the resumed run reads only new items; a new
    shuffle of the longer set re-read most of the old ones (6 of 8 in a review's 2-process
    run) and skipped most of the new."""
    def drawn(length, skip, shuffle):
        return [i for rank in (0, 1) for i in list(training.EpochSampler(
            length, 0, rank=rank, world_size=2, skip=skip, shuffle=shuffle))]
    first = [i for rank in (0, 1) for i in list(training.EpochSampler(
        8, 0, rank=rank, world_size=2, shuffle=False))[:4]]
    assert sorted(first) == list(range(8))
    resumed = drawn(16, 4, shuffle=False)
    assert sorted(resumed) == list(range(8, 16))
    assert set(drawn(16, 4, shuffle=True)) & set(first)      # what a shuffle did


def test_a_resume_after_a_skipped_batch_still_reads_on_where_it_stood(tmp_path):
    """A skipped (non-finite) batch is drawn from the data without a step: the checkpoint
    counts batches drawn, so the resumed run does not read the batch before it again."""
    def poisoned_by_item_5(model, batch):
        loss, logs = _loss(model, batch)
        items = (batch['x'][:, 0] * 64).round().long().tolist()
        return (loss * float('nan') if 5 in items else loss), logs

    through, pieces = _read_through_and_in_pieces(tmp_path, poisoned_by_item_5, (3, 9, 20), 1)
    assert len(through) > 80                      # skipped batches were drawn too
    assert pieces == through
    # A stream dataset (the descriptor pair pool) is told the items drawn, skipped ones too.
    state = torch.load(tmp_path / 'pieces' / 'checkpoint.pt', weights_only=True)
    assert state['batches_drawn'] > state['step']
    data = _Recorded()
    training.fit(_tiny(), data, poisoned_by_item_5, training.TrainConfig(
        out_dir=str(tmp_path / 'pieces'), steps=21, batch_size=4, lr=1e-2, warmup_steps=1,
        checkpoint_every=1, device='cpu', threads=1, resume=True))
    assert data.stream == (0, 4 * state['batches_drawn'])


def test_a_skipped_batch_leaves_batch_norm_statistics_as_they_were(tmp_path):
    """A non-finite loss skips the batch; its forward pass in train mode had already folded
    the batch into the running statistics, which must be put back (NaN there made every later
    validation and saved file NaN). The stereo validation counts a NaN prediction as an error
    (it once read as 0 % bad pixels)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1))
    calls = {'n': 0}

    def poisoned(model, batch):
        calls['n'] += 1
        x = batch['x'] * (float('inf') if calls['n'] == 3 else 1.0)
        err = model(x) - batch['y']
        return (err ** 2).mean(), {}

    cfg = training.TrainConfig(out_dir=str(tmp_path / 'run'), steps=6, batch_size=8, lr=1e-2,
                               warmup_steps=1, device='cpu', threads=1)
    training.fit(model, _Line(), poisoned, cfg)
    assert calls['n'] == 7
    assert torch.isfinite(model[1].running_mean).all() and torch.isfinite(model[1].running_var).all()
    assert int(model[1].num_batches_tracked) == 6
    from corr_depth_ros.core.stereo_net.train import evaluate_on_set

    class NaNNet(nn.Module):
        def forward(self, left, right):
            return {'disparity': torch.full(left.shape[:1] + left.shape[2:], float('nan'))[:, None]}
    dummy = nn.Linear(1, 1)
    net = NaNNet()
    net.add_module('p', dummy)
    data = {'left': torch.zeros(2, 3, 4, 5), 'right': torch.zeros(2, 3, 4, 5),
            'disparity_px': torch.full((2, 1, 4, 5), 3.0)}
    metrics = evaluate_on_set(net, data)
    assert metrics['bad_1_pct'] == 100.0 and metrics['bad_2_pct'] == 100.0
    assert metrics['epe_px'] == float('inf')


def test_validation_comes_before_its_checkpoint_and_survives_a_finished_resume(tmp_path):
    """The checkpoint of a validated step holds that step's numbers: a finished run resumed
    again (e.g. to add --ship) still returns them rather than none; the logged learning rate
    is the one the step used (with 2 warm-up steps: half the rate, then the full rate)."""
    cfg = training.TrainConfig(out_dir=str(tmp_path / 'run'), steps=4, batch_size=4, lr=1e-2,
                               warmup_steps=2, log_every=1, val_every=2, checkpoint_every=2,
                               device='cpu', threads=1, resume=True)
    out = training.fit(_tiny(), _Line(), _loss, cfg, val_fn=lambda m, step: {'v': float(step)})
    assert out['val_v'] == 4.0
    state = torch.load(tmp_path / 'run' / 'checkpoint.pt', weights_only=True)
    assert state['validation'] == {'v': 4.0}
    again = training.fit(_tiny(), _Line(), _loss, cfg, val_fn=lambda m, step: {'v': -1.0})
    assert again['val_v'] == 4.0 and again['step'] == 4
    rates = [r['lr'] for r in map(json.loads, open(tmp_path / 'run' / 'log.jsonl'))
             if r['event'] == 'train']
    assert rates[:2] == pytest.approx([0.5e-2, 1e-2])


def test_best_weights_keeps_the_best_validation_across_a_resume(tmp_path):
    path = str(tmp_path / 'best.safetensors')
    keeper = training.BestWeights(path, 'err')
    good, worse, better = _tiny(), _tiny(), _tiny()
    assert keeper.load_into(_tiny()) is None             # nothing kept yet
    assert keeper.offer(good, {'err': 0.5, 'step': 10}, arch='tiny', config={}, metadata={})
    assert not keeper.offer(worse, {'err': 0.7, 'step': 20}, arch='tiny', config={}, metadata={})
    # A resumed run reads the best so far back from the file and compares against it.
    resumed = training.BestWeights(path, 'err')
    assert resumed.best == {'err': 0.5, 'step': 10}
    assert not resumed.offer(worse, {'err': 0.6, 'step': 30}, arch='tiny', config={}, metadata={})
    target = _tiny()
    assert resumed.load_into(target) == {'err': 0.5, 'step': 10}
    for a, b in zip(good.state_dict().values(), target.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.offer(better, {'err': 0.1, 'step': 40}, arch='tiny', config={},
                         metadata={'note': 'x'})
    header = training.read_weights_header(path)
    assert header['metadata'] == {'note': 'x', 'validation': {'err': 0.1, 'step': 40}}
    # Higher-is-better metrics (e.g. PCK) and a non-finite first value.
    pck = training.BestWeights(str(tmp_path / 'pck.safetensors'), 'pck', higher_is_better=True)
    assert not pck.offer(good, {'pck': float('nan')}, arch='tiny', config={}, metadata={})
    assert pck.offer(good, {'pck': 0.2}, arch='tiny', config={}, metadata={})
    assert pck.offer(better, {'pck': 0.3}, arch='tiny', config={}, metadata={})
    assert not pck.offer(worse, {'pck': 0.25}, arch='tiny', config={}, metadata={})


def test_fit_passes_the_step_to_val_fn(tmp_path):
    """val_fn is told the step it validates (the trainers store it with their best weights);
    the training log keeps its log_every rhythm, with no extra record at validation steps."""
    seen = []

    def val_fn(model, step):
        seen.append((step, model.training))
        return {'v': float(step)}
    cfg = training.TrainConfig(out_dir=str(tmp_path / 'run'), steps=6, batch_size=4,
                               log_every=3, val_every=2, checkpoint_every=6, device='cpu',
                               threads=1)
    out = training.fit(_tiny(), _Line(), _loss, cfg, val_fn=val_fn)
    assert seen == [(2, False), (4, False), (6, False)] and out['val_v'] == 6.0
    records = [json.loads(line) for line in open(tmp_path / 'run' / 'log.jsonl')]
    assert [r['step'] for r in records if r['event'] == 'train'] == [3, 6]
    assert [(r['step'], r['v']) for r in records if r['event'] == 'val'] == [
        (2, 2.0), (4, 4.0), (6, 6.0)]


def test_resolve_device():
    assert training.resolve_device('cpu').type == 'cpu'
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='cuda'):
            training.resolve_device('cuda')


def test_torchrun_ddp_two_processes(tmp_path):
    """`torchrun --nproc_per_node=2` (DistributedDataParallel over gloo on the CPU) trains the
    stereo net, validates and writes its weights once, from rank 0."""
    import shutil
    import subprocess
    import sys
    torchrun = shutil.which('torchrun') or os.path.join(os.path.dirname(sys.executable), 'torchrun')
    if not os.path.exists(torchrun):
        pytest.skip('torchrun not installed')
    out = tmp_path / 'ddp'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    result = subprocess.run(
        [torchrun, '--nproc_per_node=2', '--master_port', str(29500 + os.getpid() % 1000),
         '-m', 'corr_depth_ros.cli', 'train', 'stereo', '--out', str(out), '--size', '96x64',
         '--steps', '4', '--batch-size', '2', '--val-every', '2', '--val-count', '2',
         '--num-workers', '0', '--threads', '1', '--feature-channels', '16', '--groups', '4',
         '--aggregation-channels', '8,8,8', '--max-disparity', '32', '--log-every', '1'],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    records = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    # Only rank 0 logs: one record per step, and the validations at steps 2 and 4.
    assert [r['step'] for r in records if r['event'] == 'train'] == [1, 2, 3, 4]
    assert [r['step'] for r in records if r['event'] == 'val'] == [2, 4]
    from corr_depth_ros.core.stereo_net import ARCH, build_stereo_net
    header = training.load_weights(str(out / 'last.safetensors'), build_stereo_net,
                                   expected_arch=ARCH)[1]
    assert header['config']['feature_channels'] == 16
    assert header['metadata']['train_config']['world_size'] == 2
    # One process cannot resume the two processes' run: each read its own part of the data.
    single = subprocess.run(
        [sys.executable, '-m', 'corr_depth_ros.cli', 'train', 'stereo', '--out', str(out),
         '--size', '96x64', '--steps', '6', '--batch-size', '2', '--val-every', '2',
         '--val-count', '2', '--num-workers', '0', '--threads', '1', '--feature-channels', '16',
         '--groups', '4', '--aggregation-channels', '8,8,8', '--max-disparity', '32',
         '--resume'], capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 2 and 'world_size' in single.stdout + single.stderr


def test_fit_skips_non_finite_batches_and_stops_on_divergence(tmp_path):
    torch.manual_seed(0)
    calls = {'n': 0}

    def sometimes_nan(model, batch):
        calls['n'] += 1
        loss, logs = _loss(model, batch)
        return (loss * float('nan') if calls['n'] in (3, 4) else loss), logs

    cfg = training.TrainConfig(out_dir=str(tmp_path / 'run'), steps=20, batch_size=8, lr=1e-2,
                               warmup_steps=2, log_every=5, checkpoint_every=10, device='cpu',
                               threads=1)
    model = _tiny()
    out = training.fit(model, _Line(), sometimes_nan, cfg)
    assert out['step'] == 20 and calls['n'] == 22          # two batches skipped, not stepped
    assert all(torch.isfinite(p).all() for p in model.parameters())
    events = [json.loads(line)['event'] for line in open(tmp_path / 'run' / 'log.jsonl')]
    assert events.count('skipped_batch') == 2
    cfg = training.TrainConfig(out_dir=str(tmp_path / 'diverged'), steps=20, batch_size=8,
                               device='cpu', threads=1, max_bad_batches=3)
    with pytest.raises(FloatingPointError, match='3 non-finite losses in a row'):
        training.fit(_tiny(), _Line(), lambda m, b: (_loss(m, b)[0] * float('nan'), {}), cfg)


@pytest.mark.parametrize('model', ['mono', 'descriptors'])
def test_torchrun_ddp_mono_and_descriptors(tmp_path, model):
    """The other two trainers under `torchrun --nproc_per_node=2`: they finish (mono's ranks
    share one rendered cache through training.main_process_first) and rank 0 alone logs."""
    import shutil
    import subprocess
    import sys
    torchrun = shutil.which('torchrun') or os.path.join(os.path.dirname(sys.executable), 'torchrun')
    if not os.path.exists(torchrun):
        pytest.skip('torchrun not installed')
    out = tmp_path / model
    if model == 'mono':
        args = ['train', 'mono', '--out-dir', str(out), '--height', '64', '--width', '96',
                '--train-count', '8', '--cache-dir', str(tmp_path / 'cache'), '--val-images',
                '0', '--steps', '2', '--batch-size', '2', '--threads', '1', '--device', 'cpu']
        weights = out / 'mono.safetensors'
    else:
        args = ['train', 'descriptors', '--out', str(out), '--size', '64x48', '--steps', '2',
                '--batch-size', '1', '--pool-size', '2', '--val-every', '2', '--checkpoint-every',
                '2', '--num-matches', '32', '--threads', '1', '--device', 'cpu']
        weights = out / 'last.safetensors'
    result = subprocess.run(
        [torchrun, '--nproc_per_node=2', '--master_port', str(29600 + os.getpid() % 1000
                                                              + (model == 'mono')),
         '-m', 'corr_depth_ros.cli', *args],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert weights.is_file()
    steps = [json.loads(line)['step'] for line in (out / 'log.jsonl').read_text().splitlines()
             if json.loads(line)['event'] == 'train']
    assert steps == sorted(set(steps)) and steps[-1] == 2      # one log, rank 0's


def test_mixed_precision_type_follows_native_bfloat16_support(monkeypatch):
    """bfloat16 only on GPUs that run it natively (compute capability >= 8); a T4 or V100
    (7.x), where torch.cuda.is_bf16_supported() also says yes but emulates it, gets float16
    (with the GradScaler fit() enables for it)."""
    from corr_depth_ros.core.training import mixed_precision
    device = torch.device('cuda', 0)
    for capability, want in (((7, 5), torch.float16), ((7, 0), torch.float16),
                             ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda d=None, c=capability: c)
        monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
        # What fit() uses: autocast on, its dtype, and the GradScaler for float16 only.
        assert mixed_precision(True, device) == (True, want, want == torch.float16), capability
    assert mixed_precision(False, device) == (False, torch.float16, False)
    assert mixed_precision(True, torch.device('cpu')) == (False, torch.float16, False)


def test_a_file_that_is_not_safetensors_is_refused_in_one_line(tmp_path):
    """A PNG given as weights (--init-from, --weights, ...) is a ValueError the CLI prints in
    one line, like a missing file or the wrong model kind, not a SafetensorError traceback."""
    path = tmp_path / 'ref.png'
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
    with pytest.raises(ValueError, match='ref.png is not a safetensors weights file'):
        training.read_weights_header(str(path))


def test_cli_ctrl_c_says_how_to_go_on_without_a_traceback(monkeypatch, capsys):
    import argparse

    from corr_depth_ros import cli

    def interrupted(args):
        raise KeyboardInterrupt
    command = ['train']
    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', lambda self, argv=None:
                        argparse.Namespace(func=interrupted, command=command[0]))
    assert cli.main(['train', 'stereo']) == 130
    assert 'interrupted. A training run goes on from its last checkpoint' in \
        capsys.readouterr().err
    # Other commands have no run to go on with (eval and process-bag printed the hint too).
    command[0] = 'eval'
    assert cli.main(['eval', 'stereo']) == 130
    err = capsys.readouterr().err
    assert 'corr_depth eval: interrupted' in err and 'checkpoint' not in err


def test_weights_that_do_not_fit_their_network_are_refused_naming_the_file(tmp_path):
    """load_weights gave raw TypeError (an option the network does not take), RuntimeError
    (tensors missing, extra or of another shape) and JSONDecodeError (a damaged header), none
    naming the file: the callers (process-bag, eval, the nodes) turn a ValueError into a clear
    message, so each is one now, with the file and what does not match. A folder given as the
    weights is said to be one (it was 'weights file not found')."""
    from safetensors.torch import load_file, save_file
    path = str(tmp_path / 'w.safetensors')
    header = training.save_weights(path, _tiny(hidden=5), arch='tiny', config={'hidden': 5},
                                   metadata={})
    tensors = load_file(path)

    def write(name, state, **changes):
        out = str(tmp_path / name)
        save_file(state, out, metadata={k: json.dumps(v) for k, v in {**header, **changes}.items()})
        return out
    unknown = write('unknown.safetensors', tensors, config={'hidden': 5, 'depth': 3})
    with pytest.raises(ValueError, match=f"{unknown}: this version cannot build the 'tiny' "
                                         "network .*'depth'"):
        training.load_weights(unknown, _tiny, expected_arch='tiny')
    missing = write('missing.safetensors', {k: v for k, v in tensors.items() if k != '2.bias'})
    with pytest.raises(ValueError, match=f'{missing} does not hold the tensors .*missing 2.bias'):
        training.load_weights(missing, _tiny, expected_arch='tiny')
    extra = write('extra.safetensors', {**tensors, 'spare': torch.zeros(2)})
    with pytest.raises(ValueError, match=f'{extra} does not hold the tensors .*unexpected spare'):
        training.load_weights(extra, _tiny, expected_arch='tiny')
    reshaped = write('reshaped.safetensors', tensors, config={'hidden': 6})
    with pytest.raises(ValueError, match=r'0\.bias is \(5,\), the network has \(6,\)'):
        training.load_weights(reshaped, _tiny, expected_arch='tiny')
    damaged = str(tmp_path / 'damaged.safetensors')
    save_file(tensors, damaged, metadata={'arch': '"tiny"', 'config': '{"hidden": 5'})
    with pytest.raises(ValueError, match=f"{damaged}: the 'config' entry of its header is not "
                                         'JSON'):
        training.read_weights_header(damaged)
    with pytest.raises(ValueError, match=f'{tmp_path} is a folder, not a weights file'):
        training.load_weights(str(tmp_path), _tiny, expected_arch='tiny')
    with pytest.raises(FileNotFoundError, match='weights file not found'):
        training.load_weights(str(tmp_path / 'none.safetensors'), _tiny, expected_arch='tiny')


def test_divergence_is_one_sentence_with_advice_and_keeps_the_last_sound_checkpoint(tmp_path):
    """--lr inf (accepted by every trainer) turned the weights to NaN at the first step: fit
    wrote checkpoints of them, and ended in a FloatingPointError listing tensor reprs. Now the
    trainers refuse such a rate while parsing, and fit writes no checkpoint of weights that
    are not finite and says, in one sentence, what to do."""
    from corr_depth_ros.cli import main as cli_main
    cfg = training.TrainConfig(out_dir=str(tmp_path / 'run'), steps=4, batch_size=8,
                               lr=float('inf'), warmup_steps=1, checkpoint_every=1,
                               device='cpu', threads=1)
    with pytest.raises(FloatingPointError,
                       match=r'^training diverged: the weights are no longer finite at step 1, '
                             r'so no checkpoint was written; lower --lr \(now inf\); no '
                             r'checkpoint was written yet, so give another output folder'):
        training.fit(_tiny(), _Line(), _loss, cfg)
    assert not os.path.exists(tmp_path / 'run' / 'checkpoint.pt')

    calls = {'n': 0}

    def bad_from_call_3(model, batch):
        calls['n'] += 1
        loss, logs = _loss(model, batch)
        return (loss * float('nan'), {'abs_err': torch.tensor(float('nan'))}) \
            if calls['n'] > 2 else (loss, logs)
    cfg = training.TrainConfig(out_dir=str(tmp_path / 'nan'), steps=8, batch_size=8,
                               warmup_steps=1, checkpoint_every=1, device='cpu', threads=1,
                               max_bad_batches=3)
    with pytest.raises(FloatingPointError) as failure:
        training.fit(_tiny(), _Line(), bad_from_call_3, cfg)
    assert str(failure.value).startswith('training diverged: 3 non-finite losses in a row at '
                                         'step 2 (abs_err nan); run the same command again with '
                                         'a lower --lr (now 0.001): it goes on from the last '
                                         'checkpoint in ')
    assert torch.load(tmp_path / 'nan' / 'checkpoint.pt', weights_only=True)['step'] == 2
    # A run that was not resuming (train stereo without --resume) is told how to resume.
    calls['n'] = 0
    cfg.out_dir, cfg.resume = str(tmp_path / 'nan_fresh'), False
    with pytest.raises(FloatingPointError, match=r'run it resuming \(train stereo: add '
                       r'--resume; train descriptors: without --no-resume\) again'):
        training.fit(_tiny(), _Line(), bad_from_call_3, cfg)
    for trainer, option, value in (('stereo', '--lr', 'inf'), ('descriptors', '--lr', '0'),
                                   ('mono', '--lr', '-1e-3'), ('stereo', '--weight-decay', '-1'),
                                   ('descriptors', '--weight-decay', 'nan')):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(['train', trainer, option, value])
        assert exit_info.value.code == 2, (trainer, option, value)


def test_a_run_stopped_after_its_first_best_weights_can_be_run_again(tmp_path):
    """Validation every step, checkpoints every 5: stopped at step 2, the folder held best
    weights but no checkpoint, and the same command was refused ("holds weights of a previous
    run but no checkpoint.pt") although the stop had said it would go on. A validation now
    ends in a checkpoint too."""
    out = tmp_path / 'run'
    best = training.BestWeights(str(out / 'best.safetensors'), 'abs_err')
    calls = {'n': 0}

    def stops_at_step_3(model, batch):
        calls['n'] += 1
        if calls['n'] == 3:
            raise KeyboardInterrupt
        return _loss(model, batch)

    def val_fn(model, step):
        best.offer(model, {'abs_err': 1.0 / step}, arch='tiny', config={}, metadata={})
        return {'abs_err': 1.0 / step}
    cfg = training.TrainConfig(out_dir=str(out), steps=6, batch_size=8, warmup_steps=1,
                               val_every=1, checkpoint_every=5, device='cpu', threads=1,
                               resume=True)
    with pytest.raises(KeyboardInterrupt):
        training.fit(_tiny(), _Line(), stops_at_step_3, cfg, val_fn=val_fn)
    assert os.path.isfile(out / 'best.safetensors')
    assert torch.load(out / 'checkpoint.pt', weights_only=True)['step'] == 2
    result = training.fit(_tiny(), _Line(), _loss, cfg, val_fn=val_fn)
    assert result['step'] == 6
