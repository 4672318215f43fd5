"""Give freed memory back to the system (glibc): a run's memory follows what it holds.

A packed run allocates and frees a part buffer (16 MiB by default) and a manifest (up to a
few MiB) for every object. glibc serves such blocks with mmap at first, then raises its
threshold to the size of the last one freed and serves them from its heaps, which keep
what is freed: measured on a --pack run over 100,000 tiny files, 113 MiB of 146 MiB of
glibc's heaps were free at the end, and a 1M-file run's RssAnon grew from 310 to 470 MiB
with nothing in flight. With a fixed threshold large blocks are mapped and unmapped each
time (a few page faults per MiB), and `release` hands back what the heaps keep free.

Elsewhere (musl, macOS) both are no-ops: their allocators behave differently, and the
memory budget does not depend on this.
"""

from __future__ import annotations

import ctypes
import time

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 1 << 20  # blocks this large and larger are mapped, and unmapped when freed
RELEASE_EVERY = 1.0  # seconds between two releases at most


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: its C library's among them
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        libc.malloc_trim  # noqa: B018
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()
_last = 0.0


def tune() -> bool:
    """Map large blocks, whatever was freed before (glibc); True when it took effect."""
    return bool(_LIBC is not None and _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release() -> None:
    """Hand free heap memory back to the system, at most once every RELEASE_EVERY s
    (a call walks the heaps: a few milliseconds)."""
    global _last
    now = time.monotonic()
    if _LIBC is None or now - _last < RELEASE_EVERY:
        return
    _last = now
    _LIBC.malloc_trim(0)
