"""core/memory.py: glibc accepts the allocator settings; which tensors are advised for huge pages,
and that advised tensors behave normally."""
import platform
import subprocess
import sys

import pytest
import torch

from corr_depth_ros.core import memory


def _thp_mode():
    try:
        with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
            text = f.read()
    except OSError:
        return None
    return text[text.index('[') + 1:text.index(']')]


def test_small_strided_or_non_cpu_tensors_are_left_alone():
    assert not memory.advise_huge_pages(torch.empty(1024))           # 4 KB
    big = torch.empty(64, 512, 512)                                     # 64 MB
    assert not memory.advise_huge_pages(big.transpose(0, 2))         # not contiguous
    if torch.cuda.is_available():
        assert not memory.advise_huge_pages(torch.empty(8 << 20, device='cuda'))


@pytest.mark.skipif(not sys.platform.startswith('linux') or _thp_mode() in (None, 'never'),
                    reason='needs Linux with transparent huge pages not disabled')
def test_large_cpu_tensor_is_advised_and_works():
    out = memory.empty_huge((2, 3, 1024, 1024), dtype=torch.float32)   # 24 MB
    assert out.shape == (2, 3, 1024, 1024) and out.dtype == torch.float32
    # madvise returned 0 for the page-aligned inside of the tensor (an unaligned or
    # out-of-range call would have failed with EINVAL)
    assert memory.advise_huge_pages(out)
    out.fill_(1.5)
    out[1, 2, -1, -1] = 7.0
    assert float(out.sum()) == pytest.approx(1.5 * (out.numel() - 1) + 7.0)


@pytest.mark.skipif(not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc',
                    reason='mallopt settings are glibc-specific')
def test_keep_freed_memory_is_accepted_by_glibc():
    # In a child process, so this one keeps the allocator defaults.
    code = ('import numpy as np; from corr_depth_ros.core.memory import keep_freed_memory; '
            'ok = keep_freed_memory(); a = np.ones((8, 1024, 1024)); print(ok, a.sum())')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ['True', str(8.0 * 1024 * 1024)]
