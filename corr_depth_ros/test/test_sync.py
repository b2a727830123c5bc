"""Our message_filters stand-in: exact and approximate stamp matching, keep-latest."""
import pytest
from std_msgs.msg import Header

from corr_depth_ros.sync import NewestStamps, StampSynchronizer


class Msg:
    def __init__(self, sec, nanosec=0, tag=''):
        self.header = Header()
        self.header.stamp.sec, self.header.stamp.nanosec = sec, nanosec
        self.tag = tag


def test_exact_matching_and_drop_old():
    out = []
    sync = StampSynchronizer(2, 5, lambda a, b: out.append((a.tag, b.tag)))
    sync.add(0, Msg(1, tag='L1'))
    sync.add(0, Msg(2, tag='L2'))
    assert out == []
    sync.add(1, Msg(2, tag='R2'))
    assert out == [('L2', 'R2')]
    sync.add(1, Msg(1, tag='R1'))   # older than what was matched: L1 was dropped
    assert out == [('L2', 'R2')]
    sync.add(1, Msg(3, nanosec=1, tag='R3'))
    sync.add(0, Msg(3, tag='L3'))   # 1 ns apart: not exact
    assert len(out) == 1


def test_approximate_matching_within_slop():
    out = []
    sync = StampSynchronizer(3, 5, lambda *m: out.append([x.tag for x in m]), slop_s=0.01)
    sync.add(0, Msg(5, 0, 'a'))
    sync.add(1, Msg(5, 4_000_000, 'b'))
    sync.add(2, Msg(5, 30_000_000, 'far'))
    assert out == []
    assert sync.spread_ns() == 30_000_000
    sync.add(2, Msg(5, 8_000_000, 'c'))
    assert out == [['a', 'b', 'c']]


def test_queue_bound_and_errors():
    sync = StampSynchronizer(2, 2, lambda *m: None)
    for i in range(5):
        sync.add(0, Msg(i))
    assert sync.dropped_unmatched == 3
    with pytest.raises(ValueError):
        StampSynchronizer(1, 2, print)
    with pytest.raises(ValueError):
        StampSynchronizer(2, 0, print)


def test_newest_stamps_spread_for_message_filters():
    """What the node's watchdog asks a message_filters synchroniser (which keeps no stamps)."""
    stamps = NewestStamps(2)
    left, right = stamps.input_callback(0), stamps.input_callback(1)
    left(Msg(5, 0))
    assert stamps.spread_ns() is None          # until every input has a message
    right(Msg(5, 5_000_000))
    assert stamps.spread_ns() == 5_000_000
    left(Msg(6, 0))                            # the newest stamp counts
    assert stamps.spread_ns() == 995_000_000
