"""Give the C heap's free pages back to the operating system.

glibc's malloc returns memory to the kernel only from the top of its heaps. A
cache that evicts values of a few KiB each leaves free holes below the top, and
their pages stay resident: a worker walking every n grew well past its cache
budget with nothing in those pages (README "Memory"). `malloc_trim(0)` releases
every whole free page in every arena (madvise), in well under a millisecond for
a heap of tens of MiB. Elsewhere (musl, macOS) there is no such call, and
`release_free_pages` does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def find_malloc_trim(libc: object) -> Callable[[int], int] | None:
    """`libc`'s malloc_trim, typed for ctypes; None where the library has none."""
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


# The symbols the interpreter was linked with, the C library's among them: no
# library search (ctypes.util.find_library would run ldconfig).
_malloc_trim = find_malloc_trim(ctypes.CDLL(None))


def can_release() -> bool:
    """Whether this C library can give free heap pages back (glibc)."""
    return _malloc_trim is not None


def release_free_pages() -> None:
    """Return the heap's free pages to the OS, where the C library can."""
    if _malloc_trim is not None:
        _malloc_trim(0)
