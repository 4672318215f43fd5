"""How long the current thread waited on I/O: wall time neither running nor runnable.

A busy machine makes every thread slow (it waits for a CPU); only slow storage makes it
wait for the kernel. Linux tells them apart per thread in /proc/thread-self/schedstat
(time on a CPU, time waiting for one); elsewhere the thread's CPU time stands in.
"""

from __future__ import annotations

import os
import threading
import time

_local = threading.local()


def busy() -> float:
    """Seconds this thread has run or waited to run (monotonic per thread)."""
    fd = getattr(_local, "fd", None)
    if fd is None:
        try:
            fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        _local.fd = fd
    if fd >= 0:
        try:
            ran, waited, _ = os.pread(fd, 128, 0).split()
            return (int(ran) + int(waited)) / 1e9
        except (OSError, ValueError):
            pass
    return time.thread_time()


class IOWait:
    """Measures the I/O wait of a stretch of work on this thread."""

    __slots__ = ("_busy", "_wall")

    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._busy = busy()

    def seconds(self) -> float:
        return max(0.0, (time.perf_counter() - self._wall) - (busy() - self._busy))
