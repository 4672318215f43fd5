"""`--checksum auto`, the default: bundles carry CRC32 (ISA-L, ~70x cheaper than MD5) where
the pre-flight sees the store refuse a body whose CRC32 is wrong, else Content-MD5, which
every store checks. The probe costs two requests, which the dry run counts."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import TEST_FILES, AzureTarget, LocalTarget, S3Target, run_cli
from isal import isal_zlib

from pacsmigrate.keys import RUN_DIR
from pacsmigrate.synth import make_tree

Target = S3Target | LocalTarget | AzureTarget


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "pacs"
    make_tree(root, studies=3, seed=12, scale=0.05)
    shutil.copy(TEST_FILES / "CT_small.dcm", root / "ct.dcm")
    return root


def _endpoint(store: Target) -> list[str]:
    return ["--endpoint-url", store.info.endpoint_url] if isinstance(store, S3Target) else []


def _migrate(tree: Path, store: Target, tmp_path: Path, *extra: str, url: str = ""
             ) -> tuple[str, dict[str, Any]]:
    state, report = tmp_path / "state", tmp_path / "report.json"
    proc = run_cli("migrate", str(tree), url or store.url, *_endpoint(store), "--state",
                   str(state),
                   "--no-progress", "--report", str(report), *extra, env=store.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads(report.read_text())["run"]


def _said(tree: Path, store: Target, tmp_path: Path) -> str:
    """The line of `pacsmigrate check` about the checksum."""
    proc = run_cli("check", str(tree), store.url, *_endpoint(store), "--state",
                   str(tmp_path / "check-state"), env=store.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return next(line for line in proc.stdout.splitlines() if " checksum: " in line)


def _no_probe_left(store: Target) -> None:
    assert not [k for k in store.object_keys() if f"{RUN_DIR}/preflight-" in k]


@pytest.mark.seaweed
def test_a_store_that_checks_crc32_gets_crc32(seaweed_s3: S3Target, tree: Path,
                                              tmp_path: Path) -> None:
    _, run = _migrate(tree, seaweed_s3, tmp_path)
    assert run["checksum"] == "crc32" and run["retries"] == {}
    # The store kept each bundle's CRC32 as sent (the header, not Content-MD5).
    tars = [k for k in seaweed_s3.object_keys() if k.endswith(".tar")]
    assert tars
    for key in tars:
        head = seaweed_s3.client.head_object(Bucket=seaweed_s3.bucket, Key=key,
                                             ChecksumMode="ENABLED")
        crc = isal_zlib.crc32(seaweed_s3.get(key)).to_bytes(4, "big")
        assert head["ChecksumCRC32"] == base64.b64encode(crc).decode()
    assert _said(tree, seaweed_s3, tmp_path) == (
        "ok    checksum: the store refused a body whose CRC32 was wrong: bundles carry CRC32 "
        "(x-amz-checksum-crc32)")
    _no_probe_left(seaweed_s3)


def test_a_store_that_ignores_crc32_gets_md5(moto_s3: S3Target, tree: Path,
                                             tmp_path: Path) -> None:
    """moto checks nothing: it took the wrong CRC32, so the run sends Content-MD5."""
    _, run = _migrate(tree, moto_s3, tmp_path)
    assert run["checksum"] == "md5"
    assert _said(tree, moto_s3, tmp_path) == (
        "ok    checksum: Content-MD5: the store took a body whose CRC32 was wrong, so it does "
        "not check CRC32")
    _no_probe_left(moto_s3)  # what it took is deleted


@pytest.mark.parametrize("kind, want", [("local", "crc32"), ("azure", "md5")])
def test_other_stores(kind: str, want: str, tree: Path, tmp_path: Path,
                      request: pytest.FixtureRequest) -> None:
    """A directory checks whatever it is given; Azure checks Content-MD5 (its backend sends
    MD5 whatever it is asked), so a wrong CRC32 goes unseen there."""
    store = request.getfixturevalue(f"{kind}_store")
    _, run = _migrate(tree, store, tmp_path)
    assert run["checksum"] == want
    _no_probe_left(store)


def test_an_explicit_choice_is_not_probed_and_the_dry_run_counts_either(
        moto_s3: S3Target, tree: Path, tmp_path: Path) -> None:
    for choice, probe in (("md5", 0), ("auto", 2)):
        where = tmp_path / choice
        where.mkdir()
        url = f"{moto_s3.url}-{choice}"  # a migration of its own
        out, plan = _migrate(tree, moto_s3, where, "--dry-run", "--checksum", choice, url=url)
        _, done = _migrate(tree, moto_s3, where, "--checksum", choice, url=url)
        assert done["checksum"] == "md5" and done["retries"] == {}
        assert done["requests"] == plan["planned_requests"] + plan["setup_requests"]
        assert f"{plan['setup_requests']:,} for the" in out
        if choice == "md5":
            explicit = plan["setup_requests"]
        else:
            assert plan["setup_requests"] == explicit + probe
