"""Objects in an archive tier: `restore` and `get` say so, ask the store to restore them
with --request-restore, and a re-run reads them once they are ready."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import AzureTarget, S3Target, run_cli
from helpers import aged_tree, index_rows


def _restore(state: Path, to: Path, env: dict[str, str], *extra: str) -> tuple[int, str]:
    proc = run_cli("restore", "--state", str(state), "--all", "--to", str(to), *extra, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def test_glacier_objects_are_requested_then_restored(moto_s3: S3Target, tmp_path: Path
                                                     ) -> None:
    aged_tree(tmp_path / "pacs")
    state, env = tmp_path / "state", moto_s3.env()
    run_cli("migrate", str(tmp_path / "pacs"), moto_s3.url, "--endpoint-url",
            moto_s3.info.endpoint_url, "--state", str(state), "--storage-class", "GLACIER",
            "--large-file", "5MiB", "--part-size", "5MiB", "--no-progress", env=env, check=True)
    rows = index_rows(state)
    objects = len({r["key"] for r in rows})
    out = tmp_path / "out"
    code, said = _restore(state, out, env)
    assert code == 1, said
    assert (f"in an archive tier: {len(rows)} files in {objects} objects; add "
            "--request-restore to ask the store for them") in said
    code, said = _restore(state, out, env, "--request-restore", "--restore-priority", "Bulk",
                          "--restore-days", "3")
    assert code == 1 and f"restore {objects} requested; re-run this command" in said, said
    for r in rows:  # the request reached the store (moto restores at once)
        head = moto_s3.client.head_object(Bucket=moto_s3.bucket, Key=r["key"])
        assert 'ongoing-request="false"' in head["Restore"], r["key"]
    code, said = _restore(state, out, env)
    assert code == 0, said
    for r in rows:
        assert (out / r["source_path"].lstrip("/")).read_bytes() == Path(
            r["source_path"]).read_bytes()


def test_get_requests_the_restore_of_its_object(moto_s3: S3Target, tmp_path: Path) -> None:
    aged_tree(tmp_path / "pacs")
    state, env = tmp_path / "state", moto_s3.env()
    run_cli("migrate", str(tmp_path / "pacs"), moto_s3.url, "--endpoint-url",
            moto_s3.info.endpoint_url, "--state", str(state), "--storage-class",
            "DEEP_ARCHIVE", "--large-file", "5MiB", "--no-progress", env=env, check=True)
    src = tmp_path / "pacs" / "old" / "img.dcm"
    args = ["get", str(src), "-o", str(tmp_path / "x.dcm"), "--state", str(state)]
    plain = run_cli(*args, env=env)
    assert plain.returncode == 2 and "--request-restore" in plain.stderr
    asked = run_cli(*args, "--request-restore", env=env)
    assert asked.returncode == 1, asked.stderr
    assert "archive tier: restore 1 requested; re-run this command" in asked.stderr
    run_cli(*args, env=env, check=True)
    assert (tmp_path / "x.dcm").read_bytes() == src.read_bytes()


def test_archive_blobs_are_rehydrated_then_restored(azure_store: AzureTarget, tmp_path: Path
                                                    ) -> None:
    aged_tree(tmp_path / "pacs")
    state, env = tmp_path / "state", azure_store.env()
    run_cli("migrate", str(tmp_path / "pacs"), f"az://{azure_store.bucket}", "--state",
            str(state), "--storage-class", "Archive", "--large-file", "5MiB",
            "--no-progress", env=env, check=True)
    out = tmp_path / "out"
    code, said = _restore(state, out, env, "--request-restore")
    assert code == 1 and "requested" in said, said
    code, said = _restore(state, out, env)
    assert code == 0, said
    for r in index_rows(state):
        assert (out / r["source_path"].lstrip("/")).read_bytes() == Path(
            r["source_path"]).read_bytes()
    assert os.listdir(out) != []
