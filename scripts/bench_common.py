"""What the node benchmarks in scripts/ share: a node under test in its own process, timing
summaries, the machine, and the result printed and written as JSON (the project's rule:
figures come from benchmarks that print and write JSON, not from timed tests)."""
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys


@contextlib.contextmanager
def node_process(node_module, params, client_name):
    """Run ``python -m corr_depth_ros.nodes.<node_module>`` with ROS parameters ``params`` in
    its own process (as `ros2 run` starts it) and yield a client node in this one; both are
    stopped on exit."""
    import rclpy
    command = [sys.executable, '-m', f'corr_depth_ros.nodes.{node_module}', '--ros-args']
    for name, value in params.items():
        command += ['-p', f'{name}:={value}']
    proc = subprocess.Popen(command + ['--log-level', 'warn'])
    rclpy.init()
    node = rclpy.create_node(client_name)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        proc.terminate()
        proc.wait(timeout=20)


def timing_summary(times):
    """Seconds -> median/min/max in milliseconds and the number of runs."""
    return {'median_ms': 1000 * statistics.median(times), 'min_ms': 1000 * min(times),
            'max_ms': 1000 * max(times), 'runs': len(times)}


def machine_info():
    """Where a figure was measured; the load average because the development machine is shared."""
    return {'cpu_count': os.cpu_count(), 'platform': platform.platform(),
            'python': platform.python_version(),
            'load_average_1min': os.getloadavg()[0] if hasattr(os, 'getloadavg') else None}


def save_json(result, path):
    """Write ``result`` to ``path`` (folders created) through a file renamed over it, so a
    reader, or a run killed while writing, never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)


def write_result(result, path):
    """Print ``result`` as JSON and write it to ``path`` (:func:`save_json`)."""
    print(json.dumps(result, indent=2))
    save_json(result, path)
