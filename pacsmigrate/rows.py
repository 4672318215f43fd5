"""The compact binary form of an index row in the checkpoint (and its dict form for readers).

A row is about 40% of its JSON size: fixed fields packed with struct, the blake3 as 32 raw
bytes, UIDs (digits and dots) packed two characters a byte, the object named by a number.
At 100M files that is the difference between ~110 GB and under 60 GB of state.

Layout (little endian): version (1), flags (1), object id (4), then offset and length
(4+4, or 8+8 with WIDE), size (8, only with SIZE_DIFFERS), mtime_ns (8), blake3 (32),
then seven strings, each a 2-byte length (high bit: packed UID) and its bytes: study,
series and SOP UIDs, modality, study date, transfer syntax, reason; then, with LONG_PATH,
the path itself (the LMDB key is then a hash of it). Rows written by version 1 of the
state were JSON; `decode` still reads them.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Callable
from typing import Any

from .paths import path_fields
from .records import DICOM, UNSORTED, BundlePlan, Described, Entry, Member, StoredObject, now_iso

VERSION = 2
NO_OBJECT = 0xFFFFFFFF  # a dry run's plan rows name no object

WIDE = 1
SIZE_DIFFERS = 2
LONG_PATH = 4
UNSORTED_FLAG = 8
DUPLICATE = 16  # the object named holds the same content stored for another file
ZSTD_FLAG = 32  # stored as one zstd frame (length is the frame's, size the file's)
ACCESSION = 64  # an eighth string, the AccessionNumber (spill rows only: keep_accession)
IN_ROW_OBJECT = "*"  # a decoded duplicate's `duplicate_of`: the object the row names

_HEAD = struct.Struct("<BBI")
_NARROW = struct.Struct("<II")
_WIDE = struct.Struct("<QQ")
_Q = struct.Struct("<Q")
_TAIL = struct.Struct("<q32s")
_USUAL = struct.Struct("<BBIIIq32s")  # _HEAD, _NARROW, _TAIL: a row without WIDE, SIZE_DIFFERS
_LEN = struct.Struct("<H")
_PACKED = 0x8000
_UID_CHARS = "0123456789."
_NO_DIGEST = bytes(32)


def pack_once(s: str) -> bytes:
    """A string field: UIDs packed two characters a byte, anything else as UTF-8. Not
    cached: for a SOP UID, which only its own file has (pack_text: the shared fields)."""
    if s and len(s) < 250 and not s.strip(_UID_CHARS):
        # "1" + hex digits (a for "."), as bytes (a 0 nibble first to make whole bytes):
        # C-speed packing, the 1 keeps leading zeros.
        raw = bytes.fromhex(("1" if len(s) % 2 else "01") + s.replace(".", "a"))
        return _LEN.pack(_PACKED | len(raw)) + raw
    raw = s.encode("utf-8", "surrogateescape")
    return _LEN.pack(len(raw)) + raw


# a bundle's members share study, series, modality...
pack_text = functools.lru_cache(maxsize=4096)(pack_once)


def _unpack_text(buf: bytes | memoryview, pos: int) -> tuple[str, int]:
    (n,) = _LEN.unpack_from(buf, pos)
    pos += 2
    if n & _PACKED:
        n &= ~_PACKED
        text = bytes(buf[pos:pos + n]).hex().lstrip("0")[1:].replace("a", ".")
    else:
        text = bytes(buf[pos:pos + n]).decode("utf-8", "surrogateescape")
    return text, pos + n


def packed_uid(uid: str) -> bytes:
    """The SOP index key of a UID (its packed form, without the length)."""
    return pack_text(uid)[2:]


@functools.lru_cache(maxsize=1024)  # per series: its files share all but the SOP UID
def _around_sop(study: str, series: str, modality: str, date: str, syntax: str, reason: str
                ) -> tuple[bytes, bytes]:
    p = pack_text
    return p(study) + p(series), p(modality) + p(date) + p(syntax) + p(reason)


def encode(e: Entry, object_id: int, *, long_path: bool = False,
           keep_accession: bool = False, sop: bytes | None = None,
           digest: bytes | None = None) -> bytes:
    """The row of one stored (or, with NO_OBJECT, planned) file. `sop`: pack_text of its
    SOP UID, `digest`: its blake3 as bytes, when the caller has them already."""
    a = e.about
    flags = 0
    if e.offset > 0xFFFFFFFF or e.length > 0xFFFFFFFF:
        flags |= WIDE
    if e.size != e.length:
        flags |= SIZE_DIFFERS
    if long_path:
        flags |= LONG_PATH
    if a.status == UNSORTED:
        flags |= UNSORTED_FLAG
    if e.duplicate_of:
        flags |= DUPLICATE
    if e.encoding:
        flags |= ZSTD_FLAG
    if keep_accession and a.accession:
        flags |= ACCESSION
    if digest is None:
        digest = bytes.fromhex(e.blake3) if e.blake3 else b""
    if flags & (WIDE | SIZE_DIFFERS):
        fixed = b"".join((_HEAD.pack(VERSION, flags, object_id),
                          (_WIDE if flags & WIDE else _NARROW).pack(e.offset, e.length),
                          _Q.pack(e.size) if flags & SIZE_DIFFERS else b"",
                          _TAIL.pack(e.mtime_ns, digest)))
    else:
        fixed = _USUAL.pack(VERSION, flags, object_id, e.offset, e.length, e.mtime_ns, digest)
    before, after = _around_sop(a.study_uid, a.series_uid, a.modality, a.study_date,
                                a.transfer_syntax, a.reason)
    return b"".join((
        fixed, before, pack_text(a.sop_uid) if sop is None else sop, after,
        pack_text(a.accession) if flags & ACCESSION else b"",
        _LEN.pack(len(e.path)) + e.path if long_path else b""))


def unsorted(raw: bytes | memoryview) -> bool:
    """Whether an index row is of a file stored outside any study, read without decoding
    the row (the report lists those among millions)."""
    if raw[:1] == b"{":  # version 1
        return bool(json.loads(bytes(raw)).get("status") != DICOM)
    return bool(_HEAD.unpack_from(raw)[1] & UNSORTED_FLAG)


def renumbered(raw: bytes | memoryview, number: Callable[[int], int]) -> bytes:
    """The row with its object number mapped (`index merge`): the number sits at a fixed
    place, so nothing else is decoded. Version-1 rows name their key: as they are."""
    raw = bytes(raw)
    if raw[:1] == b"{":
        return raw
    version, flags, old = _HEAD.unpack_from(raw, 0)
    if old == NO_OBJECT:
        return raw
    return _HEAD.pack(version, flags, number(old)) + raw[_HEAD.size:]


def _fixed(raw: bytes | memoryview) -> tuple[int, int, int, int, int, int]:
    """(flags, object id, offset, length, size, where mtime starts) of a compact row."""
    _, flags, object_id = _HEAD.unpack_from(raw, 0)
    pos = _HEAD.size
    fixed = _WIDE if flags & WIDE else _NARROW
    offset, length = fixed.unpack_from(raw, pos)
    pos += fixed.size
    size = length
    if flags & SIZE_DIFFERS:
        (size,) = _Q.unpack_from(raw, pos)
        pos += 8
    return flags, object_id, offset, length, size, pos


def place(raw: bytes | memoryview) -> tuple[int | str, int]:
    """(object number, offset) of a row's bytes without decoding the rest; a version-1 row
    names its object by key."""
    if bytes(raw[:1]) == b"{":
        d = json.loads(bytes(raw))
        return str(d["key"]), int(d["offset"])
    _, object_id, offset, _, _, _ = _fixed(raw)
    return object_id, offset


def stat_of(raw: bytes | memoryview) -> tuple[int, int]:
    """(size, mtime_ns) of a row without decoding the rest: the re-run's triage."""
    if bytes(raw[:1]) == b"{":
        d = json.loads(bytes(raw))
        return int(d["size"]), int(d["mtime_ns"])
    _, _, _, _, size, pos = _fixed(raw)
    (mtime,) = struct.unpack_from("<q", raw, pos)
    return size, mtime


def decode(path_key: bytes, raw: bytes | memoryview) -> tuple[Entry, int]:
    """(entry, object id) of a row; path_key is its LMDB key (the path, unless LONG_PATH)."""
    flags, object_id, offset, length, size, pos = _fixed(raw)
    mtime, digest = _TAIL.unpack_from(raw, pos)
    pos += _TAIL.size
    texts = []
    for _ in range(8 if flags & ACCESSION else 7):
        s, pos = _unpack_text(raw, pos)
        texts.append(s)
    path = path_key
    if flags & LONG_PATH:
        (n,) = _LEN.unpack_from(raw, pos)
        path = bytes(raw[pos + 2:pos + 2 + n])
    study, series, sop, modality, date, ts, reason = texts[:7]
    about = Described("", UNSORTED if flags & UNSORTED_FLAG else DICOM, reason, study, series,
                      sop, modality, date, ts, texts[7] if flags & ACCESSION else "")
    digest_hex = digest.hex() if digest != _NO_DIGEST else ""
    return Entry(path, offset, length, digest_hex, size, mtime, about,
                 IN_ROW_OBJECT if flags & DUPLICATE else "",
                 "zstd" if flags & ZSTD_FLAG else ""), object_id


def as_dict(e: Entry, key: str) -> dict[str, Any]:
    """The row as readers use it: the index columns plus `path_hex`."""
    a = e.about
    return {**path_fields(e.path), "key": key, "offset": e.offset, "length": e.length,
            "blake3": e.blake3, "study_uid": a.study_uid, "series_uid": a.series_uid,
            "sop_uid": a.sop_uid, "modality": a.modality, "study_date": a.study_date,
            "transfer_syntax": a.transfer_syntax, "size": e.size, "mtime_ns": e.mtime_ns,
            "status": a.status, "reason": a.reason, "duplicate_of": key if e.duplicate_of else "",
            "encoding": e.encoding,
            "path_hex": e.path.hex()}


def legacy_dict(raw: bytes | memoryview) -> dict[str, Any] | None:
    """A version-1 (JSON) row as a dict, or None when raw is a compact row."""
    if bytes(raw[:1]) != b"{":
        return None
    d: dict[str, Any] = json.loads(bytes(raw))
    return d


# -- the JSON forms of the other tables' values ----------------------------------------
def about_fields(a: Described) -> tuple[str, ...]:
    return (a.status, a.reason, a.study_uid, a.series_uid, a.sop_uid, a.modality,
            a.study_date, a.transfer_syntax, a.accession)


def about_json(a: Described) -> dict[str, str]:
    return {"group": a.group, "status": a.status, "reason": a.reason, "study_uid": a.study_uid,
            "series_uid": a.series_uid, "sop_uid": a.sop_uid, "modality": a.modality,
            "study_date": a.study_date, "transfer_syntax": a.transfer_syntax}


def intent_plan(d: dict[str, Any]) -> BundlePlan:
    plan = BundlePlan(d["group"], d["kind"], key=d["key"], bundle_id=d["bundle_id"])
    if "member" in d:
        m = d["member"]
        plan.add(Member(bytes.fromhex(m["path"]), m["size"], m["mtime_ns"],
                        Described(**m["about"])))
    for raw in d.get("members", ()):  # written by version 1 of the state
        old = json.loads(raw)
        about = Described(old["group"], old["status"], old["reason"], old["study_uid"],
                          old["series_uid"], old["sop_uid"], old["modality"],
                          old["study_date"], old["transfer_syntax"])
        plan.add(Member(bytes.fromhex(old["path"]), old["size"], old["mtime_ns"], about))
    return plan


def object_json(obj: StoredObject, number: int) -> dict[str, Any]:
    return {"key": obj.key, "kind": obj.kind, "group": obj.group, "bundle_id": obj.bundle_id,
            "size": obj.size, "etag": obj.etag, "members": len(obj.entries),
            "bytes": sum(e.length for e in obj.entries), "created": obj.created,
            "committed": now_iso(), "id": number,
            **({"retention": obj.retention} if obj.retention else {})}
