"""The JSON manifest of a stored object, the tar trailer that locates it, and its entries.

A tar bundle ends with two members of ours: the manifest
`pacsmigrate-manifests/<id>.json.gz` (every member: source path, offset, length, blake3,
stat, UIDs; JSON, gzip-compressed: `tar xOf B.tar --wildcards '*.json.gz' | zcat`), then the
trailer `pacsmigrate-manifests/<id>.end`: one 512-byte JSON block giving the manifest's
offset and length. So the last 2,048 bytes of any bundle (trailer header, trailer, the two
zero blocks) locate its manifest: two range GETs describe a bundle without a sidecar object.

Compressed because on small files the manifest was a quarter of the bytes stored (660 of
2,705 bytes a 1.2 KiB file, with its tar header and padding): gzip takes it to about a
ninth, at ~1.7 GB/s with ISA-L. The gzip file is two gzip members (RFC 1952; gzip, zcat and
Python read them as one text): the header object stored as it is, then the member lines
compressed, so its length does not depend on the `created` time (a dry run computes the
exact length of a bundle, bundle.tar_length). Bundles written before keep a plain
`<id>.json` (parse() reads both), and those written before the trailer existed are read by
walking back from the tail.
"""

from __future__ import annotations

import functools
import json
import tarfile
import zlib
from json.encoder import encode_basestring_ascii
from typing import Any, cast

from isal import isal_zlib

from .paths import from_fields, path_fields
from .records import BundlePlan, Described, Entry, now_iso

FORMAT = "pacsmigrate.manifest/1"
TRAILER_FORMAT = "pacsmigrate.trailer/1"
MANIFEST_DIR = "pacsmigrate-manifests"
BLOCK = 512
TAIL = 4 * BLOCK  # trailer header + trailer + two zero blocks
GZIP = 31  # zlib's wbits: a gzip container (no name, mtime 0: the same text, the same bytes)
GZIP_MAGIC = b"\x1f\x8b"
LEVEL = 1  # ISA-L's: ~9x on member lines at ~1.7 GB/s (its level 3 is no smaller, 4x slower)
# What a manifest may decompress to: a bomb in a hostile store is an unreadable manifest,
# not memory (the largest real ones, --bundle-size 4GiB of tiny files, are ~1.5 GiB).
MAX_MANIFEST = 4 << 30
_CHUNK = 64 << 10  # member-line text compressed at a time (Writer)
# ISA-L's error for broken deflate data (its stub types it as an instance, not a class).
_BROKEN = cast("type[Exception]", isal_zlib.IsalError)

# Columns every index row carries, in export order.
ROW_FIELDS = ("source_path", "source_path_b64", "key", "offset", "length", "blake3",
              "study_uid", "series_uid", "sop_uid", "modality", "study_date",
              "transfer_syntax", "size", "mtime_ns", "status", "reason", "duplicate_of", "encoding", "retain_until",
              "lock_mode")


def member_json(e: Entry, name: str, group: str = "") -> dict[str, Any]:
    """One member as the manifest records it: where its bytes are and what they are; its
    study's group when it is not the bundle's `group` (a pack holds several studies)."""
    a = e.about
    return {
        "name": name, **path_fields(e.path), "offset": e.offset, "length": e.length,
        "blake3": e.blake3, "size": e.size, "mtime_ns": e.mtime_ns,
        "study_uid": a.study_uid, "series_uid": a.series_uid, "sop_uid": a.sop_uid,
        "modality": a.modality, "study_date": a.study_date,
        "transfer_syntax": a.transfer_syntax, "status": a.status, "reason": a.reason,
        **({"duplicate_of": e.duplicate_of} if e.duplicate_of else {}),
        **({"encoding": e.encoding} if e.encoding else {}),
        **({"group": a.group} if group and a.group != group else {}),
    }


# One member as one line of JSON, formatted directly: json.dumps of a dict per member was
# a tenth of the per-file cost of packing. Same text as json.dumps(member_json(...)); the
# fields a series' files share are formatted once a series (_series_text, _tail_text).
@functools.lru_cache(maxsize=1024)
def _series_text(study_uid: str, series_uid: str) -> str:
    q = encode_basestring_ascii
    return f'"study_uid": {q(study_uid)}, "series_uid": {q(series_uid)}, "sop_uid": '


@functools.lru_cache(maxsize=1024)
def _tail_text(modality: str, study_date: str, transfer_syntax: str, status: str,
               reason: str) -> str:
    q = encode_basestring_ascii
    return (f', "modality": {q(modality)}, "study_date": {q(study_date)}, '
            f'"transfer_syntax": {q(transfer_syntax)}, "status": {q(status)}, '
            f'"reason": {q(reason)}')


def member_line(e: Entry, name: str, group: str = "") -> str:
    """member_json(e, name, group) as JSON text (ASCII), without building the dict."""
    a = e.about
    q = encode_basestring_ascii
    try:  # path_fields' two fields, without its dict for the usual UTF-8 path
        source, source_b64 = q(e.path.decode("utf-8")), '""'
    except UnicodeDecodeError:
        fields = path_fields(e.path)
        source, source_b64 = q(fields["source_path"]), q(fields["source_path_b64"])
    line = (f'{{"name": {q(name)}, "source_path": {source}, "source_path_b64": {source_b64}, '
            f'"offset": {e.offset}, "length": {e.length}, "blake3": {q(e.blake3)}, '
            f'"size": {e.size}, "mtime_ns": {e.mtime_ns}, '
            f'{_series_text(a.study_uid, a.series_uid)}{q(a.sop_uid)}'
            f'{_tail_text(a.modality, a.study_date, a.transfer_syntax, a.status, a.reason)}')
    if not (e.duplicate_of or e.encoding or group and a.group != group):
        return line + "}"
    # not in this tar: the bytes are at offset, length of that object
    dup = f', "duplicate_of": {q(e.duplicate_of)}' if e.duplicate_of else ""
    # offset, length: the stored frame's; size, blake3: the file's
    enc = f', "encoding": {q(e.encoding)}' if e.encoding else ""
    # a pack holds several studies: the member's own when not the bundle's
    other = f', "group": {q(a.group)}' if group and a.group != group else ""
    return f"{line}{dup}{enc}{other}}}"


def manifest_name(bundle_id: str, *, compressed: bool = True) -> str:
    """A bundle's manifest member; `compressed=False`: as bundles before gzip named it."""
    return f"{MANIFEST_DIR}/{bundle_id}.json{'.gz' if compressed else ''}"


def trailer_name(bundle_id: str) -> str:
    return f"{MANIFEST_DIR}/{bundle_id}.end"


class Writer:
    """A manifest written line by line as members are packed.

    `compressed` (a tar bundle's manifest, finish_compressed): the lines are gzip-compressed
    ~64 KiB at a time as they come, so a bundle in flight holds its manifest compressed (a
    ninth of the text), never the whole text; else (a sidecar, finish) the text. Joining a
    list of all lines at the end held each line, the joined text and its encoded copy at
    once: on a pack of 6,600 tiny files that was ~14 MiB for a 4.4 MiB manifest.
    """

    def __init__(self, plan: BundlePlan, *, created: str | None = None,
                 retention: dict[str, Any] | None = None, compressed: bool = False) -> None:
        doc: dict[str, Any] = {"format": FORMAT, "key": plan.key, "kind": plan.kind,
                               "group": plan.group, "bundle_id": plan.bundle_id,
                               "created": created or now_iso()}
        if retention:
            doc["retention"] = retention
        self.head = json.dumps(doc, ensure_ascii=True)[:-1].encode() + b',\n"members": [\n'
        self.members = 0
        self._pending: list[str] = []
        self._pending_chars = 0
        self._out = bytearray()  # the lines so far: compressed, or as text
        self._packer = isal_zlib.compressobj(LEVEL, isal_zlib.DEFLATED, GZIP) \
            if compressed else None

    def add(self, line: str) -> None:
        """One member, already JSON (`member_line`)."""
        self._pending.append(line)
        self._pending_chars += len(line)
        self.members += 1
        if self._pending_chars >= _CHUNK:
            self._flush()

    def _flush(self, end: bytes = b"") -> None:
        text = ",\n".join(self._pending).encode("ascii") + end
        if self._pending and self.members > len(self._pending):
            text = b",\n" + text  # between the lines already out and these
        self._pending, self._pending_chars = [], 0
        self._out += self._packer.compress(text) if self._packer else text

    def finish(self) -> bytearray:
        """The manifest's text (a Writer made without `compressed`)."""
        assert self._packer is None, "a compressed manifest: finish_compressed()"
        self._flush(b"\n]}\n")
        return bytearray(self.head) + self._out

    def finish_compressed(self) -> bytes:
        """The manifest as a tar bundle carries it (a Writer made `compressed`): two gzip
        members, the header object stored as it is (its length alone counts), then the
        member lines compressed."""
        assert self._packer is not None, "made without compressed=True"
        self._flush(b"\n]}\n")
        self._out += self._packer.flush()
        stored = zlib.compressobj(0, zlib.DEFLATED, GZIP)
        return stored.compress(self.head) + stored.flush() + self._out


def build(plan: BundlePlan, members: list[str], *, created: str | None = None,
          retention: dict[str, Any] | None = None) -> bytes:
    """The manifest: a header object (with the object's retention lock, if any), then one
    member (already JSON) per line."""
    out = Writer(plan, created=created, retention=retention)
    for line in members:
        out.add(line)
    return bytes(out.finish())


def decompressed(data: bytes | bytearray) -> bytes | bytearray:
    """The text of a gzip file of any number of members (or `data` itself, if not gzip)."""
    if data[:2] != GZIP_MAGIC:
        return data
    out, rest = [], memoryview(data)
    total = 0
    while rest:
        d = isal_zlib.decompressobj(wbits=GZIP)
        try:
            out.append(d.decompress(rest, MAX_MANIFEST - total + 1))
        except _BROKEN as exc:
            raise ValueError(f"not a pacsmigrate manifest: broken gzip ({exc})") from None
        total += len(out[-1])
        if total > MAX_MANIFEST:
            raise ValueError(f"not a pacsmigrate manifest: over {MAX_MANIFEST:,} bytes once "
                             "decompressed")
        if not d.eof:
            raise ValueError("not a pacsmigrate manifest: truncated gzip")
        rest = memoryview(d.unused_data)
    return b"".join(out)


def parse(data: bytes | bytearray) -> dict[str, Any]:
    """A manifest's document, from its JSON text or that text gzip-compressed."""
    doc: dict[str, Any] = json.loads(decompressed(data))
    if doc.get("format") != FORMAT:
        raise ValueError(f"not a pacsmigrate manifest: format={doc.get('format')!r}")
    return doc


def entries(doc: dict[str, Any]) -> list[Entry]:
    """The typed entries of a parsed manifest."""
    group = doc.get("group", "")
    out = []
    for m in doc["members"]:
        about = Described(m.get("group", group), m.get("status", "dicom"), m.get("reason", ""),
                          m.get("study_uid", ""), m.get("series_uid", ""), m.get("sop_uid", ""),
                          m.get("modality", ""), m.get("study_date", ""),
                          m.get("transfer_syntax", ""))
        out.append(Entry(from_fields(m["source_path"], m.get("source_path_b64", "")),
                         int(m["offset"]), int(m["length"]), m["blake3"], int(m["size"]),
                         int(m["mtime_ns"]), about, m.get("duplicate_of", ""),
                         m.get("encoding", "")))
    return out


def trailer(offset: int, length: int) -> bytes:
    """The 512-byte block that says where the manifest is."""
    doc = json.dumps({"format": TRAILER_FORMAT, "manifest_offset": offset,
                      "manifest_length": length}).encode()
    return doc.ljust(BLOCK - 1) + b"\n"


def read_trailer(tail: bytes) -> tuple[int, int] | None:
    """(offset, length) of the manifest from a bundle's last TAIL bytes, or None."""
    if len(tail) < TAIL:
        return None
    try:
        info = tarfile.TarInfo.frombuf(tail[-TAIL:-TAIL + BLOCK], "utf-8", "surrogateescape")
        doc = json.loads(tail[-TAIL + BLOCK:-2 * BLOCK])
    except (tarfile.HeaderError, ValueError):
        return None
    if (not info.name.startswith(MANIFEST_DIR + "/") or not info.name.endswith(".end")
            or doc.get("format") != TRAILER_FORMAT):
        return None
    return int(doc["manifest_offset"]), int(doc["manifest_length"])


def find_in_tar_tail(tail: bytes, bundle_id: str) -> bytes | None:
    """Find the manifest member in the last bytes of a bundle, walking back 512-byte blocks.

    For bundles written before the trailer (their manifest is plain `<id>.json`), or one
    whose trailer is damaged: tar headers carry their own checksum, so a block that parses
    as our manifest's header is one.
    """
    plain = manifest_name(bundle_id, compressed=False)
    want = (plain, manifest_name(bundle_id))
    # A tar's length is a multiple of 512, so block boundaries sit at multiples of 512 from
    # the end, whatever offset the tail was read from.
    for pos in range(len(tail) - BLOCK, -1, -BLOCK):
        block = tail[pos:pos + BLOCK]
        if plain.encode() not in block[:100]:
            continue
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            continue
        if info.name in want and pos + BLOCK + info.size <= len(tail):
            return tail[pos + BLOCK: pos + BLOCK + info.size]
    return None
