"""Page faults of per-frame buffers, the hidden cost of large images on a CPU (Linux, glibc).

Every frame the nodes allocate and free tens of MB (images, descriptor images, clouds, message
buffers). Fresh memory reaches the process one 4 KiB page fault at a time, and by default glibc
gives freed memory back to the kernel (large blocks are unmapped at once, the top of a heap is
trimmed), so the next frame faults it all in again. Three remedies, measured on the 2-core
development CPU:

- :func:`keep_freed_memory` (per process, nodes call it at start-up): blocks up to 32 MiB come
  from the heap, and freed memory is kept for reuse instead of trimmed. stereo_depth_node at
  741x500: ~4000 -> ~120 page faults and ~11 -> ~3 ms system time per frame. The process keeps
  its peak heap; for a node that handles the same frame sizes all its life that is its
  working set anyway.
- :func:`empty_huge` (per tensor, for buffers above any heap threshold, like a 640x480x64
  descriptor image of 78 MB): ``MADV_HUGEPAGE`` lets the kernel map 2 MiB at a time.
  Upsampling two 32-channel descriptor images into a fresh 640x480 buffer: 58 ms plain,
  33-38 ms advised, 29-33 ms into a reused buffer.
- :class:`RecyclingPool` (for such buffers that outlive the call that fills them, like the
  descriptor image a node serves requests from while the next one is computed): a buffer goes
  back to the pool when the object that uses it is garbage, and the next frame reuses it
  instead of faulting in fresh memory. compute_descriptors at 640x480: 92-103 -> 79-81 ms.

The first two are no-ops where they do not apply (not Linux/glibc, transparent huge pages
disabled).
PyTorch has a process-wide switch similar to the second (``THP_MEM_ALLOC_ENABLE=1``, read once
at start-up); these touch no environment variable.
"""
import ctypes
import sys
import threading
import weakref
from typing import Sequence

# No module-level torch import: the SGBM stereo node calls keep_freed_memory and never needs torch.

_MADV_HUGEPAGE = 14                        # <sys/mman.h> on Linux
_PAGE = 4096
_HUGE_PAGE = 2 * 1024 * 1024
_M_TRIM_THRESHOLD = -1                     # <malloc.h> (glibc)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024         # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD = 256 * 1024 * 1024
_libc = None                               # resolved on first use; False: unavailable


def _linux_libc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith('linux'):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                libc.madvise.restype = ctypes.c_int
                _libc = libc
            except (OSError, AttributeError):
                _libc = False
    return _libc


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to serve blocks up to 32 MiB from its heaps and to keep freed
    memory (up to 256 MiB at a heap's top) for reuse, for this whole process. Call it once,
    early (nodes: before the first frame). True if glibc accepted both settings."""
    libc = _linux_libc()
    mallopt = getattr(libc, 'mallopt', None) if libc else None   # musl has no mallopt
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def advise_huge_pages(tensor) -> bool:
    """Ask the kernel to back ``tensor``'s memory with huge pages; call it before the first
    write. True if the advice was given (a contiguous CPU tensor of at least 4 MiB on Linux,
    with madvise accepting it), False otherwise (nothing changes; the tensor works as is)."""
    nbytes = tensor.numel() * tensor.element_size()
    if tensor.device.type != 'cpu' or not tensor.is_contiguous() or nbytes < 2 * _HUGE_PAGE:
        return False
    libc = _linux_libc()
    if not libc:
        return False
    start = tensor.data_ptr()
    first = (start + _PAGE - 1) // _PAGE * _PAGE        # madvise wants page-aligned ranges
    last = (start + nbytes) // _PAGE * _PAGE
    return libc.madvise(first, last - first, _MADV_HUGEPAGE) == 0


def empty_huge(shape: Sequence[int], dtype=None, device=None):
    """``torch.empty(shape)`` (float32 unless ``dtype``), advised for huge pages when it is a
    large CPU tensor."""
    import torch
    out = torch.empty(tuple(shape), dtype=dtype or torch.float32, device=device)
    advise_huge_pages(out)
    return out


class RecyclingPool:
    """Large buffers handed out again once the objects using them are gone.

    ``buffer = pool.take(shape)`` gives a free buffer of that shape and dtype, or a new one
    (:func:`empty_huge`); ``pool.recycle_when_gone(owner, buffer)`` returns ``buffer`` to the
    pool when ``owner`` is garbage collected (``weakref.finalize``). The owner must be the only
    way to the buffer's data that outlives the call: typically a view returned by the function
    that filled the buffer, held by whatever serves from it. Views made of the owner and kept
    beyond it would see the next frame's data. At most ``max_free`` buffers wait in the pool;
    more are freed, and so are buffers of another shape, dtype or device than the last one
    asked for (after a camera changes resolution, the old size's buffers are not kept for the
    life of the process). Thread-safe: owners may die on any thread.
    """

    def __init__(self, max_free: int = 2):
        self.max_free = int(max_free)
        self.created = 0              # buffers allocated (not recycled) so far
        self._free = []
        self._wanted = None           # (shape, dtype, device) of the last take()
        # Re-entrant: a garbage collection inside take() may finalise an owner on this thread.
        self._lock = threading.RLock()

    def take(self, shape: Sequence[int], dtype=None, device=None):
        import torch
        shape, dtype = tuple(shape), dtype or torch.float32
        want = torch.device(device if device is not None else 'cpu')
        with self._lock:
            self._wanted = (shape, dtype, want)
            # Anything that does not fit the request is stale: drop it (see the class doc).
            self._free = [b for b in self._free if self._fits(b)]
            if self._free:
                return self._free.pop()
            self.created += 1
        return empty_huge(shape, dtype=dtype, device=device)

    def _fits(self, buffer) -> bool:
        shape, dtype, want = self._wanted
        return tuple(buffer.shape) == shape and buffer.dtype == dtype and \
            buffer.device.type == want.type and want.index in (None, buffer.device.index)

    def recycle_when_gone(self, owner, buffer) -> None:
        if owner is buffer:
            raise ValueError('the owner must be another object than the buffer (e.g. a view of '
                             'it): the pool keeps the buffer, so it would never be gone')
        weakref.finalize(owner, self._put, buffer)

    def free_count(self) -> int:
        with self._lock:
            return len(self._free)

    def _put(self, buffer) -> None:
        with self._lock:
            if len(self._free) < self.max_free and \
                    (self._wanted is None or self._fits(buffer)):
                self._free.append(buffer)
