"""The compact index row: every field survives, UIDs pack, and it is small."""

from __future__ import annotations

import json
import random

import pytest

from pacsmigrate import rows
from pacsmigrate.records import DICOM, UNSORTED, Described, Entry

UIDS = ["1.2.840.10008.5.1.4.1.1.2", "2.25.329800735698586629295641978511506172918", "0.1",
        "1.2.3.0", "1.2.3.", "9", "1.02.3"]
ODD = ["", "not a uid", "1.2.3 ", "ÄÖÜ", "\udcff-escaped", "1" * 300]


def entry(text: str = "1.2.3", **kw: object) -> Entry:
    a = Described("g" * 32, kw.pop("status", DICOM), kw.pop("reason", ""), text, text, text,
                  "CT", "20240101", "1.2.840.10008.1.2.1")
    fields = {"path": b"/nas/a.dcm", "offset": 1536, "length": 9000, "blake3": "ab" * 32,
              "size": 9000, "mtime_ns": 1_700_000_000_123_456_789, **kw}
    return Entry(about=a, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", UIDS + ODD)
def test_text_fields_round_trip(text: str) -> None:
    e = entry(text)
    got, number = rows.decode(e.path, rows.encode(e, 42))
    assert number == 42
    assert got.about == Described("", DICOM, "", text, text, text, "CT", "20240101",
                                  "1.2.840.10008.1.2.1")
    assert (got.path, got.offset, got.length, got.blake3, got.size, got.mtime_ns) == (
        e.path, e.offset, e.length, e.blake3, e.size, e.mtime_ns)


def test_wide_offsets_other_sizes_long_paths_unsorted() -> None:
    long = b"/nas/" + b"x" * 600
    e = entry(offset=5 << 32, length=6 << 32, size=7, path=long, status=UNSORTED,
              reason="truncated DICOM (pixel data shorter than declared)", mtime_ns=-5)
    raw = rows.encode(e, rows.NO_OBJECT, long_path=True)
    got, number = rows.decode(b"#hash", raw)
    assert number == rows.NO_OBJECT and got.path == long
    assert (got.offset, got.length, got.size, got.mtime_ns) == (5 << 32, 6 << 32, 7, -5)
    assert (got.about.status, got.about.reason) == (UNSORTED, e.about.reason)
    assert rows.stat_of(raw) == (7, -5)


def test_uids_pack_two_characters_a_byte() -> None:
    uid = "2.25.329800735698586629295641978511506172918"
    assert len(rows.packed_uid(uid)) == (len(uid) + 2) // 2
    # A packed key never looks like a UID's text (the SOP index of version-1 states).
    for u in UIDS:
        assert rows.packed_uid(u)[0] < 0x2E


def test_packed_uids_keep_the_bytes_states_already_hold() -> None:
    """The packed form is the SOP table's key in states on disk: it must never change.
    "1" + the hex digits ("a" for ".") as a big-endian number, a 0 nibble first if odd."""
    assert rows.packed_uid("1.2.840.10008.5.1.4.1.1.2") == bytes.fromhex(
        "11a2a840a10008a5a1a4a1a1a2")
    assert rows.packed_uid("12.3") == bytes.fromhex("0112a3")
    assert rows.pack_once("0.0") == rows.pack_text("0.0") == b"\x02\x80\x10\xa0"
    rng = random.Random(5)
    for _ in range(2000):
        uid = "".join(rng.choice("0123456789.") for _ in range(rng.randint(1, 64)))
        number = int("1" + uid.replace(".", "a"), 16)
        assert rows.packed_uid(uid) == number.to_bytes((len(uid) + 2) // 2, "big")


def test_a_typical_row_is_less_than_half_its_json() -> None:
    e = entry("1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345")
    raw = rows.encode(e, 123_456)
    legacy = json.dumps(rows.as_dict(e, "pacs/ab/cd/" + "a" * 32 + "/" + "b" * 24 + ".tar"))
    assert len(raw) < 200 and len(raw) * 2 < len(legacy)
    assert rows.legacy_dict(raw) is None and rows.legacy_dict(legacy.encode()) is not None
