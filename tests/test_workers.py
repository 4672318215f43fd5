"""`migrate --workers N` / `--scheduler`: one migration on Dask distributed, one index."""

from __future__ import annotations

import json
import re
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import LocalTarget, S3Target, run_cli
from faultproxy import BEFORE, FaultProxy
from helpers import assert_complete, config, index_rows, multipart_tree
from test_shard import _same, _tree

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.config import TransferConfig
from pacsmigrate.tables import KILLED
from pacsmigrate.workers import _share


def crash_tree(root: Path, point: str) -> list[str]:
    """A tree for a worker killed at `point`, and the options that get it there: bundles
    sent in 5 MiB parts (a multipart upload is cut) for part-uploaded, else small studies."""
    if point.startswith("part"):
        multipart_tree(root)
        return ["--part-size", "5MiB", "--bundle-size", "8MiB", "--large-file", "8MiB"]
    _tree(root)
    return []


def single_run(local_store: LocalTarget, tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
    """The slicing test tree, and the index one process makes of it (into a directory)."""
    root = _tree(tmp_path / "pacs")
    run_cli("migrate", str(root), local_store.url, "--state", str(tmp_path / "single"),
            "--no-progress", check=True)
    return root, index_rows(tmp_path / "single")


def meta(state: Path, key: str) -> Any:
    cp = Checkpoint(state, readonly=True)
    try:
        return cp.get_meta(key)
    finally:
        cp.close()


def migrate_args(target: S3Target, root: Path, state: Path, *extra: str) -> list[str]:
    return ["migrate", str(root), target.url, "--endpoint-url", target.info.endpoint_url,
            "--state", str(state), "--no-progress", *extra]


def test_three_workers_make_the_index_of_a_single_run(moto_s3: S3Target,
                                                      local_store: LocalTarget,
                                                      tmp_path: Path) -> None:
    root, single = single_run(local_store, tmp_path)
    state, log = tmp_path / "state", tmp_path / "run.jsonl"
    proc = run_cli("-v", "--log-file", str(log),
                   *migrate_args(moto_s3, root, state, "--workers", "3"), env=moto_s3.env(),
                   check=True)
    assert "12 slices on 3 Dask workers" in proc.stderr
    # The slices log into the run's --log-file too, and with -v on stderr: each object
    # stored, by its key.
    stored = [json.loads(line)["message"] for line in log.read_text().splitlines()]
    stored = [m.split(":")[0].removeprefix("stored ") for m in stored if m.startswith("stored ")]
    said = re.findall(r" INFO pacsmigrate\.pipeline: stored (\S+): ", proc.stderr)
    assert sorted(said) == sorted(stored)
    # The coordinator planned the slicing once: this small tree has fewer units at the cut
    # than 8 per slice, so they are cut deeper (down to the studies); every slice took it.
    plan = meta(state, "workers")["slicing"]
    assert plan["split"] and plan["cut"] == 3
    slices = list((state / "slices").glob("*-of-12"))
    assert len(slices) == 12
    assert all(meta(s, "config")["shard_plan"]["split"] == plan["split"] for s in slices)
    assert f"migrated now: {len(single):,} files" in proc.stdout
    rows = assert_complete(moto_s3, state, root)
    assert _same(rows) == _same(single)
    assert sorted(stored) == sorted({r["key"] for r in rows})
    verify = run_cli("verify", "--state", str(state), "--deep", "--source", env=moto_s3.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Re-running the same command (with another number of workers) stores nothing more.
    keys = moto_s3.object_keys()
    again = run_cli(*migrate_args(moto_s3, root, state, "--workers", "2"), env=moto_s3.env(),
                    check=True)
    assert "migrated now: 0 files" in again.stdout and "12 slices on 2" in again.stderr
    assert moto_s3.object_keys() == keys and _same(index_rows(state)) == _same(single)


@pytest.mark.parametrize("point", ["after-upload:2", "part-uploaded:1"])
def test_a_worker_killed_mid_run_is_replaced_and_nothing_is_lost(point: str, moto_s3: S3Target,
                                                                 tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    extra = crash_tree(root, point)
    marker = tmp_path / "one-worker-died"
    state = tmp_path / "state"
    # One worker process (the first to get there) SIGKILLs itself at the crash point, with an
    # upload in flight or acknowledged and not committed: Dask runs its slice again on a new
    # worker, whose state adopts or resumes what the killed one sent.
    proc = run_cli(*migrate_args(moto_s3, root, state, "--workers", "3", "--report",
                          str(tmp_path / "report.json"), *extra),
                   env={**moto_s3.env(), "PACSMIGRATE_CRASH_AT": point,
                        "PACSMIGRATE_CRASH_ONCE": str(marker)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker.exists(), "no worker was killed"
    assert_complete(moto_s3, state, root)  # nothing lost or twice, no orphans, no uploads left
    report = json.loads((tmp_path / "report.json").read_text())
    run = report["run"]
    # The run is in the merged state's history (the coordinator records it after the merge).
    assert [(r["outcome"], r["files_migrated"]) for r in report["runs"]] == [
        ("completed", run["files_migrated"])]
    # The half-sent upload was resumed (its parts kept, but for the tail's: the manifest in it
    # says when the bundle was made) or, when the slice's new attempt closed its bundles
    # otherwise, aborted: either way none is left open (assert_complete).
    assert (run["objects_adopted"] if point.startswith("after") else
            run["uploads_resumed"] + run["uploads_aborted"]) >= 1
    assert report["not_migrated"] == []


def test_an_existing_cluster_is_used_with_scheduler(moto_s3: S3Target, tmp_path: Path) -> None:
    from distributed import LocalCluster

    root = tmp_path / "pacs"
    root.mkdir()
    _tree(root)
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        proc = run_cli(*migrate_args(moto_s3, root, tmp_path / "state", "--scheduler",
                              cluster.scheduler_address, "--progress"), env=moto_s3.env(),
                       check=True)
    assert "8 slices on 2 Dask workers" in proc.stderr
    # The bar sums what the slices write to their progress files.
    files = len(index_rows(tmp_path / "state"))
    assert f"{files} files" in proc.stderr
    assert_complete(moto_s3, tmp_path / "state", root)


def test_what_workers_refuse(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    root.mkdir()
    (root / "a.txt").write_text("x")
    single = tmp_path / "single"
    run_cli(*migrate_args(moto_s3, root, single), env=moto_s3.env(), check=True)
    on_workers = tmp_path / "w"  # its slices' states under --state (the --workers default)
    run_cli(*migrate_args(moto_s3, root, on_workers, "--workers", "1"), env=moto_s3.env(), check=True)
    cases = [
        (migrate_args(moto_s3, root, tmp_path / "x", "--slice-states", "store"),
         "--slice-states is for a run on workers"),
        (migrate_args(moto_s3, root, on_workers, "--workers", "1", "--slice-states", "store"),
         "fixed by its first run"),
        (migrate_args(moto_s3, root, single, "--workers", "2"), "run in one process"),
        (migrate_args(moto_s3, root, tmp_path / "d", "--workers", "2", "--dry-run"), "--dry-run runs"),
        (migrate_args(moto_s3, root, tmp_path / "s", "--workers", "2", "--shard", "0/2"),
         "one or the other"),
        (migrate_args(moto_s3, root, tmp_path / "b", "--workers", "2", "--scheduler", "tcp://x:1"),
         "one or the other"),
        (migrate_args(moto_s3, root, tmp_path / "c", "--scheduler", "notaurl"),
         "cannot reach the Dask scheduler 'notaurl': missing port number"),
    ]
    for args, says in cases:
        proc = run_cli(*args, env=moto_s3.env())
        assert proc.returncode == 2 and says in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("running", [1, 4])
def test_caps_and_memory_are_for_the_whole_run(running: int, tmp_path: Path) -> None:
    cfg = config([tmp_path], "s3://b/x", tmp_path / "s", None, memory=512 << 20,
                 transfer=TransferConfig(max_requests_per_second=400, bwlimit=100e6))
    share = _share(cfg, running)
    assert share.transfer.max_requests_per_second == 400 / running
    assert share.transfer.bwlimit == 100e6 / running
    assert share.memory == (512 << 20) // running
    assert share.read_process == "off"  # auto: the workers are the run's processes
    assert _share(replace(cfg, read_process="on"), running).read_process == "on"


@pytest.mark.parametrize("states", ["shared", "store"])
def test_a_repair_runs_on_workers(states: str, moto_s3: S3Target, tmp_path: Path) -> None:
    """Verify's repair list is cut by slice; each slice's run stores its damaged files
    again (with its states under --state, or copied through the store), then verify
    passes and a further run stores nothing."""
    root = _tree(tmp_path / "pacs")
    state = tmp_path / "state"
    args = migrate_args(moto_s3, root, state, "--workers", "2", "--slice-states", states)
    run_cli(*args, env=moto_s3.env(), check=True)
    rows = index_rows(state)
    by_key: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    # Two objects of two different slices: the list is cut between them.
    # (A run keeping its slices' states in the store reads them back under --state too.)
    slice_of = {r["key"]: s.name for s in (state / "slices").iterdir() if s.is_dir()
                for r in index_rows(s)}
    ordered = sorted(by_key, key=lambda k: (-len(by_key[k]), k))
    lost = [ordered[0], next(k for k in ordered[1:] if slice_of[k] != slice_of[ordered[0]])]
    for key in lost:
        moto_s3.client.delete_object(Bucket=moto_s3.bucket, Key=key)
    expected = {r["source_path"] for key in lost for r in by_key[key]}
    check = run_cli("verify", "--state", str(state), env=moto_s3.env())
    assert check.returncode == 1 and f"damaged: {len(expected)} source files" in check.stdout

    fixed = run_cli(*args, env=moto_s3.env())
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    handed = re.search(rf"repair: {len(expected)} files a verify found damaged handed to the "
                       r"slices that hold them \((\d+) slices\)", fixed.stderr)
    assert handed, fixed.stderr
    assert int(handed.group(1)) == 2
    assert f"migrated now: {len(expected)} files" in fixed.stdout
    assert (f"repair: {len(expected)} files a verify found damaged were taken to be stored "
            "again (counted above); 2 damaged objects are no longer indexed") in fixed.stdout
    assert not (state / "repair.jsonl").exists() and list(state.glob("repair-applied-*"))
    now = {r["source_path"]: r["key"] for r in index_rows(state)}
    assert len(now) == len(rows)
    assert all(now[p] not in lost for p in expected)
    again = run_cli("verify", "--state", str(state), "--deep", "--source", env=moto_s3.env())
    assert again.returncode == 0, again.stdout + again.stderr
    calm = run_cli(*args, env=moto_s3.env(), check=True)
    assert "migrated now: 0 files" in calm.stdout


def test_a_run_on_workers_that_stops_on_an_error_is_recorded(moto_s3: S3Target,
                                                             tmp_path: Path) -> None:
    """A slice's error stops the run in one line; the state's history and the report
    still say that the run was made and how it ended."""
    root = _tree(tmp_path / "pacs")
    state, report = tmp_path / "state", tmp_path / "report.json"
    with FaultProxy(moto_s3.info.endpoint_url) as proxy:
        args = ["migrate", str(root), moto_s3.url, "--endpoint-url", proxy.url, "--state",
                str(state), "--no-progress", "--workers", "2", "--report", str(report)]
        run_cli(*args, env=moto_s3.env(), check=True)
        (root / "new.dcm").write_bytes(b"x" * 1000)
        # After the pre-flight's probe, the store refuses the new bundle: 403 AccessDenied.
        proxy.inject("403", phase=BEFORE, times=1000, match=lambda r: r.method == "PUT"
                     and "/pacsmigrate-run/" not in r.path and r.path.endswith(".tar"))
        stopped = run_cli(*args, env=moto_s3.env())
    assert stopped.returncode == 2, stopped.stdout + stopped.stderr
    assert "Traceback" not in stopped.stderr and "AccessDenied" in stopped.stderr
    runs = json.loads(report.read_text())["runs"]
    assert [r["outcome"].split(":")[0] for r in runs] == ["completed", "stopped"], runs
    assert "AccessDenied" in runs[1]["outcome"]
    said = run_cli("status", "--state", str(state), check=True).stdout
    assert "runs: 2; the last stopped: " in said


def test_a_coordinator_killed_before_its_merge_is_in_the_history(moto_s3: S3Target,
                                                                  tmp_path: Path) -> None:
    """Killed with its slices done but not merged: status names the destination, says
    where the slices' work is and that the run stopped without an end; the next run
    records it as killed, merges, and nothing is lost."""
    root = _tree(tmp_path / "pacs")
    state = tmp_path / "state"
    args = migrate_args(moto_s3, root, state, "--workers", "2")
    killed = run_cli(*args, env={**moto_s3.env(), "PACSMIGRATE_CRASH_AT": "before-merge:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    said = run_cli("status", "--state", str(state), check=True).stdout.splitlines()
    assert f"destination: {moto_s3.url}" in said, said
    assert any(line.startswith("  a run on Dask workers merges what its slices stored")
               for line in said), said
    assert any(line.startswith(f"runs: 1; the last {KILLED}, started ") for line in said), said
    run_cli(*args, env=moto_s3.env(), check=True)
    assert_complete(moto_s3, state, root)
    cp = Checkpoint(state, readonly=True)
    try:
        assert [r["outcome"] for r in cp.runs()] == [KILLED, "completed"]
    finally:
        cp.close()


def test_a_damaged_file_no_slice_holds_stays_listed(tmp_path: Path) -> None:
    """A path outside the run's sources (a root dropped from the command) is not lost with
    the list: it stays in repair.jsonl, said in a warning."""
    from pacsmigrate.config import Destination, MigrateConfig
    from pacsmigrate.shard import Shard
    from pacsmigrate.staterepair import Damaged, read_list
    from pacsmigrate.workers import _cut_repair

    (tmp_path / "a" / "x").mkdir(parents=True)
    state = tmp_path / "state"
    state.mkdir()
    cfg = MigrateConfig(sources=(tmp_path / "a",), dest=Destination.parse("s3://b/p"),
                        state_dir=state)
    inside = Damaged(str(tmp_path / "a" / "x" / "1.dcm").encode(), "p/k1.tar")
    outside = Damaged(str(tmp_path / "gone" / "y" / "2.dcm").encode(), "p/k2.tar")
    said: list[str] = []
    cut = _cut_repair([inside, outside], [Shard(0, 2), Shard(1, 2)], cfg, said.append)
    assert [d for ds in cut.values() for d in ds] == [inside]
    assert read_list(state) == [outside]
    assert said[0].startswith("repair: 1 files a verify found damaged handed to the slices")
    assert said[1].startswith("WARNING: repair: 1 damaged files lie outside this run's sources")
