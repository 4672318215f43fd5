"""SSE-C: objects encrypted with the hospital's own key, on SeaweedFS (which checks it);
every command given the same key; the key never written anywhere."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from conftest import S3Target, run_cli
from helpers import aged_tree, assert_complete, index_rows

from pacsmigrate.errors import ConfigError
from pacsmigrate.ssec import ENV, load_key


def test_key_file_forms(tmp_path: Path) -> None:
    key = os.urandom(32)
    for name, data in (("raw", key), ("hex", key.hex().encode() + b"\n"),
                       ("b64", base64.b64encode(key) + b"\n")):
        (tmp_path / name).write_bytes(data)
        assert load_key(tmp_path / name).key == key
    assert key.hex() not in repr(load_key(tmp_path / "raw"))
    for bad in (b"short", os.urandom(31), b"z" * 64):
        (tmp_path / "bad").write_bytes(bad)
        with pytest.raises(ConfigError, match="must hold a 256-bit key"):
            load_key(tmp_path / "bad")
    with pytest.raises(ConfigError, match="cannot read the SSE-C key file"):
        load_key(tmp_path / "missing")


@pytest.mark.seaweed
def test_every_command_reads_with_the_same_key_and_none_without(
        seaweed_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    aged_tree(root)  # four one-image studies and a 6 MiB file sent in parts
    key = os.urandom(32)
    key_file = tmp_path / "hospital.key"
    key_file.write_text(key.hex())
    state, report = tmp_path / "state", tmp_path / "report.json"
    env = seaweed_s3.env()
    migrate = ["migrate", str(root), seaweed_s3.url, "--endpoint-url",
               seaweed_s3.info.endpoint_url, "--state", str(state), "--large-file", "5MiB",
               "--part-size", "5MiB", "--no-progress", "--report", str(report)]
    done = run_cli(*migrate, "--sse-c-key-file", str(key_file), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = index_rows(state)
    keys = {r["key"] for r in rows}
    assert len(keys) == 5
    client = seaweed_s3.client
    for k in keys:  # the store refuses a read without the key, and gives it with it
        with pytest.raises(Exception):  # noqa: B017 - botocore's error class varies
            client.get_object(Bucket=seaweed_s3.bucket, Key=k)
        got = client.get_object(Bucket=seaweed_s3.bucket, Key=k, SSECustomerAlgorithm="AES256",
                                SSECustomerKey=key)
        assert got["SSECustomerAlgorithm"] == "AES256"

    class WithKey:  # assert_complete's range GETs, with the key
        def __init__(self) -> None:
            self.bucket = seaweed_s3.bucket

        def get(self, k: str, offset: int | None = None, length: int | None = None) -> bytes:
            extra = {"Range": f"bytes={offset}-{offset + length - 1}"} if length else {}
            return bytes(client.get_object(Bucket=self.bucket, Key=k,
                                           SSECustomerAlgorithm="AES256",
                                           SSECustomerKey=key, **extra)["Body"].read())

        def object_keys(self) -> list[str]:
            return seaweed_s3.object_keys()

        def pending_uploads(self) -> list[object]:
            return seaweed_s3.pending_uploads()

    assert_complete(WithKey(), state, root)
    verify = ["verify", "--state", str(state), "--deep", "--source"]
    ok = run_cli(*verify, env={**env, ENV: str(key_file)})  # the key from the environment
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = run_cli(*verify, env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip() == ("error: this migration's objects are encrypted with your "
                                      "own key (SSE-C): give --sse-c-key-file FILE or set "
                                      f"{ENV}")
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    wrong = run_cli(*verify, "--sse-c-key-file", str(other), env=env)
    assert wrong.returncode == 2 and "is not the key this migration's objects" in wrong.stderr
    out = tmp_path / "out"
    run_cli("restore", "--state", str(state), "--all", "--to", str(out), "--sse-c-key-file",
            str(key_file), env=env, check=True)
    for r in rows:
        assert (out / r["source_path"].lstrip("/")).read_bytes() == Path(
            r["source_path"]).read_bytes()
    # The index rebuilt from the store alone reads with the key too (its state did not
    # know the objects were SSE-C: get and restore asked without the key, and failed).
    rebuilt = tmp_path / "rebuilt"
    run_cli("index", "rebuild", seaweed_s3.url, "--endpoint-url", seaweed_s3.info.endpoint_url,
            "--state", str(rebuilt), "--sse-c-key-file", str(key_file), env=env, check=True)
    got = tmp_path / "got.dcm"
    run_cli("get", rows[0]["source_path"], "--state", str(rebuilt), "-o", str(got),
            "--sse-c-key-file", str(key_file), env=env, check=True)
    assert got.read_bytes() == Path(rows[0]["source_path"]).read_bytes()
    # A replica in a directory: the key reads the source (it was not passed to it, and the
    # directory refused it); the copies are the plain bytes, verified without a key.
    replica, replica_state = tmp_path / "replica", tmp_path / "replica-state"
    replica.mkdir()
    run_cli("replicate", str(replica), "--state", str(state), "--to-state", str(replica_state),
            "--sse-c-key-file", str(key_file), env=env, check=True)
    deep = run_cli("verify", "--state", str(replica_state), "--deep", env=env)
    assert deep.returncode == 0, deep.stdout + deep.stderr
    # A re-run without the key (objects under two keys, or none) is refused.
    again = run_cli(*migrate, env=env)
    assert again.returncode == 2 and "give the same --sse-c-key-file" in again.stderr
    # The key and its file's name are nowhere: not in any output, report or state file.
    secrets = [key, key.hex().encode(), base64.b64encode(key), str(key_file).encode(),
               key_file.name.encode()]
    said = [done.stdout, done.stderr, ok.stdout, ok.stderr, missing.stderr, wrong.stderr,
            again.stderr]
    for text in said:
        assert not any(s in text.encode() for s in secrets)
    for path in [report, *state.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            assert not any(s in data for s in secrets), path


def test_sse_c_options_are_checked(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "k").write_bytes(os.urandom(32))
    both = run_cli("migrate", str(tmp_path / "d"), "s3://b/p", "--sse", "AES256",
                   "--sse-c-key-file", str(tmp_path / "k"), "--state", str(tmp_path / "s"))
    assert both.returncode == 2 and "drop --sse" in both.stderr
    local = run_cli("migrate", str(tmp_path / "d"), str(tmp_path / "d2"), "--sse-c-key-file",
                    str(tmp_path / "k"), "--state", str(tmp_path / "s"))
    assert local.returncode == 2 and "are for s3:// destinations" in local.stderr
