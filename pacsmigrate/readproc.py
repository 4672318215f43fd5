"""The read stage in a process of its own (`--read-process`): one core walks, reads, hashes
and scans headers while this one groups, packs, uploads and commits. This module has the
frames and the run's side; readchild.py the child's.

One Python process runs about one core: in a --pack run over small files the walk and the
reads (inline system calls, the header scan, blake3) and the rest (tar headers, manifests,
the commit's rows) took turns on one GIL, each waiting for the other's switch interval. Here
the child runs `reads.read_tree` exactly as a run would in-process and sends its ReadResults
over a Unix socket pair, in frames: a header and the metadata pickled as plain tuples. The
file bodies go back to back through a ring of shared memory (a memfd both map): the parent
copies them out as the frame arrives, each into a bytes object of its own (so a member
held by an open study pins nothing), and acknowledges the ring's space over the socket;
the socket carried bodies too (0.9 CPU-s more per GB on the CT tree, two kernel copies).
Without memfd (not Linux), or for a frame larger than the ring, the bodies follow the
metadata on the socket, received into one reused buffer. The parent stops reading while WINDOW frames wait unused, so
the child blocks on a full socket: memory stays bounded by the frames in flight. When the
child dies or fails, the run stops with a ReadProcessError (nothing it did not send was
stored; the next run reads it). The child's log lines (the pacsmigrate loggers, at the run's
level) come over in frames of their own and go where the run's own lines go.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import pickle
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from . import faults
from .cpus import usable_cpus
from .errors import ReadProcessError
from .read import ReadOptions, ReadResult
from .records import Described, Member, Problem
from .shard import Shard

BATCH_FILES = 512  # files per frame
BATCH_BYTES = 4 << 20  # file bytes per frame (one ReadResult may carry more)
WINDOW = 4  # frames received and not yet taken before the parent stops reading
SOCKET_BUFFER = 4 << 20  # each side's socket buffer
HEAD = struct.Struct("<BQQ")  # kind, metadata bytes, body bytes
RESULTS, END, FAILED, IN_RING, LOG = 0, 1, 2, 3, 4
RING = 32 << 20  # shared memory the bodies cross by (a frame's bodies are at most ~14 MiB)
ACK = struct.Struct("<Q")  # the run to the child: the ring is free up to here
# Run with -P (no current directory on sys.path); the package this process runs comes first
# unless the child's sys.path has it already.
CHILD = ("import sys; here = sys.argv[2]; here in sys.path or sys.path.insert(0, here); "
         "from pacsmigrate.readchild import child_main; child_main(int(sys.argv[1]))")


def wanted(setting: str) -> bool:
    """Whether `--read-process` (auto, on, off) starts a read process on this machine."""
    return setting == "on" or (setting == "auto" and usable_cpus() >= 2)


# LMDB must not be shared by two processes over these (its docs: not even on one host).
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs",
                        "fuse.glusterfs", "fuse.sshfs", "lustre", "gpfs", "afs"})


def fs_type(path: Path, mountinfo: str | None = None) -> str:
    """The file system type of the mount holding path (Linux's mountinfo; "" elsewhere)."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                mountinfo = f.read()
        except OSError:
            return ""
    where = os.path.realpath(path)
    best, kind = "", ""
    for line in mountinfo.splitlines():
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) < 5 or not rest:
            continue
        point = parts[4].replace("\\040", " ")
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, rest.split()[0]
    return kind


# -- the frames --------------------------------------------------------------------------
def meta_of(r: ReadResult, bodies: list[bytes], shared: dict[str, str] | None = None
            ) -> tuple[Any, ...]:
    """A result as plain tuples (pickled), its members' bytes appended to `bodies`.

    The fields a series' files share (study, series, ...) go as one str object, the first
    met in `shared` (one dict a frame): pickle sends the others as references to it, and
    the run unpickles one object for them all (half the run's cost of a frame's members).
    """
    members = []
    one = (shared if shared is not None else {}).setdefault
    for m in r.members:
        a = m.about
        n = -1
        if m.data is not None:
            n = len(m.data)
            bodies.append(m.data)
        members.append((m.path, m.size, m.mtime_ns, m.blake3, n, one(a.group, a.group),
                        a.status, a.reason, one(a.study_uid, a.study_uid),
                        one(a.series_uid, a.series_uid), a.sop_uid,
                        one(a.modality, a.modality), one(a.study_date, a.study_date),
                        one(a.transfer_syntax, a.transfer_syntax),
                        one(a.accession, a.accession)))
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
        if filtered:
            r.filtered.update(filtered)
        out.append(r)
    return out


def log_here(records: list[tuple[str, int, str, float]]) -> None:
    """The child's log records (logger, level, message, time) as this process's own."""
    for name, level, message, created in records:
        logger = logging.getLogger(name)
        if logger.isEnabledFor(level):
            record = logger.makeRecord(name, level, "(read process)", 0, message, (), None)
            record.created, record.msecs = created, created % 1 * 1000
            record.processName = "read process"
            logger.handle(record)


def send_all(sock: socket.socket, pieces: list[bytes]) -> None:
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


# -- the parent --------------------------------------------------------------------------
class _Frames(asyncio.BufferedProtocol):
    """Frames received straight into their buffers; ReadResult lists onto `queue`."""

    def __init__(self, queue: asyncio.Queue[list[ReadResult] | BaseException | None],
                 ring: mmap.mmap | None = None) -> None:
        self.queue = queue
        self.ring = ring
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
        try:
            while not self.ended and self.at == len(self.target):
                self._next()
        except Exception as exc:  # noqa: BLE001 - one line for the user, not asyncio's trace
            self._end(ReadProcessError(f"the read process sent a frame this run cannot read "
                                       f"({type(exc).__name__})"))

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
            if self.kind == LOG:
                log_here(pickle.loads(self.meta))
                self.target, self.at, self.stage = memoryview(self.head), 0, 0
                return
            if self.kind == IN_RING:  # the bodies are in shared memory: copied out, freed
                assert self.ring is not None and isinstance(self.transport, asyncio.Transport)
                start, total, meta = pickle.loads(self.meta)
                with memoryview(self.ring) as ring:
                    at = start % len(ring)
                    results = _results(meta, ring[at:at + total])
                self.transport.write(ACK.pack(start + total))
                self._put(results)
                return
            body_n = self.sizes[1]
            if len(self.body) < body_n:
                self.body = bytearray(body_n)
            self.target, self.at, self.stage = memoryview(self.body)[:body_n], 0, 2
        else:
            self._put(_results(pickle.loads(self.meta), memoryview(self.body)))

    def _put(self, results: list[ReadResult]) -> None:
        self.queue.put_nowait(results)
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
    ring_fd = _shared_memory(RING)
    job = pickle.dumps({"roots": list(roots), "opts": opts, "state_dir": state_dir,
                        "read_threads": read_threads, "jobs": jobs, "shard": shard,
                        "parent": os.getpid(), "deny_open": faults.DENY_OPEN,
                        "ring_fd": ring_fd, "ring_size": RING, "batch_bytes": BATCH_BYTES,
                        "log_level": logging.getLogger("pacsmigrate").getEffectiveLevel()})
    here = str(Path(__file__).resolve().parent.parent)
    ring = None
    try:
        if ring_fd is not None:
            ring = mmap.mmap(ring_fd, RING)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-c", CHILD, str(theirs.fileno()), here,
            pass_fds=[theirs.fileno(), *([] if ring_fd is None else [ring_fd])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    except BaseException:
        ours.close()
        if ring is not None:
            ring.close()
        raise
    finally:
        theirs.close()
        if ring_fd is not None:
            os.close(ring_fd)
    ended = False
    try:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        ours.setblocking(False)
        await asyncio.get_running_loop().sock_sendall(ours, HEAD.pack(RESULTS, len(job), 0)
                                                      + job)
    except BaseException:
        ours.close()
        await _reap(proc, ended)
        if ring is not None:
            ring.close()
        raise
    queue: asyncio.Queue[list[ReadResult] | BaseException | None] = asyncio.Queue()
    frames = _Frames(queue, ring)
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
        if ring is not None:
            ring.close()


def _shared_memory(size: int) -> int | None:
    """An anonymous shared memory file (Linux's memfd) of size bytes, or None elsewhere:
    the bodies then cross the socket."""
    if not hasattr(os, "memfd_create"):
        return None
    fd = os.memfd_create("pacsmigrate-read", 0)  # close-on-exec; pass_fds hands it on
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        return None
    return fd


async def _reap(proc: asyncio.subprocess.Process, ended: bool) -> None:
    """Wait for a child that sent everything; stop one the run no longer reads from."""
    if not ended and proc.returncode is None:
        proc.kill()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
