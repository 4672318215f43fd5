"""Every command on every store, through the real CLI: a dry run, migrate killed in the middle
of a multipart bundle and resumed, status, verify --deep --source, get, locate, index export,
restore, index rebuild; on a local directory also file URLs one can open, and cleanup."""

from __future__ import annotations

import csv
import io
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from conftest import AzureTarget, LocalTarget, S3Target, run_cli
from helpers import assert_complete, index_rows, multipart_tree, source_files

from pacsmigrate.index import parse_object_uri


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return multipart_tree(tmp_path_factory.mktemp("local") / "pacs")


def _migrate(tree: Path, dest: str, state: Path, *extra: str) -> list[str]:
    return ["migrate", str(tree), dest, "--state", str(state), "--bundle-size", "8MiB",
            "--large-file", "3MiB", "--part-size", "5MiB", "--concurrency", "3",
            "--no-progress", *extra]


def cycle(target: Any, dest: str, tree: Path, tmp_path: Path, *where: str
          ) -> tuple[Path, list[dict[str, str]]]:
    """The whole life of a migration on one store (`where`: its --endpoint-url); returns its
    state and index rows."""
    state, env, files = tmp_path / "state", target.env(), source_files(tree)

    plan = run_cli(*_migrate(tree, dest, tmp_path / "dry", "--dry-run", *where), env=env)
    assert plan.returncode == 0, plan.stderr
    assert target.object_keys() == []  # a dry run stores nothing

    killed = run_cli(*_migrate(tree, dest, state, *where),
                     env={**env, "PACSMIGRATE_CRASH_AT": "part-uploaded:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = run_cli(*_migrate(tree, dest, state, *where), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_complete(target, state, tree)  # every byte range, no orphans or uploads
    again = run_cli(*_migrate(tree, dest, state, *where), env=env)
    assert again.returncode == 0 and "nothing left to migrate" in again.stdout, again.stdout

    status = json.loads(run_cli("status", "--state", str(state), "--json", env=env,
                                check=True).stdout)
    assert status["files_migrated"] == len(files)
    verify = run_cli("verify", "--state", str(state), "--deep", "--source", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    some = sorted(files)[len(files) // 2]
    out = tmp_path / "one.dcm"
    run_cli("get", str(files[some]), "-o", str(out), "--state", str(state), env=env, check=True)
    assert out.read_bytes() == files[some].read_bytes()
    located = json.loads(run_cli("locate", str(files[some]), "--state", str(state), "--json",
                                 env=env, check=True).stdout)
    assert parse_object_uri(located["object_uri"]).length == files[some].stat().st_size

    to = tmp_path / "restored"
    restored = run_cli("restore", "--state", str(state), "--all", "--to", str(to),
                       "--no-progress", env=env)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    for path, src in files.items():
        assert (to / path.decode().lstrip("/")).read_bytes() == src.read_bytes()

    rebuilt = tmp_path / "rebuilt"
    proc = run_cli("index", "rebuild", dest, "--state", str(rebuilt), "--no-progress", *where,
                   env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert index_rows(rebuilt) == rows
    return state, rows


def test_every_command_on_s3(tree: Path, s3: S3Target, tmp_path: Path) -> None:
    _, rows = cycle(s3, s3.url, tree, tmp_path, "--endpoint-url", s3.info.endpoint_url)
    assert all(r["object_uri"].startswith(f"s3://{s3.bucket}/archive/") for r in rows)


def test_every_command_on_azure_blob(tree: Path, azure_store: AzureTarget,
                                     tmp_path: Path) -> None:
    _, rows = cycle(azure_store, azure_store.url, tree, tmp_path)
    assert {r["object_uri"].split("/")[2] for r in rows} == {azure_store.bucket}
    assert all(r["object_uri"].startswith(f"az://{azure_store.bucket}/archive/") for r in rows)


def test_every_command_on_a_local_directory(tree: Path, local_store: LocalTarget,
                                            tmp_path: Path) -> None:
    dest = f"file://{local_store.root}"
    files = source_files(tree)
    state, _ = cycle(local_store, dest, tree, tmp_path)
    assert local_store.leftovers() == []  # the killed run's temporary file was swept

    # The index's addresses are file URLs: the RIS can open the path and read the range.
    export = run_cli("index", "export", "--state", str(state), "--format", "csv", check=True)
    exported = list(csv.DictReader(io.StringIO(export.stdout)))
    assert len(exported) == len(files)
    for row in exported:
        a = parse_object_uri(row["object_uri"])
        assert (a.scheme, a.bucket) == ("file", "")
        assert a.key == str(local_store.root / row["key"])
        with open(a.key, "rb") as f:
            f.seek(a.offset)
            data = f.read(a.length)
        assert data == files[row["source_path"].encode()].read_bytes()

    # An upload a killed run left, aged: cleanup lists it, then removes it.
    orphan = local_store.root / ".pacsmigrate-uploads" / "0123abcd"
    orphan.mkdir()
    (orphan / "upload.json").write_text(json.dumps(
        {"key": "x/y.dcm", "metadata": {}, "initiated": 1_000_000_000.0}))
    listed = run_cli("cleanup", dest, "--older-than", "1d", "--dry-run", check=True)
    assert "stale: x/y.dcm" in listed.stdout and orphan.exists()
    run_cli("cleanup", dest, "--older-than", "1d", check=True)
    assert not orphan.exists() and local_store.pending_uploads() == []
    assert_complete(local_store, state, tree)  # cleanup touched no object


def test_missing_destination_directory_is_one_clear_line(tree: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    proc = run_cli(*_migrate(tree, str(missing), tmp_path / "state"))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist: create it first" in lines[0], proc.stderr
    assert not missing.exists()


def test_destination_inside_the_source_is_refused(tree: Path, tmp_path: Path) -> None:
    before = source_files(tree)
    proc = run_cli(*_migrate(tree, str(tree / "a"), tmp_path / "state"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "overlap" in proc.stderr and "never written to" in proc.stderr
    assert source_files(tree) == before
