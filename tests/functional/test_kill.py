"""SIGKILL the real `pacsmigrate migrate` process at chosen and random moments, then re-run."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import S3Target, run_cli
from helpers import assert_complete, multipart_tree

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.synth import make_tree
from pacsmigrate.tables import KILLED


@pytest.fixture(scope="module")
def kill_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return multipart_tree(tmp_path_factory.mktemp("kill") / "pacs")


def _migrate_args(tree: Path, s3: S3Target, state: Path, *extra: str) -> list[str]:
    return ["migrate", str(tree), s3.url, "--endpoint-url", s3.info.endpoint_url,
            "--state", str(state), "--bundle-size", "8MiB", "--large-file", "3MiB",
            "--part-size", "5MiB", "--concurrency", "3", "--no-progress", *extra]


# (crash point, which occurrence): inside catalogue writes, right after the write-ahead
# intent, between two parts of a multipart upload, after the object but before its
# manifest, after both but before the LMDB commit, and right after a commit.
POINTS = ["mid-catalogue:2", "after-intent:2", "mid-upload:1", "after-upload:2",
          "after-sidecar:1", "after-sidecar:3", "after-commit:2"]


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_point_then_resume(point: str, s3: S3Target, kill_tree: Path,
                                   tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**s3.env(), "PACSMIGRATE_CRASH_AT": point}
    killed = run_cli(*_migrate_args(kill_tree, s3, state), env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = run_cli(*_migrate_args(kill_tree, s3, state), env=s3.env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert_complete(s3, state, kill_tree)
    # Each file counted once: stored now (adopted ones included) or found stored before.
    seen = int(re.search(r"files seen: ([\d,]+)", done.stdout).group(1).replace(",", ""))
    now = int(re.search(r"migrated now: ([\d,]+) files", done.stdout).group(1).replace(",", ""))
    before = int(re.search(r"already migrated: ([\d,]+)", done.stdout).group(1).replace(",", ""))
    assert now + before == seen, done.stdout
    if point.startswith(("after-upload", "after-sidecar")):
        # Stored once and adopted, not uploaded again (others in flight may be adopted too).
        adopted = re.search(r"adopted \(stored by an interrupted attempt\): (\d+)", done.stdout)
        assert adopted and int(adopted.group(1)) >= 1, done.stdout


# pipeline.py logs this once the pre-flight passed and the state is open, before the walk:
# the run's work begins (the interpreter's start-up and the imports are behind it).
WORK_BEGINS = "migration of "


def _work_begun(proc: subprocess.Popen[bytes], log: Path) -> bool:
    """Wait until the run logs that its work began (True), or ends before it (False)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log.exists():
            whole = log.read_text(encoding="utf-8").split("\n")[:-1]  # a line being written waits
            if any(json.loads(line)["message"].startswith(WORK_BEGINS) for line in whole):
                return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError("the run never logged the start of its work")


def _started(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "pacsmigrate", "--log-file", str(log), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_at_random_moments(moto_s3: S3Target, kill_tree: Path, tmp_path: Path) -> None:
    """SIGKILL at up to 6 random moments of the run's work (catalogue, uploads, LMDB commits,
    in between; never during the interpreter's start-up), re-running each time; then nothing
    is lost, doubled or orphaned. The soak below lands 15 and more."""
    _kill_runs(moto_s3, kill_tree, tmp_path, kills_wanted=6, at_least=5,
               seed=int(os.environ.get("PACSMIGRATE_KILL_SEED", "1234")))


@pytest.mark.soak
def test_kill_at_random_moments_soak(moto_s3: S3Target, kill_tree: Path, tmp_path: Path
                                     ) -> None:
    _kill_runs(moto_s3, kill_tree, tmp_path, kills_wanted=20, at_least=15, seed=4321)


def _kill_runs(moto_s3: S3Target, kill_tree: Path, tmp_path: Path, *, kills_wanted: int,
               at_least: int, seed: int) -> None:
    rng = random.Random(seed)
    # A bandwidth cap stretches the run over seconds, so that many kills can land in it.
    slow = ("--bwlimit", "800KiB")
    # How long the work of an uninterrupted run takes here, so the kills land inside it.
    timing = _started(_migrate_args(kill_tree, moto_s3, tmp_path / "timing", *slow),
                      moto_s3.env(), tmp_path / "timing.jsonl")
    assert _work_begun(timing, tmp_path / "timing.jsonl")
    began = time.monotonic()
    _, err = timing.communicate(timeout=300)
    work = time.monotonic() - began
    assert timing.returncode == 0, err
    target = S3Target(moto_s3.info, moto_s3.bucket + "-k", "moto")
    target.client.create_bucket(Bucket=target.bucket)
    state = tmp_path / "state"
    args = _migrate_args(kill_tree, target, state, *slow)
    kills = 0
    for attempt in range(3 * kills_wanted):
        log = tmp_path / f"attempt{attempt}.jsonl"
        proc = _started(args, target.env(), log)
        began = _work_begun(proc, log)
        time.sleep(rng.uniform(0.0, 0.12) * work)
        if began and proc.poll() is None:  # the kill lands in the work
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), err
        if proc.returncode == 0 or kills >= kills_wanted:
            break
    final = run_cli(*_migrate_args(kill_tree, target, state), env=target.env())
    assert final.returncode == 0, final.stdout + final.stderr
    assert kills >= at_least, f"only {kills} kills landed in the work ({work:.1f} s uninterrupted)"
    assert_complete(target, state, kill_tree)
    verify = run_cli("verify", "--state", str(state), "--deep", "--source", env=target.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"{kills} kills in {attempt + 1} attempts; uninterrupted work {work:.1f} s")


def test_large_object_resumes_from_its_uploaded_parts(s3: S3Target, tmp_path: Path) -> None:
    """Killed after 4 of ~6 parts of one object: the re-run keeps those parts (ListParts)."""
    root = tmp_path / "big"
    root.mkdir()
    big = root / "cine.bin"
    big.write_bytes(os.urandom(28 * 1024 * 1024 + 123))
    state = tmp_path / "state"
    args = ["migrate", str(root), s3.url, "--endpoint-url", s3.info.endpoint_url, "--state",
            str(state), "--large-file", "8MiB", "--part-size", "5MiB", "--concurrency", "2",
            "--no-progress"]
    killed = run_cli(*args, env={**s3.env(), "PACSMIGRATE_CRASH_AT": "part-uploaded:4"})
    assert killed.returncode == -signal.SIGKILL
    assert len(s3.pending_uploads()) == 1
    done = run_cli(*args, env=s3.env())
    assert done.returncode == 0, done.stdout + done.stderr
    if s3.kind == "moto":  # it says every upload began in 2010: too old to take up
        assert "unfinished uploads over 12 h old sent anew: 1 " in done.stdout, done.stdout
    else:
        resumed = re.search(r"uploads resumed from an interrupted run: 1 \((\d+) of their "
                            r"parts kept", done.stdout)
        assert resumed and int(resumed.group(1)) >= 3, done.stdout
    assert_complete(s3, state, root)


def test_status_explains_uploads_in_doubt_and_what_is_left(moto_s3: S3Target,
                                                           tmp_path: Path) -> None:
    """A file that failed (its open refused), then a run killed after its first write-ahead
    intent: `status` says how many uploads are in doubt and what the next migrate does with
    them, and how many files are still to migrate, read but not stored and failed, as the
    state counts them. The next migrate resolves all of it."""
    tree, state = tmp_path / "pacs", tmp_path / "state"
    make_tree(tree / "a", studies=2, seed=3, scale=0.05)
    denied = min((tree / "a").rglob("*.dcm")).name
    args = ["migrate", str(tree), moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
            "--state", str(state), "--no-progress"]
    first = run_cli(*args, env={**moto_s3.env(), "PACSMIGRATE_DENY_OPEN": denied})
    assert first.returncode == 1, first.stdout + first.stderr  # one file still to migrate
    make_tree(tree / "b", studies=1, seed=4, scale=0.05)  # new studies: uploads to kill in
    killed = run_cli(*args, env={**moto_s3.env(), "PACSMIGRATE_DENY_OPEN": denied,
                                 "PACSMIGRATE_CRASH_AT": "after-intent:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cp = Checkpoint(state, readonly=True)
    try:
        counts, failed = cp.counts(), cp.open_problems()
    finally:
        cp.close()
    in_doubt, pending = counts["intents"], counts["spill"]
    assert in_doubt >= 1 and failed == 1, (counts, failed)
    said = run_cli("status", "--state", str(state), check=True).stdout.splitlines()
    # its walk stopped: what the state counts is the least that is left
    assert (f"still to migrate: at least {pending + failed:,} files ({pending:,} read but not "
            f"yet stored, {failed:,} that failed; the report says why): its walk may not have "
            "seen every file; the last migrate stopped before its end; re-run migrate") in said
    assert (f"uploads in doubt: {in_doubt:,} (a run stopped while they were in flight; the "
            "next migrate checks the store: adopts those that arrived, sends the others "
            "again)") in said
    # the killed run is in the history (it recorded its start), said to have no end
    assert any(line.startswith(f"runs: 2; the last {KILLED}, started ") and
               line.endswith(", ended at an unknown time") for line in said), said
    done = run_cli(*args, env=moto_s3.env())
    assert done.returncode == 0, done.stdout + done.stderr
    said = run_cli("status", "--state", str(state), check=True).stdout.splitlines()
    assert "still to migrate: none" in said
    cp = Checkpoint(state, readonly=True)
    try:
        assert [r["outcome"] for r in cp.runs()] == ["completed", KILLED, "completed"]
    finally:
        cp.close()
    assert not any(line.startswith("uploads in doubt") for line in said), said
    assert_complete(moto_s3, state, tree)
