"""Runs nobody watches: options from the environment, a JSON-lines log file, stats lines on a
redirected stderr, and a report whose history of runs adds up across resumes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from conftest import TEST_FILES, S3Target, run_cli
from helpers import assert_complete, multipart_tree

from pacsmigrate.report import VERIFY_HISTORY, record_verify, verifications, verify_record
from pacsmigrate.synth import make_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return multipart_tree(tmp_path / "pacs")


def _args(tree: Path, s3: S3Target, state: Path, *extra: str) -> list[str]:
    return ["migrate", str(tree), s3.url, "--endpoint-url", s3.info.endpoint_url,
            "--state", str(state), "--bundle-size", "8MiB", "--large-file", "3MiB",
            "--part-size", "5MiB", "--no-progress", *extra]


def test_a_resumed_run_counts_the_objects_it_adopted(moto_s3: S3Target, tree: Path,
                                                      tmp_path: Path) -> None:
    """An object stored but not committed when its run died is adopted by the next run,
    before its walk: its files count as migrated by that run, so the runs add up."""
    state, report = tmp_path / "state", tmp_path / "report.json"
    args = _args(tree, moto_s3, state, "--report", str(report))
    killed = run_cli(*args, env={**moto_s3.env(), "PACSMIGRATE_CRASH_AT": "after-upload:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = run_cli(*args, env=moto_s3.env())
    assert done.returncode == 0, done.stderr
    assert re.search(r"adopted \(stored by an interrupted attempt\): [1-9]", done.stdout)
    doc = json.loads(report.read_text())
    assert sum(r["files_migrated"] for r in doc["runs"]) == doc["state"]["index"] > 0
    assert_complete(moto_s3, state, tree)


def test_options_come_from_the_environment(moto_s3: S3Target, tmp_path: Path) -> None:
    make_tree(tmp_path / "src", studies=1, seed=2, scale=0.02)
    env = {**moto_s3.env(), "PACSMIGRATE_MIGRATE_BUNDLE_SIZE": "1MiB"}
    proc = run_cli("migrate", str(tmp_path / "src"), moto_s3.url, "--state",
                   str(tmp_path / "s"), env=env)
    assert proc.returncode == 2
    assert "must not exceed --bundle-size (1MiB)" in proc.stderr  # the variable was read
    # The command line wins over the environment.
    env["PACSMIGRATE_MIGRATE_ENDPOINT_URL"] = moto_s3.info.endpoint_url
    env["PACSMIGRATE_LOG_FILE"] = str(tmp_path / "log.jsonl")
    proc = run_cli("migrate", str(tmp_path / "src"), moto_s3.url, "--state",
                   str(tmp_path / "s"), "--bundle-size", "64MiB", "--large-file", "8MiB",
                   env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "log.jsonl").stat().st_size > 0


def test_log_file_is_json_lines_without_patient_data(moto_s3: S3Target, tmp_path: Path) -> None:
    src = tmp_path / "DOE^JANE-19700101"  # a source named after a patient, as some are
    make_tree(src, studies=2, seed=3, scale=0.02)
    log = tmp_path / "run.jsonl"
    proc = run_cli("--log-file", str(log), *_args(src, moto_s3, tmp_path / "s"),
                   env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines and all(set(d) >= {"time", "level", "logger", "message"} for d in lines)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d["time"]) for d in lines)
    messages = [d["message"] for d in lines]
    assert any(m.startswith("pre-flight passed") for m in messages)
    assert any(m.startswith("migration of 1 source tree(s)") for m in messages)
    text = log.read_text()
    assert "DOE" not in text and str(src) not in text
    assert proc.stderr == ""  # nothing more on the terminal than without --log-file


def test_a_report_or_log_file_inside_a_source_is_refused(moto_s3: S3Target,
                                                         tmp_path: Path) -> None:
    """The source is never written to: a --report or --log-file there would be (and the
    next run would migrate it as a file of the archive)."""
    src = tmp_path / "src"
    make_tree(src, studies=1, seed=3, scale=0.02)
    before = sorted(src.rglob("*"))
    for extra, option in (((), "--report"), (("--log-file", str(src / "run.jsonl")), None)):
        args = _args(src, moto_s3, tmp_path / "s")
        if option:
            args = (*args, "--report", str(src / "report.json"))
        proc = run_cli(*extra, *args, env=moto_s3.env())
        path = src / ("report.json" if option else "run.jsonl")
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            (f"error: {option or '--log-file'} {path} lies inside the source {src}, which is "
             "never written to: give a path outside every source")], proc.stderr
    assert sorted(src.rglob("*")) == before and not (tmp_path / "s").exists()


def test_objects_adopted_under_another_policy_are_said(moto_s3: S3Target,
                                                     tmp_path: Path) -> None:
    """Killed between an upload and its commit: the re-run adopts what was stored, under
    the class (and lock) the killed run asked for. Asked otherwise now, that is said."""
    said = "objects adopted from the interrupted run keep the storage class and lock it"
    for first, then, warned in ((("--storage-class", "STANDARD_IA"), (), True),
                                ((), (), False)):
        src, state = tmp_path / f"src{warned}", tmp_path / f"s{warned}"
        make_tree(src, studies=2, seed=3, scale=0.02)
        killed = run_cli(*_args(src, moto_s3, state, *first),
                         env={**moto_s3.env(), "PACSMIGRATE_CRASH_AT": "after-upload:1"})
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        done = run_cli(*_args(src, moto_s3, state, *then), env=moto_s3.env(), check=True)
        adopted = re.search(r"adopted \(stored by an interrupted attempt\): (\d+)", done.stdout)
        assert adopted and int(adopted[1]) >= 1, done.stdout
        assert (f"WARNING: {adopted[1]} {said}" in done.stdout) == warned, done.stdout


def test_stats_lines_when_stderr_is_not_a_terminal(moto_s3: S3Target, tree: Path,
                                                   tmp_path: Path) -> None:
    proc = run_cli(*_args(tree, moto_s3, tmp_path / "a", "--stats-interval", "0.3",
                          "--bwlimit", "4MiB"), env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    stats = [ln for ln in proc.stderr.splitlines() if " stats: " in ln]
    assert len(stats) >= 2, proc.stderr
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} stats: [\d,]+ files seen, [\d,]+ "
                    r"migrated now \([\d,.]+ MB sent in [\d,]+ objects\)", stats[-1]), stats[-1]
    assert "requests retried" in stats[-1]
    # Default: none for a run shorter than a minute; --stats-interval 0: none at all.
    quiet = run_cli(*_args(tree, moto_s3, tmp_path / "b", "--stats-interval", "0",
                           "--bwlimit", "4MiB"), env=moto_s3.env())
    assert quiet.returncode == 0 and " stats: " not in quiet.stderr


def test_report_keeps_every_run(moto_s3: S3Target, tree: Path, tmp_path: Path) -> None:
    """Interrupted, then resumed: the report lists both runs, who ran them where and how
    each ended, and their totals add up to the state's."""
    state, report = tmp_path / "state", tmp_path / "report.json"
    args = _args(tree, moto_s3, state, "--report", str(report))
    proc = subprocess.Popen([sys.executable, "-m", "pacsmigrate", *args, "--bwlimit", "2MiB"],
                            env=moto_s3.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not (state / "checkpoint.lmdb").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # well into the run
    said = run_cli("status", "--state", str(state), check=True).stdout.splitlines()
    assert said[-2].startswith("runs: 1; the last running, started ") and said[-2].endswith(
        f", running now (pid {proc.pid})"), said
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    first = json.loads(report.read_text())
    assert [r["outcome"] for r in first["runs"]] == ["interrupted"]
    done = run_cli(*args, env=moto_s3.env())
    assert done.returncode == 0, done.stderr
    doc = json.loads(report.read_text())
    runs = doc["runs"]
    assert [r["outcome"] for r in runs] == ["interrupted", "completed"], runs
    for r in runs:
        assert r["version"] == doc["version"] and r["host"] == doc["host"] and r["user"]
        assert r["destination"] == moto_s3.url and r["sources"] == [str(tree.resolve())]
        assert r["started"] <= r["ended"]
    assert runs[0]["ended"] <= runs[1]["started"]
    assert sum(r["files_migrated"] for r in runs) == doc["state"]["index"]
    assert_complete(moto_s3, state, tree)
    # `status` says the same in words.
    said = run_cli("status", "--state", str(state), check=True).stdout.splitlines()
    assert said[0] == f"destination: {moto_s3.url}"
    assert said[2] == (f"migrated: {doc['state']['index']:,} files in "
                       f"{doc['state']['objects']:,} objects")
    assert "still to migrate: none" in said
    assert said[-2].startswith(f"runs: 2; the last completed, started {runs[1]['started']} "
                               f"on {doc['host']} as {runs[1]['user']}, ended ")
    assert said[-1].startswith("verified: never")
    assert doc["verifications"] == []


def test_the_report_carries_every_verify(moto_s3: S3Target, tmp_path: Path) -> None:
    """Verify opens the state read-only; its results still reach the state's history, and
    every later migrate report (and status) carries them: passed, failed, stopped."""
    tree = tmp_path / "Doe^Jane"  # a patient's name in the path: never in the history
    make_tree(tree, studies=3, seed=8, scale=0.05)
    state, report = tmp_path / "state", tmp_path / "report.json"
    args = _args(tree, moto_s3, state, "--report", str(report))
    run_cli(*args, env=moto_s3.env(), check=True)
    ok = run_cli("verify", "--state", str(state), "--deep", "--source", env=moto_s3.env())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    gone = next(k for k in moto_s3.object_keys() if k.endswith(".tar"))
    moto_s3.client.delete_object(Bucket=moto_s3.bucket, Key=gone)
    bad = run_cli("verify", "--state", str(state), env=moto_s3.env())
    assert bad.returncode == 1
    dead = run_cli("verify", "--state", str(state), "--endpoint-url", "http://127.0.0.1:9",
                   env=moto_s3.env())
    assert dead.returncode == 2, dead.stdout + dead.stderr
    run_cli(*args, env=moto_s3.env(), check=True)  # repairs, and writes the report
    checks = json.loads(report.read_text())["verifications"]
    assert [c["outcome"].split(":")[0] for c in checks] == ["passed", "failed", "stopped"]
    assert checks[0]["options"] == {"deep": True, "sample": None, "seed": 0, "source": True}
    assert checks[0]["totals"]["members_checked"] > 0 and checks[0]["totals"]["errors"] == 0
    assert checks[1]["totals"]["errors"] >= 1 and checks[1]["damaged_files"] >= 1
    assert sum(checks[1]["totals"]["by_kind"].values()) >= 1
    assert "127.0.0.1:9" in checks[2]["outcome"] and checks[2]["totals"] is None
    for c in checks:
        assert c["destination"] == moto_s3.url and c["started"] <= c["ended"] and c["user"]
    history = (state / "verify-history.jsonl").read_text()
    assert "Doe" not in history and str(tree) not in history
    said = run_cli("status", "--state", str(state), check=True).stdout.splitlines()
    assert said[-1].startswith("verified: 3 times; the last (objects only) stopped: ")


def test_systemd_example_names_real_options() -> None:
    """examples/systemd: every PACSMIGRATE_* variable of its env file is an option of that
    command, and the unit's command lines use real options (the example cannot rot)."""
    from pacsmigrate.cli import main

    here = Path(__file__).resolve().parents[1] / "examples" / "systemd"
    names = re.findall(r"^PACSMIGRATE_([A-Z]+)_([A-Z_]+)=", (here / "pacsmigrate.env")
                       .read_text(), re.MULTILINE)
    assert len(names) >= 5
    for command, option in names:
        cmd = main.commands[command.lower()]
        params = {p.name.upper() for p in cmd.params if p.name} | {
            name for p in cmd.params if isinstance(p, click.Option)
            for name in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])}
        assert option in params or f"PACSMIGRATE_{command}_{option}" in params, (command, option)
    unit = (here / "pacsmigrate.service").read_text().replace("\\\n", " ")
    for command, flags in re.findall(r"pacsmigrate (?:--log-file \S+ )?(\w+) \S+ \S+(.*)", unit):
        known = {o for p in main.commands[command].params for o in getattr(p, "opts", [])}
        for flag in re.findall(r"--[\w-]+", flags):
            assert flag in known, (command, flag)
    assert "--log-file" in {o for p in main.params for o in p.opts}


def test_store_trouble_is_shown_at_once_and_not_repeated(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    """The first retry warns without -v; more within the minute are counted, not shown."""
    import asyncio

    from pacsmigrate.backends.policy import RequestPolicy, RetryConfig
    from pacsmigrate.backends.s3_errors import classify

    policy = RequestPolicy(concurrency=2, retry=RetryConfig(max_attempts=5, base_delay=0.0))
    failures = iter([ConnectionResetError()] * 3)

    async def request() -> str:
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return "ok"

    with caplog.at_level("INFO", logger="pacsmigrate.store"):
        assert asyncio.run(policy.run(request, classify=classify)) == "ok"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [("store trouble: retrying a request after connection reset; the run "
                      "goes on")]
    assert sum(r.levelname == "INFO" for r in caplog.records) == 3  # each retry, with -v


def test_a_torn_verify_line_loses_only_itself(tmp_path: Path) -> None:
    """A verify killed while appending leaves half a line: the next record still gets a line
    of its own, and reading the history skips only the torn one."""
    first = verify_record("s3://b/p", {}, started="t0", outcome="passed", totals={}, damaged=0)
    record_verify(tmp_path, first)
    with open(tmp_path / VERIFY_HISTORY, "a", encoding="ascii") as out:
        out.write('{"version": "0.1", "outco')  # killed mid-write
    second = {**first, "outcome": "failed: 2 findings"}
    record_verify(tmp_path, second)
    assert [c["outcome"] for c in verifications(tmp_path)] == ["passed", "failed: 2 findings"]


def test_a_folder_readable_again_is_no_longer_a_problem(tmp_path: Path) -> None:
    """A folder the walk could not list is a problem (exit 1); once readable, the next run
    stores its files and the problem is gone: that run finishes (exit 0)."""
    tree, store, state = tmp_path / "pacs", tmp_path / "store", tmp_path / "state"
    for folder in ("open", "closed/deeper"):
        (tree / folder).mkdir(parents=True)
        shutil.copy(TEST_FILES / "CT_small.dcm", tree / folder / "1.dcm")
    store.mkdir()
    args = ["migrate", str(tree), str(store), "--state", str(state), "--no-progress"]
    first = run_cli(*args, env={**os.environ, "PACSMIGRATE_DENY_OPEN": "closed"})
    assert first.returncode == 1, first.stdout + first.stderr
    assert "still to migrate: 1 files" in run_cli("status", "--state", str(state),
                                                  check=True).stdout
    again = run_cli(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    said = run_cli("status", "--state", str(state), check=True).stdout
    assert "still to migrate: none" in said and "migrated: 2 files" in said, said


def test_status_after_dry_runs_alone_says_nothing_is_known(tmp_path: Path) -> None:
    tree, store, state = tmp_path / "pacs", tmp_path / "store", tmp_path / "state"
    tree.mkdir()
    store.mkdir()
    shutil.copy(TEST_FILES / "CT_small.dcm", tree / "1.dcm")
    run_cli("migrate", str(tree), str(store), "--state", str(state), "--dry-run", check=True)
    said = run_cli("status", "--state", str(state), check=True).stdout.splitlines()
    assert ("still to migrate: not known yet: no migrate has run (a dry run stores nothing "
            "and its plan is in `pacsmigrate plan`)") in said, said


def test_status_after_a_run_killed_early_does_not_say_nothing_is_left(tmp_path: Path) -> None:
    """Killed before its walk saw the files, the run leaves a state that knows of none: what
    is left is not known, not "none"."""
    tree, store, state = tmp_path / "pacs", tmp_path / "store", tmp_path / "state"
    tree.mkdir()
    store.mkdir()
    for i in range(3):
        shutil.copy(TEST_FILES / "CT_small.dcm", tree / f"{i}.dcm")
    args = ["migrate", str(tree), str(store), "--state", str(state), "--no-progress"]
    killed = run_cli(*args, env={**os.environ, "PACSMIGRATE_CRASH_AT": "mid-catalogue:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    unknown = ("still to migrate: not known yet (its walk may not have seen every file): the "
               "last migrate stopped before its end; re-run migrate")
    said = run_cli("status", "--state", str(state), check=True).stdout.splitlines()
    assert unknown in said, said
    # A dry run after it walks the whole tree but stores nothing: still not known.
    run_cli(*args, "--dry-run", check=True)
    said = run_cli("status", "--state", str(state), check=True).stdout.splitlines()
    assert unknown in said, said
    run_cli(*args, check=True)
    assert "still to migrate: none" in run_cli("status", "--state", str(state),
                                               check=True).stdout.splitlines()
