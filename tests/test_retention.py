"""Retention locks (S3 Object Lock) by study date: every object locked until its study's date
plus the years asked for, checked on SeaweedFS; a bucket without object lock refused first."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from conftest import AzureTarget, S3Target, run_cli
from helpers import aged_tree, index_rows

from pacsmigrate.errors import ConfigError
from pacsmigrate.retention import Retention

TODAY = date(2026, 12, 2)


def test_lock_ends_years_after_the_study() -> None:
    r = Retention(30)
    assert r.until("20190301", TODAY) == date(2049, 3, 1)
    assert Retention(1).until("20240229", date(2024, 12, 1)) == date(2025, 2, 28)
    assert r.until("", TODAY) == date(2056, 12, 2)  # no StudyDate: from today, never shorter
    assert Retention(15).until("19900101", TODAY) is None  # already over: nothing to lock
    assert Retention(15, "COMPLIANCE", legal_hold=True).metadata("19900101", TODAY) == {
        "pacsmigrate-legal-hold": "ON"}
    assert r.metadata("20190301", TODAY) == {"pacsmigrate-retain-until": "2049-03-01",
                                             "pacsmigrate-lock-mode": "GOVERNANCE"}
    for bad in ({"years": 0}, {"years": 30, "mode": "STRICT"}):
        with pytest.raises(ConfigError):
            Retention(**bad)  # type: ignore[arg-type]


def _lock_bucket(target: S3Target, request: pytest.FixtureRequest) -> str:
    bucket = target.bucket + "-lock"
    target.client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    request.addfinalizer(lambda: target.drop(bucket))
    return bucket


@pytest.mark.seaweed
def test_every_object_is_locked_until_its_study_plus_the_years(
        seaweed_s3: S3Target, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    studies = aged_tree(tmp_path / "pacs")
    bucket = _lock_bucket(seaweed_s3, request)
    state = tmp_path / "state"
    run_cli("migrate", str(tmp_path / "pacs"), f"s3://{bucket}/pacs", "--endpoint-url",
            seaweed_s3.info.endpoint_url, "--state", str(state), "--retain-years", "30",
            "--lock-mode", "GOVERNANCE", "--legal-hold", "--large-file", "5MiB", "--part-size",
            "5MiB", "--no-progress", env=seaweed_s3.env(), check=True)
    today = datetime.now(UTC).date()
    rows = index_rows(state)
    assert len({r["key"] for r in rows}) == 5  # four studies and the large file in parts
    for r in rows:
        day = studies.get(r["study_uid"], "")
        want = Retention(30).until(day, today)
        head = seaweed_s3.client.head_object(Bucket=bucket, Key=r["key"])
        assert head["ObjectLockMode"] == "GOVERNANCE", r["key"]
        assert head["ObjectLockRetainUntilDate"].date() == want, r["key"]
        assert head["ObjectLockLegalHoldStatus"] == "ON", r["key"]
    # The lock is real: the stored version cannot be deleted.
    version = seaweed_s3.client.list_object_versions(Bucket=bucket, Prefix=rows[0]["key"])
    vid = version["Versions"][0]["VersionId"]
    with pytest.raises(ClientError):
        seaweed_s3.client.delete_object(Bucket=bucket, Key=rows[0]["key"], VersionId=vid)


@pytest.mark.seaweed
def test_a_bucket_without_object_lock_is_refused_before_anything_is_stored(
        seaweed_s3: S3Target, tmp_path: Path) -> None:
    aged_tree(tmp_path / "pacs")
    proc = run_cli("migrate", str(tmp_path / "pacs"), seaweed_s3.url, "--endpoint-url",
                   seaweed_s3.info.endpoint_url, "--state", str(tmp_path / "s"),
                   "--retain-years", "15", env=seaweed_s3.env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        (f"error: {seaweed_s3.url} has no object lock: create the bucket with object lock "
        "enabled (aws s3api create-bucket --object-lock-enabled-for-bucket), or drop "
        "--retain-years and --legal-hold")]
    assert seaweed_s3.object_keys() == []


def test_retention_on_azure_is_refused(azure_store: AzureTarget, tmp_path: Path) -> None:
    aged_tree(tmp_path / "pacs")
    proc = run_cli("migrate", str(tmp_path / "pacs"), azure_store.url, "--state",
                   str(tmp_path / "s"), "--retain-years", "15", env=azure_store.env())
    assert proc.returncode == 2
    assert "retention locks are for S3 stores (Object Lock) in this version" in proc.stderr
    assert azure_store.object_keys() == []


@pytest.mark.seaweed
def test_sse_s3_encrypts_every_object(seaweed_s3: S3Target, tmp_path: Path) -> None:
    """--sse AES256 on every PUT and multipart upload; kept in the state for later runs."""
    aged_tree(tmp_path / "pacs")
    state = tmp_path / "state"
    run_cli("migrate", str(tmp_path / "pacs"), seaweed_s3.url, "--endpoint-url",
            seaweed_s3.info.endpoint_url, "--state", str(state), "--sse", "AES256",
            "--large-file", "5MiB", "--part-size", "5MiB", "--no-progress",
            env=seaweed_s3.env(), check=True)
    keys = {r["key"] for r in index_rows(state)}
    for key in keys:
        head = seaweed_s3.client.head_object(Bucket=seaweed_s3.bucket, Key=key)
        assert head.get("ServerSideEncryption") == "AES256", key
    verify = run_cli("verify", "--state", str(state), "--deep", env=seaweed_s3.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sse_kms_names_its_key(moto_s3: S3Target, tmp_path: Path) -> None:
    """SeaweedFS has no KMS here: moto takes the headers (it encrypts nothing)."""
    aged_tree(tmp_path / "pacs")
    state = tmp_path / "state"
    key_id = "arn:aws:kms:us-east-1:123456789012:key/pacs-archive"
    run_cli("migrate", str(tmp_path / "pacs"), moto_s3.url, "--endpoint-url",
            moto_s3.info.endpoint_url, "--state", str(state), "--sse", "aws:kms",
            "--sse-kms-key-id", key_id, "--large-file", "5MiB", "--part-size", "5MiB",
            "--no-progress", env=moto_s3.env(), check=True)
    for key in {r["key"] for r in index_rows(state)}:
        head = moto_s3.client.head_object(Bucket=moto_s3.bucket, Key=key)
        assert (head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")) == (
            "aws:kms", key_id), key


def test_sse_options_are_checked(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    proc = run_cli("migrate", str(tmp_path / "d"), "s3://b/p", "--sse-kms-key-id", "k",
                   "--state", str(tmp_path / "s"))
    assert proc.returncode == 2 and "--sse-kms-key-id goes with --sse aws:kms" in proc.stderr
    proc = run_cli("migrate", str(tmp_path / "d"), str(tmp_path / "d2"), "--sse", "AES256",
                   "--state", str(tmp_path / "s"))
    assert proc.returncode == 2 and "are for s3:// destinations" in proc.stderr
