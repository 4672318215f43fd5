"""Walk source trees with os.scandir in worker threads, streaming batches of entries."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from .records import FileEntry, Problem

BATCH = 512
_END = object()


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
        return "device file"
    return "special file"


class _Walker:
    """Many directories in flight: NAS round-trips hide behind parallel listings.

    Directories wait on a stack (depth-first keeps the backlog small on deep trees); files
    are never collected beyond one batch per thread.
    """

    def __init__(self, roots: Sequence[bytes], threads: int,
                 out: asyncio.Queue[object], loop: asyncio.AbstractEventLoop) -> None:
        self.stack = list(reversed(roots))
        self.busy = 0
        self.cond = threading.Condition()
        self.threads = threads
        self.out = out
        self.loop = loop
        self.stopped = False

    def emit(self, batch: list[FileEntry | Problem]) -> None:
        if batch and not self.stopped:
            # Blocks this worker while the queue is full: backpressure reaches the walk.
            asyncio.run_coroutine_threadsafe(self.out.put(batch), self.loop).result()

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.stack and self.busy and not self.stopped:
                    self.cond.wait()
                if not self.stack or self.stopped:
                    self.cond.notify_all()
                    return
                directory = self.stack.pop()
                self.busy += 1
            subdirs: list[bytes] = []
            try:
                subdirs = self.list_dir(directory)
            finally:
                with self.cond:
                    self.stack.extend(reversed(subdirs))
                    self.busy -= 1
                    self.cond.notify_all()

    def list_dir(self, directory: bytes) -> list[bytes]:
        batch: list[FileEntry | Problem] = []
        subdirs: list[bytes] = []
        try:
            it = os.scandir(directory)
        except FileNotFoundError:
            self.emit([Problem(directory, "directory vanished during scan")])
            return subdirs
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # deeper than the kernel's PATH_MAX
                self.emit([Problem(directory, "path too long to open", exc.strerror or "")])
            else:
                self.emit([Problem(directory, "unreadable directory", exc.strerror or str(exc),
                                   final=False)])
            return subdirs
        # Streamed, not sorted: a flat storescp folder may hold millions of entries.
        with it:
            self._list_entries(it, batch, subdirs)
        self.emit(batch)
        return subdirs

    def _list_entries(self, it: Iterator[os.DirEntry[bytes]], batch: list[FileEntry | Problem],
                      subdirs: list[bytes]) -> None:
        for entry in it:
            try:
                if entry.is_symlink():
                    batch.append(Problem(entry.path, "symlink not followed"))
                elif entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                else:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        batch.append(FileEntry(entry.path, st.st_size, st.st_mtime_ns))
                    else:
                        batch.append(Problem(entry.path, f"{_kind(st.st_mode)} skipped"))
            except FileNotFoundError:
                batch.append(Problem(entry.path, "vanished during scan"))
            except OSError as exc:
                batch.append(Problem(entry.path, "unreadable entry", exc.strerror or str(exc),
                                     final=False))
            if len(batch) >= BATCH:
                self.emit(batch[:])
                batch.clear()


async def scan(roots: Sequence[bytes], *, threads: int = 16,
               queue_size: int = 64) -> AsyncIterator[list[FileEntry | Problem]]:
    """Yield batches of regular files (FileEntry) and skipped entries (Problem)."""
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[object] = asyncio.Queue(queue_size)
    walker = _Walker(roots, threads, out, loop)

    # Own threads, not the loop's default pool: walkers live for the whole scan and
    # must not starve the readers that run beside them.
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scan")

    async def drive() -> None:
        await asyncio.gather(*(loop.run_in_executor(pool, walker.run) for _ in range(threads)))
        await out.put(_END)

    task = asyncio.create_task(drive())
    try:
        while True:
            item = await out.get()
            if item is _END:
                break
            yield item  # type: ignore[misc]
        await task
    finally:
        # Also when the consumer stopped early or was cancelled: stop the walkers, then
        # drain the queue so none stays blocked on a put.
        walker.stopped = True
        with walker.cond:
            walker.cond.notify_all()
        if not task.done():
            while not task.done():
                try:
                    out.get_nowait()
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.01)
            await task
        pool.shutdown(wait=False)
