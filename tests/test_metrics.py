"""PeakMemory: the peak RSS of a block, without a sampler thread beside the model where the OS keeps one."""

from __future__ import annotations

import mmap
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from phi3kit.metrics import PeakMemory, _kernel_hwm_mb

HANG_GUARD_S = 600  # a wait ends when its state arrives; this only keeps a broken sampler from hanging the run


def allocate_and_free(mb: int, until: Callable[[], bool] | None = None) -> None:
    """Touch `mb` MB, keep it until `until()` is true (a sampler sees only what is there when it looks), free it."""
    # An anonymous mapping of its own: fresh pages whatever malloc kept from earlier tests (numpy's buffer could come
    # from free heap memory that is already resident, and then RSS would not move).
    block = mmap.mmap(-1, mb * 2**20)
    view = np.frombuffer(block, dtype=np.uint8)
    view[::4096] = 1  # every page really touched
    assert int(view[::4096].sum()) == mb * 256
    deadline = time.monotonic() + HANG_GUARD_S
    while until is not None and not until() and time.monotonic() < deadline:
        time.sleep(0.005)
    del view
    block.close()


@pytest.mark.parametrize("sampler", [False, True])
def test_peak_sees_a_freed_allocation(sampler: bool) -> None:
    """Catches: a peak that only reads RSS at the block's edges (where the 300 MB are gone again)."""
    with PeakMemory(interval_s=0.005, sampler=sampler) as mem:
        before = mem.peak_mb
        # A sampler thread (forced, or where the OS keeps no mark) is given until it has looked, not a fixed hold
        # that a busy machine may outlast; the kernel's mark needs no wait: it is read when the block ends.
        allocate_and_free(300, until=(lambda: mem.peak_mb >= before + 250) if mem._thread is not None else None)
    assert mem.peak_mb >= before + 250, (before, mem.peak_mb)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's high-water mark is Linux's")
def test_kernel_mark_is_used_and_reset_per_block() -> None:
    assert _kernel_hwm_mb() is not None
    allocate_and_free(300)  # the process's lifetime peak is now at least this high
    with PeakMemory() as mem:
        assert mem._thread is None  # no thread runs beside the model
        start = mem._rss_mb()
        allocate_and_free(20)
    assert start + 15 <= mem.peak_mb < start + 150  # the 300 MB before the block is not counted
    with PeakMemory() as small:
        pass
    with PeakMemory() as big:
        allocate_and_free(300)
    assert big.peak_mb >= small.peak_mb + 250  # the mark was reset when each block opened


def test_nested_block_never_reports_less_than_its_own_peak() -> None:
    with PeakMemory() as outer:
        allocate_and_free(200)
        with PeakMemory() as inner:
            allocate_and_free(100)
            now = inner._rss_mb()
    assert inner.peak_mb >= now + 90
    assert outer.peak_mb >= inner.peak_mb - 1 and outer.peak_mb >= now + 190
