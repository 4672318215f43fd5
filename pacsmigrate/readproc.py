"""The read stage in a process of its own (`--read-process`): one core walks, reads, hashes
and scans headers while this one groups, packs, uploads and commits.

One Python process runs about one core: in a --pack run over small files the walk and the
reads (inline system calls, the header scan, blake3) and the rest (tar headers, manifests,
the commit's rows) took turns on one GIL, each waiting for the other's switch interval. Here
the child runs `reads.read_tree` exactly as a run would in-process and sends its ReadResults
over a Unix socket pair, in frames: a header, the metadata pickled as plain tuples, then the
file bodies back to back. The parent receives a frame into one reused buffer (no copy on the
way in) and gives each body a bytes object of its own (one memcpy): a member held by an
open study never pins a frame. The parent stops reading while WINDOW frames wait unused, so
the child blocks on a full socket: memory stays bounded by the frames in flight.

The child writes nothing: not the sources, not the state. It opens the checkpoint's LMDB
read-only (a reader of its own) to skip what the index holds unchanged. When the parent
dies, the kernel kills the child (PR_SET_PDEATHSIG); when the child dies or fails, the
run stops with a ReadProcessError (nothing was stored from what it did not send).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lmdb

from . import faults, rows
from .errors import ReadProcessError
from .read import ReadOptions, ReadResult
from .records import Described, Member, Problem
from .shard import Shard
from .tables import path_key

BATCH_FILES = 512  # files per frame
BATCH_BYTES = 4 << 20  # file bytes per frame (one ReadResult may carry more)
WINDOW = 4  # frames received and not yet taken before the parent stops reading
SOCKET_BUFFER = 4 << 20
HEAD = struct.Struct("<BQQ")  # kind, metadata bytes, body bytes
RESULTS, END, FAILED = 0, 1, 2
PR_SET_PDEATHSIG = 1
CHILD = "import sys; from pacsmigrate.readproc import child_main; child_main(int(sys.argv[1]))"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def wanted(setting: str) -> bool:
    """Whether `--read-process` (auto, on, off) starts a read process on this machine."""
    return setting == "on" or (setting == "auto" and usable_cpus() >= 2)


# -- the frames --------------------------------------------------------------------------
def _meta(r: ReadResult, bodies: list[bytes]) -> tuple[Any, ...]:
    members = []
    for m in r.members:
        a = m.about
        n = -1
        if m.data is not None:
            n = len(m.data)
            bodies.append(m.data)
        members.append((m.path, m.size, m.mtime_ns, m.blake3, n, a.group, a.status, a.reason,
                        a.study_uid, a.series_uid, a.sop_uid, a.modality, a.study_date,
                        a.transfer_syntax, a.accession))
    return (r.directory, members, [(p.path, p.reason, p.detail, p.final) for p in r.problems],
            r.listed, r.seen, r.seen_bytes, r.migrated, r.held, dict(r.filtered))


def _results(meta: list[tuple[Any, ...]], body: memoryview) -> list[ReadResult]:
    out, at = [], 0
    for directory, members, problems, listed, seen, seen_bytes, migrated, held, filtered in meta:
        got = []
        for m in members:
            data = None
            if (n := m[4]) >= 0:
                data = bytes(body[at:at + n])
                at += n
            got.append(Member(m[0], m[1], m[2], Described(*m[5:]), m[3], data))
        r = ReadResult(directory, got, [Problem(*p) for p in problems], [], listed, seen,
                       seen_bytes, migrated, held)
        r.filtered.update(filtered)
        out.append(r)
    return out


def _send(sock: socket.socket, pieces: list[bytes]) -> None:
    views = [memoryview(p) for p in pieces if p]
    views.reverse()  # popped from the end
    while views:
        sent = sock.sendmsg(views[:-1025:-1])
        while sent:
            if sent >= len(views[-1]):
                sent -= len(views.pop())
            else:
                views[-1] = views[-1][sent:]
                sent = 0


def _recv(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    while view:
        got = sock.recv_into(view)
        if not got:
            raise EOFError("the run closed the read process's socket")
        view = view[got:]
    return bytes(buf)


# -- the child ---------------------------------------------------------------------------
class IndexLookup:
    """`migrated` of the checkpoint's index, read-only from another process."""

    def __init__(self, state_dir: Path) -> None:
        self.env = lmdb.open(str(state_dir / "checkpoint.lmdb"), readonly=True, lock=True,
                             subdir=True, max_dbs=32, readahead=False)
        self.db = self.env.open_db(b"index", create=False)

    def migrated(self, paths: list[bytes]) -> list[tuple[int, int] | None]:
        try:
            txn = self.env.begin(db=self.db)
        except lmdb.MapResizedError:  # the run grew the map since
            self.env.set_mapsize(0)
            txn = self.env.begin(db=self.db)
        with txn:
            return [None if (raw := txn.get(path_key(p))) is None else rows.stat_of(raw)
                    for p in paths]


def child_main(fd: int) -> None:
    """The read process: the job from the socket, ReadResults back until the walk ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C: the parent decides
    sock = socket.socket(fileno=fd)
    try:
        _, n, _ = HEAD.unpack(_recv(sock, HEAD.size))
        job = pickle.loads(_recv(sock, n))
        _die_with(job["parent"])
        faults.DENY_OPEN = job["deny_open"]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        asyncio.run(_read_and_send(sock, job))
    except (BrokenPipeError, ConnectionResetError, EOFError):
        os._exit(1)  # the run is gone or stopped reading: nothing to tell
    except BaseException as exc:  # noqa: BLE001 - told to the run, which raises it
        # Its type and, for an OSError, what failed: never a path (logs name no files).
        what = exc.strerror if isinstance(exc, OSError) else ""
        text = f"{type(exc).__name__}{': ' if what else ''}{what or ''}".encode()
        try:
            _send(sock, [HEAD.pack(FAILED, len(text), 0), text])
        except OSError:
            pass
        os._exit(1)
    sock.close()


def _die_with(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the signal was asked for
        os._exit(1)


async def _read_and_send(sock: socket.socket, job: dict[str, Any]) -> None:
    from .reads import read_tree

    opts: ReadOptions = job["opts"]
    index = IndexLookup(job["state_dir"]) if opts.skip_migrated else None
    pool = ThreadPoolExecutor(job["read_threads"], thread_name_prefix="read")
    batch: list[ReadResult] = []
    files = held = 0

    def send() -> None:
        faults.point("read-process")
        bodies: list[bytes] = []
        meta = pickle.dumps([_meta(r, bodies) for r in batch], protocol=5)
        _send(sock, [HEAD.pack(RESULTS, len(meta), sum(map(len, bodies))), meta, *bodies])

    try:
        async for r in read_tree(job["roots"], pool, opts, index, jobs=job["jobs"],
                                 shard=job["shard"]):
            batch.append(r)
            files += r.listed + len(r.problems)
            held += r.held
            if files >= BATCH_FILES or held >= BATCH_BYTES:
                send()
                batch, files, held = [], 0, 0
        if batch:
            send()
        _send(sock, [HEAD.pack(END, 0, 0)])
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


# -- the parent --------------------------------------------------------------------------
class _Frames(asyncio.BufferedProtocol):
    """Frames received straight into their buffers; ReadResult lists onto `queue`."""

    def __init__(self, queue: asyncio.Queue[list[ReadResult] | BaseException | None]) -> None:
        self.queue = queue
        self.head = bytearray(HEAD.size)
        self.meta = bytearray()
        self.body = bytearray()
        self.kind = RESULTS
        self.sizes = (0, 0)
        self.stage = 0  # 0: the header, 1: the metadata, 2: the bodies
        self.target = memoryview(self.head)
        self.at = 0
        self.ended = False
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.target[self.at:]

    def buffer_updated(self, nbytes: int) -> None:
        if self.ended:  # nothing follows the end (asyncio may still ask for a buffer)
            self.at = 0
            return
        self.at += nbytes
        while not self.ended and self.at == len(self.target):
            self._next()

    def _next(self) -> None:
        if self.stage == 0:
            self.kind, meta_n, body_n = HEAD.unpack(self.head)
            self.sizes = (meta_n, body_n)
            if self.kind == END:
                self._end(None)
                return
            self.meta = bytearray(meta_n)
            self.target, self.at, self.stage = memoryview(self.meta), 0, 1
        elif self.stage == 1:
            if self.kind == FAILED:
                self._end(ReadProcessError(
                    "the read process failed: " + self.meta.decode("utf-8", "replace")))
                return
            body_n = self.sizes[1]
            if len(self.body) < body_n:
                self.body = bytearray(body_n)
            self.target, self.at, self.stage = memoryview(self.body)[:body_n], 0, 2
        else:
            self.queue.put_nowait(_results(pickle.loads(self.meta), memoryview(self.body)))
            self.target, self.at, self.stage = memoryview(self.head), 0, 0
            if self.queue.qsize() >= WINDOW:
                self.pause()

    def _end(self, outcome: BaseException | None) -> None:
        self.ended = True
        self.target, self.at = memoryview(bytearray(64)), 0
        self.queue.put_nowait(outcome)

    def pause(self) -> None:
        assert isinstance(self.transport, asyncio.ReadTransport)
        self.transport.pause_reading()

    def resume(self) -> None:
        if not self.ended and isinstance(self.transport, asyncio.ReadTransport) \
                and not self.transport.is_reading():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended:
            self._end(ReadProcessError("the read process stopped before the walk was done"))


async def read_tree_apart(roots: Sequence[bytes], opts: ReadOptions, *, state_dir: Path,
                          read_threads: int, jobs: int, shard: Shard | None = None
                          ) -> AsyncGenerator[ReadResult, None]:
    """What `reads.read_tree` yields, read by a child process."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    job = pickle.dumps({"roots": list(roots), "opts": opts, "state_dir": state_dir,
                        "read_threads": read_threads, "jobs": jobs, "shard": shard,
                        "parent": os.getpid(), "deny_open": faults.DENY_OPEN})
    # The package this process runs, whatever the child's sys.path would find first.
    here = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [here, *filter(None, [os.environ.get("PYTHONPATH")])])}
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(theirs.fileno()), pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ended = False
    try:
        ours.sendall(HEAD.pack(RESULTS, len(job), 0) + job)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        ours.setblocking(False)
    except BaseException:
        ours.close()
        await _reap(proc, ended)
        raise
    queue: asyncio.Queue[list[ReadResult] | BaseException | None] = asyncio.Queue()
    frames = _Frames(queue)
    transport: asyncio.BaseTransport | None = None
    try:
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: frames, ours)
        while (got := await queue.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            if queue.qsize() < WINDOW:
                frames.resume()
            for r in got:
                yield r
        ended = True
    finally:
        if transport is not None:
            transport.close()
        else:
            ours.close()
        await _reap(proc, ended)


async def _reap(proc: asyncio.subprocess.Process, ended: bool) -> None:
    """Wait for a child that sent everything; stop one the run no longer reads from."""
    if not ended and proc.returncode is None:
        proc.kill()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
