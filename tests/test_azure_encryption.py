"""Azure encryption: an encryption scope and a customer-provided key on every request.
Azurite implements neither (it accepts a scope and records nothing; in its strict mode it
refuses a customer key, in loose mode ignores it): what is checked here is what each request
carries, the refusals before anything is stored, and that reads still work."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import AzureTarget, run_cli
from helpers import aged_tree, index_rows

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.devazure import Azurite
from pacsmigrate.devstore import make_tls_files


def test_an_encryption_scope_goes_with_every_write(azure_store: AzureTarget, tmp_path: Path
                                                   ) -> None:
    aged_tree(tmp_path / "pacs")
    state, env = tmp_path / "state", azure_store.env()
    run_cli("migrate", str(tmp_path / "pacs"), azure_store.url, "--state", str(state),
            "--encryption-scope", "pacs-archive-scope", "--large-file", "5MiB",
            "--part-size", "5MiB", "--no-progress", env=env, check=True)
    cp = Checkpoint(state, readonly=True)
    try:
        assert cp.get_meta("config")["encryption_scope"] == "pacs-archive-scope"
    finally:
        cp.close()
    row = index_rows(state)[0]
    out = tmp_path / "x"
    run_cli("get", row["source_path"], "-o", str(out), "--state", str(state), env=env,
            check=True)
    assert out.read_bytes() == Path(row["source_path"]).read_bytes()
    wrong = run_cli("migrate", str(tmp_path / "pacs"), "s3://b/p", "--encryption-scope", "x",
                    "--state", str(tmp_path / "s2"))
    assert wrong.returncode == 2 and "--encryption-scope is for az:// destinations" in (
        wrong.stderr)


def test_a_customer_key_needs_https(azure_store: AzureTarget, tmp_path: Path) -> None:
    aged_tree(tmp_path / "pacs")
    (tmp_path / "k").write_bytes(os.urandom(32))
    proc = run_cli("migrate", str(tmp_path / "pacs"), azure_store.url, "--state",
                   str(tmp_path / "s"), "--sse-c-key-file", str(tmp_path / "k"),
                   env=azure_store.env())
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: a customer-provided key (--sse-c-key-file) goes over HTTPS only, and "
        f"{azure_store.url} is reached over plain HTTP")
    assert azure_store.object_keys() == []


def test_a_customer_key_goes_with_every_request(tmp_path: Path) -> None:
    """Over HTTPS: strict Azurite refuses the key header (so it was sent); loose Azurite
    stores and serves the blobs; the state keeps the key's MD5, never the key."""
    aged_tree(tmp_path / "pacs")
    key = os.urandom(32)
    (tmp_path / "k").write_bytes(key)
    tls = make_tls_files(tmp_path / "tls")
    for loose in (False, True):
        with Azurite(tls=tls, loose=loose) as azurite:
            azurite.create_container("pacs")
            env = {**azurite.env(), "REQUESTS_CA_BUNDLE": str(tls[0])}
            state = tmp_path / f"state-{loose}"
            args = ["migrate", str(tmp_path / "pacs"), "az://pacs", "--state", str(state),
                    "--sse-c-key-file", str(tmp_path / "k"), "--large-file", "5MiB",
                    "--part-size", "5MiB", "--no-progress"]
            proc = run_cli(*args, env=env)
            if not loose:
                assert proc.returncode == 2
                assert "x-ms-encryption-key" in proc.stderr, proc.stderr
                continue
            assert proc.returncode == 0, proc.stdout + proc.stderr
            verify = run_cli("verify", "--state", str(state), "--deep", "--source",
                             "--sse-c-key-file", str(tmp_path / "k"), env=env)
            assert verify.returncode == 0, verify.stdout + verify.stderr
            other = tmp_path / "other"
            other.write_bytes(os.urandom(32))
            wrong = run_cli("verify", "--state", str(state), "--sse-c-key-file", str(other),
                            env=env)
            assert wrong.returncode == 2 and "is not the key" in wrong.stderr
            cp = Checkpoint(state, readonly=True)
            try:
                config = json.dumps(cp.get_meta("config"))
            finally:
                cp.close()
            assert config.count("sse_c_md5") == 1 and key.hex() not in config
