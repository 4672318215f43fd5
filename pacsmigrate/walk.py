"""Walk source trees depth-first in a fixed order, listing many directories ahead when slow.

Subdirectories are visited in name order and files in the order `scandir` gives them, so
the same tree is always walked the same way (the dry run's plan is the run's plan). On fast storage the listings run inline
(a thread hand-off costs more than a warm listing); when listings are slow (NAS, FUSE)
the walker lists the next directories on the stack in a thread pool ahead of need.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from . import faults
from .clock import IOWait
from .records import Problem
from .source import TOO_LONG

log = logging.getLogger("pacsmigrate.pipeline")

CHUNK = 2048  # entries per listing piece: a flat folder of millions is never held whole
# Seconds per listing above which the next listings are fetched ahead in the pool (a NAS
# round trip is a millisecond or more), and below which they run inline again.
SLOW = 2e-3
FAST = 2e-4


Prune = Callable[[bytes, list[bytes]], list[bytes]]


@dataclass(slots=True)
class Listing:
    """One piece of a directory: its regular files (names), skipped entries, subdirs.

    `rest` is the open scandir iterator when the directory has more entries; `subdirs`
    are full paths, complete only on the last piece (`rest` None), all of them (also those
    a prune kept the walk out of).
    """

    path: bytes
    files: list[bytes] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    subdirs: list[bytes] = field(default_factory=list)
    rest: Iterator[os.DirEntry[bytes]] | None = None
    seconds: float = 0.0  # waiting on the storage to list it


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "device file"
    return "special file"


def list_dir(path: bytes, rest: Iterator[os.DirEntry[bytes]] | None = None,
             subdirs: list[bytes] | None = None, *, measure: bool = True) -> Listing:
    """Up to CHUNK entries of `path` (continuing `rest`), classified by d_type, no stat.

    Regular files are opened later with O_NOFOLLOW and checked with fstat, so a file that
    turns into something else in between is still caught.
    """
    waited = IOWait() if measure else None
    out = Listing(path, subdirs=subdirs if subdirs is not None else [])
    it = rest
    if it is None:
        try:
            if faults.DENY_OPEN:
                faults.check_open(path)
            it = os.scandir(path)
        except FileNotFoundError:
            out.problems.append(Problem(path, "directory vanished during scan"))
            return out
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # deeper than the kernel's PATH_MAX
                out.problems.append(Problem(path, TOO_LONG, exc.strerror or ""))
            else:
                out.problems.append(Problem(path, "unreadable directory",
                                            exc.strerror or str(exc), final=False))
            return out
    files, dirs, problems = out.files, out.subdirs, out.problems
    n = 0
    try:
        for entry in it:
            try:
                if entry.is_file(follow_symlinks=False):
                    files.append(entry.name)
                elif entry.is_dir(follow_symlinks=False):
                    dirs.append(entry.path)
                elif entry.is_symlink():
                    problems.append(Problem(entry.path, "symlink not followed"))
                else:
                    st = entry.stat(follow_symlinks=False)
                    problems.append(Problem(entry.path, f"{_kind(st.st_mode)} skipped"))
            except FileNotFoundError:
                problems.append(Problem(entry.path, "vanished during scan"))
            except OSError as exc:
                problems.append(Problem(entry.path, "unreadable entry", exc.strerror or str(exc),
                                        final=False))
            n += 1
            if n >= CHUNK:
                out.rest = it
                break
    except OSError as exc:  # the directory went away or failed mid-listing
        problems.append(Problem(path, "unreadable directory", exc.strerror or str(exc),
                                final=False))
    if out.rest is None and hasattr(it, "close"):
        it.close()
    out.seconds = waited.seconds() if waited is not None else -1.0
    return out


class Walker:
    """Depth-first listings of the roots, in order; ahead in a pool when listings are slow."""

    def __init__(self, roots: Sequence[bytes], *, threads: int = 16, lookahead: int = 64,
                 ahead_max: int = 256, prune: Prune | None = None) -> None:
        """`prune(directory, subdirs)`: the subdirectories to enter (a slice's, shard.py)."""
        self._prune = prune
        # Each stack item: a path to list, a pending listing, or a continuation.
        self._stack: list[bytes | Future[Listing] | Listing] = list(reversed(roots))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="walk")
        self._lookahead = lookahead
        self._slow = 0.0  # moving average of seconds per listing
        self.ahead = False
        self.listings = 0
        # Listings fetched ahead of the stack: as one completes, its subdirectories are
        # listed too (up to ahead_max waiting), so the pool works several levels deep.
        self._ahead: dict[bytes, Future[Listing]] = {}
        self._ahead_max = ahead_max
        self._ahead_lock = threading.Lock()
        self._closed = False

    def _submit(self, item: bytes | Listing) -> Future[Listing]:
        if isinstance(item, Listing):
            return self._pool.submit(list_dir, item.path, item.rest, item.subdirs)
        with self._ahead_lock:
            fut = self._ahead.pop(item, None)
        if fut is not None:
            return fut
        fut = self._pool.submit(list_dir, item)
        fut.add_done_callback(self._deeper)
        return fut

    def _deeper(self, fut: Future[Listing]) -> None:
        """A listing came back: list its first subdirectories too, while there is room."""
        if fut.cancelled() or fut.exception() is not None or not self.ahead:
            return
        got = fut.result()
        if got.rest is not None:
            return  # a huge flat folder: its pieces come in order, on demand
        subdirs = got.subdirs if self._prune is None else self._prune(got.path, got.subdirs)
        for sub in sorted(subdirs)[:self._lookahead]:
            with self._ahead_lock:
                if self._closed or len(self._ahead) >= self._ahead_max or sub in self._ahead:
                    return
                try:
                    child = self._pool.submit(list_dir, sub)
                except RuntimeError:  # the pool was shut down: the walk is over
                    return
                self._ahead[sub] = child
            child.add_done_callback(self._deeper)

    def _prefetch(self) -> None:
        stack = self._stack
        for i in range(len(stack) - 1, max(-1, len(stack) - 1 - self._lookahead), -1):
            item = stack[i]
            if not isinstance(item, Future):
                stack[i] = self._submit(item)

    def _note(self, seconds: float) -> None:
        if seconds < 0:
            return  # not measured
        self._slow = 0.8 * self._slow + 0.2 * seconds
        ahead = self.ahead
        if self._slow > SLOW:
            self.ahead = True
        elif self._slow < FAST:
            self.ahead = False
        if ahead != self.ahead:
            log.debug("walk: listings %s (%.0f us each)", "ahead in threads" if self.ahead
                      else "inline", self._slow * 1e6)

    def _after(self, got: Listing) -> None:
        self.listings += 1
        self._note(got.seconds)
        if got.rest is not None:
            self._stack.append(got)  # its next piece comes before its subdirectories
        else:
            # Subdirectories in name order: date-named trees are walked in date order, so
            # a study whose series arrived on consecutive days is met in one stretch.
            subdirs = got.subdirs if self._prune is None else self._prune(got.path,
                                                                          got.subdirs)
            self._stack.extend(sorted(subdirs, reverse=True))

    def _pop(self) -> bytes | Future[Listing] | Listing | None:
        if not self._stack:
            return None
        if self.ahead:
            self._prefetch()
        item = self._stack.pop()
        if isinstance(item, bytes) and self._ahead:
            with self._ahead_lock:  # listed ahead while the walk was slow
                return self._ahead.pop(item, None) or item
        return item

    def next_sync(self) -> Listing | None:
        """The next listing piece, blocking (for callers outside an event loop)."""
        item = self._pop()
        if item is None:
            return None
        got = item.result() if isinstance(item, Future) else self._inline(item)
        self._after(got)
        return got

    def _inline(self, item: bytes | Listing) -> Listing:
        # A warm listing costs about as much as measuring it: measure one in eight.
        measure = self.listings % 8 == 0
        if isinstance(item, Listing):
            return list_dir(item.path, item.rest, item.subdirs, measure=measure)
        return list_dir(item, measure=measure)

    async def next(self) -> Listing | None:
        """The next listing piece; awaits a slow listing instead of blocking the loop."""
        item = self._pop()
        if item is None:
            return None
        got = await asyncio.wrap_future(item) if isinstance(item, Future) else self._inline(item)
        self._after(got)
        return got

    def close(self) -> None:
        """Stop: pending listings are dropped and open directory iterators closed."""
        with self._ahead_lock:
            self._closed = True
            pending = [*self._stack, *self._ahead.values()]
            self._ahead.clear()
        for item in pending:
            if isinstance(item, Future):
                item.cancel()
                if item.done() and not item.cancelled() and item.exception() is None:
                    _close(item.result())
            elif isinstance(item, Listing):
                _close(item)
        self._stack.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _close(listing: Listing) -> None:
    if listing.rest is not None and hasattr(listing.rest, "close"):
        listing.rest.close()


async def walk(roots: Sequence[bytes], *, threads: int = 16,
               prune: Prune | None = None) -> AsyncIterator[Listing]:
    """Every listing piece of the roots (those prune lets in), depth-first in scandir order."""
    walker = Walker(roots, threads=threads, prune=prune)
    try:
        while (got := await walker.next()) is not None:
            yield got
    finally:
        walker.close()


def count_files(roots: Sequence[bytes], *, threads: int = 16) -> int:
    """Regular files under roots, as the migration's walk sees them (for the walk bench)."""
    walker = Walker([os.fsencode(os.path.abspath(r)) for r in roots], threads=threads)
    n = 0
    try:
        while (got := walker.next_sync()) is not None:
            n += len(got.files)
    finally:
        walker.close()
    return n


def main(argv: Sequence[str]) -> int:
    print(count_files([os.fsencode(a) for a in argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
