"""Ctrl-C (SIGINT) and SIGTERM at random moments of the real CLI, start-up included: each time
one line saying how to resume, exit 130 / 143 within seconds, no traceback; the re-runs
finish the migration with nothing lost or doubled."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import S3Target, run_cli
from helpers import assert_complete, multipart_tree

LINES = {signal.SIGINT: "interrupted: re-run the same command to resume",
         signal.SIGTERM: "terminated: re-run the same command to resume"}
NOISE = ("Traceback", "CancelledError", "Future exception was never retrieved",
         "Task was destroyed", "Exception ignored")


def _args(tree: Path, s3: S3Target, state: Path) -> list[str]:
    # A bandwidth cap stretches the run over seconds, so the signals land inside it.
    return ["migrate", str(tree), s3.url, "--endpoint-url", s3.info.endpoint_url, "--state",
            str(state), "--bundle-size", "8MiB", "--large-file", "3MiB", "--part-size",
            "5MiB", "--concurrency", "3", "--no-progress", "--bwlimit", "2MiB"]


def _fresh(s3: S3Target, tmp_path: Path, n: int) -> tuple[S3Target, Path]:
    """The n-th new bucket and state: once a migration is done, signals land in a new one."""
    target = S3Target(s3.info, f"{s3.bucket}-sig{n}", s3.kind)
    target.client.create_bucket(Bucket=target.bucket)
    return target, tmp_path / f"state{n}"


def _handlers_installed(pid: int) -> None:
    """Wait until the process catches SIGTERM (pacsmigrate.entry's first line): before that
    the interpreter itself is starting, and a signal ends it the way CPython does."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return  # it ended
        caught = int(next(ln.split()[1] for ln in status.splitlines()
                          if ln.startswith("SigCgt:")), 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.002)
    raise AssertionError("pacsmigrate never installed its signal handlers")


def _signal_runs(s3: S3Target, tmp_path: Path, times: int, seed: int) -> None:
    tree = multipart_tree(tmp_path / "pacs")
    rng = random.Random(seed)
    started = time.monotonic()
    run_cli(*_args(tree, s3, tmp_path / "timing"), env=s3.env(), check=True)
    full = time.monotonic() - started
    rounds = 0

    def fresh() -> tuple[S3Target, Path, list[str]]:
        target, state = _fresh(s3, tmp_path, rounds)
        return target, state, [sys.executable, "-m", "pacsmigrate", *_args(tree, target, state)]

    target, state, command = fresh()
    stopped = {signal.SIGINT: 0, signal.SIGTERM: 0}
    for i in range(times):
        sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
        proc = subprocess.Popen(command, env=target.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        # Anywhere from the imports (about half a second) to late in the (remaining) run.
        _handlers_installed(proc.pid)
        time.sleep(rng.uniform(0.0, 0.5 * full))
        sent = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
        assert not any(n in err for n in NOISE), err
        if proc.returncode == 0:  # it finished before the signal: the next in a new one
            assert "OK: nothing left to migrate" in out
            assert_complete(target, state, tree)
            rounds += 1
            target, state, command = fresh()
            continue
        assert proc.returncode == 128 + sig, (proc.returncode, err)
        assert err.strip().splitlines()[-1] == LINES[sig], err
        assert took < 10, f"exit {took:.1f} s after the signal"
        stopped[sig] += 1
    final = run_cli(*_args(tree, target, state), env=target.env())
    assert final.returncode == 0, final.stdout + final.stderr
    assert stopped[signal.SIGINT] >= times // 4 and stopped[signal.SIGTERM] >= times // 4, stopped
    assert_complete(target, state, tree)
    verify = run_cli("verify", "--state", str(state), "--deep", "--source", env=target.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_signals_at_random_moments(moto_s3: S3Target, tmp_path: Path) -> None:
    _signal_runs(moto_s3, tmp_path, times=7,
                 seed=int(os.environ.get("PACSMIGRATE_SIGNAL_SEED", "77")))


@pytest.mark.soak
def test_signals_at_random_moments_soak(moto_s3: S3Target, tmp_path: Path) -> None:
    _signal_runs(moto_s3, tmp_path, times=50, seed=78)


@pytest.mark.seaweed
def test_a_second_ctrl_c_stops_at_once(seaweed_s3: S3Target, tmp_path: Path) -> None:
    """The first Ctrl-C lets what is in flight end and commits; a second one stops now,
    whenever it comes (even in the interpreter's last teardown): exit 130 at once, one
    line, no traceback; the state stays sound, so the re-run completes the migration with
    nothing lost or doubled."""
    tree = multipart_tree(tmp_path / "pacs")
    log = tmp_path / "run.log"
    gaps = [0.0, 0.02, 0.05, 0.1, 0.3]  # between the two Ctrl-Cs; each must stop a run
    migrations: list[tuple[S3Target, Path]] = []

    def fresh() -> tuple[S3Target, Path]:
        """Each attempt resumes the last one, so a migration runs out of work after a few
        (how many objects end before the first "stored" line depends on the machine's
        pace): the gaps left land in a new one."""
        migrations.append(_fresh(seaweed_s3, tmp_path, len(migrations)))
        return migrations[-1]

    target, state = fresh()
    attempts = 0
    while gaps and attempts < 3 * 5:
        attempts += 1
        log.unlink(missing_ok=True)  # this attempt's lines only
        command = [sys.executable, "-m", "pacsmigrate", "--log-file", str(log),
                   *_args(tree, target, state)]
        proc = subprocess.Popen(command, env=target.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while '"stored ' not in (log.read_text() if log.exists() else "") \
                and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # into the uploads: the first Ctrl-C has work to finish
        if proc.poll() is not None:  # nothing was left to store: the gap goes to a new one
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, (proc.returncode, out, err)
            target, state = fresh()
            continue
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        time.sleep(gaps[0])
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
        assert not any(n in err for n in (*NOISE, "Unclosed")), err
        if proc.returncode == 0:  # its last object was in flight: it finished
            assert "OK: nothing left to migrate" in out
            target, state = fresh()
            continue
        assert proc.returncode == 130, (proc.returncode, out, err)
        assert err.strip().splitlines()[-1] == LINES[signal.SIGINT], err
        assert took < 5, f"exit {took:.1f} s after the second Ctrl-C (gap {gaps[0]} s)"
        gaps.pop(0)
    assert not gaps, f"no run was left to stop for the gaps {gaps} in {attempts} attempts"
    for target, state in migrations:  # every interrupted migration completes on a re-run
        final = run_cli(*_args(tree, target, state), env=target.env())
        assert final.returncode == 0, final.stdout + final.stderr
        assert_complete(target, state, tree)
    verify = run_cli("verify", "--state", str(state), "--deep", "--source",
                     env=target.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
