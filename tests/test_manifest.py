"""The JSON manifest: build/parse round trip and the index rows derived from it."""

from __future__ import annotations

import json
import os

import pytest

from pacsmigrate import manifest
from pacsmigrate.paths import member_name
from pacsmigrate.records import DICOM, UNSORTED, BundlePlan, Catalogued

PATHS = [
    b"/pacs/2019/CT/IM0001.dcm",
    "/pacs/Müller/Bild.dcm".encode(),          # non-ASCII UTF-8
    b"/pacs/caf\xe9/\xff\xfe.dcm",            # not UTF-8 at all
]


def record(path: bytes, i: int, status: str = DICOM) -> Catalogued:
    return Catalogued(path, size=1000 + i, mtime_ns=1_700_000_000_000_000_000 + i,
                      group="ab" * 16, status=status,
                      reason="" if status == DICOM else "not DICOM",
                      study_uid="1.2.3" if status == DICOM else "", series_uid="1.2.3.4",
                      sop_uid=f"1.2.3.4.{i}" if status == DICOM else "", modality="CT",
                      study_date="20240101", transfer_syntax="1.2.840.10008.1.2.1")


def plan_and_members() -> tuple[BundlePlan, list[dict[str, object]]]:
    recs = [record(p, i, DICOM if i < 2 else UNSORTED) for i, p in enumerate(PATHS)]
    plan = BundlePlan("ab" * 16, "tar", recs, key="archive/ab/ab/x/y.tar", bundle_id="c" * 24)
    members = []
    offset = 512
    for i, rec in enumerate(recs):
        members.append(manifest.member_entry(rec, name=member_name(rec.path), offset=offset,
                                             length=rec.size, digest=f"{i:064x}"))
        offset += 512 + rec.size + (-rec.size % 512)
    return plan, members


def test_build_parse_round_trip() -> None:
    plan, members = plan_and_members()
    raw = manifest.build(plan, members)
    assert isinstance(raw, bytes)
    raw.decode("ascii")  # ensure_ascii: safe in any store metadata or log
    doc = manifest.parse(raw)
    assert doc["format"] == manifest.FORMAT
    assert (doc["key"], doc["kind"], doc["group"], doc["bundle_id"]) == (
        plan.key, "tar", plan.group, plan.bundle_id)
    assert doc["members"] == members
    assert doc["created"].endswith("+00:00")
    # Member names keep non-UTF-8 bytes (surrogate escapes) through JSON.
    assert [os.fsencode(m["name"]) for m in doc["members"]] == [p.lstrip(b"/") for p in PATHS]


def test_rows_one_per_member_with_exact_paths() -> None:
    plan, members = plan_and_members()
    rows = manifest.rows(manifest.parse(manifest.build(plan, members)))
    assert len(rows) == len(PATHS)
    for row, path, member in zip(rows, PATHS, members):
        assert row["key"] == plan.key
        assert bytes.fromhex(row["path_hex"]) == path
        assert set(manifest.ROW_FIELDS) | {"path_hex"} == set(row)
        for f in manifest.ROW_FIELDS:
            if f != "key":
                assert row[f] == member[f], f
    # UTF-8 paths are readable as-is; the non-UTF-8 one carries its exact bytes in b64.
    assert rows[0]["source_path"] == "/pacs/2019/CT/IM0001.dcm" and rows[0]["source_path_b64"] == ""
    assert rows[1]["source_path"] == "/pacs/Müller/Bild.dcm" and rows[1]["source_path_b64"] == ""
    assert rows[2]["source_path"] == "/pacs/caf\\xe9/\\xff\\xfe.dcm"
    assert rows[2]["source_path_b64"] != ""
    assert (rows[0]["status"], rows[2]["status"], rows[2]["reason"]) == (
        DICOM, UNSORTED, "not DICOM")
    assert rows[0]["sop_uid"] == "1.2.3.4.0"


def test_parse_rejects_foreign_json() -> None:
    with pytest.raises(ValueError, match="not a pacsmigrate manifest"):
        manifest.parse(json.dumps({"members": [], "key": "x"}).encode())
    with pytest.raises(ValueError, match="not a pacsmigrate manifest"):
        manifest.parse(json.dumps({"format": "pacsmigrate.manifest/999"}).encode())
    with pytest.raises(ValueError):
        manifest.parse(b"\x00 not json")


def test_manifest_name_is_under_its_directory() -> None:
    name = manifest.manifest_name("d" * 24)
    assert name == f"{manifest.MANIFEST_DIR}/{'d' * 24}.json"
    assert len(name) < 100  # fits a plain ustar header, found by find_in_tar_tail
