"""core/hugepages.py: which tensors are advised, and that advised tensors behave normally."""
import sys

import pytest
import torch

from corr_depth_ros.core import hugepages


def _thp_mode():
    try:
        with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
            text = f.read()
    except OSError:
        return None
    return text[text.index('[') + 1:text.index(']')]


def test_small_strided_or_non_cpu_tensors_are_left_alone():
    assert not hugepages.advise_huge_pages(torch.empty(1024))           # 4 KB
    big = torch.empty(64, 512, 512)                                     # 64 MB
    assert not hugepages.advise_huge_pages(big.transpose(0, 2))         # not contiguous
    if torch.cuda.is_available():
        assert not hugepages.advise_huge_pages(torch.empty(8 << 20, device='cuda'))


@pytest.mark.skipif(not sys.platform.startswith('linux') or _thp_mode() in (None, 'never'),
                    reason='needs Linux with transparent huge pages not disabled')
def test_large_cpu_tensor_is_advised_and_works():
    out = hugepages.empty_huge((2, 3, 1024, 1024), dtype=torch.float32)   # 24 MB
    assert out.shape == (2, 3, 1024, 1024) and out.dtype == torch.float32
    # madvise returned 0 for the page-aligned inside of the tensor (an unaligned or
    # out-of-range call would have failed with EINVAL)
    assert hugepages.advise_huge_pages(out)
    out.fill_(1.5)
    out[1, 2, -1, -1] = 7.0
    assert float(out.sum()) == pytest.approx(1.5 * (out.numel() - 1) + 7.0)
