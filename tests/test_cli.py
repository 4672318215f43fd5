"""The command line as an admin uses it: exit codes, messages, report, status, export."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_FILES, S3Target, run_cli

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.paths import from_fields


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "README.txt"):
        shutil.copy(TEST_FILES / name, root / name)
    (root / os.fsdecode(b"r\xf6ntgen.dcm")).write_bytes((TEST_FILES / "rtdose.dcm").read_bytes())
    return root


def _migrate(tree: Path, s3: S3Target, state: Path, *extra: str) -> list[str]:
    return ["migrate", str(tree), s3.url, "--endpoint-url", s3.info.endpoint_url,
            "--state", str(state), *extra]


def test_migrate_report_status_and_exports(moto_s3: S3Target, small_tree: Path,
                                           tmp_path: Path) -> None:
    state, report = tmp_path / "state", tmp_path / "report.json"
    proc = run_cli(*_migrate(small_tree, moto_s3, state, "--report", str(report)),
                   env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    assert "OK: nothing left to migrate" in proc.stdout
    doc = json.loads(report.read_text())
    assert doc["run"]["files_migrated"] == 4 and doc["not_migrated"] == []
    assert [u["reason"] for u in doc["unsorted"]] == ["not DICOM"]

    status = run_cli("status", "--state", str(state), "--json", check=True)
    st = json.loads(status.stdout)
    assert st["files_migrated"] == 4 and st["files_pending"] == 0

    out = tmp_path / "index.csv"
    run_cli("index", "export", "--state", str(state), "--format", "csv", "-o", str(out),
            check=True)
    rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert {"source_path", "key", "offset", "length", "blake3", "study_uid", "series_uid",
            "sop_uid"} <= set(rows[0])
    odd = [r for r in rows if r["source_path_b64"]]
    assert len(odd) == 1
    assert from_fields(odd[0]["source_path"], odd[0]["source_path_b64"]) == os.fsencode(
        small_tree.resolve()) + b"/r\xf6ntgen.dcm"
    jl = run_cli("index", "export", "--state", str(state), "--format", "jsonl", check=True)
    lines = [json.loads(x) for x in jl.stdout.splitlines()]
    assert [x["source_path"] for x in lines] == [r["source_path"] for r in rows]


def test_dry_run_prints_the_plan(moto_s3: S3Target, small_tree: Path, tmp_path: Path) -> None:
    proc = run_cli(*_migrate(small_tree, moto_s3, tmp_path / "s", "--dry-run"),
                   env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    assert "nothing was written" in proc.stdout
    assert "plan: 3 studies, 4 files" in proc.stdout
    assert moto_s3.object_keys() == []


def test_a_dry_run_after_a_migration_counts_the_studies_of_its_plan(
        moto_s3: S3Target, small_tree: Path, tmp_path: Path) -> None:
    """The plan line's studies are the plan's, not every study the state knows."""
    import pydicom

    tree, state = tmp_path / "pacs", tmp_path / "s"
    shutil.copytree(small_tree, tree)
    run_cli(*_migrate(tree, moto_s3, state), env=moto_s3.env(), check=True)
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.StudyInstanceUID = ds.StudyInstanceUID + ".7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID + ".7"
    (tree / "new").mkdir()
    ds.save_as(tree / "new" / "1.dcm")
    for _ in range(2):  # and again: each dry run counts its own
        dry = run_cli(*_migrate(tree, moto_s3, state, "--dry-run"), env=moto_s3.env(),
                      check=True)
        assert "plan: 1 studies, 1 files" in dry.stdout, dry.stdout


@pytest.mark.parametrize("args, message", [
    (["gs://bucket/x"], "unsupported destination"),
    (["s3://b/x", "--provider", "ceph"], "--provider ceph needs --endpoint-url"),
    (["s3://b/x", "--provider", "ceph", "--endpoint-url", "http://127.0.0.1:9",
      "--checksum", "crc32"], "ignores x-amz-checksum-crc32"),
    (["az://c/x", "--region", "eu-west-1"], "are for s3:// destinations"),
    (["s3://"], "names no bucket"),
    (["s3://b/x", "--bundle-size", "12XB"], "not a size"),
    (["s3://b/x", "--large-file", "1GiB"],
     ("--large-file (1GiB; 64MiB by default) must not exceed --bundle-size (256MiB): give "
     "--large-file 256MiB or less, or a larger --bundle-size")),
    # the default --large-file against a small --bundle-size: the message says both and the fix
    (["s3://b/x", "--bundle-size", "1MiB"], ("--large-file (64MiB; 64MiB by default) must not "
     "exceed --bundle-size (1MiB): give --large-file 1MiB or less")),
    (["s3://b/x", "--bundle-size", "1GiB", "--memory", "64MiB"],
     "give --memory 256MiB or more"),
    (["s3://b/x", "--offline"], "--offline is for a dry run"),
])
def test_bad_arguments_get_clear_messages(args: list[str], message: str, small_tree: Path,
                                          tmp_path: Path) -> None:
    proc = run_cli("migrate", str(small_tree), *args, "--state", str(tmp_path / "s"))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_source_is_an_error(tmp_path: Path) -> None:
    proc = run_cli("migrate", str(tmp_path / "nope"), "s3://b/x", "--state", str(tmp_path / "s"))
    assert proc.returncode == 2 and "source is not a directory" in proc.stderr


def test_second_run_on_same_state_refuses(moto_s3: S3Target, small_tree: Path,
                                          tmp_path: Path) -> None:
    state = tmp_path / "state"
    holder = Checkpoint(state)  # another run holds the state directory
    try:
        proc = run_cli(*_migrate(small_tree, moto_s3, state), env=moto_s3.env())
    finally:
        holder.close()
    assert proc.returncode == 2
    assert "another pacsmigrate run is using" in proc.stderr


def test_state_of_another_destination_refuses(moto_s3: S3Target, small_tree: Path,
                                              tmp_path: Path) -> None:
    state = tmp_path / "state"
    run_cli(*_migrate(small_tree, moto_s3, state), env=moto_s3.env(), check=True)
    proc = run_cli("migrate", str(small_tree), f"s3://{moto_s3.bucket}/other", "--endpoint-url",
                   moto_s3.info.endpoint_url, "--state", str(state), env=moto_s3.env())
    assert proc.returncode == 2 and "belongs to a migration to" in proc.stderr


@pytest.mark.seaweed
def test_a_resumed_run_pointed_at_another_store_refuses(
        moto_s3: S3Target, seaweed_s3: S3Target, small_tree: Path, tmp_path: Path) -> None:
    """Night two with another --endpoint-url (or one left in the environment): it stored
    its files in the other store, said OK, and the index pointed at the first."""
    state = tmp_path / "state"
    run_cli(*_migrate(small_tree, moto_s3, state), env=moto_s3.env(), check=True)
    seaweed_s3.client.create_bucket(Bucket=moto_s3.bucket)
    try:
        (small_tree / "new.dcm").write_bytes(b"a file of the second night")
        proc = run_cli("migrate", str(small_tree), moto_s3.url, "--state", str(state), env={
            **seaweed_s3.env(), "PACSMIGRATE_MIGRATE_ENDPOINT_URL": seaweed_s3.info.endpoint_url})
        assert proc.returncode == 2, proc.stdout + proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert "holds no record of this migration, whose objects are in the store at " \
            f"{moto_s3.info.endpoint_url}" in line, line
        assert not seaweed_s3.client.list_objects_v2(Bucket=moto_s3.bucket).get("Contents")
    finally:
        seaweed_s3.drop(moto_s3.bucket)


@pytest.mark.seaweed
def test_missing_bucket_and_bad_credentials_stop_cleanly(seaweed_s3: S3Target, small_tree: Path,
                                                         tmp_path: Path) -> None:
    args = ["migrate", str(small_tree), "s3://no-such-bucket-here/x", "--endpoint-url",
            seaweed_s3.info.endpoint_url, "--state", str(tmp_path / "a")]
    proc = run_cli(*args, env=seaweed_s3.env(), timeout=120)
    assert proc.returncode == 2 and "NoSuchBucket" in proc.stderr, proc.stderr
    env = {**seaweed_s3.env(), "AWS_SECRET_ACCESS_KEY": "wrong"}
    proc = run_cli(*_migrate(small_tree, seaweed_s3, tmp_path / "b"), env=env, timeout=120)
    assert proc.returncode == 2 and "store refused" in proc.stderr, proc.stderr
    assert "wrong" not in proc.stderr  # credentials are never printed


def test_progress_bars_show_rates(moto_s3: S3Target, small_tree: Path, tmp_path: Path) -> None:
    proc = run_cli(*_migrate(small_tree, moto_s3, tmp_path / "s", "--progress"),
                   env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    assert "read" in proc.stderr and "store" in proc.stderr
    assert "files/s" in proc.stderr and "B/s" in proc.stderr
    assert "4/4 files" in proc.stderr


def test_a_run_its_preflight_stops_leaves_nothing(moto_s3: S3Target, small_tree: Path,
                                                  tmp_path: Path) -> None:
    """Stopped by the pre-flight: one line, no state, no report (nothing ran). A run stopped
    by an error later still writes its report (test_faults_caps: the store failing for good)."""
    report = tmp_path / "report.json"
    proc = run_cli("migrate", str(small_tree), "s3://no-such-bucket-here/x", "--endpoint-url",
                   moto_s3.info.endpoint_url, "--state", str(tmp_path / "s"), "--report",
                   str(report), env=moto_s3.env())
    assert proc.returncode == 2 and "NoSuchBucket" in proc.stderr
    assert not report.exists() and not (tmp_path / "s").exists()


def test_dry_run_plan_hashes_equal_the_index_hashes(moto_s3: S3Target, small_tree: Path,
                                                    tmp_path: Path) -> None:
    state = tmp_path / "state"
    run_cli(*_migrate(small_tree, moto_s3, state, "--dry-run"), env=moto_s3.env(), check=True)
    plan = run_cli("plan", "--state", str(state), "--format", "jsonl", check=True)
    planned = {(r["source_path"], r["source_path_b64"]): r["blake3"]
               for r in map(json.loads, plan.stdout.splitlines())}
    assert len(planned) == 4 and all(len(h) == 64 for h in planned.values())
    run_cli(*_migrate(small_tree, moto_s3, state), env=moto_s3.env(), check=True)
    index = run_cli("index", "export", "--state", str(state), "--format", "jsonl", check=True)
    stored = {(r["source_path"], r["source_path_b64"]): r["blake3"]
              for r in map(json.loads, index.stdout.splitlines())}
    assert stored == planned
    left = run_cli("plan", "--state", str(state), "--format", "csv", check=True)
    assert left.stdout.splitlines()[1:] == []  # nothing left to plan


def test_unknown_aws_profile_is_one_line(moto_s3: S3Target, small_tree: Path,
                                         tmp_path: Path) -> None:
    proc = run_cli("migrate", str(small_tree), moto_s3.url, "--endpoint-url",
                   moto_s3.info.endpoint_url, "--profile", "typo", "--state",
                   str(tmp_path / "s"), env=moto_s3.env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        ("error: AWS profile 'typo' is not in ~/.aws/config or ~/.aws/credentials "
        "(see `aws configure list-profiles`): give another --profile or AWS_PROFILE")]


def test_store_options_are_kept_for_the_read_commands(moto_s3: S3Target, small_tree: Path,
                                                      tmp_path: Path) -> None:
    """--provider, --region, --addressing-style are part of the migration: verify, get and
    restore reach the store the same way without being told again."""
    state = tmp_path / "s"
    run_cli("migrate", str(small_tree), moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
            "--provider", "minio", "--region", "eu-west-1", "--addressing-style", "path",
            "--state", str(state), "--no-progress", env=moto_s3.env(), check=True)
    cp = Checkpoint(state, readonly=True)
    try:
        config = cp.get_meta("config")
    finally:
        cp.close()
    assert (config["provider"], config["region"], config["addressing_style"]) == (
        "minio", "eu-west-1", "path")
    verify = run_cli("verify", "--state", str(state), "--deep", env=moto_s3.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_every_option_has_help() -> None:
    """`--help` explains every option of every command (an admin's only manual at 3 a.m.)."""
    import click

    from pacsmigrate.cli import main

    missing: list[str] = []

    def walk(cmd: click.Command, name: str) -> None:
        missing.extend(f"{name} {'/'.join(p.opts)}" for p in cmd.params
                       if isinstance(p, click.Option) and not p.help
                       and p.name not in ("help", "version"))
        assert cmd.help, f"{name} has no description"
        for sub, c in getattr(cmd, "commands", {}).items():
            walk(c, f"{name} {sub}")

    walk(main, "pacsmigrate")
    assert missing == []


def test_the_package_builds_without_warnings(tmp_path: Path) -> None:
    """`make demo`'s install used to open with setuptools deprecation warnings."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v", "-w",
                          str(tmp_path), str(root)], capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    noise = [ln for ln in (out.stdout + out.stderr).splitlines()
             if "Deprecat" in ln or "BuildBackendWarning" in ln]
    assert noise == []


def test_the_bars_have_totals_an_eta_and_decimal_units(moto_s3: S3Target,
                                                       tmp_path: Path) -> None:
    """A counting walk gives the read and store bars their total of files and an ETA; the
    bars count bytes in decimal MB/kB, as the summary does."""
    from pacsmigrate.synth import make_tree

    tree = tmp_path / "pacs"
    make_tree(tree, studies=6, seed=3, scale=0.05)
    files = sum(1 for p in tree.rglob("*") if p.is_file())
    proc = run_cli(*_migrate(tree, moto_s3, tmp_path / "s", "--progress"), env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    for bar in ("read", "store"):
        shown = re.findall(rf"{bar}: [^\r\n]*?(\d+)/(\d+) files, [\d,]+ files/s, "
                           r"ETA \d+:\d\d:\d\d", proc.stderr)
        assert shown, proc.stderr[-1500:]
        assert shown[-1] == (str(files), str(files)), shown[-1]
    assert re.search(r"read: [^\r\n]*?[\d.]+[kM]B ", proc.stderr), proc.stderr[-1500:]
    assert "MiB" not in proc.stderr and "GiB" not in proc.stderr


def test_environment_and_pipes_the_way_a_script_meets_them(small_tree: Path, tmp_path: Path
                                                           ) -> None:
    """PACSMIGRATE_VERSION (an install script's pin) turned every command into --version;
    --lock-mode alone locked nothing without a word; a reader that stops early (`| head`)
    got "error: [Errno 32] Broken pipe"."""
    pinned = run_cli("status", "--state", str(tmp_path / "none"),
                     env={**os.environ, "PACSMIGRATE_VERSION": "0.1.0"})
    assert "version" not in pinned.stdout + pinned.stderr.lower(), pinned
    assert pinned.returncode == 2 and "'--state'" in pinned.stderr, pinned  # status's own
    alone = run_cli("migrate", str(small_tree), str(tmp_path / "store"), "--state",
                    str(tmp_path / "s"), "--lock-mode", "COMPLIANCE")
    assert alone.returncode == 2 and "--lock-mode goes with --retain-years" in alone.stderr
    assert not (tmp_path / "s").exists()
    (tmp_path / "store").mkdir()
    run_cli("migrate", str(small_tree), str(tmp_path / "store"), "--state", str(tmp_path / "s"),
            "--no-progress", check=True)
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first row
    try:
        proc = subprocess.run([sys.executable, "-m", "pacsmigrate", "index", "export",
                               "--state", str(tmp_path / "s")], check=False,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_options_from_the_environment_are_named_as_typed(small_tree: Path, tmp_path: Path
                                                         ) -> None:
    """PACSMIGRATE_MIGRATE_STATE, _REPORT, STATUS_JSON... were silently ignored (click named
    them after the parameters: _STATE_DIR, _REPORT_PATH, _AS_JSON): a nightly run started a
    new migration in ./pacsmigrate-state. Both names work now."""
    store, state, report = tmp_path / "store", tmp_path / "nightly", tmp_path / "r.json"
    store.mkdir()
    env = {**os.environ, "PACSMIGRATE_MIGRATE_STATE": str(state),
           "PACSMIGRATE_MIGRATE_REPORT": str(report), "PACSMIGRATE_MIGRATE_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "pacsmigrate", "migrate", str(small_tree),
                           str(store)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (state / "checkpoint.lmdb").is_dir() and report.is_file()
    assert not (tmp_path / "pacsmigrate-state").exists()
    for name in ("PACSMIGRATE_STATUS_STATE", "PACSMIGRATE_STATUS_STATE_DIR"):
        status = run_cli("status", env={**os.environ, name: str(state),
                                        "PACSMIGRATE_STATUS_JSON": "1"})
        assert json.loads(status.stdout)["files_migrated"] == 4, status
