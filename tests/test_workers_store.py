"""A run on workers that share no path: slice states on each "machine", copied through the
store (`--slice-states store`, the default with --scheduler); a lost machine's slice is
rebuilt from the store elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import LocalTarget, S3Target, run, run_cli
from helpers import assert_complete, config, index_rows, source_files
from test_shard import _same, _tree
from test_workers import crash_tree, migrate_args, single_run

from pacsmigrate.backends.memory import MemoryBackend
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.errors import StateError
from pacsmigrate.lmdbfile import lock_held
from pacsmigrate.pipeline import migrate
from pacsmigrate.shard import Shard
from pacsmigrate.slicestore import HELD, fetch, mark_start, newest_copy, seed, ship
from pacsmigrate.slicetask import LOCAL_STATES, local_states


@contextmanager
def machines(tmp_path: Path, env: dict[str, str], n: int = 2) -> Iterator[tuple[str, list[Path]]]:
    """A Dask scheduler and n worker processes on 127.0.0.1, each in a directory of its own
    (its "machine"), without nannies: a worker that dies stays dead, so its slice must run
    again on another machine."""
    sched_file = tmp_path / "scheduler.json"
    logs = open(tmp_path / "cluster.log", "w")  # noqa: SIM115 - closed below
    procs = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)],
        env=env, stdout=logs, stderr=logs)]
    dirs = []
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() or "address" not in sched_file.read_text() or '}' not in \
                sched_file.read_text():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        for i in range(n):
            d = tmp_path / f"machine{i}"
            d.mkdir()
            dirs.append(d)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads",
                 "1", "--host", "127.0.0.1", "--no-dashboard", "--no-nanny",
                 "--local-directory", str(d)], cwd=d, env=env, stdout=logs, stderr=logs))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(n, timeout=60)
        yield address, dirs
    finally:
        # Workers first, while their scheduler is still there: a worker that loses the
        # scheduler starts closing, and a SIGTERM in the middle of that close can leave it
        # hanging until the 30 s below run out (seen in make test: 30 of a test's 36 s).
        for group in (procs[1:], procs[:1]):
            for p in group:
                p.terminate()
            for p in group:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        logs.close()


def _slice_states(d: Path) -> list[str]:
    return sorted(p.parent.name for p in d.rglob("checkpoint.lmdb"))


def test_two_machines_without_a_shared_path_make_one_index(moto_s3: S3Target,
                                                           local_store: LocalTarget,
                                                           tmp_path: Path) -> None:
    root, single = single_run(local_store, tmp_path)
    state = tmp_path / "state"
    env = {**moto_s3.env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    with machines(tmp_path, env) as (address, dirs):
        proc = run_cli(*migrate_args(moto_s3, root, state, "--scheduler", address), env=env,
                       check=True)
        assert "8 slices on 2 Dask workers, states kept in the store" in proc.stderr
        # Each slice's state was made on a machine and removed there once its copy was in
        # the store: no source paths or UIDs left on the workers' disks (the folder they
        # were in readable by the workers' user alone).
        assert _slice_states(dirs[0]) + _slice_states(dirs[1]) == []
        tops = [p for d in dirs for p in d.rglob(LOCAL_STATES)]
        assert tops and all(p.stat().st_mode & 0o777 == 0o700 for p in tops), tops
        rows = assert_complete(moto_s3, state, root)
        assert _same(rows) == _same(single)
        # One copy of each slice's state stays in the store, beside the run's start mark.
        copies = [k for k in moto_s3.object_keys() if "/pacsmigrate-run/slices/" in k]
        assert sorted(k.rsplit("/", 2)[1] for k in copies if k.endswith(".lmdb")) == [
            f"{k}-of-8" for k in range(8)]
        # Re-run: each slice finds its state in the store; nothing new.
        keys = moto_s3.object_keys()
        again = run_cli(*migrate_args(moto_s3, root, state, "--scheduler", address), env=env,
                        check=True)
        assert "migrated now: 0 files" in again.stdout, again.stdout
        assert set(moto_s3.object_keys()) - set(keys) <= {k for k in moto_s3.object_keys()
                                                          if k.endswith(".lmdb")}
    verify = run_cli("verify", "--state", str(state), "--deep", "--source", env=moto_s3.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The run's state serves every read command as a single run's would.
    files = source_files(root)
    some = sorted(files)[len(files) // 2]
    located = json.loads(run_cli("locate", os.fsdecode(some), "--state", str(state), "--json",
                                 env=moto_s3.env(), check=True).stdout)
    assert located["blake3"] == next(r["blake3"] for r in single
                                     if r["source_path"] == os.fsdecode(some))
    to = tmp_path / "restored"
    run_cli("restore", "--state", str(state), "--all", "--to", str(to), "--no-progress",
            env=moto_s3.env(), check=True)
    for path, src in files.items():
        assert (to / os.fsdecode(path).lstrip("/")).read_bytes() == src.read_bytes()
    export = run_cli("index", "export", "--state", str(state), "--format", "csv", check=True)
    assert len(export.stdout.strip().splitlines()) == len(single) + 1  # a header line


@pytest.mark.parametrize("point", ["after-upload:2", "part-uploaded:1"])
def test_a_lost_machine_s_slice_is_rebuilt_from_the_store(point: str, moto_s3: S3Target,
                                                          tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    extra = crash_tree(root, point)
    marker = tmp_path / "one-machine-died"
    env = {**moto_s3.env(), "PYTHONPATH": os.pathsep.join(sys.path),
           "PACSMIGRATE_CRASH_AT": point, "PACSMIGRATE_CRASH_ONCE": str(marker)}
    with machines(tmp_path, env) as (address, _):
        proc = run_cli(*migrate_args(moto_s3, root, tmp_path / "state", "--scheduler", address,
                              "--report", str(tmp_path / "report.json"), *extra),
                       env={k: v for k, v in env.items() if not k.startswith("PACSMIGRATE")})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker.exists(), "no worker was killed"
    # The other machine ran the lost slice from an empty state and found in the store what
    # the lost one had stored (objects by their manifests, a multipart upload by its parts):
    # it sent only the rest. Nothing lost, doubled or orphaned.
    report = json.loads((tmp_path / "report.json").read_text())["run"]
    if point.startswith("part") and not report["uploads_resumed"]:
        # The new attempt closed its bundles otherwise (they close by time too): the lost
        # machine's upload, whose intent was lost with it, stays open until `cleanup`.
        keys = {r["key"] for r in index_rows(tmp_path / "state")}
        assert [u["Key"] for u in moto_s3.pending_uploads() if u["Key"] in keys] == []
        run_cli("cleanup", moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
                "--older-than", "0s", env=moto_s3.env(), check=True)
    rows = assert_complete(moto_s3, tmp_path / "state", root)
    # A first run: every file is migrated now, those the lost machine stored included.
    assert (report["files_migrated"], report["already_migrated"]) == (len(rows), 0), report
    if point.startswith("after"):
        found = [line for line in proc.stderr.splitlines() if "an empty state" in line
                 and "found in the store from an attempt that left no copy" in line
                 and ", 0 files" not in line]
        assert found, proc.stderr


@pytest.mark.seaweed
def test_uploads_left_open_under_the_prefix_are_reported_not_aborted(seaweed_s3: S3Target,
                                                                    tmp_path: Path) -> None:
    """An upload still open at the end (a lost worker's whose bundle no slice planned again,
    or another migration's into the same prefix) is counted for a warning, never aborted:
    only the user knows nothing else writes there. (On SeaweedFS: moto dates every upload
    2010, before any run.)"""
    from pacsmigrate.backends import open_backend
    from pacsmigrate.config import TransferConfig
    from pacsmigrate.workers import _fetch_all

    cfg = config([tmp_path], seaweed_s3.url, tmp_path / "s", seaweed_s3.info.endpoint_url)

    async def go() -> int:
        backend = await open_backend(cfg.dest, TransferConfig())
        try:
            await mark_start(backend, cfg.dest, "r")
            return await _fetch_all(backend, cfg, "r", {})
        finally:
            await backend.close()

    stray = cfg.dest.key("ab", "cd", "g", "x.tar")
    seaweed_s3.client.create_multipart_upload(Bucket=seaweed_s3.bucket, Key=stray)
    seaweed_s3.client.create_multipart_upload(Bucket=seaweed_s3.bucket, Key="elsewhere/y.tar")
    assert run(go()) == 1
    assert sorted(u["Key"] for u in seaweed_s3.pending_uploads()) == sorted(
        ["elsewhere/y.tar", stray])
    for u in seaweed_s3.pending_uploads():
        seaweed_s3.client.abort_multipart_upload(Bucket=seaweed_s3.bucket, Key=u["Key"],
                                                 UploadId=u["UploadId"])


# --- the slice state's copies, without Dask ---------------------------------------------------

def _slice_cfg(tmp_path: Path, root: Path, state: Path, shard: Shard):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(config([root], "s3://bucket/pfx", state, None), shard=shard)


def test_a_stale_local_state_gives_way_to_the_newest_copy(tmp_path: Path) -> None:
    """A machine that ran a slice in an earlier run, while another machine ran it since,
    starts from the store's newest copy, not its own older state."""
    root = _tree(tmp_path / "pacs")
    backend = MemoryBackend()
    shard = Shard(0, 2)
    here, there = tmp_path / "here", tmp_path / "there"

    async def go() -> None:
        a, b = _slice_cfg(tmp_path, root, here, shard), _slice_cfg(tmp_path, root, there, shard)
        await mark_start(backend, a.dest, "run1")
        assert "an empty state" in await seed(a, backend, "run1")
        await migrate(a, backend=backend)
        first = await ship(a, backend, "run1")
        # The other machine starts from that copy, stores a new file of the slice, ships.
        assert "its copy in the store" in await seed(b, backend, "run1")
        new = next(p for i in range(64) if shard.holds(
            [os.fsencode(root)], os.fsencode(p := root / "p" / f"new{i}" / "study" / "x.txt")))
        new.parent.mkdir(parents=True)
        new.write_text("arrived after the first run")
        assert (await migrate(b, backend=backend)).files_migrated == 1
        second = await ship(b, backend, "run1")
        assert second > first and (await newest_copy(backend, a.dest, "run1", shard)).key == \
            second
        assert first not in backend.objects  # the older copy is removed
        # Back here: the local state started from `first`, older than the newest: replaced.
        assert "its copy in the store" in await seed(a, backend, "run1")
        cp = Checkpoint(here, readonly=True)
        try:
            assert cp.get_meta(HELD) == second
        finally:
            cp.close()
        # And now it is the newest: kept as it is.
        assert await seed(a, backend, "run1") == "its state on this worker"

    run(go())
    assert index_rows(here) == index_rows(there)


def test_an_attempt_that_left_no_copy_is_seen_by_the_next(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Machine A ran the slice and left a copy; B started from it, stored more and was lost
    without a copy; the slice comes back to A. A must not trust its own state (it lacks
    B's objects): it starts from the copy and adopts what B stored. And a start cut short
    while adopting leaves a state that the next start does not trust either."""
    from pacsmigrate import slicestore

    root = _tree(tmp_path / "pacs")
    backend = MemoryBackend()
    shard = Shard(1, 2)
    a = _slice_cfg(tmp_path, root, tmp_path / "a", shard)
    b = _slice_cfg(tmp_path, root, tmp_path / "b", shard)

    async def go() -> None:
        await mark_start(backend, a.dest, "r")
        await seed(a, backend, "r")
        await migrate(a, backend=backend)
        await ship(a, backend, "r")
        new = next(p for i in range(64) if shard.holds(
            [os.fsencode(root)], os.fsencode(p := root / "p" / f"new{i}" / "study" / "x.txt")))
        new.parent.mkdir(parents=True)
        new.write_text("arrived later")
        await seed(b, backend, "r")
        assert (await migrate(b, backend=backend)).files_migrated == 1  # then B is lost
        objects = set(backend.objects)

        async def cut_short(*args: object) -> int:
            raise OSError("killed while adopting")
        monkeypatch.setattr(slicestore, "adopt_since", cut_short)
        with pytest.raises(OSError):
            await seed(a, backend, "r")
        monkeypatch.undo()
        said = await seed(a, backend, "r")
        assert said == ("its copy in the store, 1 files found in the store from an attempt "
                        "that left no copy"), said
        again = await migrate(a, backend=backend)
        assert again.files_migrated == 0 and again.already_migrated > 0
        assert set(backend.objects) - objects == {k for k in backend.objects
                                                  if "/attempt-" in k} - objects

    run(go())
    rows = {r["source_path"]: r["key"] for r in index_rows(tmp_path / "a")}
    assert rows == {r["source_path"]: r["key"] for r in index_rows(tmp_path / "b")}


def test_a_copy_that_does_not_read_back_whole_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path / "pacs")
    backend = MemoryBackend()
    cfg = _slice_cfg(tmp_path, root, tmp_path / "s", Shard(1, 2))

    async def go() -> None:
        await mark_start(backend, cfg.dest, "r")
        await seed(cfg, backend, "r")
        await migrate(cfg, backend=backend)
        key = await ship(cfg, backend, "r")
        data = bytearray(backend.objects[key])
        data[len(data) // 2] ^= 1
        backend.objects[key] = bytes(data)
        info = await newest_copy(backend, cfg.dest, "r", cfg.shard)
        assert info is not None
        with pytest.raises(StateError, match="does not read back whole"):
            await fetch(backend, info, tmp_path / "fetched" / "data.mdb")
        assert not (tmp_path / "fetched" / "data.mdb").exists()

    run(go())


def test_a_slice_stops_when_its_coordinator_dies(moto_s3: S3Target, tmp_path: Path) -> None:
    """kill -9 of the `migrate` command: Dask cancels its task, the slice on the worker stops
    (its state's lock is let go) instead of uploading on; the next run completes the job."""
    import signal

    root = _tree(tmp_path / "pacs")
    state = tmp_path / "state"
    env = {**moto_s3.env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    with machines(tmp_path, env, n=1) as (address, dirs):
        slow = subprocess.Popen(  # two requests a second: the run lasts minutes
            [sys.executable, "-m", "pacsmigrate",
             *migrate_args(moto_s3, root, state, "--scheduler", address,
                    "--max-requests-per-second", "2")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not any(k.endswith(".tar") for k in moto_s3.object_keys()):
                assert time.monotonic() < deadline and slow.poll() is None, "nothing stored"
                time.sleep(0.2)
        finally:
            slow.send_signal(signal.SIGKILL)
            slow.wait()
        def taken() -> bool:
            """Whether a slice's state is in use (one runs at a time on the one worker)."""
            return any(lock_held(lock.parent)
                       for lock in dirs[0].rglob("slices/*-of-4/lock"))

        assert taken(), "the slice should still be running right after the kill"
        deadline = time.monotonic() + 30
        while taken():
            assert time.monotonic() < deadline, "the slice ran on after its coordinator died"
            time.sleep(0.2)
        stored = moto_s3.object_keys()
        time.sleep(3)
        assert moto_s3.object_keys() == stored  # nothing more is uploaded
        run_cli(*migrate_args(moto_s3, root, state, "--scheduler", address), env=env, check=True)
    assert_complete(moto_s3, state, root)


def _import_from(cwd: Path, *first: Path) -> subprocess.CompletedProcess[str]:
    """Import the package as a worker would, with `first` ahead on its sys.path and no
    PYTHONPATH: the installed copy only."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import sys; sys.path[:0] = sys.argv[1:]; import pacsmigrate.report as r; "
            "print(r.__file__)")
    return subprocess.run([sys.executable, "-c", code, *map(str, first)], check=False, cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


def test_slice_states_on_a_worker_leave_the_package_importable(tmp_path: Path) -> None:
    """Dask puts a worker's directory and the one above it on the worker's sys.path, and the
    slice states go beside that directory. A folder there named `pacsmigrate` became an
    empty namespace package ahead of an editable install: every later run on workers on
    that machine failed with "cannot import name '__version__' from 'pacsmigrate'"."""
    assert not LOCAL_STATES.isidentifier()  # no import can name it
    worker = tmp_path / "dask-scratch-space" / "worker-abc"
    worker.mkdir(parents=True)
    if _import_from(tmp_path, worker, worker.parent).returncode != 0:
        pytest.skip("pacsmigrate is not installed: importable only through PYTHONPATH")
    states = local_states(str(worker), "0123456789abcdef")
    (states / "0-of-8" / "checkpoint.lmdb").mkdir(parents=True)
    assert states.parent.parent == worker.parent
    proc = _import_from(tmp_path, worker, worker.parent)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).parent.joinpath("__init__.py").is_file()
