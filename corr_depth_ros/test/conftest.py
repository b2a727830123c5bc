"""Shared fixtures. ROS tests own their rclpy context and clean up after themselves."""
import os
import random
import threading
import time

import pytest

# Keep test traffic on this host and away from other graphs (and parallel test runs).
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
# A domain of the suite's own, whatever the shell has: on the user's ROS_DOMAIN_ID the tests
# joined their graph (a running stereo.launch.py answered a test's requests, and the tests' nodes
# answered theirs). CORR_DEPTH_TEST_DOMAIN_ID picks one (e.g. to run two suites side by side).
os.environ['ROS_DOMAIN_ID'] = os.environ.get('CORR_DEPTH_TEST_DOMAIN_ID') or \
    str(random.Random(os.getpid()).randint(101, 200))
_PROFILE = os.path.join(os.path.dirname(__file__), '..', 'config', 'fastdds_large_data.xml')
os.environ.setdefault('FASTRTPS_DEFAULT_PROFILES_FILE', os.path.abspath(_PROFILE))


class RosHarness:
    """An rclpy context with a multi-threaded executor spinning in the background."""

    def __init__(self):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.nodes = []
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - executor shutdown races at teardown
            pass

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def node(self, name):
        return self.add(self.rclpy.create_node(name, context=self.context))

    @staticmethod
    def wait_for(predicate, timeout_s=20.0, period_s=0.02, action=None, action_period_s=0.5):
        """Poll ``predicate`` until true; call ``action`` every ``action_period_s`` meanwhile."""
        deadline = time.monotonic() + timeout_s
        next_action = 0.0
        while time.monotonic() < deadline:
            if predicate():
                return True
            if action is not None and time.monotonic() >= next_action:
                action()
                next_action = time.monotonic() + action_period_s
            time.sleep(period_s)
        return predicate()

    def unmatched_stamps_report(self, node, publish, sets=3):
        """Publish ``sets`` input sets whose stamps do not match (``publish()`` sends one), wait
        until every input has received all of them, check none made a synchronised set, then
        run the node's sync watchdog once (as its 5 s timer does) and return what it reported.
        Waiting for the counts, not a fixed time, keeps a slow machine from turning 'stamps
        differ' into 'messages arrive on one input but not the other'."""
        # The node's own 5 s check is held meanwhile: one between a set's camera_info and its
        # images would see some inputs only (said at a second check), and ours then the rest.
        node._sync_watchdog.timer.cancel()
        try:
            node._sync_watchdog.report()    # a check now: the next one looks at these sets alone
            counts_before = node._sync.message_counts()
            sets_before, errors_before = node.synchronised_sets, node._errors.count
            for _ in range(sets):
                publish()
            assert self.wait_for(lambda: all(now - before >= sets for now, before in zip(
                node._sync.message_counts(), counts_before)), timeout_s=30), (
                f'inputs received {node._sync.message_counts()}, before {counts_before}')
            assert node.synchronised_sets == sets_before
            node._sync_watchdog.report()
            assert node._errors.count > errors_before
            return node._errors.last_message
        finally:
            node._sync_watchdog.timer.reset()

    def close(self):
        # Let callbacks in flight finish before their nodes are destroyed (a node's frame and
        # request callbacks can run in parallel here); cut short, a callback touching a
        # destroyed entity fails in a task nobody awaits, logged at exit as "exception was
        # never retrieved" (seen once in a fresh-clone run).
        self.executor.shutdown(timeout_sec=10.0)
        for node in self.nodes:
            node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


@pytest.fixture
def ros():
    harness = RosHarness()
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (tiny trainings on a shared machine: two OpenMP
    threads spinning against each other made a tiny step ~15x slower than one thread)."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
