"""Storage classes by study age: the policy, its checks, and objects really stored in their
class on SeaweedFS (S3 storage classes) and Azurite (Azure access tiers)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from conftest import AzureTarget, S3Target, run_cli
from helpers import aged_tree as _aged_tree
from helpers import index_rows

from pacsmigrate.config import Destination
from pacsmigrate.errors import ConfigError
from pacsmigrate.lifecycle import azure_policy, s3_rules
from pacsmigrate.tiers import TierPolicy, billed_size, classes_used, parse_age, tiers_meta

POLICY = "0-180d=STANDARD,180d-5y=STANDARD_IA,5y-=GLACIER_IR"
TODAY = date(2026, 12, 2)


def test_ages() -> None:
    assert [parse_age(a) for a in ("0", "180d", "6m", "5y")] == [0, 180, 180, 1825]
    for bad in ("5", "5x", "-1d", "y"):
        with pytest.raises(ConfigError, match="not an age"):
            parse_age(bad)


def _ago(days: int) -> str:
    return f"{TODAY - timedelta(days=days):%Y%m%d}"


@pytest.mark.parametrize(("study_date", "expected"), [
    (_ago(0), "STANDARD"), (_ago(179), "STANDARD"),
    (_ago(180), "STANDARD_IA"),  # a range includes its start, not its end
    (f"{TODAY - timedelta(days=1824):%Y.%m.%d}", "STANDARD_IA"),  # the old DA form
    (_ago(1825), "GLACIER_IR"), ("19900101", "GLACIER_IR"),
    ("20300101", "STANDARD"),  # a date in the future counts as new
    ("", "ONEZONE_IA"), ("2021", "ONEZONE_IA"), ("20211332", "ONEZONE_IA"),  # no usable date
])
def test_class_by_study_age(study_date: str, expected: str) -> None:
    policy = TierPolicy.parse(POLICY, default="ONEZONE_IA")
    assert policy.class_for(study_date, TODAY) == expected


def test_closed_policy_leaves_older_studies_to_the_default() -> None:
    policy = TierPolicy.parse("0-1y=Hot,1y-2y=Cool")
    assert policy.class_for("20251202", TODAY) == "Cool"
    assert policy.class_for("20201202", TODAY) is None  # the store's default class


@pytest.mark.parametrize(("text", "words"), [
    ("10d-1y=STANDARD", "from 0 without gaps"),
    ("0-1y=STANDARD,2y-=GLACIER", "from 0 without gaps"),
    ("0-=STANDARD,1y-=GLACIER", "only the last range may be open"),
    ("0-0d=STANDARD", "is empty"),
    ("0-1y:STANDARD", "not a tier"),
    ("0-1q=STANDARD", "not an age"),
])
def test_bad_policies_are_one_clear_error(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        TierPolicy.parse(text)


def test_classes_are_checked_against_the_store() -> None:
    TierPolicy.parse(POLICY).check("s3")
    TierPolicy.parse("0-1y=Hot,1y-=Archive").check("az")
    with pytest.raises(ConfigError, match="'Hot' is not a storage class of s3:// stores"):
        TierPolicy.parse("0-1y=Hot").check("s3")
    with pytest.raises(ConfigError, match="file:// stores have no storage classes"):
        TierPolicy(default="STANDARD").check("file")
    with pytest.raises(ConfigError, match="Wasabi has no storage classes"):
        TierPolicy(default="STANDARD").check("s3", provider="wasabi")
    TierPolicy().check("file")  # no policy: nothing to check


def test_the_state_keeps_every_class_any_run_asked_for() -> None:
    """A re-run asking other classes: objects of both are stored, so a replica's store must
    take both (the state kept only the last run's policy)."""
    first = tiers_meta(TierPolicy(default="GLACIER_IR"), None)
    assert classes_used(first) == ["GLACIER_IR"]
    second = tiers_meta(TierPolicy.parse("0-1y=STANDARD", default="STANDARD_IA"), first)
    assert second["policy"] == "0-1y=STANDARD" and second["default"] == "STANDARD_IA"
    assert classes_used(second) == ["GLACIER_IR", "STANDARD", "STANDARD_IA"]
    # A state from before this kept no list: its policy's classes stand for it.
    assert classes_used({"policy": "0-1y=STANDARD", "default": "GLACIER"}) == [
        "STANDARD", "GLACIER"]
    assert classes_used(None) == []


def _expected(rows: list[dict[str, str]], studies: dict[str, str], default: str) -> dict[str, str]:
    policy = TierPolicy.parse(POLICY, default=default)
    today = datetime.now(UTC).date()
    return {r["key"]: policy.class_for(studies.get(r["study_uid"], ""), today) or default
            for r in rows}


@pytest.mark.seaweed
def test_objects_are_stored_in_their_class_on_s3(seaweed_s3: S3Target, tmp_path: Path) -> None:
    studies = _aged_tree(tmp_path / "pacs")
    state = tmp_path / "state"
    run_cli("migrate", str(tmp_path / "pacs"), seaweed_s3.url, "--endpoint-url",
            seaweed_s3.info.endpoint_url, "--state", str(state), "--tier-policy", POLICY,
            "--storage-class", "ONEZONE_IA", "--large-file", "5MiB", "--part-size", "5MiB",
            "--no-progress", env=seaweed_s3.env(), check=True)
    expected = _expected(index_rows(state), studies, "ONEZONE_IA")
    assert sorted(set(expected.values())) == ["GLACIER_IR", "ONEZONE_IA", "STANDARD",
                                              "STANDARD_IA"]
    years = {r["key"]: studies.get(r["study_uid"], "")[:4] for r in index_rows(state)}
    for key, storage_class in expected.items():
        head = seaweed_s3.client.head_object(Bucket=seaweed_s3.bucket, Key=key)
        assert head.get("StorageClass", "STANDARD") == storage_class, key
        # Tagged with the class and the study's year, for lifecycle rules and inventories.
        tags = {t["Key"]: t["Value"] for t in seaweed_s3.client.get_object_tagging(
            Bucket=seaweed_s3.bucket, Key=key)["TagSet"]}
        want = {"pacsmigrate-class": storage_class}
        if years[key]:
            want["pacsmigrate-study-year"] = years[key]
        assert tags == want, key


def test_a_run_killed_in_an_archive_class_is_finished_by_the_same_command(
        moto_s3: S3Target, tmp_path: Path) -> None:
    """An object the killed run stored in GLACIER cannot be read back to be checked: every
    re-run stopped on it, asking to restore an object the index did not know. It is
    removed and stored again."""
    _aged_tree(tmp_path / "pacs")
    args = ("migrate", str(tmp_path / "pacs"), moto_s3.url, "--endpoint-url",
            moto_s3.info.endpoint_url, "--state", str(tmp_path / "state"), "--storage-class",
            "GLACIER", "--no-progress")
    killed = run_cli(*args, env={**moto_s3.env(), "PACSMIGRATE_CRASH_AT": "after-upload:2"})
    assert killed.returncode == -9, killed.stdout + killed.stderr
    again = run_cli(*args, env=moto_s3.env())
    assert again.returncode == 0, again.stdout + again.stderr
    status = json.loads(run_cli("status", "--state", str(tmp_path / "state"), "--json",
                                check=True).stdout)
    assert status["files_pending"] == 0 and status["uploads_in_doubt"] == 0
    rows = index_rows(tmp_path / "state")
    assert len(rows) == status["files_migrated"] == sum(
        1 for p in (tmp_path / "pacs").rglob("*") if p.is_file())
    keys = {r["key"] for r in rows}
    assert keys <= set(moto_s3.object_keys())
    for key in keys:
        head = moto_s3.client.head_object(Bucket=moto_s3.bucket, Key=key)
        assert head.get("StorageClass") == "GLACIER", key


def test_blobs_are_stored_in_their_tier_on_azure(azure_store: AzureTarget, tmp_path: Path
                                                 ) -> None:
    studies = _aged_tree(tmp_path / "pacs")
    state = tmp_path / "state"
    policy = "0-180d=Hot,180d-5y=Cool,5y-=Cold"
    run_cli("migrate", str(tmp_path / "pacs"), f"az://{azure_store.bucket}/pacs", "--state",
            str(state), "--tier-policy", policy, "--storage-class", "Cool", "--large-file",
            "5MiB", "--part-size", "5MiB", "--no-progress", env=azure_store.env(), check=True)
    today = datetime.now(UTC).date()
    tiers = TierPolicy.parse(policy, default="Cool")
    for r in index_rows(state):
        want = tiers.class_for(studies.get(r["study_uid"], ""), today)
        blob = azure_store.client.get_blob_client(r["key"])
        assert blob.get_blob_properties().blob_tier == want, r["key"]
        year = studies.get(r["study_uid"], "")[:4]
        assert blob.get_blob_tags() == ({"pacsmigrate-class": want} | (
            {"pacsmigrate-study-year": year} if year else {})), r["key"]


def test_a_store_without_classes_refuses_a_policy(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "dest").mkdir()
    proc = run_cli("migrate", str(tmp_path / "src"), str(tmp_path / "dest"), "--state",
                   str(tmp_path / "s"), "--storage-class", "STANDARD_IA")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: file:// stores have no storage classes: drop "
                                   "--storage-class and --tier-policy")
    assert not any((tmp_path / "dest").iterdir())  # refused before anything was written



def test_the_dry_run_counts_objects_per_class(tmp_path: Path) -> None:
    _aged_tree(tmp_path / "pacs")
    proc = run_cli("migrate", str(tmp_path / "pacs"), "s3://hospital-archive/pacs", "--dry-run", "--offline",
                   "--state", str(tmp_path / "s"), "--tier-policy", POLICY, "--storage-class",
                   "ONEZONE_IA", "--large-file", "5MiB", "--part-size", "5MiB")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("storage class")]
    assert [ln.split(" MB")[0].rsplit(",", 1)[0] for ln in lines] == [
        "storage class GLACIER_IR: 1 objects", "storage class ONEZONE_IA: 2 objects",
        "storage class STANDARD: 1 objects", "storage class STANDARD_IA: 1 objects"]
    # A one-image study (~40 KB) is billed as 128 KiB in the IA classes and Glacier IR; the
    # 6 MiB file is not; STANDARD has no minimum.
    small = {ln.split(":")[0]: ln.split("; ")[1] for ln in lines if "; " in ln}
    assert small == {"storage class GLACIER_IR": "1 objects billed above their size: 0.1 MB billed",
                     "storage class ONEZONE_IA": "1 objects billed above their size: 6.4 MB billed",
                     "storage class STANDARD_IA": "1 objects billed above their size: 0.1 MB billed"}


def test_billed_sizes() -> None:
    assert billed_size("STANDARD_IA", 1000) == 128 * 1024
    assert billed_size("STANDARD_IA", 10 << 20) == 10 << 20
    assert billed_size("DEEP_ARCHIVE", 1000) == 1000 + 40 * 1024
    assert billed_size("STANDARD", 1000) == billed_size(None, 1000) == billed_size("Cool", 1000)


def test_reading_an_archived_blob_says_to_rehydrate_it(azure_store: AzureTarget,
                                                       tmp_path: Path) -> None:
    _aged_tree(tmp_path / "pacs")
    state, env = tmp_path / "state", azure_store.env()
    run_cli("migrate", str(tmp_path / "pacs"), f"az://{azure_store.bucket}", "--state",
            str(state), "--storage-class", "Archive", "--no-progress", env=env, check=True)
    path = tmp_path / "pacs" / "old" / "img.dcm"
    proc = run_cli("get", str(path), "-o", str(tmp_path / "out.dcm"), "--state", str(state),
                   env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "is in the Archive tier: rehydrate it first" in line
    assert not (tmp_path / "out.dcm").exists()


def test_a_glacier_get_is_mapped_to_restore_first() -> None:
    from botocore.exceptions import ClientError

    from pacsmigrate.backends.s3_errors import classify, map_error
    from pacsmigrate.errors import ObjectArchivedError

    exc = ClientError({"Error": {"Code": "InvalidObjectState", "Message": "The operation is "
                       "not valid for the object's storage class"},
                       "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")
    assert classify(exc) is None  # no retry: it stays archived until restored
    mapped = map_error(exc, key="pacs/3f/x.tar")
    assert isinstance(mapped, ObjectArchivedError)
    assert "pacs/3f/x.tar is in a Glacier storage class: restore it first" in str(mapped)


def test_lifecycle_rules_move_each_study_year_on_when_its_youngest_study_crosses(
        moto_s3: S3Target) -> None:
    policy = TierPolicy.parse(POLICY)
    dest = Destination.parse("s3://hospital-archive/pacs")
    doc = s3_rules(policy, [2019, 2024, 9999], dest)  # 9999: a placeholder date, no move
    assert [r["ID"] for r in doc["Rules"]] == ["pacsmigrate-study-year-2019",
                                               "pacsmigrate-study-year-2024"]
    first = doc["Rules"][0]
    assert first["ID"] == "pacsmigrate-study-year-2019"
    assert first["Filter"] == {"And": {"Prefix": "pacs/", "Tags": [
        {"Key": "pacsmigrate-study-year", "Value": "2019"}]}}
    # 31 Dec 2019 + 180 days, and + 5 years of 365 days: never before any 2019 study is due.
    assert first["Transitions"] == [
        {"Date": "2020-06-28T00:00:00Z", "StorageClass": "STANDARD_IA"},
        {"Date": "2024-12-29T00:00:00Z", "StorageClass": "GLACIER_IR"}]
    # A store takes them as they are (moto parses and keeps the configuration).
    moto_s3.client.put_bucket_lifecycle_configuration(Bucket=moto_s3.bucket,
                                                      LifecycleConfiguration=doc)
    kept = moto_s3.client.get_bucket_lifecycle_configuration(Bucket=moto_s3.bucket)["Rules"]
    assert [r["ID"] for r in kept] == ["pacsmigrate-study-year-2019",
                                       "pacsmigrate-study-year-2024"]
    assert [t["StorageClass"] for t in kept[1]["Transitions"]] == ["STANDARD_IA", "GLACIER_IR"]


def test_azure_management_policy_counts_days_from_the_first_run() -> None:
    policy = TierPolicy.parse("0-180d=Hot,180d-5y=Cool,5y-=Archive")
    dest = Destination.parse("az://pacs-archive/2016")
    doc = azure_policy(policy, [2019], dest, first_day=date(2026, 12, 2))
    rule = doc["rules"][0]
    assert rule["definition"]["filters"]["blobIndexMatch"] == [
        {"name": "pacsmigrate-study-year", "op": "==", "value": "2019"}]
    assert rule["definition"]["filters"]["prefixMatch"] == ["pacs-archive/2016/"]
    # Both days are past by the first run: due at once (Azure checks daily).
    assert rule["definition"]["actions"]["baseBlob"] == {
        "tierToCool": {"daysAfterCreationGreaterThan": 0},
        "tierToArchive": {"daysAfterCreationGreaterThan": 0}}
    later = azure_policy(policy, [2026], dest, first_day=date(2026, 12, 2))
    assert later["rules"][0]["definition"]["actions"]["baseBlob"] == {
        "tierToCool": {"daysAfterCreationGreaterThan": 29 + 180},
        "tierToArchive": {"daysAfterCreationGreaterThan": 29 + 1825}}


def test_policy_lifecycle_command(moto_s3: S3Target, tmp_path: Path) -> None:
    studies = _aged_tree(tmp_path / "pacs")
    state, env = tmp_path / "state", moto_s3.env()
    run_cli("migrate", str(tmp_path / "pacs"), moto_s3.url, "--endpoint-url",
            moto_s3.info.endpoint_url, "--state", str(state), "--tier-policy", POLICY,
            "--no-progress", env=env, check=True)
    doc = json.loads(run_cli("policy", "lifecycle", "--state", str(state), check=True).stdout)
    years = sorted({d[:4] for d in studies.values() if d})
    assert [r["ID"] for r in doc["Rules"]] == [f"pacsmigrate-study-year-{y}" for y in years]
    plain = tmp_path / "plain"
    run_cli("migrate", str(tmp_path / "pacs"), moto_s3.url + "2", "--endpoint-url",
            moto_s3.info.endpoint_url, "--state", str(plain), "--dry-run", env=env, check=True)
    proc = run_cli("policy", "lifecycle", "--state", str(plain))
    assert proc.returncode == 2 and "was run without --tier-policy" in proc.stderr
