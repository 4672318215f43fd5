"""End to end through the library API against real S3 servers (moto and SeaweedFS)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import lmdb
import pydicom
import pytest
from conftest import TEST_FILES, S3Target, run
from helpers import MiB, assert_complete, config, index_rows, source_files

from pacsmigrate import Migration, migrate
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.config import TransferConfig
from pacsmigrate.errors import StateError
from pacsmigrate.paths import from_fields
from pacsmigrate.records import BundlePlan
from pacsmigrate.stream import SourceStream
from pacsmigrate.synth import make_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Synthetic studies scattered over date folders, plus pydicom's real odd files."""
    root = tmp_path / "nas"
    make_tree(root / "dcm4chee", studies=4, seed=7, layout="date", scale=0.05)
    make_tree(root / "cd", studies=2, seed=8, layout="cd", scale=0.02)
    odd = root / "odd"
    odd.mkdir()
    for name in ("CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "no_meta.dcm",
                 "MR_truncated.dcm", "README.txt"):
        shutil.copy(TEST_FILES / name, odd / name)
    return root


def test_end_to_end_every_row_range_gets_its_file(s3: S3Target, tree: Path, tmp_path: Path
                                                  ) -> None:
    state = tmp_path / "state"
    stats = run(migrate(config([tree], s3.url, state, s3.info.endpoint_url,
                               bundle_size=2 * MiB, large_file=1 * MiB)))
    assert stats.not_migrated == 0
    rows = assert_complete(s3, state, tree)
    assert stats.files_migrated == len(rows)
    # A study scattered over date folders lands under one hashed study prefix.
    by_study: dict[str, set[str]] = {}
    for r in rows:
        if r["status"] == "dicom":
            by_study.setdefault(r["study_uid"], set()).add(r["key"].rsplit("/", 1)[0])
    assert by_study and all(len(prefixes) == 1 for prefixes in by_study.values())
    # Keys carry no UIDs and no patient data; bundles end in .tar, metadata in .json.
    for key in s3.object_keys():
        assert key.endswith((".tar", ".json", ".dcm", ".bin"))
        assert not any(uid in key for uid in by_study)
        assert "SYNTH" not in key.upper()
    reasons = {r["reason"] for r in rows if r["status"] != "dicom"}
    assert "not DICOM" in reasons and any("truncated" in x for x in reasons)


def test_bundle_extracts_with_system_tar(moto_s3: S3Target, tree: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    run(migrate(config([tree], moto_s3.url, state, moto_s3.info.endpoint_url)))
    files = source_files(tree)
    bundle = next(k for k in moto_s3.object_keys() if k.endswith(".tar"))
    (tmp_path / "b.tar").write_bytes(moto_s3.get(bundle))
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "b.tar"), "-C", str(out)], check=True)
    extracted = [p for p in out.rglob("*") if p.is_file() and "pacsmigrate-manifests" not in
                 p.parts]
    assert extracted
    for p in extracted:
        original = Path("/") / p.relative_to(out)
        assert p.read_bytes() == files[os.fsencode(original)].read_bytes()


def test_multipart_bundles_and_large_files(s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "big"
    make_tree(root, studies=3, seed=3, layout="patient", scale=0.3)
    state = tmp_path / "state"
    stats = run(migrate(config([root], s3.url, state, s3.info.endpoint_url,
                               bundle_size=12 * MiB, large_file=2 * MiB)))
    assert stats.not_migrated == 0
    rows = assert_complete(s3, state, root)
    etags = {k: s3.client.head_object(Bucket=s3.bucket, Key=k)["ETag"] for k in
             {r["key"] for r in rows}}
    assert any("-" in e for e in etags.values()), "no object went multipart"


@pytest.mark.seaweed
def test_bundles_checked_by_crc32(seaweed_s3: S3Target, tree: Path, tmp_path: Path) -> None:
    """--checksum crc32 (which SeaweedFS checks, as AWS and MinIO do): the same result."""
    state = tmp_path / "state"
    transfer = TransferConfig(part_size=5 * MiB, multipart_threshold=5 * MiB, concurrency=4,
                              checksum="crc32")
    stats = run(migrate(config([tree], seaweed_s3.url, state, seaweed_s3.info.endpoint_url,
                               transfer=transfer)))
    assert stats.not_migrated == 0 and stats.objects_uploaded > 1
    assert_complete(seaweed_s3, state, tree)


def test_dry_run_writes_nothing_and_plans(moto_s3: S3Target, tree: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    stats = run(migrate(config([tree], moto_s3.url, state, moto_s3.info.endpoint_url,
                               dry_run=True)))
    assert moto_s3.object_keys() == []
    n = len(source_files(tree))
    assert stats.planned_files == n and stats.files_seen == n
    assert stats.planned_objects > 0 and stats.planned_requests >= stats.planned_objects
    assert stats.not_migrated == 0
    # The real run after a dry run stores exactly the plan, with the hashes it computed.
    real = run(migrate(config([tree], moto_s3.url, state, moto_s3.info.endpoint_url)))
    assert (real.objects_uploaded, real.files_migrated, real.bytes_seen) == (
        stats.planned_objects, stats.planned_files, stats.planned_bytes)
    assert real.dry_run_mismatch == 0
    assert_complete(moto_s3, state, tree)


def test_rerun_uploads_nothing_and_a_new_file_one_bundle(moto_s3: S3Target, tree: Path,
                                                         tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = config([tree], moto_s3.url, state, moto_s3.info.endpoint_url)
    run(migrate(cfg))
    before = {k: moto_s3.client.head_object(Bucket=moto_s3.bucket, Key=k)["ETag"]
              for k in moto_s3.object_keys()}
    again = run(migrate(cfg))
    assert again.objects_uploaded == 0 and again.already_migrated == len(source_files(tree))
    assert moto_s3.object_keys() == sorted(before)
    # A new instance of an existing study: one new bundle (its manifest inside), nothing
    # rewritten.
    src = next(p for p in sorted((tree / "dcm4chee").rglob("*")) if p.is_file())
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".9"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tree / "late-arrival.dcm")
    third = run(migrate(cfg))
    assert third.objects_uploaded == 1 and third.files_migrated == 1
    new = set(moto_s3.object_keys()) - set(before)
    assert len(new) == 1 and {k.rsplit(".", 1)[1] for k in new} == {"tar"}
    for k, etag in before.items():
        assert moto_s3.client.head_object(Bucket=moto_s3.bucket, Key=k)["ETag"] == etag
    rows = assert_complete(moto_s3, state, tree)
    late = [r for r in rows if r["source_path"].endswith("late-arrival.dcm")]
    same_study = [r for r in rows if r["study_uid"] == ds.StudyInstanceUID]
    assert late and late[0]["key"].rsplit("/", 1)[0] == same_study[0]["key"].rsplit("/", 1)[0]


def test_hostile_inputs_are_reported_not_fatal(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "hostile"
    root.mkdir()
    shutil.copy(TEST_FILES / "CT_small.dcm", root / "ok.dcm")
    (root / "empty.dcm").write_bytes(b"")
    shutil.copy(TEST_FILES / "MR_truncated.dcm", root / "truncated.dcm")
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    del ds.StudyInstanceUID
    ds.save_as(root / "nostudy.dcm")
    (root / os.fsdecode(b"caf\xe9-\xff.dcm")).write_bytes((TEST_FILES / "CT_small.dcm").read_bytes())
    (root / "broken-link").symlink_to(root / "does-not-exist")
    os.mkfifo(root / "a-fifo")
    doomed = root / "deleted-before-pack.dcm"
    shutil.copy(TEST_FILES / "MR_small.dcm", doomed)
    state = tmp_path / "state"
    report = tmp_path / "report.json"
    # A dry run first, then a file is deleted: the run does not see it at all.
    run(migrate(config([root], moto_s3.url, state, moto_s3.info.endpoint_url, dry_run=True)))
    doomed.unlink()
    stats = run(migrate(config([root], moto_s3.url, state, moto_s3.info.endpoint_url,
                               report_path=report)))
    assert stats.not_migrated == 0  # everything present was stored; the rest was deliberate
    rows = assert_complete(moto_s3, state, root)
    reasons = {Path(r["source_path"]).name: r["reason"] for r in rows}
    assert reasons["ok.dcm"] == ""
    assert reasons["empty.dcm"] == "empty file"
    assert "truncated" in reasons["truncated.dcm"]
    assert reasons["nostudy.dcm"] == "DICOM without StudyInstanceUID"
    odd = [r for r in rows if r["source_path_b64"]]
    assert len(odd) == 1 and r"caf\xe9-\xff.dcm" in odd[0]["source_path"]
    doc = json.loads(report.read_text())
    skipped = {Path(p["source_path"]).name: p["reason"] for p in doc["skipped"]}
    assert skipped == {"broken-link": "symlink not followed", "a-fifo": "fifo skipped"}
    assert doc["not_migrated"] == []
    assert {Path(u["source_path"]).name for u in doc["unsorted"]} >= {
        "empty.dcm", "truncated.dcm", "nostudy.dcm"}


def test_changed_file_is_reread_not_packed_half_old(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "changing"
    make_tree(root, studies=1, seed=5, layout="patient", scale=0.02)
    state = tmp_path / "state"
    victim = next(p for p in sorted(root.rglob("*.dcm")))

    class ChangeBeforePacking(SourceStream):
        """The NAS changes a file after its header was read, before its bundle is packed."""

        async def put(self, plan: BundlePlan) -> None:
            if victim.stat().st_mtime_ns != 1_000_000_000:
                ds = pydicom.dcmread(victim)
                ds.SeriesDescription = "changed after its header was read"
                ds.save_as(victim)
                os.utime(victim, ns=(0, 1_000_000_000))
            await super().put(plan)

    # Nothing held in memory: every file is read again when packed, as large files are.
    cfg = config([root], moto_s3.url, state, moto_s3.info.endpoint_url, hold_max=0)
    stats = run(Migration(cfg, stream=ChangeBeforePacking).run())
    assert stats.reread_changed == 1
    assert_complete(moto_s3, state, root)
    row = next(r for r in index_rows(state) if r["source_path"] == str(victim))
    assert int(row["mtime_ns"]) == 1_000_000_000


def _pydicom_data() -> Path | None:
    spec = importlib.util.find_spec("data_store")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data"


def test_all_real_samples_migrate_byte_exact(s3: S3Target, samples: Path, tmp_path: Path) -> None:
    """Every pydicom sample (CD layout with DICOMDIR, no preamble, big endian, deflated,
    JPEG 2000, truncated, non-DICOM, character sets) and pydicom-data's multi-frame files."""
    roots = [samples]
    extra = _pydicom_data()
    if extra is not None and extra.is_dir():
        shutil.copytree(extra, tmp_path / "pydicom-data")
        roots.append(tmp_path / "pydicom-data")
    state = tmp_path / "state"
    stats = run(migrate(config(roots, s3.url, state, s3.info.endpoint_url,
                               bundle_size=8 * MiB, large_file=2 * MiB)))
    assert stats.not_migrated == 0
    rows = assert_complete(s3, state, *roots)
    cd = [r for r in rows if "/dicomdirtests/" in r["source_path"] and r["status"] == "dicom"]
    assert len(cd) > 20 and len({r["study_uid"] for r in cd}) >= 2
    assert any(r["key"].endswith(".dcm") for r in rows)  # large files as their own objects
    by_name = {Path(r["source_path"]).name: r for r in rows}
    assert by_name["MR_small_bigendian.dcm"]["status"] == "dicom"
    assert by_name["image_dfl.dcm"]["status"] == "dicom"
    assert by_name["ExplVR_LitEndNoMeta.dcm"]["status"] == "dicom"


def test_dry_run_hashes_equal_the_index_hashes(moto_s3: S3Target, tree: Path, tmp_path: Path
                                               ) -> None:
    state = tmp_path / "state"
    run(migrate(config([tree], moto_s3.url, state, moto_s3.info.endpoint_url, dry_run=True)))
    cp = Checkpoint(state, readonly=True)
    planned = {from_fields(v["source_path"], v["source_path_b64"]): v["blake3"]
               for _, v in cp.iter_db("plan")}
    cp.close()
    assert len(planned) == len(source_files(tree)) and all(planned.values())
    # One file rewritten in place with the same size and mtime: only the hash can tell.
    victim = next(p for p in sorted(tree.rglob("*.dcm")))
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    stats = run(migrate(config([tree], moto_s3.url, state, moto_s3.info.endpoint_url)))
    assert stats.dry_run_mismatch == 1
    rows = {from_fields(r["source_path"], r["source_path_b64"]): r["blake3"]
            for r in index_rows(state)}
    differ = {p for p in rows if rows[p] != planned[p]}
    assert differ == {os.fsencode(victim)}


@pytest.mark.parametrize("case", ["room", "no room", "damaged"])
def test_a_state_without_room_to_compact_still_completes_the_run(
        moto_s3: S3Target, tree: Path, tmp_path: Path, case: str,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # The end-of-run compaction copies the state (tens of GB at 100M files): where the
    # file system has no room for the copy, the run ends as done, the state as it was;
    # any other failure of the copy (a damaged page read) still stops the run.
    monkeypatch.setattr("pacsmigrate.pipeline.COMPACT_MIN_ROWS", 1)
    if case == "no room":
        monkeypatch.setattr(Checkpoint, "in_use", lambda self: 1 << 62)
    if case == "damaged":
        def damaged(self: Checkpoint, name: str, out: Any) -> None:
            raise lmdb.CorruptedError("injected")
        monkeypatch.setattr(Checkpoint, "_copy_table", damaged)
    state = tmp_path / "state"
    with caplog.at_level("INFO", logger="pacsmigrate"):
        if case == "damaged":
            with pytest.raises(StateError, match="^cannot compact the checkpoint in "):
                run(migrate(config([tree], moto_s3.url, state, moto_s3.info.endpoint_url)))
        else:
            stats = run(migrate(config([tree], moto_s3.url, state,
                                       moto_s3.info.endpoint_url)))
            assert stats.not_migrated == 0
    assert_complete(moto_s3, state, tree)
    said = [r.getMessage() for r in caplog.records if "compact" in r.getMessage()]
    # Said before it starts (on the stats lines' logger: an unattended run's stderr).
    assert re.fullmatch(r"compacting the state: \d+ rows rewritten in key order, \d+ MB of "
                        r"pages; safe to stop \(the state stays as it was\)", said[0])
    if case == "room":
        assert len(said) == 2 and said[1].startswith("state compacted: ")
    elif case == "no room":
        assert len(said) == 2 and said[1].startswith(
            "state not compacted (no room to compact the checkpoint: the copy needs up to ")
    else:
        assert len(said) == 1
    assert not (state / "checkpoint.compact").exists()
    history = Checkpoint(state, readonly=True)
    try:
        assert (history.get_meta("runs")[-1]["outcome"] == "completed") == (case != "damaged")
    finally:
        history.close()
