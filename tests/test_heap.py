"""fiboserver/app/heap.py: free pages inside the C heap go back to the OS (glibc)."""

from __future__ import annotations

import ctypes
import os
import platform

import pytest

from bench.procstat import proc_rss_bytes
from fiboserver.app import heap
from tests.support.hosttools import IN_CI

GLIBC = platform.libc_ver()[0] == "glibc"
# CI's machine and the image are Debian (glibc): there the glibc tests must run.
NOT_GLIBC_OUTSIDE_CI = not GLIBC and not IN_CI


@pytest.mark.skipif(NOT_GLIBC_OUTSIDE_CI, reason="malloc_trim is glibc's")
def test_glibc_can_give_pages_back() -> None:
    assert heap.can_release()
    trim = heap.find_malloc_trim(ctypes.CDLL(None))
    assert trim is not None
    assert trim.argtypes == [ctypes.c_size_t] and trim.restype is ctypes.c_int  # type: ignore[attr-defined]


def test_a_c_library_without_malloc_trim() -> None:
    # musl, macOS: nothing to call, and no error either.
    assert heap.find_malloc_trim(object()) is None


@pytest.mark.skipif(NOT_GLIBC_OUTSIDE_CI, reason="malloc_trim is glibc's")
def test_free_pages_inside_the_heap_are_given_back() -> None:
    # 20 KB blocks come from the heap (below glibc's mmap threshold). A small
    # block after each keeps the heap's top in use, so freeing the large ones
    # leaves holes that glibc keeps resident, as evicted cache values do.
    large = [bytearray(20_000) for _ in range(2000)]
    pins = []
    for block in large:
        pins.append(bytearray(600))
        block[-1] = 1
    del large, block
    before = proc_rss_bytes(os.getpid())
    heap.release_free_pages()
    given_back = before - proc_rss_bytes(os.getpid())
    assert given_back > 20 * 2**20, f"{given_back / 2**20:.1f} MiB given back of about 38"
    assert len(pins) == 2000


def test_without_the_call_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_malloc_trim", None)
    assert not heap.can_release()
    heap.release_free_pages()  # a no-op, not an error
