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


def test_recycling_pool_hands_a_buffer_out_again_only_once_its_owner_is_gone():
    import gc
    pool = memory.RecyclingPool(max_free=1)
    first = pool.take((2, 3, 4))
    assert first.shape == (2, 3, 4) and first.dtype == torch.float32
    owner = first[None][0]                       # a view, as compute_descriptors returns
    pool.recycle_when_gone(owner, first)
    held = pool.take((2, 3, 4))                  # owner alive: a new buffer
    assert held.data_ptr() != first.data_ptr() and pool.free_count() == 0
    del owner
    gc.collect()
    assert pool.free_count() == 1
    assert pool.take((2, 3, 4)).data_ptr() == first.data_ptr()    # the recycled one
    assert pool.free_count() == 0 and pool.created == 2
    # At most max_free buffers wait; the owner must not be the buffer itself.
    owners = [torch.empty(1) for _ in range(3)]
    for owner in owners:
        pool.recycle_when_gone(owner, torch.empty(2, 3, 4))
    del owners, owner
    gc.collect()
    assert pool.free_count() == 1
    with pytest.raises(ValueError, match='another object'):
        pool.recycle_when_gone(held, held)


def test_recycling_pool_lets_go_of_buffers_of_an_old_size():
    """A camera that changes resolution: the old size's buffers are freed, not kept."""
    import gc
    pool = memory.RecyclingPool(max_free=2)
    old = pool.take((2, 3, 4))
    owner = old[None][0]
    pool.recycle_when_gone(owner, old)
    del owner
    gc.collect()
    assert pool.free_count() == 1
    new = pool.take((2, 3, 5))                   # the new size: a new buffer, the old one dropped
    assert new.shape == (2, 3, 5) and pool.free_count() == 0 and pool.created == 2
    # A frame of the old size still in use when the size changed comes back: not kept either.
    late = torch.empty(2, 3, 4)
    late_owner = late[None][0]
    pool.recycle_when_gone(late_owner, late)
    del late_owner
    gc.collect()
    assert pool.free_count() == 0
    # Other dtype or device is another request too; the current one is reused.
    new_owner = new[None][0]
    pool.recycle_when_gone(new_owner, new)
    del new_owner
    gc.collect()
    assert pool.take((2, 3, 5)).data_ptr() == new.data_ptr()
    assert pool.take((2, 3, 5), dtype=torch.float64).dtype == torch.float64
    assert pool.created == 3


def test_descriptors_from_a_pool_are_right_and_reuse_the_previous_frame_buffer():
    """compute_descriptors with a pool: the same values as without; a frame's buffer is reused
    once that frame's descriptors are dropped, never while they are held."""
    import numpy as np
    from corr_depth_ros.core.descriptors.network import build_descriptor_net, compute_descriptors

    torch.manual_seed(0)
    net = build_descriptor_net(descriptor_dim=4, base_channels=4, normalize=True).eval()
    images = [(np.random.default_rng(i).random((24, 40, 3)) * 255).astype(np.uint8)
              for i in range(3)]
    pool = memory.RecyclingPool()
    first = compute_descriptors(net, images[0], pool=pool)
    second = compute_descriptors(net, images[1], pool=pool)
    assert first.data_ptr() != second.data_ptr()          # first still held
    first_ptr, first_values = first.data_ptr(), first.clone()
    np.testing.assert_allclose(first_values, compute_descriptors(net, images[0]), atol=1e-6)
    del first
    third = compute_descriptors(net, images[2], pool=pool)
    assert third.data_ptr() == first_ptr                   # the dropped frame's buffer
    np.testing.assert_allclose(third, compute_descriptors(net, images[2]), atol=1e-6)
    np.testing.assert_allclose(second, compute_descriptors(net, images[1]), atol=1e-6)
