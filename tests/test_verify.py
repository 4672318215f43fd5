"""verify against real servers: clean runs pass; deleted, altered and changed data is named."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import MiB, config, index_rows

from pacsmigrate import migrate
from pacsmigrate.access import open_migration
from pacsmigrate.synth import make_tree
from pacsmigrate.verify import MEMBER_ALTERED, VerifyConfig, VerifyResult, verify


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "nas"
    make_tree(root / "dcm4chee", studies=3, seed=1, layout="date", scale=0.05)
    odd = root / "odd"
    odd.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "README.txt"):
        shutil.copy(TEST_FILES / name, odd / name)
    return root


def _migrate(target: S3Target, tree: Path, state: Path) -> list[dict[str, str]]:
    # Files over 64 KiB are objects of their own, with a sidecar manifest beside them.
    stats = run(migrate(config([tree], target.url, state, target.info.endpoint_url,
                               large_file=64 * 1024)))
    assert stats.not_migrated == 0
    return index_rows(state)


def _verify(target: S3Target, state: Path, *args: str) -> tuple[int, str, dict[str, object]]:
    """Run `pacsmigrate verify` as an admin would; return exit status, stdout, report."""
    report = state.parent / "verify.json"
    proc = run_cli("verify", "--state", str(state), "--report", str(report), *args,
                   env=target.env())
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, proc.stdout, json.loads(report.read_text())


def _kinds(doc: dict[str, object]) -> list[tuple[str, str, str]]:
    findings = doc["findings"]
    assert isinstance(findings, list)
    return sorted((f["kind"], f["key"], f["source_path"]) for f in findings)


def _data_keys(rows: list[dict[str, str]]) -> list[str]:
    return sorted({r["key"] for r in rows})


def _raw_keys(rows: list[dict[str, str]]) -> list[str]:
    """Objects that are one large file each: their manifest is a sidecar object."""
    return [k for k in _data_keys(rows) if not k.endswith(".tar")]


def test_clean_migration_passes_every_check(moto_s3: S3Target, tree: Path, tmp_path: Path
                                            ) -> None:
    state = tmp_path / "state"
    rows = _migrate(moto_s3, tree, state)
    objects = len(_data_keys(rows))

    code, out, doc = _verify(moto_s3, state)
    assert code == 0 and "OK: nothing wrong found" in out
    totals = doc["totals"]
    assert isinstance(totals, dict)
    # One LIST answered for every object and sidecar: no HEAD, no GET.
    assert totals["objects"] == totals["listed"] == objects
    assert totals["manifests"] == len(_raw_keys(rows)) > 0
    assert totals["heads"] == 0 and totals["range_requests"] == 0
    assert doc["ok"] is True and doc["findings"] == []

    code, out, doc = _verify(moto_s3, state, "--deep", "--source")
    assert code == 0, out
    totals = doc["totals"]
    assert isinstance(totals, dict)
    assert totals["rows"] == totals["members_checked"] == len(rows)
    # Members of an object are coalesced: each (small) object is read in one range GET.
    assert totals["range_requests"] == objects
    assert totals["bytes_read"] <= sum(int(r["length"]) for r in rows) + objects * 64 * 1024
    assert totals["sources_checked"] == totals["sources_walked"] == len(rows)
    assert totals["sources_bytes"] == sum(int(r["size"]) for r in rows)
    assert doc["findings"] == [] and doc["options"] == {
        "deep": True, "sample": None, "seed": 0, "source": True}


def test_deleted_object_and_sidecar_are_named(moto_s3: S3Target, tree: Path, tmp_path: Path
                                              ) -> None:
    state = tmp_path / "state"
    rows = _migrate(moto_s3, tree, state)
    gone = next(k for k in _data_keys(rows) if k.endswith(".tar"))
    other = _raw_keys(rows)[0]
    moto_s3.client.delete_object(Bucket=moto_s3.bucket, Key=gone)
    other_sidecar = other.rsplit(".", 1)[0] + ".json"
    moto_s3.client.delete_object(Bucket=moto_s3.bucket, Key=other_sidecar)

    code, out, doc = _verify(moto_s3, state)
    assert code == 1
    assert f"object missing: {gone}" in out and f"manifest missing: {other_sidecar}" in out
    assert "FAILED: 2 findings" in out
    assert _kinds(doc) == sorted([("object missing", gone, ""),
                                  ("manifest missing", other_sidecar, "")])
    assert doc["ok"] is False
    totals = doc["totals"]
    assert isinstance(totals, dict)
    assert totals["heads"] == 2  # only the keys LIST did not show were asked again

    # --deep does not report the loss again member by member; it counts what it could not read.
    code, out, doc = _verify(moto_s3, state, "--deep")
    assert code == 1 and _kinds(doc)[0][:2] == ("manifest missing", other_sidecar)
    totals = doc["totals"]
    assert isinstance(totals, dict)
    lost = sum(1 for r in rows if r["key"] == gone)
    assert totals["members_unverified"] == lost
    assert totals["members_checked"] == len(rows) - lost
    assert len(doc["findings"]) == 2  # type: ignore[arg-type]

    # Credentials without s3:ListBucket: HEAD every object and sidecar, same findings.
    code, out, doc = _verify(moto_s3, state, "--no-list")
    assert code == 1 and len(doc["findings"]) == 2  # type: ignore[arg-type]
    totals = doc["totals"]
    assert isinstance(totals, dict)
    assert totals["listed"] == 0
    assert totals["heads"] == len(_data_keys(rows)) + len(_raw_keys(rows))

    # A store that refuses is an error (exit 2), not a list of findings.
    for key in moto_s3.object_keys():
        moto_s3.client.delete_object(Bucket=moto_s3.bucket, Key=key)
    moto_s3.client.delete_bucket(Bucket=moto_s3.bucket)
    proc = run_cli("verify", "--state", str(state), env=moto_s3.env())
    assert proc.returncode == 2 and "NoSuchBucket" in proc.stderr, proc.stderr


def test_altered_bytes_are_found_by_etag_and_by_member(moto_s3: S3Target, tree: Path,
                                                       tmp_path: Path) -> None:
    state = tmp_path / "state"
    rows = _migrate(moto_s3, tree, state)
    victim = next(r for r in rows if r["status"] == "dicom" and int(r["length"]) > 1000)
    key = victim["key"]
    data = bytearray(moto_s3.get(key))
    at = int(victim["offset"]) + int(victim["length"]) // 2
    data[at] ^= 0xFF  # same length; the sidecar manifest stays as it was
    moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=key, Body=bytes(data))

    code, out, doc = _verify(moto_s3, state)
    assert code == 1 and f"object checksum differs: {key}" in out
    assert _kinds(doc) == [("object checksum differs", key, "")]

    code, out, doc = _verify(moto_s3, state, "--deep")
    assert code == 1
    assert f"member altered: {key} {victim['source_path']}" in out
    assert _kinds(doc) == sorted([("object checksum differs", key, ""),
                                  ("member altered", key, victim["source_path"])])


def test_source_changes_after_migration(moto_s3: S3Target, tree: Path, tmp_path: Path
                                        ) -> None:
    state = tmp_path / "state"
    rows = _migrate(moto_s3, tree, state)
    paths = sorted(Path(r["source_path"]) for r in rows if r["status"] == "dicom")

    # Deleted on the NAS: the store holds the only copy. Said, but not a failure.
    gone = paths[0]
    gone.unlink()
    code, out, doc = _verify(moto_s3, state, "--source")
    assert code == 0, out
    assert f"warning: source gone: {gone} (deleted after migration)" in out
    assert _kinds(doc) == [("source gone", "", str(gone))]
    assert doc["findings"][0]["severity"] == "warning"  # type: ignore[index]

    # Changed in place, same size and mtime put back: only the hash can tell.
    changed = paths[1]
    st = changed.stat()
    data = bytearray(changed.read_bytes())
    data[-1] ^= 0xFF
    changed.write_bytes(bytes(data))
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
    # Touched only: same bytes, new mtime.
    touched = paths[2]
    os.utime(touched, ns=(0, 1_000_000_000))
    # New on the NAS after the migration.
    new = tree / "odd" / "late.dcm"
    shutil.copy(TEST_FILES / "rtdose.dcm", new)

    code, out, doc = _verify(moto_s3, state, "--source")
    assert code == 1
    assert f"source changed: {changed} (content differs (blake3) with size and mtime kept" in out
    assert f"source not in index: {new}" in out
    assert _kinds(doc) == sorted([("source gone", "", str(gone)),
                                  ("source changed", "", str(changed)),
                                  ("source touched", "", str(touched)),
                                  ("source not in index", "", str(new))])
    totals = doc["totals"]
    assert isinstance(totals, dict)
    assert totals["errors"] == 2 and totals["warnings"] == 2
    assert totals["sources_walked"] == len(rows)  # one gone, one new
    # the line's counts add up to its kinds: two findings, two warnings
    assert re.search(r"^FAILED: 2 findings and 2 warnings \(1 source changed, 1 source "
                     r"gone, 1 source not in index, 1 source touched\) in ", out,
                     re.MULTILINE), out

    # What the finding says to do when the new bytes are the right ones: touch, migrate.
    os.utime(changed)
    _migrate(moto_s3, tree, state)
    code, out, doc = _verify(moto_s3, state, "--source")
    assert code == 0, out
    assert "source changed" not in out and "source touched" not in out, out


def test_sample_checks_the_asked_share_of_rows(moto_s3: S3Target, tree: Path, tmp_path: Path
                                              ) -> None:
    state = tmp_path / "state"
    rows = _migrate(moto_s3, tree, state)
    half = math.ceil(len(rows) / 2)
    code, out, doc = _verify(moto_s3, state, "--deep", "--source", "--sample", "50",
                             "--seed", "1")
    assert code == 0, out
    totals = doc["totals"]
    assert isinstance(totals, dict)
    assert totals["members_selected"] == totals["members_checked"] == half
    assert totals["sources_selected"] == totals["sources_checked"] == half
    assert f"members: {half} of {len(rows)} read back and hashed (50% sample, seed 1)" in out

    async def picked(seed: int) -> VerifyResult:
        async with open_migration(state) as opened:
            return await verify(opened, deep=True, sample=50, seed=seed)

    # The same seed picks the same rows; another seed, others.
    a, b = run(picked(1)), run(picked(1))
    assert a.counts == b.counts and a.ok
    seen = {seed: run(picked(seed)).counts.bytes_read for seed in range(2, 5)}
    assert len(set(seen.values())) > 1, "different seeds should pick different rows"

    proc = run_cli("verify", "--state", str(state), "--sample", "50", env=moto_s3.env())
    assert proc.returncode == 2 and "--sample applies to --deep and --source" in proc.stderr


def test_small_chunks_split_members_across_range_requests(moto_s3: S3Target, tree: Path,
                                                          tmp_path: Path) -> None:
    """Chunk boundaries inside members, no coalescing: every byte still hashed exactly."""
    state = tmp_path / "state"
    rows = _migrate(moto_s3, tree, state)
    victim = max(rows, key=lambda r: int(r["length"]))
    data = bytearray(moto_s3.get(victim["key"]))
    data[int(victim["offset"]) + int(victim["length"]) - 1] ^= 0x01  # its very last byte
    moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=victim["key"], Body=bytes(data))

    async def deep(cfg: VerifyConfig) -> VerifyResult:
        async with open_migration(state) as opened:
            return await verify(opened, deep=True, config=cfg)

    r = run(deep(VerifyConfig(chunk=7 * 1024, max_gap=0, concurrency=3)))
    assert r.counts.members_checked == len(rows)
    assert r.counts.range_requests > len(rows)
    assert [(f.kind, f.key, f.path) for f in r.findings if f.kind == MEMBER_ALTERED] == [
        (MEMBER_ALTERED, victim["key"], os.fsencode(victim["source_path"]))]
    assert r.counts.bytes_read == sum(int(x["length"]) for x in rows)  # max_gap=0: no gaps read

    # A truncated object: its size is wrong, and the members past its end cannot be read.
    key = next(k for k in _data_keys(rows) if k != victim["key"])
    members = sorted((r for r in rows if r["key"] == key), key=lambda r: int(r["offset"]))
    cut = int(members[-1]["offset"]) + 10  # inside the last member
    moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=key, Body=moto_s3.get(key)[:cut])
    r = run(deep(VerifyConfig(chunk=7 * 1024, max_gap=0)))
    by_key = sorted((f.kind, f.key, f.path) for f in r.findings if f.key == key)
    assert by_key == [("member unreadable", key, os.fsencode(members[-1]["source_path"])),
                      ("object size differs", key, None)]
    assert r.counts.members_unverified == 1 and not r.ok


def test_missing_state_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run_cli("verify", "--state", str(tmp_path / "empty"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert "checkpoint" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.seaweed
def test_seaweedfs_multipart_etags_and_damage(seaweed_s3: S3Target, tree: Path, tmp_path: Path
                                              ) -> None:
    """A real store: multipart ETags compare as recorded; a changed object is named."""
    (tree / "odd" / "scan.bin").write_bytes(os.urandom(11 * MiB))  # bundle goes multipart
    state = tmp_path / "state"
    rows = _migrate(seaweed_s3, tree, state)
    etags = {k: seaweed_s3.client.head_object(Bucket=seaweed_s3.bucket, Key=k)["ETag"]
             for k in _data_keys(rows)}
    assert any("-" in e for e in etags.values())

    code, out, doc = _verify(seaweed_s3, state, "--deep", "--source")
    assert code == 0, out
    totals = doc["totals"]
    assert isinstance(totals, dict)
    assert totals["members_checked"] == len(rows) and totals["heads"] == 0

    victim = next(r for r in rows if r["source_path"].endswith("CT_small.dcm"))
    data = bytearray(seaweed_s3.get(victim["key"]))
    data[int(victim["offset"]) + 200] ^= 0xFF
    seaweed_s3.client.put_object(Bucket=seaweed_s3.bucket, Key=victim["key"], Body=bytes(data))
    code, out, doc = _verify(seaweed_s3, state, "--deep")
    assert code == 1
    assert _kinds(doc) == sorted([("object checksum differs", victim["key"], ""),
                                  ("member altered", victim["key"], victim["source_path"])])


def test_unreadable_source_and_uncommitted_object_are_named(moto_s3: S3Target, tree: Path,
                                                             tmp_path: Path) -> None:
    """Two findings no other test reached: a source file verify cannot open (EACCES through
    the fault hook: CI runs as root) and an index row naming an object never committed."""
    state = tmp_path / "state"
    rows = _migrate(moto_s3, tree, state)
    victim = Path(next(r["source_path"] for r in rows if r["source_path"].endswith(
        "CT_small.dcm")))
    proc = run_cli("verify", "--state", str(state), "--source",
                   env={**moto_s3.env(), "PACSMIGRATE_DENY_OPEN": "odd/CT_small.dcm"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"source unreadable: {victim} (Permission denied)" in proc.stdout

    # The objects table loses one record (as if the commit never happened) while the
    # index still points at it.
    import lmdb

    key = next(r["key"] for r in rows if r["source_path"] == str(victim))
    env = lmdb.open(str(state / "checkpoint.lmdb"), max_dbs=20)
    with env.begin(write=True, db=env.open_db(b"objects")) as txn:
        assert txn.delete(key.encode())
    env.close()
    code, out, doc = _verify(moto_s3, state, "--deep")
    assert code == 1
    behind = sum(r["key"] == key for r in rows)
    assert f"index names an uncommitted object: {key} ({behind} index rows)" in out
    assert ("index names an uncommitted object", key, "") in _kinds(doc)
    # The files behind it are listed for repair (test_repair: the next migrate stores them).
    assert {d["source_path"] for d in doc["damaged_files"]} == {  # type: ignore[union-attr]
        r["source_path"] for r in rows if r["key"] == key}
