"""Torch's CPU threads in a process where several threads run torch (the nodes).

PyTorch runs its CPU kernels on OpenMP (libgomp in the Linux wheels), and every OS thread that
starts a parallel region gets an OpenMP team of its own. Once a process holds more OpenMP
threads than there are CPUs, libgomp stops letting an idle team member spin: it sleeps after
~100 spins (the throttled GOMP_SPINCOUNT, which no setting raises) and each of the thousands of
parallel regions in a forward pass wakes it through the kernel. A node loads its model on the
main thread and runs it on a worker thread: two teams. On the 2-core development machine that
made the learned stereo backend take 138 ms a pair on the stereo node's worker thread against
67-73 ms in a process with one team (same code; 2026-12-02, stop 21; docs/results.md).

So a node gives torch's threads to the one thread that runs its model and keeps every other
thread that touches torch (the main thread that loads models and serves requests, a heatmap
worker) to one: :func:`pin_torch_threads` on each. Pinning only sets the calling thread's
OpenMP setting; the process-wide value torch gives threads that never pinned is the last one
pinned, so every torch-using thread of a node pins.
"""
import functools
import sys


@functools.lru_cache(maxsize=1)
def default_torch_threads() -> int:
    """Torch's own choice of CPU threads (OMP_NUM_THREADS, else the physical cores), read once,
    before any pin_torch_threads (which changes what torch reports)."""
    import torch
    return torch.get_num_threads()


def pin_torch_threads(count: int) -> None:
    """Run the calling thread's torch CPU work on ``count`` threads from now on (0: torch's
    default, as the nodes' thread parameters read 0)."""
    import torch
    default = default_torch_threads()
    # Initialise this thread's OpenMP setting first: torch does it at the thread's first parallel
    # region, from the process-wide value, which a later pin on another thread would change.
    torch.get_num_threads()
    torch.set_num_threads(count if count > 0 else default)


def limit_opencv_threads(count: int) -> None:
    """Cap OpenCV's worker threads for the process (StereoSGBM's 3-way mode and the image
    operations), ``count`` > 0; 0 keeps OpenCV's default, every CPU it sees (OMP_NUM_THREADS
    does not cap it; OPENCV_FOR_THREADS_NUM does)."""
    if count > 0:
        import cv2
        cv2.setNumThreads(count)


def torch_in_use() -> bool:
    """Whether this process has imported torch (a sgbm-only stereo node never does)."""
    return 'torch' in sys.modules
