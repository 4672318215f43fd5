"""`--read-process`: the walk and the reads in a child process give what the run would read
itself; a failed or killed child stops the run with one line and loses nothing; a killed run
leaves no child behind."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Target, run_cli
from helpers import assert_complete

from pacsmigrate import readchild, readproc, rows
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.config import Destination, MigrateConfig
from pacsmigrate.errors import ConfigError, ReadProcessError
from pacsmigrate.filters import Filters
from pacsmigrate.read import ReadOptions, ReadResult
from pacsmigrate.readproc import END, FAILED, HEAD, LOG, RESULTS, read_tree_apart
from pacsmigrate.reads import read_tree
from pacsmigrate.records import Described, Entry
from pacsmigrate.synth import make_tree

KEY = b"k" * 32


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DICOM studies, files that are not DICOM, a file above hold_max, a symlink."""
    root = tmp_path_factory.mktemp("readproc") / "src"
    make_tree(root, studies=12, seed=5, layout="date", scale=0.05)
    odd = root / "odd"
    odd.mkdir()
    for i in range(700):  # more than a frame's files
        (odd / f"note{i:03d}.txt").write_bytes(b"not dicom %d" % i * (1 + i % 7))
    (odd / "big.bin").write_bytes(os.urandom(300_000))
    (root / "link").symlink_to(odd)
    return root


def _fields(results: list[ReadResult]) -> list[Any]:
    return [(r.directory, [(m.path, m.size, m.mtime_ns, m.blake3, m.data, m.about)
                           for m in r.members], r.problems, r.listed, r.seen, r.seen_bytes,
             r.migrated, r.held, dict(r.filtered)) for r in results]


def _both(root: Path, opts: ReadOptions, state: Path) -> tuple[list[Any], list[Any]]:
    roots = [os.fsencode(root)]

    async def here() -> list[ReadResult]:
        with ThreadPoolExecutor(4) as pool:
            return [r async for r in read_tree(roots, pool, opts, None, jobs=8)]

    async def apart() -> list[ReadResult]:
        return [r async for r in read_tree_apart(roots, opts, state_dir=state,
                                                 read_threads=4, jobs=8)]
    return (_fields(asyncio.run(asyncio.wait_for(here(), 60))),
            _fields(asyncio.run(asyncio.wait_for(apart(), 60))))


@pytest.mark.parametrize("kind", ["held", "dry-run", "filtered", "small-ring", "no-ring"])
def test_the_child_reads_what_the_run_would(tree: Path, tmp_path: Path, kind: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """small-ring: frames wrap around a ring that holds about two of them, and the larger
    ones cross the socket; no-ring: no shared memory (not Linux), the bytes cross the
    socket."""
    if kind == "small-ring":
        monkeypatch.setattr(readproc, "RING", 256 << 10)
        monkeypatch.setattr(readproc, "BATCH_BYTES", 200_000)
    if kind == "no-ring":
        monkeypatch.setattr(readproc, "_shared_memory", lambda size: None)
    opts = {"held": ReadOptions(KEY, hold_max=100_000, budget=200_000),
            "small-ring": ReadOptions(KEY, budget=150_000),
            "no-ring": ReadOptions(KEY, budget=2_000_000),
            "dry-run": ReadOptions(KEY, dry_run=True),
            "filtered": ReadOptions(KEY, hold_max=100_000,
                                filters=Filters.parse(exclude=("*/note1*",)))}[kind]
    here, apart = _both(tree, opts, tmp_path / "state")
    assert apart == here
    data = [m[4] for r in apart for m in r[1]]
    assert len(data) > 600 and any(r[2] for r in apart)  # the symlink's problem came across
    if kind == "dry-run":
        assert set(data) == {None}
    elif kind == "held":  # the files above hold_max are read again when packed
        assert None in data and any(data)
    elif kind != "filtered":
        assert sum(map(len, filter(None, data))) > 5 << 20
    if kind == "filtered":
        assert sum(sum(r[8].values()) for r in apart) == 100


def _frame(kind: int, meta: bytes = b"", body: bytes = b"") -> bytes:
    return HEAD.pack(kind, len(meta), len(body)) + meta + body


def test_frames_cut_anywhere_and_a_failure_reported() -> None:
    """Bytes as the socket delivers them, one at a time: results, then the child's error."""
    r = ReadResult(b"/d")
    bodies: list[bytes] = []
    from pacsmigrate.records import Described, Member
    r.members = [Member(b"/d/a", 3, 7, Described("g", study_uid="1.2"), "ab", b"xyz"),
                 Member(b"/d/b", 9, 8, Described("g"), "", None)]
    r.listed = r.seen = 2
    meta = pickle.dumps([readproc.meta_of(r, bodies)])
    stream = (_frame(RESULTS, meta, b"".join(bodies))
              + _frame(FAILED, b"OSError: no more"))

    async def feed() -> list[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        frames = readproc._Frames(queue)
        for i in range(len(stream)):
            frames.get_buffer(-1)[:1] = stream[i:i + 1]
            frames.buffer_updated(1)
        assert len(frames.get_buffer(-1)) > 0  # asyncio refuses an empty buffer
        return [queue.get_nowait() for _ in range(queue.qsize())]
    got = asyncio.run(feed())
    assert len(got) == 2
    (back,) = got[0]
    assert [(m.path, m.data, m.about.study_uid) for m in back.members] == [
        (b"/d/a", b"xyz", "1.2"), (b"/d/b", None, "")]
    assert isinstance(got[1], ReadProcessError) and "OSError: no more" in str(got[1])
    assert HEAD.pack(END, 0, 0)  # the end frame is a header alone


def test_a_bad_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--read-process must be auto, on or off"):
        MigrateConfig(sources=(tmp_path,), dest=Destination.parse("s3://b/x"),
                      state_dir=tmp_path / "s", read_process="maybe")
    assert readproc.wanted("on") and not readproc.wanted("off")
    assert readproc.wanted("auto") == (readproc.usable_cpus() >= 2)


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /mnt/pacs\\040state rw,relatime shared:20 - nfs4 srv:/export rw,vers=4.2
41 40 8:2 / /mnt/pacs\\040state/local rw - xfs /dev/vdb rw
"""


def test_a_state_on_a_network_file_system_is_seen() -> None:
    assert readproc.fs_type(Path("/mnt/pacs state/run1"), MOUNTINFO) == "nfs4"
    assert readproc.fs_type(Path("/mnt/pacs state/local/x"), MOUNTINFO) == "xfs"
    assert readproc.fs_type(Path("/mnt/pacs stateX"), MOUNTINFO) == "ext4"
    assert "nfs4" in readproc.NETWORK_FS


READER = """
import sys, threading
from pathlib import Path
from pacsmigrate.readchild import IndexLookup
state, stop = Path(sys.argv[1]), Path(sys.argv[2])
paths = [b"/nas/%06d.dcm" % i for i in range(60_000)]
lookup = IndexLookup(state)
errors, rounds = [], [0]
def look():
    try:
        while not stop.exists():
            got = lookup.migrated(paths[::997])
            assert all(g is None or g == (1000, 7) for g in got), got
            rounds[0] += 1
    except BaseException as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=look) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
assert lookup.migrated(paths) == [(1000, 7)] * len(paths)
print("errors", errors, "rounds", rounds[0])
"""


def test_the_child_s_index_reader_follows_a_growing_state(tmp_path: Path) -> None:
    """The run commits (its file grows well past what a reader first maps) while a reader
    in another process looks paths up from three threads."""
    state, stop = tmp_path / "state", tmp_path / "stop"
    cp = Checkpoint(state)
    paths = [b"/nas/%06d.dcm" % i for i in range(60_000)]
    reader = subprocess.Popen([sys.executable, "-c", READER, str(state), str(stop)],
                              stdout=subprocess.PIPE, text=True)
    pad = "1." + "9" * 400  # rows of ~300 bytes: 60k of them are ~20 MB
    for start in range(0, len(paths), 5000):
        def write(txn: Any, chunk: list[bytes] = paths[start:start + 5000]) -> None:
            for p in chunk:
                e = Entry(p, 0, 1000, "", 1000, 7, Described("g", study_uid=pad, sop_uid=pad))
                txn.put(p, rows.encode(e, 1), db=cp.db["index"])
        cp._write(write)
        time.sleep(0.05)
    stop.touch()
    said, _ = reader.communicate(timeout=60)
    cp.close()
    assert reader.returncode == 0 and said.startswith("errors [] rounds "), said
    assert int(said.split()[-1]) > 10
    assert os.path.getsize(state / "checkpoint.lmdb" / "data.mdb") > 16 << 20


def test_a_slow_walk_still_sends_its_files(tmp_path: Path) -> None:
    """A result waits at most FLUSH_AFTER for the frame's other files (a slow NAS)."""
    ours, theirs = socket.socketpair()
    out = readchild._Out(theirs)
    out.add(ReadResult(b"/d", listed=1, seen=1))
    time.sleep(readchild.FLUSH_AFTER + 0.05)
    out.add(ReadResult(b"/e", listed=1, seen=1))
    ours.settimeout(5)
    kind, meta_n, body_n = HEAD.unpack(ours.recv(HEAD.size, socket.MSG_WAITALL))
    meta = pickle.loads(ours.recv(meta_n, socket.MSG_WAITALL))
    assert kind == RESULTS and [m[0] for m in meta] == [b"/d", b"/e"] and body_n == 0
    ours.close()
    theirs.close()


def test_the_child_s_log_lines_are_the_run_s(tree: Path, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """At the run's level, with the child's time and pid; below it, not at all."""
    roots = [os.fsencode(tree)]

    async def apart() -> None:
        async for _ in read_tree_apart(roots, ReadOptions(KEY), state_dir=tmp_path,
                                       read_threads=2, jobs=2):
            pass

    def child_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "pacsmigrate.readchild"]
    caplog.set_level(logging.INFO, logger="pacsmigrate")
    asyncio.run(asyncio.wait_for(apart(), 60))
    assert child_lines() == []
    caplog.set_level(logging.DEBUG, logger="pacsmigrate")
    started = time.time()
    asyncio.run(asyncio.wait_for(apart(), 60))
    (line,) = child_lines()
    pid = int(re.fullmatch(r"read process (\d+): walking 1 source tree\(s\), 2 read threads",
                           line.getMessage()).group(1))  # type: ignore[union-attr]
    assert pid != os.getpid() and line.levelno == logging.DEBUG
    assert line.processName == "read process" and started - 1 < line.created < time.time()


def test_log_lines_from_any_thread_go_before_the_next_results() -> None:
    ours, theirs = socket.socketpair()
    out = readchild._Out(theirs)
    handler = readchild._Forward(out)
    logger = logging.getLogger("pacsmigrate.test-forward")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        import threading
        t = threading.Thread(target=logger.warning, args=("slow listings: %d us", 1200))
        t.start()
        t.join()
        out.add(ReadResult(b"/d", listed=1, seen=1))
        out.flush()
    finally:
        logger.removeHandler(handler)
    ours.settimeout(5)
    frames = []
    for _ in range(2):
        kind, meta_n, _ = HEAD.unpack(ours.recv(HEAD.size, socket.MSG_WAITALL))
        frames.append((kind, pickle.loads(ours.recv(meta_n, socket.MSG_WAITALL))))
    assert [k for k, _ in frames] == [LOG, RESULTS]
    ((name, level, message, _),) = frames[0][1]
    assert (name, level, message) == ("pacsmigrate.test-forward", logging.WARNING,
                                      "slow listings: 1200 us")
    ours.close()
    theirs.close()


def _args(tree: Path, s3: S3Target, state: Path, *extra: str) -> list[str]:
    return ["migrate", str(tree), s3.url, "--endpoint-url", s3.info.endpoint_url,
            "--state", str(state), "--read-process", "on", "--no-progress", *extra]


def test_a_run_then_its_resume_read_apart(tree: Path, moto_s3: S3Target,
                                          tmp_path: Path) -> None:
    """The resumed run's child finds what the index holds (its own LMDB reader)."""
    state = tmp_path / "state"
    first = run_cli(*_args(tree, moto_s3, state, "--pack", "1MiB"), env=moto_s3.env())
    assert first.returncode == 0, first.stderr
    rows = assert_complete(moto_s3, state, tree)
    keys = moto_s3.object_keys()
    again = run_cli(*_args(tree, moto_s3, state, "--pack", "1MiB"), env=moto_s3.env())
    assert again.returncode == 0, again.stderr
    assert re.search(rf"already migrated\D+{len(rows)}\b", again.stdout), again.stdout
    assert moto_s3.object_keys() == keys  # nothing stored twice


def test_a_dead_child_stops_the_run_in_one_line_and_loses_nothing(
        tree: Path, moto_s3: S3Target, tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**moto_s3.env(), "PACSMIGRATE_CRASH_AT": "read-process:2"}
    died = run_cli(*_args(tree, moto_s3, state), env=env)
    assert died.returncode == 2, died.stdout + died.stderr
    errors = [ln for ln in died.stderr.splitlines() if "read process" in ln]
    assert errors == ["error: the read process stopped before the walk was done"], died.stderr
    assert "Traceback" not in died.stderr
    done = run_cli(*_args(tree, moto_s3, state), env=moto_s3.env())
    assert done.returncode == 0, done.stderr
    assert_complete(moto_s3, state, tree)


def _children_marked(mark: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"PM_TEST_MARK={mark}".encode() in f.read().split(b"\0"):
                    with open(f"/proc/{pid}/stat") as s:
                        if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_a_killed_run_leaves_no_read_process(tree: Path, moto_s3: S3Target,
                                             tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    env = {**moto_s3.env(), "PACSMIGRATE_CRASH_AT": "mid-catalogue:2", "PM_TEST_MARK": mark}
    killed = run_cli(*_args(tree, moto_s3, tmp_path / "state"), env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    deadline = time.monotonic() + 10
    while (left := _children_marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == []


def test_a_frame_carries_the_fields_a_series_shares_once() -> None:
    """Study, series, modality... of a series' files go as one object in a frame (pickle
    references it), and the run holds one copy of each, not one a file (two results of
    a frame here: one folder's files in two jobs)."""
    from pacsmigrate.records import Described, Member

    def text(*parts: str) -> str:
        return "".join(parts)  # a new str object each call, as the header scan makes them

    def result() -> ReadResult:
        r = ReadResult(b"/d")
        r.members = [Member(b"/d/%d" % i, 3, 7, Described(
            text("ab" * 16), study_uid=text("1.2.", "3"), series_uid=text("1.2.3.", "4"),
            sop_uid=text("1.2.3.4.", str(i)), modality=text("C", "T"),
            study_date=text("2017", "0304"), transfer_syntax=text("1.2.840.", "10008.1.2.1")),
            "ab", b"xyz") for i in range(50)]
        r.listed = r.seen = 50
        return r

    shared: dict[str, str] = {}
    bodies: list[bytes] = []
    frame = pickle.dumps([readproc.meta_of(r, bodies, shared) for r in (result(), result())])
    got = [m for r in readproc._results(pickle.loads(frame), memoryview(b"".join(bodies)))
           for m in r.members]
    assert [m.data for m in got] == [b"xyz"] * 100
    assert [m.about.sop_uid for m in got] == [f"1.2.3.4.{i}" for i in range(50)] * 2
    for field in ("group", "study_uid", "series_uid", "modality", "study_date",
                  "transfer_syntax"):
        assert len({id(getattr(m.about, field)) for m in got}) == 1, field
