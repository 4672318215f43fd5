"""Part buffers used again: a bundle's parts are copied into buffers that outlive it.

A fresh part buffer costs a page fault for every 4 KiB of it (the kernel zeroes each page
the first time it is touched) and an munmap when it goes: measured with `perf` on a --pack
run over 100,000 files of 9 KiB, 4.8 % of the process's CPU went to page faults in the
zero-fill of new part buffers, and half of its 460k page faults were theirs.

A plan's lease holds the buffers its parts were copied into. A buffer is taken again only
when nothing else refers to it (its part was sent and the request let go of it), so a
buffer is never written while anything could read it. When the plan is stored, those
buffers wait idle in the pool for the next plans; the sink reserves them for a plan when
it admits it, and drops idle ones whenever the memory budget needs their room.
"""

from __future__ import annotations

import sys
import threading

# References to a buffer nobody else holds, counted in a loop over a list of buffers: the
# list's, the loop variable's and getrefcount's own argument's.
_ALONE = 3


def fits(buf: bytearray, size: int) -> bool:
    """A buffer serves a part of `size` bytes if it is at most a quarter longer (a part
    that fills less of it is a slice of it; a shorter one grows as it is filled)."""
    return len(buf) <= size + size // 4


class PartBuffers:
    """The idle part buffers of a run."""

    def __init__(self) -> None:
        self._idle: list[bytearray] = []
        self._lock = threading.Lock()
        self.idle_bytes = 0
        # Buffers allocated, and parts copied into a buffer used before; buffers reserved;
        # buffers something still referred to when their plan ended (lost to the pool).
        self.made = self.reused = self.reserved = self.held = 0

    def reserve(self, total: int, size: int) -> Lease:
        """A lease holding an idle buffer for each part of `size` bytes of `total` bytes
        of parts, as far as idle buffers fit (the lease's `bytes` says how much)."""
        lease = Lease()
        if total <= 0:
            return lease
        with self._lock:
            for _ in range(-(-total // size)):
                fitting = [i for i, buf in enumerate(self._idle) if fits(buf, size)]
                if not fitting:
                    break
                buf = self._idle.pop(max(fitting, key=lambda i: len(self._idle[i])))
                self.idle_bytes -= len(buf)
                lease.bufs.append(buf)
                self.reserved += 1
        return lease

    def shrink(self, room: int) -> None:
        """Let idle buffers go until they take at most `room` bytes."""
        with self._lock:
            while self._idle and self.idle_bytes > max(room, 0):
                self.idle_bytes -= len(self._idle.pop(0))

    def give(self, lease: Lease) -> None:
        """The lease's buffers nobody else refers to wait idle; the lease ends."""
        with self._lock, lease.lock:
            for buf in lease.bufs:
                if sys.getrefcount(buf) == _ALONE:
                    self._idle.append(buf)
                    self.idle_bytes += len(buf)
                else:
                    self.held += 1
            lease.bufs.clear()
            lease.closed = True
            self.made += lease.made
            self.reused += lease.reused


class Lease:
    """The part buffers of one plan: those reserved for it and those its parts filled."""

    def __init__(self) -> None:
        self.bufs: list[bytearray] = []
        self.closed = False
        self.lock = threading.Lock()
        self.made = self.reused = 0

    @property
    def bytes(self) -> int:
        return sum(len(buf) for buf in self.bufs)

    def take(self, size: int) -> bytearray:
        """A buffer for a part of about `size` bytes (any thread): one of the lease's that
        no part refers to any more, else a new one."""
        with self.lock:
            free = None
            for buf in self.bufs:  # not enumerate: its cached tuple would hold a reference
                if sys.getrefcount(buf) == _ALONE and (free is None or len(buf) > len(free)):
                    free = buf
            if free is not None:
                self.reused += 1
                return free
            buf = bytearray(size)
            if not self.closed:
                self.bufs.append(buf)
            self.made += 1
            return buf
