"""Time synchronisation of several message streams, with message_filters' semantics.

When ``message_filters`` is importable (a real ROS install) the nodes use its
TimeSynchronizer / ApproximateTimeSynchronizer; otherwise they use :class:`StampSynchronizer`,
our small equivalent. Both call ``callback(*msgs)`` with one message per input whose header
stamps are equal (exact) or within ``slop_s`` of each other (approximate).
"""
import threading
from collections import deque
from typing import Callable, List, Optional, Sequence


def stamp_to_ns(msg) -> int:
    stamp = msg.header.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class StampSynchronizer:
    """Match messages from ``num_inputs`` streams by header stamp.

    Each input keeps at most ``queue_size`` messages. When a message arrives, the newest
    complete set that contains it is emitted, and everything up to that set is dropped
    (older sets are stale by then: the node only ever wants the latest frame).
    ``slop_s = 0`` means exact stamps (TimeSynchronizer); > 0 means approximate.
    """

    def __init__(self, num_inputs: int, queue_size: int, callback: Callable,
                 slop_s: float = 0.0):
        if num_inputs < 2:
            raise ValueError('need at least two inputs to synchronise')
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        if slop_s < 0:
            raise ValueError(f'slop must be >= 0 s, got {slop_s}')
        self._queues: List[deque] = [deque(maxlen=queue_size) for _ in range(num_inputs)]
        self._callback = callback
        self._slop_ns = int(round(slop_s * 1e9))
        self._lock = threading.Lock()
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

    def add(self, index: int, msg) -> None:
        matched = None
        with self._lock:
            queue = self._queues[index]
            if len(queue) == queue.maxlen:
                self.dropped_unmatched += 1
            queue.append(msg)
            if all(self._queues):
                matched = self._match(stamp_to_ns(msg), index)
        if matched is not None:
            self._callback(*matched)

    def _match(self, stamp_ns: int, index: int) -> Optional[Sequence]:
        chosen = []
        for i, queue in enumerate(self._queues):
            if i == index:
                chosen.append(queue[-1])
                continue
            best = min(queue, key=lambda m: abs(stamp_to_ns(m) - stamp_ns))
            chosen.append(best)
        stamps = [stamp_to_ns(m) for m in chosen]
        if max(stamps) - min(stamps) > self._slop_ns:
            return None
        for queue, msg in zip(self._queues, chosen):
            cut = stamp_to_ns(msg)
            while queue and stamp_to_ns(queue[0]) <= cut:
                queue.popleft()
        return chosen


def make_synchronizer(node, msg_types: Sequence, topics: Sequence[str], qos, callback: Callable,
                      *, approximate: bool, queue_size: int, slop_s: float,
                      qos_overriding_options=None, prefer_message_filters: bool = True,
                      callback_group=None):
    """Subscribe to ``topics`` and call ``callback(*msgs)`` with synchronised sets.

    ``callback_group``: the subscriptions' rclpy callback group (None: the node's default).
    Returns ``(synchronizer, subscriptions, backend_name)``; keep the first two alive.
    """
    extra = {'qos_overriding_options': qos_overriding_options} if qos_overriding_options else {}
    if callback_group is not None:
        extra['callback_group'] = callback_group
    if prefer_message_filters:
        try:
            import message_filters
        except ImportError:
            message_filters = None
        if message_filters is not None:
            subs = [message_filters.Subscriber(node, t, topic, qos_profile=qos, **extra)
                    for t, topic in zip(msg_types, topics)]
            if approximate:
                sync = message_filters.ApproximateTimeSynchronizer(subs, queue_size, slop_s)
            else:
                sync = message_filters.TimeSynchronizer(subs, queue_size)
            sync.registerCallback(callback)
            return sync, subs, 'message_filters'
    sync = StampSynchronizer(len(topics), queue_size, callback, slop_s if approximate else 0.0)
    subs = [node.create_subscription(t, topic, sync.input_callback(i), qos, **extra)
            for i, (t, topic) in enumerate(zip(msg_types, topics))]
    return sync, subs, 'builtin'
