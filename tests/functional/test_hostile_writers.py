"""Hostile source trees, real writers against the real CLI: files appear, directories
vanish and a file grows while `pacsmigrate migrate` runs; the run never crashes, the next
run finishes and the store matches the tree; source files are opened read-only, without
touching their atime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import blake3
from conftest import TEST_FILES, S3Target, run_cli
from helpers import MiB, assert_complete, index_rows, source_files
from hostile_support import _abs, _migrate_args, _report, assert_untouched, fingerprint

from pacsmigrate.keys import RUN_DIR
from pacsmigrate.manifest import TAIL, parse, read_trailer
from pacsmigrate.paths import from_fields
from pacsmigrate.synth import make_tree

# ---------------------------------------------------------------------------------------
# Real writers against the real CLI


def assert_consistent(target: S3Target, state: Path, root: Path) -> None:
    """assert_complete for a tree that changed under the runs: every file present now is in
    the index once with its current bytes; rows of files deleted since still read back to
    their blake3; an object no row points at only holds files re-migrated since; no orphan
    sidecars, no unfinished uploads."""
    files = source_files(root)
    rows: dict[bytes, dict[str, str]] = {}
    for r in index_rows(state):
        p = from_fields(r["source_path"], r["source_path_b64"])
        assert p not in rows, f"{p!r} twice in the index"
        rows[p] = r
    assert set(files) <= set(rows), f"not migrated: {sorted(set(files) - set(rows))[:5]}"
    for p, r in rows.items():
        length = int(r["length"])
        data = target.get(r["key"], int(r["offset"]), length) if length else b""
        assert blake3.blake3(data).hexdigest() == r["blake3"], p
        if p in files:
            assert data == files[p].read_bytes(), f"stored bytes differ for {p!r}"
    keys = [k for k in target.object_keys() if RUN_DIR not in k.split("/")]  # our records
    data_keys = {k for k in keys if not k.endswith(".json")}
    raw_keys = {k for k in data_keys if not k.endswith(".tar")}
    sidecars = {k for k in keys if k.endswith(".json") and not k.endswith("pacsmigrate.json")}
    assert {k.rsplit(".", 1)[0] for k in sidecars} == {k.rsplit(".", 1)[0] for k in raw_keys}
    referenced = {r["key"] for r in rows.values()}
    for key in data_keys - referenced:
        if key in raw_keys:
            doc = json.loads(target.get(key.rsplit(".", 1)[0] + ".json"))
        else:
            data = target.get(key)
            where = read_trailer(data[-TAIL:])
            assert where is not None, f"bundle without a trailer: {key}"
            doc = parse(data[where[0]:where[0] + where[1]])
        for m in doc["members"]:
            p = from_fields(m["source_path"], m["source_path_b64"])
            assert p in rows and rows[p]["key"] != key, f"orphan object {key}"
    assert target.pending_uploads() == []


def test_real_writers_during_a_cli_run(moto_s3: S3Target, tmp_path: Path) -> None:
    """While `pacsmigrate migrate` runs: new files appear (in old and new directories),
    whole directories vanish, and a file grows. The run must not crash; the next run (the
    tree quiet again) finishes with exit 0 and the store matches the tree."""
    root = tmp_path / "nas"
    make_tree(root / "date", studies=12, seed=31, layout="date", scale=0.05)
    make_tree(root / "patient", studies=4, seed=32, layout="patient", scale=0.05)
    growing = root / "growing.dcm"
    shutil.copy(TEST_FILES / "CT_small.dcm", growing)
    staging = tmp_path / "staging"
    staging.mkdir()
    doomed = sorted(p for p in (root / "date").glob("*/*/*/*/*") if p.is_dir())[::2]
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    stop = threading.Event()
    created: list[Path] = []
    errors: list[BaseException] = []

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def body() -> None:
            try:
                while not stop.is_set():
                    fn()
            except BaseException as exc:  # noqa: BLE001 - surfaced by the test below
                errors.append(exc)
        return body

    counter = iter(range(10**6))

    def create() -> None:
        n = next(counter)
        tmp = staging / f"{n}.part"
        tmp.write_bytes(ct)  # written in full elsewhere, then renamed in: never half-seen
        dest = root / "incoming" / f"d{n % 7}" / (f"new{n}" if n % 5 == 0 else "") / f"{n}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, dest)
        created.append(dest)
        time.sleep(0.01)

    def delete() -> None:
        if doomed and (state / "checkpoint.lmdb").exists():  # once the run has begun
            shutil.rmtree(doomed.pop(), ignore_errors=True)
        time.sleep(0.15)

    def grow() -> None:
        with open(growing, "ab") as f:
            f.write(b"\0" * 4096)
        time.sleep(0.002)

    state, report = tmp_path / "state", tmp_path / "report.json"
    args = [sys.executable, "-m", "pacsmigrate",
            *_migrate_args(root, moto_s3, state, "--report", str(report), "--concurrency", "2",
                           "--read-threads", "2", "--bwlimit", "4MiB")]
    proc = subprocess.Popen(args, env=moto_s3.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    threads = [threading.Thread(target=guarded(fn)) for fn in (create, delete, grow)]
    for t in threads:
        t.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert proc.returncode in (0, 1), out + err
    assert "Traceback" not in err, err
    assert created, "the writer created nothing during the run"
    doc = _report(report)
    for item in doc["not_migrated"]:  # whatever is left says why
        assert item["reason"], item

    second = run_cli(*_migrate_args(root, moto_s3, state), env=moto_s3.env(), timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert_consistent(moto_s3, state, root)
    third = run_cli(*_migrate_args(root, moto_s3, state), env=moto_s3.env(), timeout=120)
    assert third.returncode == 0 and "migrated now: 0 files" in third.stdout, third.stdout


def test_files_appearing_during_a_run_are_migrated_now_or_by_the_next(moto_s3: S3Target,
                                                                     tmp_path: Path) -> None:
    """A modality keeps storing while the CLI runs: files renamed into old and new folders.
    Each is migrated by this run or the next; after the next, the store matches the tree."""
    root = tmp_path / "nas"
    make_tree(root / "date", studies=8, seed=33, layout="date", scale=0.05)
    staging = tmp_path / "staging"
    staging.mkdir()
    ct = (TEST_FILES / "CT_small.dcm").read_bytes()
    existing = sorted(p for p in (root / "date").glob("*/*/*/*/*") if p.is_dir())
    stop = threading.Event()
    created: list[Path] = []

    def store() -> None:
        n = 0
        while not stop.is_set():
            tmp = staging / f"{n}.part"
            tmp.write_bytes(ct)
            folder = existing[n % len(existing)] if n % 2 else root / "new" / f"s{n // 10}"
            folder.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, folder / f"IM{n:05d}")
            created.append(folder / f"IM{n:05d}")
            n += 1
            time.sleep(0.01)

    state = tmp_path / "state"
    args = [sys.executable, "-m", "pacsmigrate",
            *_migrate_args(root, moto_s3, state, "--bwlimit", "4MiB")]
    proc = subprocess.Popen(args, env=moto_s3.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    writer = threading.Thread(target=store)
    writer.start()
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        writer.join()
    assert proc.returncode == 0, out + err
    first = {from_fields(r["source_path"], r["source_path_b64"]) for r in index_rows(state)}
    new = {_abs(p) for p in created}
    assert new & first and new - first, "both cases (this run, the next run) must occur"
    second = run_cli(*_migrate_args(root, moto_s3, state), env=moto_s3.env(), timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"migrated now: {len(new - first):,} files" in second.stdout, second.stdout
    assert_complete(moto_s3, state, root)


def test_source_files_are_opened_read_only_without_touching_atime(moto_s3: S3Target,
                                                                  tmp_path: Path) -> None:
    """Watch the running CLI's open descriptors (/proc/PID/fdinfo): every one on a source file
    is O_RDONLY (and O_NOATIME where the kernel allows it). A bandwidth cap keeps a 6 MiB
    file open long enough to be seen."""
    root = tmp_path / "src"
    root.mkdir()
    big = root / "big.dcm"
    big.write_bytes((TEST_FILES / "CT_small.dcm").read_bytes() + os.urandom(6 * MiB))
    for i in range(20):
        shutil.copy(TEST_FILES / "MR_small.dcm", root / f"mr{i}.dcm")
    before = fingerprint(root)
    prefix = str(root) + "/"
    args = [sys.executable, "-m", "pacsmigrate",
            *_migrate_args(root, moto_s3, tmp_path / "state", "--large-file", "1MiB",
                           "--bwlimit", "3MiB")]
    proc = subprocess.Popen(args, env=moto_s3.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: dict[str, int] = {}
    while proc.poll() is None:
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
        except FileNotFoundError:
            break
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{proc.pid}/fd/{fd}")
                if not target.startswith(prefix):
                    continue
                with open(f"/proc/{proc.pid}/fdinfo/{fd}") as info:
                    flags = next(int(line.split()[1], 8) for line in info
                                 if line.startswith("flags:"))
            except (FileNotFoundError, ProcessLookupError, StopIteration):
                continue
            seen[target] = flags
        time.sleep(0.005)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert str(big) in seen, f"never saw the big file open; saw {sorted(seen)[:3]}"
    for path, flags in seen.items():
        assert flags & os.O_ACCMODE == os.O_RDONLY, (path, oct(flags))
        assert flags & getattr(os, "O_NOATIME", 0), (path, "opened without O_NOATIME")
    assert_untouched(before, root, "after the run")
