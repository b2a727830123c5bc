"""nodes/worker.py: keep-only-the-latest processing and per-problem throttled error reports."""
import threading
import time

from corr_depth_ros.nodes.worker import LatestFrameWorker, ThrottledReporter


class ListLogger:
    def __init__(self):
        self.lines = []

    def error(self, text):
        self.lines.append(text)


class FakeContext:
    def __init__(self, ok=True):
        self._ok = ok

    def ok(self):
        return self._ok


def _wait_for(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_worker_processes_only_the_newest_waiting_item_and_survives_errors():
    release, processed, errors = threading.Event(), [], []

    def process(item):
        if item == 'first':
            release.wait(10)
        if item == 'bad':
            raise ValueError('bad frame')
        processed.append(item)

    worker = LatestFrameWorker(process, errors.append)
    try:
        worker.submit('first')
        assert _wait_for(lambda: worker._pending is None)  # 'first' is being processed
        for item in ('stale-1', 'stale-2', 'newest'):
            worker.submit(item)
        release.set()
        assert _wait_for(lambda: processed == ['first', 'newest'])
        assert worker.dropped == 2
        worker.submit('bad')  # the worker must keep running after an error
        assert _wait_for(lambda: len(errors) == 1)
        worker.submit('after')
        assert _wait_for(lambda: processed[-1] == 'after')
        assert isinstance(errors[0], ValueError)
    finally:
        release.set()
        worker.stop()


def test_worker_name_is_its_threads_name():
    threads = []
    worker = LatestFrameWorker(lambda item: threads.append(threading.current_thread().name),
                               lambda exc: None, name='mono_depth')
    try:
        worker.submit('frame')
        assert _wait_for(lambda: threads == ['mono_depth'])
        assert worker.name == 'mono_depth'
    finally:
        worker.stop()


def test_reporter_throttles_per_problem_and_is_silent_after_shutdown():
    logger = ListLogger()
    reporter = ThrottledReporter(logger, period_s=60.0)
    for _ in range(3):
        reporter.error('size', 'image size mismatch')
    reporter.error('encoding', 'unsupported encoding')
    assert logger.lines == ['image size mismatch', 'unsupported encoding']
    assert reporter.count == 4

    reporter.frame_dropped(ValueError('camera_info has Tx = 0'), FakeContext(ok=True))
    assert logger.lines[-1] == 'frame dropped: camera_info has Tx = 0'
    reporter.frame_dropped(RuntimeError("publisher's context is invalid"), FakeContext(ok=False))
    assert len(logger.lines) == 3 and reporter.count == 5
    # Keys carry part of the message: a value changing there (a drifting fx) must not grow
    # the reporter without bound over a node's life.
    for i in range(2000):
        reporter.frame_dropped(ValueError(f'fx={i} is no focal length'), FakeContext(ok=True))
    assert len(reporter._last) <= 256 + 1 and len(logger.lines) == 3 + 2000


def test_reporter_says_a_problem_again_when_a_timer_of_its_period_reports_it(monkeypatch):
    """The sync watchdog reports every 5 s through a 5 s throttle: a tick a few ms early was
    swallowed, so its error came every 5 or 10 s at random."""
    from corr_depth_ros.nodes import worker
    clock = [100.0]
    monkeypatch.setattr(worker.time, 'monotonic', lambda: clock[0])
    logger = ListLogger()
    reporter = ThrottledReporter(logger, period_s=5.0)
    for tick in range(4):
        clock[0] = 100.0 + 5.0 * tick - 0.004 * (tick % 2)     # every other tick 4 ms early
        reporter.error('sync', f'no synchronised set {tick}')
    assert len(logger.lines) == 4, logger.lines
    clock[0] += 1.0
    reporter.error('sync', 'again')                              # within the period: throttled
    assert len(logger.lines) == 4


def test_stop_reports_a_busy_worker_and_silences_its_abandoned_frame():
    """stop() says False while an item still runs past its timeout; that item's error (e.g. a
    publish after the node's publishers are gone) is not reported as a dropped frame."""
    started, errors = threading.Event(), []

    def slow_failure(item):
        started.set()
        time.sleep(0.3)
        raise RuntimeError('publisher destroyed')
    worker = LatestFrameWorker(slow_failure, errors.append)
    worker.submit(1)
    assert started.wait(5)
    assert worker.stop(timeout_s=0.01) is False
    time.sleep(0.5)
    assert errors == [] and worker.stop(timeout_s=1.0) is True


def test_torch_threads_go_to_the_model_thread_only():
    """core.threads / LatestFrameWorker(torch_threads=...): the worker that runs the model gets
    torch's threads, the main thread that loaded it keeps one, even though torch's process-wide
    value follows the last pin; a second worker pinned to one stays at one, and one given 0
    gets torch's default. (Two threads with
    their own OpenMP teams on a 2-core CPU made libgomp put idle team members to sleep at every
    parallel region: the learned stereo net took twice as long on the node's worker.) In a
    subprocess: pinning changes torch's process-wide setting."""
    import subprocess
    import sys
    script = '''
import threading, torch
from corr_depth_ros.core.threads import default_torch_threads, pin_torch_threads
from corr_depth_ros.nodes.worker import LatestFrameWorker
default = default_torch_threads()
pin_torch_threads(1)                      # the node's main thread, before loading its model
seen, done = {}, threading.Event()
def note(name):
    def process(item):
        torch.ones(64, 64) @ torch.ones(64, 64)
        seen[name] = torch.get_num_threads()
        if len(seen) == 3:
            done.set()
    return process
model = LatestFrameWorker(note('model'), print, name='model', torch_threads=3)
heatmap = LatestFrameWorker(note('heatmap'), print, name='heatmap', torch_threads=1)
default_count = LatestFrameWorker(note('default'), print, name='default', torch_threads=0)
model.submit(1)
heatmap.submit(1)
default_count.submit(1)
assert done.wait(30)
torch.ones(64, 64) @ torch.ones(64, 64)   # the main thread, after the workers pinned theirs
assert seen == {'model': 3, 'heatmap': 1, 'default': default}, seen   # 0: torch's default
assert torch.get_num_threads() == 1, torch.get_num_threads()
for worker in (model, heatmap, default_count):
    worker.stop()
print('ok')
'''
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith('ok'), \
        result.stdout[-2000:] + result.stderr[-2000:]


def test_worker_says_each_items_time_at_debug_level():
    """`--log-level debug` gave nothing from the package: a user asking whether a node
    processes, how fast and whether it drops frames had to write a subscriber."""
    class DebugLogger:
        def __init__(self):
            self.lines = []

        def debug(self, text):
            self.lines.append(text)
    logger = DebugLogger()
    worker = LatestFrameWorker(lambda item: None, lambda exc: None, name='stereo_depth',
                               logger=logger)
    try:
        worker.submit(1)
        assert _wait_for(lambda: len(logger.lines) == 1)
        assert logger.lines[0].startswith('stereo_depth: item 1 done in ') and \
            'replaced by newer ones' in logger.lines[0], logger.lines
    finally:
        worker.stop()
