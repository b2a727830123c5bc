"""Keep-only-the-latest processing: inference never runs on a backlog.

Subscription callbacks hand their newest (synchronised) input to :class:`LatestFrameWorker`,
which processes it on its own thread; an input that arrives while another waits replaces it
(the waiting one is dropped and counted), as camera_calibration's queue of size 1 does.
The executor thread therefore never blocks on a model, and stale frames are never computed.
"""
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..core.threads import pin_torch_threads, torch_in_use
from ..sync import SyncWatchdog


class LatestFrameWorker:
    """``torch_threads``: the torch CPU threads this worker's thread runs on (core.threads:
    the model's thread gets them all, any other torch-using thread one; 0: torch's default),
    pinned before its first item once torch is imported (a sgbm-only stereo node never imports
    it); None leaves torch alone. ``logger``: says each item's time at DEBUG level (a node's
    ``--log-level debug``: is it processing, how fast, dropping frames?)."""

    def __init__(self, process: Callable[[Any], None], on_error: Callable[[BaseException], None],
                 name: str = 'corr_depth_worker', torch_threads: Optional[int] = None,
                 logger=None):
        self._process = process
        self._on_error = on_error
        self._torch_threads = torch_threads
        self._logger = logger
        self._cond = threading.Condition()
        self._pending: Optional[Any] = None
        self._stopping = False
        self.processed = 0
        self.dropped = 0
        self.last_duration_s = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        """The name of the thread that processes the items (as logs and stop_workers say it)."""
        return self._thread.name

    def submit(self, item: Any) -> None:
        with self._cond:
            if self._pending is not None:
                self.dropped += 1
            self._pending = item
            self._cond.notify()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Ask the thread to end after its current item and wait up to ``timeout_s``. False if
        it is still busy then: the item's error (e.g. publishing after the node's publishers are
        destroyed) is no longer reported, and the caller should say the frame was abandoned."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _run(self) -> None:
        pinned = False
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item, self._pending = self._pending, None
            if self._torch_threads is not None and not pinned and torch_in_use():
                pin_torch_threads(self._torch_threads)
                pinned = True
            start = time.perf_counter()
            failed = False
            try:
                self._process(item)
            except Exception as exc:  # noqa: BLE001 - a bad frame must never kill the worker
                failed = True
                if not self._stopping:      # after stop(): an abandoned frame, not an error
                    self._on_error(exc)
            self.last_duration_s = time.perf_counter() - start
            self.processed += 1
            if self._logger is not None:
                self._logger.debug(
                    f'{self.name}: item {self.processed} {"failed" if failed else "done"} in '
                    f'{1000 * self.last_duration_s:.1f} ms; {self.dropped} replaced by newer '
                    'ones before their turn so far')
            # Not kept while idle: what an item refers to (a frame's buffers, see
            # core.memory.RecyclingPool) is then free for the next one.
            item = None


def stop_workers(logger, *workers: LatestFrameWorker, timeout_s: float = 4.0) -> None:
    """Stop ``workers`` at node shutdown, all within ``timeout_s`` together (``ros2 launch``
    sends SIGTERM 5 s after SIGINT); warn about one still busy (its frame is abandoned)."""
    for worker in workers:
        worker.stop(timeout_s=0.0)          # ask them all first, so they finish in parallel
    deadline = time.monotonic() + timeout_s
    for worker in workers:
        if not worker.stop(timeout_s=max(0.0, deadline - time.monotonic())):
            logger.warning(f'{worker.name} still busy after {timeout_s:g} s at shutdown: its '
                           'frame is abandoned')


THROTTLE_SLACK = 0.9     # a key is said again after this share of the period


class ThrottledReporter:
    """Log each distinct problem at most once per ``period_s`` (per key, unlike rclpy's
    per-call-site throttle, so a second kind of bad input is not hidden by the first)."""

    def __init__(self, logger, period_s: float = 5.0):
        self._logger = logger
        self._period_s = period_s
        self._last: Dict[str, float] = {}
        self._lock = threading.Lock()
        self.count = 0
        self.last_message = ''

    def error(self, key: str, text: str) -> None:
        with self._lock:
            self.count += 1
            self.last_message = text
        if self._due(key):
            self._logger.error(text)

    def warn(self, key: str, text: str) -> None:
        """A warning, throttled as errors are (not counted among them)."""
        if self._due(key):
            self._logger.warning(text)

    def _due(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            # A little slack: a problem reported by a timer of the same period (the sync
            # watchdog's) arrived a few ms early and was swallowed every other time.
            if now - self._last.get(key, -1e9) < THROTTLE_SLACK * self._period_s:
                return False
            if len(self._last) >= 256:
                # Keys carry part of a message (frame_dropped): a value that changes there
                # (a drifting calibration) would add one a frame for the node's lifetime.
                # Those not due any more tell nothing; if that is not enough, forgetting all
                # only lets a repeat be logged again sooner.
                self._last = {k: t for k, t in self._last.items() if now - t < self._period_s}
                if len(self._last) >= 256:
                    self._last.clear()
            self._last[key] = now
            return True

    def frame_dropped(self, exc: BaseException, context=None) -> None:
        """Report a frame a worker could not process (LatestFrameWorker's ``on_error``).

        Silent once ``context`` (the node's rclpy Context) has shut down: Ctrl-C invalidates
        the publishers while a worker may still be finishing a frame, and that is no error.
        """
        if context is not None and not context.ok():
            return
        self.error(type(exc).__name__ + str(exc)[:40], f'frame dropped: {exc}')


def image_inputs(node, names, transport: str):
    """(message type, topic names) of image inputs under image_transport ``raw`` or
    ``compressed``. As image_transport does, the base name is remapped first
    (``image:=/cam/image_rect``), then the transport's suffix is added."""
    from sensor_msgs.msg import CompressedImage, Image
    if transport == 'compressed':
        return CompressedImage, [node.resolve_topic_name(name) + '/compressed' for name in names]
    return Image, list(names)


def sync_advice(approximate: bool) -> str:
    """What to do when every input arrives but no set matches (SyncWatchdog's advice)."""
    return ('raise slop_s, or fix the stamps the driver writes' if approximate
            else 'set approximate_sync:=true and slop_s, or fix the stamps the driver writes')


def start_sync_watchdog(node, synchronizer, topics, advice: str, reporter: ThrottledReporter,
                        sets_so_far: Callable[[], int], period_s: float = 5.0,
                        silent_advice: Optional[Dict[int, str]] = None,
                        paired: Sequence[Tuple[int, int]] = ()):
    """Every ``period_s``, report (a throttled error) why no synchronised set came through:
    an input that never published, or stamps that never match; and (a throttled warning)
    images lost on the way. ``topics``: the names given to make_synchronizer, in its order;
    ``silent_advice`` and ``paired`` (image, camera_info indices) as SyncWatchdog's. Returns the :class:`..sync.SyncWatchdog` (its ``problem``
    is the newest diagnosis; ``report()`` runs one check now, as the timer does)."""
    watchdog = SyncWatchdog(synchronizer, [node.resolve_topic_name(t) for t in topics], advice,
                            period_s, sets_so_far=sets_so_far,
                            on_problem=lambda problem: reporter.error('sync', problem),
                            silent_advice=silent_advice, publishers=node.count_publishers,
                            paired=paired, on_loss=lambda text: reporter.warn('loss', text))
    # On the steady clock: it watches whether messages arrive, in real time. On the node's clock
    # it never fired under use_sim_time without a /clock (a bag played without --clock: the
    # very case to report) and stood still while a /clock was paused.
    from rclpy.clock import Clock, ClockType
    watchdog.timer = node.create_timer(period_s, watchdog.report,
                                       clock=Clock(clock_type=ClockType.STEADY_TIME))
    return watchdog


def output_qos():
    """The outputs' QoS (reliable, depth 1), a fresh profile for each publisher: rclpy writes
    QoS overrides (``qos_overrides.<topic>.publisher.*``) into the profile it is given, so one
    shared by several publishers would carry one topic's override to all of them."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)


USAGE_HINT = ('parameters: the README\'s tables, or `ros2 param describe` while the node runs; '
              'give them as --ros-args -p NAME:=VALUE or --params-file FILE, and remap topics '
              'as --ros-args -r FROM:=TO')
# How long a node that cannot start stays up for its FATAL line to reach /rosout's listeners
# (rqt_console, a recorder): rcl's /rosout keeps the line for late joiners while the node lives.
REFUSAL_DELIVERY_S = 5.0


def _log_refusal(exc: BaseException, fallback_name: str) -> None:
    """Log why a node did not start on that node's own logger (its namespace and remapped
    name: /rosout listeners filter by it), and keep the node alive a moment so the line is
    delivered; it was logged on a logger named after the executable and the process ended at
    once, so /rosout often never saw it."""
    import rclpy.logging
    from rclpy.node import Node
    # The node half-built by the constructor that raised (its frames hold it as ``self``),
    # if it got as far as rclpy's Node.__init__.
    node, tb = None, exc.__traceback__
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get('self')
        if isinstance(candidate, Node) and getattr(candidate, 'handle', None) is not None:
            node = candidate
        tb = tb.tb_next
    logger = node.get_logger() if node is not None else rclpy.logging.get_logger(fallback_name)
    logger.fatal(f'cannot start: {exc}')
    if node is None:
        return
    deadline = time.monotonic() + REFUSAL_DELIVERY_S
    while time.monotonic() < deadline:
        try:
            if node.count_subscribers('/rosout') == 0:
                time.sleep(0.05)        # listeners may still be discovered
                continue
        except Exception:  # noqa: BLE001 - a node torn down half-way: nothing to wait for
            return
        time.sleep(1.0)                 # matched: the transient-local line goes out (0.3 s
        # was too short on the loopback-only discovery the tests use)
        return


def run_node(node_factory: Callable[[], Any], args=None) -> None:
    """The body of every node's ``main()``: init, spin, and a clean shutdown.

    Ends in ``try/finally`` with ``rclpy.try_shutdown()`` (works on Jazzy, unlike
    ``with rclpy.init()``). ``ros2 launch`` forwards Ctrl-C as a second SIGINT; it is ignored once
    spinning has stopped so that ``destroy_node`` (joining worker threads) can finish.
    """
    import signal

    import rclpy
    import rclpy.logging
    import rclpy.utilities
    from rclpy.exceptions import ParameterException
    from rclpy.executors import ExternalShutdownException

    from ..core.memory import keep_freed_memory
    name = os.path.basename(sys.argv[0]) or 'corr_depth_ros'
    argv = sys.argv if args is None else list(args)
    try:
        rest = rclpy.utilities.remove_ros_args(argv)[1:]
    except Exception as exc:  # noqa: BLE001 - rclpy's argument errors (RCLInvalidROSArgsError, ...)
        # A malformed ROS argument (-p name=value, --ros-args --help) ended in a traceback.
        what = (f'unknown ROS argument(s) {exc}' if type(exc).__name__ == 'UnknownROSArgsError'
                else str(exc))
        print(f'{name}: cannot start: {what} ({USAGE_HINT})', file=sys.stderr)
        sys.exit(2)
    if rest:
        # `--help` started the node; `-p x:=y` without --ros-args was taken as a (deprecated)
        # remap rule and the node ran without the setting.
        if rest[0] in ('-h', '--help'):
            print(f'usage: {name} [--ros-args [-p NAME:=VALUE] [--params-file FILE] '
                  f'[-r FROM:=TO] ...]\n\nA corr_depth_ros node; {USAGE_HINT}.')
            sys.exit(0)
        print(f'{name}: cannot start: unknown argument(s) {" ".join(rest)}: ROS arguments go '
              f'after --ros-args ({USAGE_HINT})', file=sys.stderr)
        sys.exit(2)
    # Per-frame buffers are reused instead of faulted in afresh every frame (core/memory.py).
    keep_freed_memory()
    rclpy.init(args=args)
    node = None
    stopped = refused = False
    try:
        try:
            node = node_factory()
        except (ValueError, OSError, ParameterException) as exc:
            # A configuration the node refuses (a parameter, a weights file): one ROS log line,
            # in /rosout and ros2 launch's log like any other, not a Python traceback.
            _log_refusal(exc, os.path.basename(sys.argv[0]) or 'corr_depth_ros')
            refused = True
        if node is not None:
            # One executor thread: models run on LatestFrameWorker threads. rclpy's
            # MultiThreadedExecutor measured worse here (correspondence_node.main).
            rclpy.spin(node)
            stopped = True
    except (KeyboardInterrupt, ExternalShutdownException):
        stopped = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    if refused:
        sys.exit(1)
    if stopped:
        # Shut down cleanly (workers joined, node destroyed, rclpy's context and logging
        # finalised): end here. The interpreter's own teardown with torch loaded took 1-4 s
        # more on a loaded machine, past ros2 launch's 5 s from SIGINT to SIGTERM, and a
        # worker thread given up inside torch could abort it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
