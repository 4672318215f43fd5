"""The read process's side (readproc.py has the frames and the run's side): the job from
the socket, `reads.read_tree` as the run would run it, ReadResults back a frame at a time.

It writes nothing: not the sources, not the state. A re-run's child reads the index through
a read-only LMDB reader of its own. It exits when the run does: PR_SET_PDEATHSIG on Linux,
and, on any system, the end of the socket (the run sends nothing after the job).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import mmap
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lmdb

from . import alloc, faults
from .lmdbfile import env_dir
from .read import ReadOptions, ReadResult
from .readproc import (
    ACK,
    BATCH_BYTES,
    BATCH_FILES,
    END,
    FAILED,
    HEAD,
    IN_RING,
    LOG,
    RESULTS,
    SOCKET_BUFFER,
    meta_of,
    send_all,
)
from .stateread import migrated_in

log = logging.getLogger("pacsmigrate.readchild")
PR_SET_PDEATHSIG = 1
INDEX_MAP = 1 << 40  # the child's map of the state (address space only)
FLUSH_AFTER = 0.2  # seconds a result waits for its frame at most (a slow NAS)


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    while view:
        got = sock.recv_into(view)
        if not got:
            raise EOFError("the run closed the read process's socket")
        view = view[got:]
    return bytes(buf)


class IndexLookup:
    """`migrated` of the checkpoint's index, read-only from another process.

    The map is as large as any state gets (address space, not memory), so the run growing
    its file never moves the data out of this process's map; should it ever, the
    environment is opened again (under the lock: pool threads share it)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = str(env_dir(state_dir))
        self.lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        self.env = lmdb.open(self.path, readonly=True, lock=True, subdir=True, max_dbs=32,
                             readahead=False, map_size=INDEX_MAP)
        self.db = self.env.open_db(b"index", create=False)

    def migrated(self, paths: list[bytes]) -> list[tuple[int, int] | None]:
        with self.lock:
            try:
                txn = self.env.begin(db=self.db)
            except lmdb.MapResizedError:
                self.env.close()
                self._open()
                txn = self.env.begin(db=self.db)
            with txn:
                return migrated_in(txn, paths)


def child_main(fd: int) -> None:
    """The read process: the job from the socket, ReadResults back until the walk ends."""
    # A terminal's ^C and a service manager's SIGTERM reach the whole group: the run
    # decides, and stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    out = _Out(sock)
    try:
        _, n, _ = HEAD.unpack(_recv(sock, HEAD.size))
        job = pickle.loads(_recv(sock, n))
        out.batch_bytes = job["batch_bytes"]
        if job["ring_fd"] is not None:
            out.ring = mmap.mmap(job["ring_fd"], job["ring_size"])
        _die_with(job["parent"], sock, out)
        _forward_logs(out, job["log_level"])
        faults.DENY_OPEN = job["deny_open"]
        alloc.tune()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)  # as the run's (cli.common.quiet_gc)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        asyncio.run(_read_and_send(out, job))
        # Everything is sent: wait for the run to close its end (it may still acknowledge
        # the ring's last frames, and a write to a closed socket would fail its read).
        threading.Event().wait()
    except (BrokenPipeError, ConnectionResetError, EOFError):
        os._exit(1)  # the run is gone or stopped reading: nothing to tell
    except BaseException as exc:  # noqa: BLE001 - told to the run, which raises it
        if out.halfway:  # a frame half sent: nothing can follow it
            os._exit(1)
        # Its type and, for an OSError, what failed: never a path (logs name no files).
        what = exc.strerror if isinstance(exc, OSError) else ""
        text = f"{type(exc).__name__}{': ' if what else ''}{what or ''}".encode()
        try:
            out.send_logs()
            out.frame(FAILED, text)
            threading.Event().wait(10)  # the run reads it, then closes (the watcher exits)
        except OSError:
            pass
        os._exit(1)


class _Out:
    """The child's side of the socket: whole frames, a batch of results at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ring: mmap.mmap | None = None  # the bodies' way, when the run shares one
        self.written = 0  # ring positions count up: position % size is the offset
        self.acked = 0  # the run copied everything before this out of the ring
        self.freed = threading.Condition()
        self.halfway = False
        self.ended = False  # the END frame is sent
        self.batch_bytes = BATCH_BYTES
        self.batch: list[ReadResult] = []
        self.files = self.held = 0
        self.since = 0.0
        self.logs: list[tuple[str, int, str, float]] = []  # to send, from any thread
        self.logs_lock = threading.Lock()

    def add(self, r: ReadResult) -> None:
        if self.logs:
            self.send_logs()
        if self.batch and self.held + r.held > self.batch_bytes:
            self.flush()
        if not self.batch:
            self.since = time.monotonic()
        self.batch.append(r)
        self.files += r.listed + len(r.problems)
        self.held += r.held
        if self.files >= BATCH_FILES or time.monotonic() - self.since > FLUSH_AFTER:
            self.flush()

    def send_logs(self) -> None:
        """The log records waiting, in a frame of their own (frames go from one thread)."""
        with self.logs_lock:
            records, self.logs = self.logs, []
        if records:
            self.frame(LOG, pickle.dumps(records, protocol=5))

    def flush(self) -> None:
        self.send_logs()
        if not self.batch:
            return
        faults.point("read-process")
        bodies: list[bytes] = []
        shared: dict[str, str] = {}
        metas = [meta_of(r, bodies, shared) for r in self.batch]
        total = sum(map(len, bodies))
        if self.ring is not None and 0 < total <= len(self.ring):
            start = self.into_ring(bodies, total)
            self.frame(IN_RING, pickle.dumps((start, total, metas), protocol=5))
        else:
            self.frame(RESULTS, pickle.dumps(metas, protocol=5), bodies)
        self.batch, self.files, self.held = [], 0, 0

    def into_ring(self, bodies: list[bytes], total: int) -> int:
        """Copy the bodies into the ring, back to back (never across its end), once the run
        has copied out what was there; returns where they start."""
        assert self.ring is not None
        size = len(self.ring)
        start = self.written
        if start % size + total > size:
            start += size - start % size
        # What this frame overwrites must have been copied out: everything written before
        # start + total - size (the positions skipped at the ring's end hold nothing).
        with self.freed:
            while self.acked < min(start + total - size, self.written):
                self.freed.wait(1.0)
        at = start % size
        for b in bodies:
            self.ring[at:at + len(b)] = b
            at += len(b)
        self.written = start + total
        return start

    def ack(self, upto: int) -> None:
        with self.freed:
            self.acked = max(self.acked, upto)
            self.freed.notify()

    def frame(self, kind: int, meta: bytes = b"", bodies: Sequence[bytes] = ()) -> None:
        self.halfway = True
        send_all(self.sock, [HEAD.pack(kind, len(meta), sum(map(len, bodies))), meta, *bodies])
        self.halfway = False


class _Forward(logging.Handler):
    """Log records for the run, which logs them as its own (to stderr, --log-file). The
    message only: our lines name no files, and a traceback is not sent."""

    def __init__(self, out: _Out) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (record.name, record.levelno, record.getMessage(), record.created)
        except Exception:  # noqa: BLE001 - a bad format string: the logging way
            self.handleError(record)
            return
        with self.out.logs_lock:
            self.out.logs.append(line)


def _forward_logs(out: _Out, level: int) -> None:
    """The pacsmigrate loggers at the run's level, to the run (not to this stderr)."""
    logger = logging.getLogger("pacsmigrate")
    logger.setLevel(level)
    logger.propagate = False
    logger.addHandler(_Forward(out))


def _die_with(parent: int, sock: socket.socket, out: _Out) -> None:
    """Exit when the run does: the kernel's signal on Linux, and, on any system, the end of
    the socket (the run sends only the ring's acknowledgements after the job, so EOF means
    it closed or died)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)

    def watch() -> None:
        got = b""
        try:
            while chunk := sock.recv(4096):
                got += chunk
                whole = len(got) - len(got) % ACK.size
                if whole:
                    out.ack(ACK.unpack_from(got, whole - ACK.size)[0])
                    got = got[whole:]
        finally:
            os._exit(0 if out.ended else 1)
    threading.Thread(target=watch, name="run-watch", daemon=True).start()


async def _read_and_send(out: _Out, job: dict[str, Any]) -> None:
    from .reads import read_tree

    opts: ReadOptions = job["opts"]
    index = IndexLookup(job["state_dir"]) if opts.skip_migrated else None
    pool = ThreadPoolExecutor(job["read_threads"], thread_name_prefix="read")
    log.debug("read process %d: walking %d source tree(s), %d read threads", os.getpid(),
              len(job["roots"]), job["read_threads"])
    try:
        async for r in read_tree(job["roots"], pool, opts, index, jobs=job["jobs"],
                                 shard=job["shard"]):
            out.add(r)
        out.flush()
        out.frame(END)
        out.ended = True
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
