"""The JSON manifest: build/parse round trip, the entries it gives, and the tar trailer."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

from pacsmigrate import manifest
from pacsmigrate.paths import member_name
from pacsmigrate.records import DICOM, UNSORTED, BundlePlan, Described, Entry
from pacsmigrate.tarheader import tar_header

PATHS = [
    b"/pacs/2019/CT/IM0001.dcm",
    "/pacs/Müller/Bild.dcm".encode(),          # non-ASCII UTF-8
    b"/pacs/caf\xe9/\xff\xfe.dcm",            # not UTF-8 at all
]


def entry(path: bytes, i: int, status: str = DICOM) -> Entry:
    about = Described("ab" * 16, status, "" if status == DICOM else "not DICOM",
                      "1.2.3" if status == DICOM else "", "1.2.3.4",
                      f"1.2.3.4.{i}" if status == DICOM else "", "CT", "20240101",
                      "1.2.840.10008.1.2.1")
    return Entry(path, 512 + 10_000 * i, 1000 + i, f"{i:064x}", 1000 + i,
                 1_700_000_000_000_000_000 + i, about)


def plan_and_entries() -> tuple[BundlePlan, list[Entry]]:
    entries = [entry(p, i, DICOM if i < 2 else UNSORTED) for i, p in enumerate(PATHS)]
    plan = BundlePlan("ab" * 16, "tar", key="archive/ab/ab/x/y.tar", bundle_id="c" * 24)
    return plan, entries


def build(plan: BundlePlan, entries: list[Entry]) -> bytes:
    return manifest.build(plan, [manifest.member_line(e, member_name(e.path)) for e in entries])


def test_build_parse_round_trip() -> None:
    plan, entries = plan_and_entries()
    raw = build(plan, entries)
    assert isinstance(raw, bytes)
    raw.decode("ascii")  # ensure_ascii: safe in any store metadata or log
    doc = manifest.parse(raw)
    assert doc["format"] == manifest.FORMAT
    assert (doc["key"], doc["kind"], doc["group"], doc["bundle_id"]) == (
        plan.key, "tar", plan.group, plan.bundle_id)
    assert manifest.entries(doc) == entries
    assert doc["created"].endswith("+00:00")
    # Member names keep non-UTF-8 bytes (surrogate escapes) through JSON.
    assert [os.fsencode(m["name"]) for m in doc["members"]] == [p.lstrip(b"/") for p in PATHS]
    # One member per line: a reader can stream it.
    assert raw.count(b"\n") >= len(entries) + 2


def test_member_lines_are_the_json_of_the_member() -> None:
    _, entries = plan_and_entries()
    odd = Entry(b'/x/"quoted"\\back\x01.dcm', 0, 0, "", 0, -1,
                Described("g", UNSORTED, 'odd "reason"\n', modality="\u00e9"))
    both = dataclasses.replace(entries[0], duplicate_of="aa/b.tar", encoding="zstd")
    for e in [*entries, odd, both]:
        name = member_name(e.path)
        assert manifest.member_line(e, name) == json.dumps(manifest.member_json(e, name))
        # in a pack of several studies: the member's own group when not the bundle's
        for group in (e.about.group, "pack-group"):
            assert manifest.member_line(e, name, group) == json.dumps(
                manifest.member_json(e, name, group))


def test_members_carry_exact_paths() -> None:
    plan, entries = plan_and_entries()
    members = manifest.parse(build(plan, entries))["members"]
    # UTF-8 paths are readable as-is; the non-UTF-8 one carries its exact bytes in b64.
    assert members[0]["source_path"] == "/pacs/2019/CT/IM0001.dcm"
    assert members[0]["source_path_b64"] == ""
    assert members[1]["source_path"] == "/pacs/Müller/Bild.dcm"
    assert members[1]["source_path_b64"] == ""
    assert members[2]["source_path"] == "/pacs/caf\\xe9/\\xff\\xfe.dcm"
    assert members[2]["source_path_b64"] != ""
    assert (members[0]["status"], members[2]["status"], members[2]["reason"]) == (
        DICOM, UNSORTED, "not DICOM")
    assert members[0]["sop_uid"] == "1.2.3.4.0"


def test_trailer_round_trip_and_rejects_other_blocks() -> None:
    block = manifest.trailer(123_456, 789)
    assert len(block) == manifest.BLOCK
    tail = tar_header(manifest.trailer_name("d" * 24), 512, 0) + block + bytes(1024)
    assert manifest.read_trailer(tail) == (123_456, 789)
    assert manifest.read_trailer(b"x" * 100 + tail) == (123_456, 789)
    assert manifest.read_trailer(tail[:-1]) is None
    other = tar_header("some/file.dcm", 512, 0) + block + bytes(1024)
    assert manifest.read_trailer(other) is None
    assert manifest.read_trailer(bytes(manifest.TAIL)) is None


def test_parse_rejects_foreign_json() -> None:
    with pytest.raises(ValueError, match="not a pacsmigrate manifest"):
        manifest.parse(json.dumps({"members": [], "key": "x"}).encode())
    with pytest.raises(ValueError, match="not a pacsmigrate manifest"):
        manifest.parse(json.dumps({"format": "pacsmigrate.manifest/999"}).encode())
    with pytest.raises(ValueError):
        manifest.parse(b"\x00 not json")


def test_manifest_name_is_under_its_directory() -> None:
    name = manifest.manifest_name("d" * 24)
    assert name == f"{manifest.MANIFEST_DIR}/{'d' * 24}.json.gz"
    assert manifest.manifest_name("d" * 24, compressed=False) == name.removesuffix(".gz")
    assert len(name) < 100  # fits a plain ustar header, found by find_in_tar_tail


def _writer(plan: BundlePlan, entries: list[Entry], created: str, *, compressed: bool = True
            ) -> manifest.Writer:
    out = manifest.Writer(plan, created=created, retention={"mode": "GOVERNANCE"},
                          compressed=compressed)
    for e in entries:
        out.add(manifest.member_line(e, member_name(e.path)))
    return out


def test_a_bundles_manifest_is_gzip_that_gzip_itself_reads(tmp_path: Path) -> None:
    """The bundle's manifest: the same JSON, gzip-compressed (two members: the header
    stored, the lines compressed); `gzip -dc` gives the text parse() reads from either."""
    plan, entries = plan_and_entries()
    entries = entries * 300  # ~200 KB of lines: compressed several times over
    plain = bytes(_writer(plan, entries, "2026-12-07T03:00:00+00:00",
                          compressed=False).finish())
    packed = _writer(plan, entries, "2026-12-07T03:00:00+00:00").finish_compressed()
    assert packed[:2] == manifest.GZIP_MAGIC and len(packed) * 5 < len(plain)
    (tmp_path / "m.json.gz").write_bytes(packed)
    cli = subprocess.run(["gzip", "-dc", str(tmp_path / "m.json.gz")], check=True,
                         capture_output=True).stdout
    assert cli == plain == gzip.decompress(packed)
    assert manifest.parse(packed) == manifest.parse(plain) == json.loads(plain)
    assert manifest.entries(manifest.parse(packed)) == entries
    # The same bytes for the same text; the length does not depend on the time it names
    # (a dry run computes a bundle's exact length at another time than the run packs it).
    assert packed == _writer(plan, entries, "2026-12-07T03:00:00+00:00").finish_compressed()
    later = _writer(plan, entries, "2031-07-19T23:59:58+00:00").finish_compressed()
    assert later != packed and len(later) == len(packed)


def test_a_broken_or_oversized_gzip_manifest_is_unreadable_not_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    plan, entries = plan_and_entries()
    packed = _writer(plan, entries * 50, "2026-12-07T03:00:00+00:00").finish_compressed()
    with pytest.raises(ValueError, match="truncated gzip"):
        manifest.parse(packed[:-20])
    with pytest.raises(ValueError, match="broken gzip"):
        manifest.parse(packed[:30] + bytes(len(packed) - 30))
    monkeypatch.setattr(manifest, "MAX_MANIFEST", 1000)  # a bomb, in small
    with pytest.raises(ValueError, match="once decompressed"):
        manifest.parse(packed)
