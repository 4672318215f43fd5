"""Retention locks (S3 Object Lock) by study date: every object locked until its study's date
plus the years asked for, checked on SeaweedFS; a bucket without object lock refused first."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

import pydicom
import pytest
from botocore.exceptions import ClientError
from conftest import AzureTarget, S3Target, run_cli
from helpers import aged_tree, bundle_manifest, index_rows

from pacsmigrate import rows
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.errors import ConfigError
from pacsmigrate.records import Described, Entry, Member
from pacsmigrate.retention import Retention, RetentionMap, parse_classes

TODAY = date(2026, 12, 2)


def test_lock_ends_years_after_the_study() -> None:
    r = Retention(30)
    assert r.until("20190301", TODAY) == date(2049, 3, 1)
    assert Retention(1).until("20240229", date(2024, 12, 1)) == date(2025, 2, 28)
    assert r.until("", TODAY) == date(2056, 12, 2)  # no StudyDate: from today, never shorter
    assert Retention(15).until("19900101", TODAY) is None  # already over: nothing to lock
    # A placeholder date in the future counts from today; no lock ends past date.max.
    assert r.until("99991231", TODAY) == date(2056, 12, 2)
    assert r.until("", date(9990, 1, 1)) == date.max
    assert Retention(15, "COMPLIANCE", legal_hold=True).metadata("19900101", TODAY) == {
        "pacsmigrate-legal-hold": "ON", "pacsmigrate-retention": "15y"}
    assert r.metadata("20190301", TODAY) == {"pacsmigrate-retain-until": "2049-03-01",
                                             "pacsmigrate-lock-mode": "GOVERNANCE",
                                             "pacsmigrate-retention": "30y"}
    # What a retention map says of a study wins over --retain-years.
    assert r.metadata("20190301", TODAY, years=15, label="outpatient") == {
        "pacsmigrate-retain-until": "2034-03-01", "pacsmigrate-lock-mode": "GOVERNANCE",
        "pacsmigrate-retention": "outpatient"}
    assert Retention(None, legal_hold=True).metadata("20190301", TODAY) == {
        "pacsmigrate-legal-hold": "ON"}
    for bad in ({"years": 0}, {"years": 30, "mode": "STRICT"}, {"years": None}):
        with pytest.raises(ConfigError):
            Retention(**bad)  # type: ignore[arg-type]


def test_a_plan_s_key_follows_its_policy_to_the_day() -> None:
    """A store sets class and lock when an object (or multipart upload) is created: a plan
    asked of it otherwise gets another key, the retain-until day included (an upload
    resumed a day later would keep the earlier day's lock while the index said the later
    one). A study without a date, locked from today, gets a new key each day."""
    from pacsmigrate.keys import bundle_id
    from pacsmigrate.records import BundlePlan

    about = Described("g", study_uid="1.2.3")
    plan = BundlePlan("g", "file", [Member(b"/p/big.bin", 9, 1, about)], size=9)
    bare = bundle_id(plan)

    def keyed(policy: dict[str, str]) -> str:
        plan.policy = policy
        return bundle_id(plan)

    undated = [Retention(30).metadata("", day) for day in (TODAY, date(2026, 12, 3))]
    assert undated[0] != undated[1] and keyed(undated[0]) != keyed(undated[1]) != bare
    dated = [Retention(30).metadata("20190301", day) for day in (TODAY, date(2026, 12, 3))]
    assert keyed(dated[0]) == keyed(dated[1])  # a dated study's lock: the same every day
    assert keyed(Retention(30, "COMPLIANCE").metadata("", TODAY)) != keyed(undated[0])
    assert keyed(Retention(40).metadata("", TODAY)) != keyed(undated[0])
    assert keyed({"pacsmigrate-class": "STANDARD_IA"}) not in (bare, keyed(undated[0]))
    assert keyed({}) == bare  # no policy: the key of runs before policies were keyed


def _lock_bucket(target: S3Target, request: pytest.FixtureRequest) -> str:
    bucket = target.bucket + "-lock"
    target.client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    request.addfinalizer(lambda: target.drop(bucket))
    return bucket


def test_a_folder_of_unsorted_files_is_kept_as_undated_not_by_its_first_file(
        tmp_path: Path) -> None:
    """Unsorted files (truncated, no study UID) of several StudyDates share a folder's
    bundle: its class, year tag and lock came from whichever was first (a 1993 file left
    a 2026 one unlocked and in the old-study class). Now: undated (the default class, no
    year tag, locked from the run's day: no member's lock is shorter, a StudyDate in the
    future counting from that day too)."""
    from pacsmigrate.config import Destination, MigrateConfig
    from pacsmigrate.planpolicy import PlanPolicy
    from pacsmigrate.records import UNSORTED, BundlePlan
    from pacsmigrate.tiers import TierPolicy

    def plan(*days: str, status: str = UNSORTED) -> BundlePlan:
        members = [Member(f"/p/{i}.dcm".encode(), 9, 1, Described(
            "g", status, "truncated DICOM header" if status == UNSORTED else "",
            study_uid=f"1.{i}", study_date=d)) for i, d in enumerate(days)]
        return BundlePlan("g", "tar", members, size=9 * len(members))

    cfg = MigrateConfig(sources=(tmp_path,), dest=Destination.parse("s3://b/p"),
                        state_dir=tmp_path / "s", retention=Retention(30),
                        tiers=TierPolicy.parse("0-1y=STANDARD,1y-=STANDARD_IA"))
    policy = PlanPolicy(cfg, TODAY)
    mixed = plan("19930101", "19900101", "20261118")
    assert mixed.study_date == "" and policy.classes()(mixed) is None  # type: ignore[misc]
    assert policy.lock_of(None, mixed)[0]["pacsmigrate-retain-until"] == "2056-12-02"  # type: ignore[arg-type]
    study = plan("19930101", status="dicom")  # a study's bundle: its date, as before
    assert study.study_date == "19930101" and policy.classes()(study) == "STANDARD_IA"  # type: ignore[misc]
    assert "pacsmigrate-retain-until" not in policy.lock_of(None, study)[0]  # type: ignore[arg-type]


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


def _in_parts(target: S3Target, tmp_path: Path, bucket: str, *extra: str) -> tuple[str, ...]:
    """A migration of tmp_path/pacs into the bucket, files over 5 MiB in parts."""
    return ("migrate", str(tmp_path / "pacs"), f"s3://{bucket}/pacs", "--endpoint-url",
            target.info.endpoint_url, "--state", str(tmp_path / "state"), "--large-file",
            "5MiB", "--part-size", "5MiB", "--no-progress", *extra)


def _killed_at(point: str, args: tuple[str, ...], target: S3Target) -> None:
    killed = run_cli(*args, env={**target.env(), "PACSMIGRATE_CRASH_AT": point})
    assert killed.returncode == -9, killed.stdout + killed.stderr


@pytest.mark.seaweed
def test_a_lock_asked_after_a_kill_is_not_lost_to_the_resumed_upload(
        seaweed_s3: S3Target, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """A store sets an object's lock when its multipart upload is created: a run killed
    mid-upload without a lock, re-run with one, must not complete the old upload (its
    object would be unlocked while the index and manifest say locked)."""
    studies = aged_tree(tmp_path / "pacs")
    bucket = _lock_bucket(seaweed_s3, request)
    state = tmp_path / "state"
    args = _in_parts(seaweed_s3, tmp_path, bucket, "--concurrency", "1")
    _killed_at("part-uploaded:1", args, seaweed_s3)
    assert seaweed_s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    run_cli(*args, "--retain-years", "30", "--storage-class", "STANDARD_IA",
            env=seaweed_s3.env(), check=True)
    today = datetime.now(UTC).date()
    rows = index_rows(state)
    assert len({r["key"] for r in rows}) == 5
    # The studies the killed run committed keep what they were stored with; the index says
    # of every object what the store holds, and the large file's upload was redone locked.
    large = [r for r in rows if r["source_path"].endswith("scan.bin")]
    assert len(large) == 1 and large[0]["retain_until"], large
    for r in rows:
        head = seaweed_s3.client.head_object(Bucket=bucket, Key=r["key"])
        if not r["retain_until"]:
            assert "ObjectLockMode" not in head, r["key"]
            continue
        want = Retention(30).until(studies.get(r["study_uid"], ""), today)
        assert (head.get("ObjectLockMode"), head.get("StorageClass")) == (
            "GOVERNANCE", "STANDARD_IA"), r["key"]
        assert head["ObjectLockRetainUntilDate"].date() == want, r["key"]
        assert r["retain_until"] == want.isoformat(), r["key"]
    # The killed run's upload was aborted, not left to linger.
    assert not seaweed_s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.seaweed
def test_a_locked_file_adopted_without_its_sidecar_keeps_its_lock_in_the_index(
        seaweed_s3: S3Target, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Killed after a large file's upload, before its sidecar manifest: the re-run adopts
    the object and writes the manifest from the object itself, lock included."""
    (tmp_path / "pacs").mkdir()
    (tmp_path / "pacs" / "scan.bin").write_bytes(b"\0" * (6 << 20))
    bucket = _lock_bucket(seaweed_s3, request)
    state = tmp_path / "state"
    args = _in_parts(seaweed_s3, tmp_path, bucket, "--retain-years", "30")
    _killed_at("after-upload:1", args, seaweed_s3)
    done = run_cli(*args, env=seaweed_s3.env(), check=True)
    assert "adopted (stored by an interrupted attempt): 1" in done.stdout, done.stdout
    [row] = index_rows(state)
    head = seaweed_s3.client.head_object(Bucket=bucket, Key=row["key"])
    assert row["retain_until"] == head["ObjectLockRetainUntilDate"].date().isoformat()


@pytest.mark.seaweed
def test_asking_the_store_for_object_lock_is_retried_like_any_request(
        seaweed_s3: S3Target, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The question went to the store outside the retry wrapper: one 503 stopped the run."""
    from faultproxy import BEFORE, FaultProxy

    aged_tree(tmp_path / "pacs")
    bucket = _lock_bucket(seaweed_s3, request)
    with FaultProxy(seaweed_s3.info.endpoint_url) as proxy:
        proxy.inject("503", phase=BEFORE, times=2,
                     match=lambda req: req.method == "GET" and "object-lock" in req.query)
        proc = run_cli("migrate", str(tmp_path / "pacs"), f"s3://{bucket}/pacs",
                       "--endpoint-url", proxy.url, "--state", str(tmp_path / "state"),
                       "--retain-years", "30", "--no-progress", env=seaweed_s3.env())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proxy.injected["503"] == 2
    assert all(seaweed_s3.client.head_object(Bucket=bucket, Key=r["key"])["ObjectLockMode"]
               for r in index_rows(tmp_path / "state"))


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


def test_azure_retention_needs_version_level_immutability(azure_store: AzureTarget,
                                                          tmp_path: Path) -> None:
    """Azurite does not implement immutability: a container without it is refused before
    anything is stored; what the request would set is checked without a store."""
    aged_tree(tmp_path / "pacs")
    proc = run_cli("migrate", str(tmp_path / "pacs"), azure_store.url, "--state",
                   str(tmp_path / "s"), "--retain-years", "15", env=azure_store.env())
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        (f"error: {azure_store.url} has no version-level immutability: enable it on the "
        "container (Azure portal, or az storage container-rm create --enable-vlw), or drop "
        "--retain-years, --retention-map and --legal-hold")]
    assert azure_store.object_keys() == []
    from pacsmigrate.backends.azure_blob import write_args as _written

    meta = Retention(30, "COMPLIANCE", legal_hold=True).metadata("20190301", TODAY)
    written = _written(meta)
    policy = written["immutability_policy"]
    assert (policy.expiry_time.isoformat(), policy.policy_mode, written["legal_hold"]) == (
        "2049-03-01T00:00:00+00:00", "Locked", True)
    assert written["tags"] == {"pacsmigrate-retention": "30y"}
    assert _written(Retention(30).metadata("20190301", TODAY))[
        "immutability_policy"].policy_mode == "Unlocked"  # GOVERNANCE
    assert "immutability_policy" not in _written({})


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
    # The nightly run without --sse: its new objects were stored unencrypted, said OK.
    (tmp_path / "pacs" / "tonight.dcm").write_bytes(b"a file of the next night")
    run_cli("migrate", str(tmp_path / "pacs"), seaweed_s3.url, "--endpoint-url",
            seaweed_s3.info.endpoint_url, "--state", str(state), "--no-progress",
            env=seaweed_s3.env(), check=True)
    new = {r["key"] for r in index_rows(state)} - keys
    assert new
    for key in new:
        head = seaweed_s3.client.head_object(Bucket=seaweed_s3.bucket, Key=key)
        assert head.get("ServerSideEncryption") == "AES256", key


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


def _map(tmp_path: Path, text: str) -> RetentionMap:
    path = tmp_path / "retention.csv"
    path.write_text(text, encoding="utf-8")
    return RetentionMap(path, parse_classes(("research=50",)))


def test_retention_map_rows_and_one_line_errors(tmp_path: Path) -> None:
    m = _map(tmp_path, "\ufeffStudyInstanceUID,AccessionNumber,class\n"
             "1.2.3,ACC1,inpatient\n,ACC2,outpatient\n1.2.5,,research\n1.2.6,,7\n")
    assert list(m.rows()) == [(b"u:1.2.3", 30, "inpatient"), (b"a:ACC1", 30, "inpatient"),
                              (b"a:ACC2", 15, "outpatient"), (b"u:1.2.5", 50, "research"),
                              (b"u:1.2.6", 7, "7y")]
    for text, why in (
            ("uid,years\n1.2.3,30\n", "needs a StudyInstanceUID or AccessionNumber column"),
            ("study_uid,retention\n1.2.3,forever\n",
             ("line 2: unknown retention class 'forever' (known: inpatient=30, outpatient=15, "
             "research=50; add --retention-class NAME=YEARS)")),
            ("study_uid,years\n1.2.3,0\n", "line 2: must be 1 to 100 years, not 0"),
            ("study_uid,accession_number,years\n,,30\n",
             "line 2: no StudyInstanceUID or AccessionNumber")):
        with pytest.raises(ConfigError, match=re.escape(why)) as err:
            _map(tmp_path, text).check()
        assert "1.2.3" not in str(err.value)  # a UID is never quoted back
    with pytest.raises(ConfigError, match="must be NAME=YEARS"):
        parse_classes(("inpatient",))


def test_a_spilled_file_keeps_its_accession_number(tmp_path: Path) -> None:
    """Files of a scattered study wait in the spill: the AccessionNumber a retention map
    may name must come back with them (and never go into the index)."""
    about = Described("g", study_uid="1.2.3", accession="ACC-77")
    raw = rows.encode(Entry(b"/p/a.dcm", 0, 5, "", 5, 1, about), rows.NO_OBJECT,
                      keep_accession=True)
    assert rows.decode(b"/p/a.dcm", raw)[0].about.accession == "ACC-77"
    assert rows.decode(b"/p/a.dcm", rows.encode(Entry(b"/p/a.dcm", 0, 5, "", 5, 1, about),
                                                1))[0].about.accession == ""
    cp = Checkpoint(tmp_path / "s")
    try:
        cp.spill([Member(b"/p/a.dcm", 5, 1, about)])
        (_, back), = cp.spill_after(b"", 10)
        assert back.about.accession == "ACC-77"
    finally:
        cp.close()


@pytest.mark.seaweed
def test_a_retention_map_locks_each_study_for_its_class(
        seaweed_s3: S3Target, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """By StudyInstanceUID and by AccessionNumber, the rest for --retain-years; the lock is
    in each object's manifest and in the index, and an index rebuilt from the store keeps
    it."""
    studies = aged_tree(tmp_path / "pacs")
    uids = sorted(studies)
    by_accession = tmp_path / "pacs" / "mid" / "img.dcm"
    ds = pydicom.dcmread(by_accession)
    ds.AccessionNumber = "RIS-4711"
    ds.save_as(by_accession)
    mid_uid = str(ds.StudyInstanceUID)
    inpatient = next(u for u in uids if studies[u] and u != mid_uid)
    rmap = tmp_path / "ris.csv"
    rmap.write_text(f"StudyInstanceUID,AccessionNumber,class\n{inpatient},,inpatient\n"
                    ",RIS-4711,outpatient\n")
    bucket = _lock_bucket(seaweed_s3, request)
    state = tmp_path / "state"
    proc = run_cli("migrate", str(tmp_path / "pacs"), f"s3://{bucket}/pacs", "--endpoint-url",
                   seaweed_s3.info.endpoint_url, "--state", str(state), "--retention-map",
                   str(rmap), "--retain-years", "10", "--large-file", "5MiB", "--part-size",
                   "5MiB", "--no-progress", env=seaweed_s3.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Two dated studies not in the map and the undated one: --retain-years.
    assert "2 study objects it does not name: locked for --retain-years" in proc.stdout
    today = datetime.now(UTC).date()
    years = {inpatient: (30, "inpatient"), mid_uid: (15, "outpatient")}
    for r in index_rows(state):
        n, label = years.get(r["study_uid"], (10, "10y"))
        want = Retention(n).until(studies.get(r["study_uid"], ""), today)
        head = seaweed_s3.client.head_object(Bucket=bucket, Key=r["key"])
        tags = seaweed_s3.client.get_object_tagging(Bucket=bucket, Key=r["key"])["TagSet"]
        if want is None:  # the 3000-day-old study's ten years are over: no lock left
            assert "ObjectLockMode" not in head and r["retain_until"] == ""
            continue
        assert head["ObjectLockRetainUntilDate"].date() == want, r["key"]
        assert (r["retain_until"], r["lock_mode"]) == (want.isoformat(), "GOVERNANCE")
        assert {"Key": "pacsmigrate-retention", "Value": label} in tags
        if r["key"].endswith(".tar"):
            doc = bundle_manifest(seaweed_s3.client.get_object(
                Bucket=bucket, Key=r["key"])["Body"].read())
            assert doc["retention"] == {"retain_until": want.isoformat(), "mode": "GOVERNANCE",
                                        "legal_hold": False, "retention": label}
    rebuilt = tmp_path / "rebuilt"
    run_cli("index", "rebuild", f"s3://{bucket}/pacs", "--endpoint-url",
            seaweed_s3.info.endpoint_url, "--state", str(rebuilt), env=seaweed_s3.env(),
            check=True)
    assert index_rows(rebuilt) == index_rows(state)


def test_an_unmapped_study_without_default_is_stored_unlocked_and_said(
        moto_s3: S3Target, tmp_path: Path) -> None:
    aged_tree(tmp_path / "pacs")
    rmap = tmp_path / "ris.csv"
    rmap.write_text("StudyInstanceUID,years\n9.9.9,30\n")
    proc = run_cli("migrate", str(tmp_path / "pacs"), "s3://hospital-archive/pacs",
                   "--dry-run", "--offline", "--state", str(tmp_path / "s"), "--retention-map", str(rmap),
                   "--large-file", "5MiB")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("WARNING: retention map: 4 study objects it does not name: no lock (give "
            "--retain-years for them)") in proc.stdout
    bad = run_cli("migrate", str(tmp_path / "pacs"), "s3://hospital-archive/pacs",
                  "--dry-run", "--offline", "--state", str(tmp_path / "s2"), "--retention-map",
                  str(tmp_path / "missing.csv"))
    assert bad.returncode == 2 and "cannot read --retention-map" in bad.stderr
    assert not (tmp_path / "s2").exists()
