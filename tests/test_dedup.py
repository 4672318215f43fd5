"""Deduplication: content (blake3) stored once per migration, every copy indexed at its bytes;
safe across re-runs, kills and an index rebuilt from the store."""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import blake3
import pydicom
import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import assert_complete, bundle_manifest, config, index_rows

from pacsmigrate import migrate
from pacsmigrate.bundle import Built, tar_parts
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.paths import from_fields
from pacsmigrate.records import TAR, BundlePlan, Described, Entry, Member, Stored, StoredObject
from pacsmigrate.retention import covers, lock_of
from pacsmigrate.synth import make_tree


def _rows_by_path(state: Path) -> dict[bytes, dict[str, str]]:
    return {from_fields(r["source_path"], r["source_path_b64"]): r for r in index_rows(state)}


def _copy_study(root: Path, name: str) -> list[Path]:
    """A second copy of the first study's folder (same bytes, same UIDs): a PACS that
    received a study twice."""
    study = next(p.parent for p in sorted(root.rglob("*")) if p.is_file())
    dst = root / name
    shutil.copytree(study, dst)
    return sorted(p for p in dst.rglob("*") if p.is_file())


def test_copies_are_indexed_at_the_stored_bytes(s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root / "a", studies=3, seed=41, layout="patient", scale=0.05)
    state = tmp_path / "state"
    cfg = config([root], s3.url, state, s3.info.endpoint_url)
    # Two copies of one study in the first run: same study, so the same bundle holds them.
    inside = _copy_study(root / "a", "again")
    first = run(migrate(cfg))
    assert first.duplicate_files == len(inside)
    rows = _rows_by_path(state)
    for p in inside:
        copy = rows[os.fsencode(p)]
        assert copy["duplicate_of"] == copy["key"]  # the first copy is in the same bundle
        originals = [r for q, r in rows.items() if r["blake3"] == copy["blake3"]
                     and not r["duplicate_of"]]
        assert len(originals) == 1
        assert (copy["key"], copy["offset"], copy["length"]) == (
            originals[0]["key"], originals[0]["offset"], originals[0]["length"])
    # Copies arriving later (an incremental re-run) point at what the first run stored.
    later = _copy_study(root / "a", "later")
    blob = TEST_FILES / "CT_small.dcm"
    for d in ("x", "y"):
        (root / d).mkdir()
        shutil.copy(blob, root / d / "ct.dcm")
    keys_before = set(s3.object_keys())
    second = run(migrate(cfg))
    # x/ct.dcm and y/ct.dcm: one study, one bundle: the second is a copy within it.
    assert second.duplicate_files == len(later) + 1
    rows = _rows_by_path(state)
    new_keys = set(s3.object_keys()) - keys_before
    for p in later:
        r = rows[os.fsencode(p)]
        assert r["duplicate_of"] and r["key"] in keys_before
    # The copies' bundle holds no image bytes: only its manifest, naming where they are.
    copies_bundle = [k for k in new_keys if k.endswith(".tar") and any(
        m["source_path"] == str(later[0]) for m in bundle_manifest(s3.get(k))["members"])]
    assert len(copies_bundle) == 1
    doc = bundle_manifest(s3.get(copies_bundle[0]))
    assert {m["duplicate_of"] for m in doc["members"]} <= keys_before
    assert len(s3.get(copies_bundle[0])) < 8192  # headers, manifest and trailer, no images
    assert_complete(s3, state, root)
    verify = run_cli("verify", "--state", str(state), "--deep", "--source", env=s3.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
    status = json.loads(run_cli("status", "--state", str(state), "--json", check=True).stdout)
    assert status["files_deduplicated"] == first.duplicate_files + second.duplicate_files
    assert status["bytes_deduplicated"] == first.duplicate_bytes + second.duplicate_bytes > 0
    out = tmp_path / "copy.dcm"
    run_cli("get", str(later[0]), "-o", str(out), "--state", str(state), env=s3.env(),
            check=True)
    assert out.read_bytes() == later[0].read_bytes()


def test_no_dedup_stores_every_copy(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root / "a", studies=1, seed=42, layout="patient", scale=0.05)
    copies = _copy_study(root / "a", "again")
    state = tmp_path / "state"
    proc = run_cli("migrate", str(root), moto_s3.url, "--endpoint-url",
                   moto_s3.info.endpoint_url, "--state", str(state), "--no-dedup",
                   "--no-progress", env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    assert "deduplicated" not in proc.stdout
    rows = _rows_by_path(state)
    offsets = {(r["key"], r["offset"]) for r in rows.values()}
    assert len(offsets) == len(rows) and not any(r["duplicate_of"] for r in rows.values())
    assert_complete(moto_s3, state, root)
    assert copies


def test_rebuilt_index_keeps_the_duplicates(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root / "a", studies=4, seed=43, layout="hashed", scale=0.05)
    state = tmp_path / "state"
    cfg = config([root], moto_s3.url, state, moto_s3.info.endpoint_url)
    run(migrate(cfg))
    for i in range(3):  # copies in later runs: their bundles point at earlier objects
        assert _copy_study(root / "a", f"copy{i}")
        run(migrate(cfg))
    original = index_rows(state)
    assert sum(bool(r["duplicate_of"]) for r in original) > 0
    rebuilt = tmp_path / "rebuilt"
    proc = run_cli("index", "rebuild", moto_s3.url, "--endpoint-url",
                   moto_s3.info.endpoint_url, "--state", str(rebuilt), env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    assert index_rows(rebuilt) == original
    verify = run_cli("verify", "--state", str(rebuilt), "--deep", env=moto_s3.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_same_sop_with_other_bytes_is_kept_twice_and_reported(moto_s3: S3Target,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    (root / "first").mkdir(parents=True)
    (root / "resent").mkdir()
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.save_as(root / "first" / "img.dcm")
    ds.SeriesDescription = "corrected and sent again"
    ds.save_as(root / "resent" / "img.dcm")
    state, report = tmp_path / "state", tmp_path / "report.json"
    for _ in range(2):  # the second run stores nothing and reports the same
        proc = run_cli("migrate", str(root), moto_s3.url, "--endpoint-url",
                       moto_s3.info.endpoint_url, "--state", str(state), "--report",
                       str(report), "--no-progress", env=moto_s3.env())
        assert proc.returncode == 0, proc.stderr
    rows = index_rows(state)
    assert len(rows) == 2 and rows[0]["blake3"] != rows[1]["blake3"]
    listed = json.loads(report.read_text())["same_sop_other_bytes"]
    assert len(listed) == 1
    pair = {listed[0]["source_path"], listed[0]["other"]["source_path"]}
    assert pair == {str(root / "first" / "img.dcm"), str(root / "resent" / "img.dcm")}
    status = json.loads(run_cli("status", "--state", str(state), "--json", check=True).stdout)
    assert status["same_sop_other_bytes"] == 1 and status["files_deduplicated"] == 0
    # `get --sop` refuses to pick one of them and names both; by path, each is its own.
    got = run_cli("get", "--sop", ds.SOPInstanceUID, "--state", str(state), "-o",
                  str(tmp_path / "out.dcm"), env=moto_s3.env())
    assert got.returncode == 2 and not (tmp_path / "out.dcm").exists()
    assert got.stderr.startswith("error: 2 migrated files with other bytes have that "
                                 "SOPInstanceUID"), got.stderr
    assert str(root / "first" / "img.dcm") in got.stderr
    assert str(root / "resent" / "img.dcm") in got.stderr
    for name in ("first", "resent"):
        run_cli("get", str(root / name / "img.dcm"), "--state", str(state), "-o",
                str(tmp_path / f"{name}.dcm"), env=moto_s3.env(), check=True)
        assert (tmp_path / f"{name}.dcm").read_bytes() == (root / name / "img.dcm").read_bytes()


@pytest.mark.parametrize("point", ["after-intent:1", "after-upload:1", "after-commit:1"])
def test_kill_during_a_run_of_copies_then_resume(point: str, moto_s3: S3Target,
                                                 tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root / "a", studies=2, seed=44, layout="patient", scale=0.05)
    state = tmp_path / "state"
    args = ["migrate", str(root), moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
            "--state", str(state), "--no-progress"]
    run_cli(*args, env=moto_s3.env(), check=True)
    _copy_study(root / "a", "copy")
    make_tree(root / "b", studies=2, seed=45, layout="date", scale=0.05)
    killed = run_cli(*args, env={**moto_s3.env(), "PACSMIGRATE_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = run_cli(*args, env=moto_s3.env())
    assert done.returncode == 0, done.stdout + done.stderr
    rows = assert_complete(moto_s3, state, root)
    stored = set(moto_s3.object_keys())
    assert any(r["duplicate_of"] for r in rows)
    assert all(r["key"] in stored for r in rows)
    verify = run_cli("verify", "--state", str(state), "--deep", "--source", env=moto_s3.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_copy_points_only_at_bytes_locked_as_long(tmp_path: Path) -> None:
    """Retention and deduplication together: a file kept 30 years (or under COMPLIANCE, or a
    legal hold) is not indexed at bytes whose lock ends sooner or is weaker."""

    def lock(until: str, mode: str = "GOVERNANCE", hold: bool = False) -> dict[str, object]:
        return {"retain_until": until, "mode": mode, "legal_hold": hold, "retention": ""}

    short, long = lock_of(lock("2040-01-01")), lock_of(lock("2056-01-01"))
    assert covers(long, short) and not covers(short, long)
    assert not covers(long, lock_of(lock("2040-01-01", "COMPLIANCE")))
    assert not covers(long, lock_of(lock("", hold=True))) and covers(long, lock_of(None))
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    digest = blake3.blake3(data).hexdigest()

    def pack(need: dict[str, object], have: tuple[int, int]) -> Built:
        plan = BundlePlan("g", TAR, key="k.tar", bundle_id="b")
        plan.add(Member(b"/p/a.dcm", len(data), 1, Described("g"), digest, data))
        built = Built(retention=need)
        list(tar_parts(plan, built, part_size=8 << 20, secret=b"s", known=lambda _, d: Stored(
            "old.tar", 512, len(data), "", have) if d == digest else None))
        return built

    assert pack(lock("2040-01-01"), long).duplicates == 1  # stored longer: shared
    assert pack(lock("2056-01-01"), short).duplicates == 0  # stored shorter: stored again
    # The longer-locked copy then becomes the one later copies point at.
    cp = Checkpoint(tmp_path / "s")
    try:
        e = Entry(b"/p/a.dcm", 512, len(data), digest, len(data), 1, Described("g"))
        for key, until in (("a.tar", "2040-01-01"), ("b.tar", "2056-01-01"),
                           ("c.tar", "2045-01-01")):
            cp.commit_objects([StoredObject(key, TAR, "g", key, 4096, "e", "", (
                replace(e, path=f"/p/{key}".encode()),), retention=lock(until))])
        found = cp.stored_content(Described("g"), digest)
        assert found is not None and (found.key, found.lock) == ("b.tar", long)
    finally:
        cp.close()


def test_a_copy_of_a_large_file_is_not_sent_again(moto_s3: S3Target, tmp_path: Path) -> None:
    """Large files go alone (no bundle): a copy is found by hashing it first, only when a
    large file of its size is stored; same size and other bytes is stored as usual."""
    root = tmp_path / "pacs"
    (root / "a").mkdir(parents=True)
    big = os.urandom(6 << 20)
    (root / "a" / "cine.bin").write_bytes(big)
    state = tmp_path / "state"
    cfg = config([root], moto_s3.url, state, moto_s3.info.endpoint_url, large_file=5 << 20)
    run(migrate(cfg))
    (root / "b").mkdir()
    (root / "b" / "cine-copy.bin").write_bytes(big)
    (root / "b" / "other.bin").write_bytes(os.urandom(6 << 20))  # same size, other bytes
    second = run(migrate(cfg))
    assert second.duplicate_files == 1 and second.duplicate_bytes == len(big)
    assert second.bytes_uploaded < (6 << 20) + 64 * 1024  # other.bin, and one manifest
    rows = _rows_by_path(state)
    orig, copy = rows[os.fsencode(root / "a" / "cine.bin")], rows[
        os.fsencode(root / "b" / "cine-copy.bin")]
    assert (copy["key"], copy["offset"], copy["length"], copy["duplicate_of"]) == (
        orig["key"], "0", str(len(big)), orig["key"])
    assert not rows[os.fsencode(root / "b" / "other.bin")]["duplicate_of"]
    assert_complete(moto_s3, state, root)
    verify = run_cli("verify", "--state", str(state), "--deep", "--source", env=moto_s3.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
    rebuilt = tmp_path / "rebuilt"
    run_cli("index", "rebuild", moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
            "--state", str(rebuilt), env=moto_s3.env(), check=True)
    assert index_rows(rebuilt) == index_rows(state)
