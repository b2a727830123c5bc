"""Time synchronisation of several message streams, with message_filters' semantics.

When ``message_filters`` is importable (a real ROS install) the nodes use its
TimeSynchronizer / ApproximateTimeSynchronizer; otherwise they use :class:`StampSynchronizer`,
our small equivalent. Both call ``callback(*msgs)`` with one message per input whose header
stamps are equal (exact) or within ``slop_s`` of each other (approximate).
"""
import copy
import itertools
import threading
from collections import deque
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple


def stamp_to_ns(msg) -> int:
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class StampSynchronizer:
    """Match messages from ``num_inputs`` streams by header stamp.

    Each input keeps at most ``queue_size`` messages. When a message arrives, the set that
    contains it with the smallest spread of stamps (any combination of queued messages within
    ``slop_s`` of each other, as message_filters searches) is emitted, and everything up to that
    set is dropped (older sets are stale by then: the node only ever wants the latest frame).
    ``slop_s = 0`` means exact stamps (TimeSynchronizer); > 0 means approximate.
    ``keep_older``: drop only the set's own messages, keeping older ones to pair later (offline,
    where every frame is wanted and a topic may be logged out of stamp order).
    """

    def __init__(self, num_inputs: int, queue_size: int, callback: Callable,
                 slop_s: float = 0.0, keep_older: bool = False):
        if num_inputs < 2:
            raise ValueError('need at least two inputs to synchronise')
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        if slop_s < 0:
            raise ValueError(f'slop must be >= 0 s, got {slop_s}')
        self._queues: List[deque] = [deque(maxlen=queue_size) for _ in range(num_inputs)]
        self._callback = callback
        self._slop_ns = int(round(slop_s * 1e9))
        self._keep_older = keep_older
        self._lock = threading.Lock()
        self._counts = [0] * num_inputs
        self.dropped_unmatched = 0  # messages pushed out of a full queue without a partner

    def input_callback(self, index: int) -> Callable:
        """The subscription callback for input ``index``."""
        return lambda msg: self.add(index, msg)

    def spread_ns(self) -> Optional[int]:
        """Spread between the newest stamps of the inputs (None until each has one)."""
        with self._lock:
            if not all(self._queues):
                return None
            newest = [stamp_to_ns(q[-1]) for q in self._queues]
        return max(newest) - min(newest)

    def message_counts(self) -> List[int]:
        """Messages received so far, per input."""
        with self._lock:
            return list(self._counts)

    def add(self, index: int, msg) -> None:
        matched = None
        with self._lock:
            self._counts[index] += 1
            queue = self._queues[index]
            if len(queue) == queue.maxlen:
                self.dropped_unmatched += 1
            queue.append(msg)
            if all(self._queues):
                matched = self._match(stamp_to_ns(msg), index)
        if matched is not None:
            self._callback(*matched)

    def _match(self, stamp_ns: int, index: int) -> Optional[Sequence]:
        # As message_filters' ApproximateTimeSynchronizer: every queued message within the slop
        # of the new one is a candidate on its input, and any combination of candidates whose
        # stamps lie within the slop of each other is a set. Taking only the nearest message per
        # input would miss a set whose nearest picks fall on opposite sides of the new one
        # (depth at -4 and +5 ms, camera_info at +9 ms, image at 0, slop 10 ms: only depth@+5
        # pairs with info@+9). Of the sets, the one with the smallest spread is emitted.
        candidates = []
        for i, queue in enumerate(self._queues):
            stamped = [(stamp_ns, queue[-1])] if i == index else \
                [(stamp_to_ns(m), m) for m in queue]
            near = [(s, m) for s, m in stamped if abs(s - stamp_ns) <= self._slop_ns]
            if not near:
                return None
            candidates.append(near)

        def spread(combination):
            stamps = [s for s, _ in combination]
            return max(stamps) - min(stamps)
        sets = [c for c in itertools.product(*candidates) if spread(c) <= self._slop_ns]
        if not sets:
            return None
        best = min(sets, key=lambda c: (spread(c), sum(abs(s - stamp_ns) for s, _ in c)))
        for queue, (cut, matched) in zip(self._queues, best):
            if self._keep_older:
                queue.remove(matched)
            else:
                while queue and stamp_to_ns(queue[0]) <= cut:
                    queue.popleft()
        return [m for _, m in best]


class NewestStamps:
    """Newest header stamp seen on each input, for a synchroniser that does not keep them
    (message_filters'): says how far apart the inputs are when no set comes through.
    ``went_back(stamp_ns)`` (optional) is called with a stamp older than its input's previous
    one, before the synchroniser sees that message (a bag played in a loop, a clock reset)."""

    def __init__(self, num_inputs: int, went_back: Optional[Callable[[int], None]] = None):
        self._newest: List[Optional[int]] = [None] * num_inputs
        self._counts = [0] * num_inputs
        self._lock = threading.Lock()
        self.went_back = went_back

    def input_callback(self, index: int) -> Callable:
        def note(msg) -> None:
            stamp = stamp_to_ns(msg)
            with self._lock:
                previous = self._newest[index]
                self._newest[index] = stamp
                self._counts[index] += 1
            if previous is not None and stamp < previous and self.went_back is not None:
                self.went_back(stamp)
        return note

    def spread_ns(self) -> Optional[int]:
        """As StampSynchronizer.spread_ns."""
        with self._lock:
            if any(s is None for s in self._newest):
                return None
            return max(self._newest) - min(self._newest)

    def message_counts(self) -> List[int]:
        """As StampSynchronizer.message_counts."""
        with self._lock:
            return list(self._counts)


def forget_later(synchronizer, stamp_ns: int) -> None:
    """Drop the messages a message_filters synchroniser holds that are stamped after
    ``stamp_ns``, a stamp that went back. It trims a full queue by its *smallest* stamp, so
    with the old, later stamps kept every new message was the one dropped and no set ever
    matched again (a review measured 0 sets after a bag's loop); without them the new stamps
    pair, as with :class:`StampSynchronizer` (which drops the oldest arrival)."""
    with synchronizer.lock:
        for queue in synchronizer.queues:
            for stamp in [s for s in queue if s > stamp_ns]:
                del queue[stamp]


class FiltersSynchronizer:
    """A message_filters synchroniser with :meth:`spread_ns` and :meth:`message_counts` like
    :class:`StampSynchronizer`."""

    def __init__(self, synchronizer, stamps: NewestStamps):
        self.synchronizer = synchronizer
        self.spread_ns = stamps.spread_ns
        self.message_counts = stamps.message_counts


# Why a topic with a publisher delivers nothing, or only some of its messages.
LARGE_DATA_ADVICE = ('Fast DDS sends large best-effort messages over UDP with small socket '
                     'buffers unless the PUBLISHER\'s process loads a large-data profile too: '
                     'set FASTRTPS_DEFAULT_PROFILES_FILE to corr_depth_ros\'s '
                     'config/fastdds_large_data.xml for the camera driver as well (README, '
                     '"Large images over DDS")')
NOT_REACHING = ('its QoS may not match this node\'s (see any "incompatible QoS" warning: a '
                'reliable subscription gets nothing from a best-effort driver), or its large '
                'messages are lost in transport. ' + LARGE_DATA_ADVICE)
# Images are lost when fewer than this share of their camera_info arrives (at least
# LOSS_MIN_MESSAGES camera_info in the period, so a slow camera is not judged on one frame).
LOSS_FRACTION = 0.8
LOSS_MIN_MESSAGES = 5


class SyncWatchdog:
    """Says why no synchronised set came through since the last check (for a silent input,
    the last two), as stereo_image_proc warns about inputs that never pair up. A node's timer
    calls :meth:`report` (or the node calls :meth:`check` with its count of sets so far);
    nothing is said while sets arrive, or while no input receives anything
    (no camera running is not an error).

    ``topics``: the resolved input names, in the synchroniser's order; ``advice``: what to do
    when every input arrives but their newest stamps differ; ``silent_advice``: {input index:
    what else to do when that input stays silent} (e.g. an optional input that can be switched
    off). With ``sets_so_far`` (the node's count) and ``on_problem`` (its error reporter),
    :meth:`report` is what a timer calls.

    ``publishers``: topic -> its publisher count (``node.count_publishers``), so a silent input
    that has publishers is told apart from one nobody publishes: its messages do not reach the
    node (a QoS rclpy warned about at discovery, or large images lost in transport), and the
    topic names are not what to check. ``paired``: (image, camera_info) input indices sent
    together by one camera; images arriving far fewer than their camera_info, sets coming
    through or not, are large messages lost on the way, said through ``on_loss``
    (:attr:`loss`: the newest such note).
    """

    def __init__(self, synchronizer, topics: Sequence[str], advice: str, period_s: float = 5.0,
                 sets_so_far: Optional[Callable[[], int]] = None,
                 on_problem: Optional[Callable[[str], None]] = None,
                 silent_advice: Optional[Dict[int, str]] = None,
                 publishers: Optional[Callable[[str], int]] = None,
                 paired: Sequence[Tuple[int, int]] = (),
                 on_loss: Optional[Callable[[str], None]] = None):
        self._sync = synchronizer
        self._topics = list(topics)
        self._advice = advice
        self._silent_advice = dict(silent_advice or {})
        self._publishers = publishers
        self._paired = list(paired)
        self._on_loss = on_loss
        self.loss: Optional[str] = None
        self.timer = None    # the node's timer that calls report() (start_sync_watchdog)
        self._period_s = period_s
        self._sets_so_far = sets_so_far
        self._on_problem = on_problem
        self._last_sets = 0
        self._last_counts = [0] * len(self._topics)
        self._silent: Set[int] = set()       # inputs silent at the last check, with no set
        self.problem: Optional[str] = None   # the newest diagnosis, None while sets arrive

    def check(self, sets_so_far: int) -> Optional[str]:
        counts = self._sync.message_counts()
        arrived = [now > before for now, before in zip(counts, self._last_counts)]
        self.loss = self._lost_images([now - before for now, before
                                       in zip(counts, self._last_counts)])
        self._last_counts = counts
        silent_before = self._silent
        if sets_so_far != self._last_sets:
            self._last_sets = sets_so_far
            self._silent = set()
            self.problem = None
            return None
        if any(arrived) and not all(arrived):
            # An input that never published, or one that stopped (e.g. a crashed depth node),
            # said once it has been silent at two checks with no set: an input that only lags
            # (depth computed from the image) is one check late at a low frame rate, and its
            # set comes through with it. Checks at which nothing arrived (a camera slower than
            # the checks) neither count nor clear that.
            self._silent = {i for i, a in enumerate(arrived) if not a}
            lasting = sorted(self._silent & silent_before)
            if not lasting:
                self.problem = None
                return None
            arriving = ', '.join(t for t, a in zip(self._topics, arrived) if a)
            silent = ', '.join(f'{self._topics[i]} ({"none yet" if counts[i] == 0 else "stopped"})'
                               for i in lasting)
            extra = dict.fromkeys(self._silent_advice[i] for i in lasting
                                  if i in self._silent_advice)
            published = [i for i in lasting
                         if self._publishers is not None and self._publishers(self._topics[i]) > 0]
            # An image whose camera_info (sent by the same camera) still arrives is being lost
            # on the way, like one never received; another input that delivered before and
            # went quiet with its publisher still there is a publisher that stopped.
            info_arriving = {image for image, info in self._paired if arrived[info]}
            never = [self._topics[i] for i in published
                     if counts[i] == 0 or i in info_arriving]
            stopped = [self._topics[i] for i in published
                       if counts[i] > 0 and i not in info_arriving]
            checks = []
            if never:
                checks.append(f'{", ".join(never)} {"has" if len(never) == 1 else "have"} a '
                              f'publisher, so its messages do not reach this node: {NOT_REACHING}')
            if stopped:
                # It delivered before: not a QoS or transport matter.
                checks.append(f'the publisher of {", ".join(stopped)} stopped sending: check '
                              'that node (its log, its own inputs)')
            if len(published) < len(lasting):
                checks.append('check that it is published, and the topic names and remappings')
            check = '; '.join(checks)
            self.problem = (f'no synchronised set in the last {2 * self._period_s:g} s: messages '
                            f'arrive on {arriving} but none on {silent}; {check}'
                            + ''.join(f'; {text}' for text in extra))
        elif all(arrived):
            self._silent = set()
            spread = self._sync.spread_ns()
            if spread is None:
                self.problem = None
            elif spread:
                self.problem = (f'no synchronised set in the last {self._period_s:g} s: the '
                                f'newest input stamps differ by {spread / 1e9:.3f} s '
                                f'({self._advice})')
            else:
                # Every input arrives with equal newest stamps, yet nothing pairs: the
                # synchroniser itself is stuck (e.g. stamps that went back), not the inputs.
                self.problem = (f'no synchronised set in the last {self._period_s:g} s although '
                                'every input arrives and their newest stamps are equal: did the '
                                'stamps go back (a bag played in a loop, a clock reset)? '
                                'Restart the node if this persists')
        else:
            # Nothing arrives at all: idle, not a synchronisation fault, so nothing is said; but
            # under a camera slower than the checks, a silent input's diagnosis stays in
            # ``problem`` between its frames (service answers quote it).
            if not self._silent:
                self.problem = None
            return None
        return self.problem

    def _lost_images(self, arrivals: List[int]) -> Optional[str]:
        """The note for images arriving far fewer than their camera_info (a camera sends one
        of each a frame) in the last period, else None."""
        lost = []
        for image, info in self._paired:
            # None at all is an input that is silent (a wrong name, nothing published), which
            # check() reports as such; lost messages are some arriving, far fewer than sent.
            if arrivals[info] >= LOSS_MIN_MESSAGES and \
                    0 < arrivals[image] < LOSS_FRACTION * arrivals[info]:
                lost.append(f'{arrivals[image]} images on {self._topics[image]} against '
                            f'{arrivals[info]} on {self._topics[info]}')
        if not lost:
            return None
        return (f'large messages are being lost on the way: in the last {self._period_s:g} s '
                f'{"; ".join(lost)}. {LARGE_DATA_ADVICE}')

    def report(self) -> None:
        """One check with the node's count; a problem goes to ``on_problem``, lost images
        to ``on_loss``. Needs ``sets_so_far`` (without it, call :meth:`check` with the count
        yourself)."""
        if self._sets_so_far is None:
            # Said here rather than as "'NoneType' object is not callable" from a timer.
            raise TypeError('SyncWatchdog.report() needs the sets_so_far callable given to the '
                            'constructor; without it, call check(sets_so_far) instead')
        problem = self.check(self._sets_so_far())
        if problem and self._on_problem is not None:
            self._on_problem(problem)
        if self.loss and self._on_loss is not None:
            self._on_loss(self.loss)


def _alike(a, b) -> bool:
    """Whether two messages are the same frame's: one object, or equal fields (rclpy messages
    compare field by field; a message class without that compares by identity: not alike)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an odd message class: count it as changed
        return False


class RepeatedStampGuard:
    """Passes a synchronised set on to ``callback`` unless it carries the stamp of the set
    before it while more than one of its inputs changed. Stamps identify frames: when
    consecutive frames share one (a driver that does not stamp, a /clock that stands still
    while a camera publishes), any synchroniser, ours or message_filters', pairs one frame's
    image with another's depth or right image (a review measured grasp points from depth two
    frames old, and disparities off by a frame after one lost message, all reported as good).
    Such sets are dropped and ``on_repeat(text)`` says why. A set whose inputs are all as
    before (a one-frame bag played in a loop), or with one input changed (a new image with a
    constant camera_info), cannot be mispaired and passes; so does a stamp that goes back (a
    bag played in a loop starts a new sequence)."""

    def __init__(self, callback: Callable, on_repeat: Optional[Callable[[str], None]] = None):
        self._callback = callback
        self._on_repeat = on_repeat
        self._previous: Optional[Tuple[int, Sequence]] = None     # (stamp, messages)
        self._lock = threading.Lock()
        self.dropped = 0

    def __call__(self, *msgs) -> None:
        stamp_ns = stamp_to_ns(msgs[0])
        with self._lock:
            previous, self._previous = self._previous, (stamp_ns, msgs)
        if previous is not None and previous[0] == stamp_ns and \
                sum(not _alike(a, b) for a, b in zip(previous[1], msgs)) > 1:
            with self._lock:
                self.dropped += 1
                dropped = self.dropped
            if self._on_repeat is not None:
                self._on_repeat(f'dropped {dropped} synchronised set(s) stamped as the one '
                                f'before ({stamp_ns / 1e9:.9f} s) with other images: '
                                'consecutive frames carry one stamp (a driver that does not '
                                'stamp them, or a /clock that stands still), so their inputs '
                                'cannot be paired by stamp; fix the stamps')
            return
        self._callback(*msgs)


def make_synchronizer(node, msg_types: Sequence, topics: Sequence[str], qos, callback: Callable,
                      *, approximate: bool, queue_size: int, slop_s: float,
                      qos_overriding_options=None, prefer_message_filters: bool = True,
                      callback_group=None, on_repeated_stamp=None):
    """Subscribe to ``topics`` and call ``callback(*msgs)`` with synchronised sets.

    ``callback_group``: the subscriptions' rclpy callback group (None: the node's default).
    ``on_repeated_stamp(text)``: told when a set with the previous set's stamp is dropped
    (:class:`RepeatedStampGuard`).
    Returns ``(synchronizer, subscriptions, backend_name)``; keep the first two alive. The
    synchroniser has ``spread_ns()`` (None, or how far apart the newest input stamps are).
    Each subscription gets its own copy of ``qos``: rclpy writes QoS overrides into the profile
    it is given, so a shared one (e.g. the global qos_profile_sensor_data) would carry one
    topic's override to the others, and to other nodes in the process.
    """
    extra = {'qos_overriding_options': qos_overriding_options} if qos_overriding_options else {}
    callback = RepeatedStampGuard(callback, on_repeated_stamp)
    if callback_group is not None:
        extra['callback_group'] = callback_group
    if prefer_message_filters:
        try:
            import message_filters
        except ImportError:
            message_filters = None
        if message_filters is not None:
            subs = [message_filters.Subscriber(node, t, topic, qos_profile=copy.copy(qos),
                                               **extra)
                    for t, topic in zip(msg_types, topics)]
            # Told when a stamp goes back: forget_later then clears what sync holds (the
            # lambda looks sync up when called, after it exists).
            stamps = NewestStamps(len(subs),
                                  went_back=lambda stamp_ns: forget_later(sync, stamp_ns))
            for i, sub in enumerate(subs):      # before the synchroniser's own callbacks
                sub.registerCallback(stamps.input_callback(i))
            if approximate and slop_s > 0:
                # Its test is "spread < slop" on whole nanoseconds; ours (and process-bag's) is
                # "within slop_s", spread <= slop: a nanosecond more makes them one test (rclpy
                # truncates the seconds to whole nanoseconds; the half keeps float error off).
                sync = message_filters.ApproximateTimeSynchronizer(subs, queue_size,
                                                                   slop_s + 1.5e-9)
            else:   # its approximate test is "< slop": with slop 0 it would never match
                sync = message_filters.TimeSynchronizer(subs, queue_size)
            sync.registerCallback(callback)
            return FiltersSynchronizer(sync, stamps), subs, 'message_filters'
    sync = StampSynchronizer(len(topics), queue_size, callback, slop_s if approximate else 0.0)
    subs = [node.create_subscription(t, topic, sync.input_callback(i), copy.copy(qos), **extra)
            for i, (t, topic) in enumerate(zip(msg_types, topics))]
    return sync, subs, 'builtin'
