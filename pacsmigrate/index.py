"""The RIS path -> object index: export it (CSV, JSON Lines, SQLite, SQL) and look paths up."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

from .access import destination_of
from .checkpoint import Checkpoint
from .config import Destination
from .errors import ConfigError
from .manifest import ROW_FIELDS
from .paths import display
from .ris import PrefixMap, SqlTarget
from .sqlitefile import scratch_db

FORMATS = ("csv", "jsonl", "sqlite", "sql")
# Every exported row: the index row, then where its bytes are as one URI.
EXPORT_FIELDS = (*ROW_FIELDS, "object_uri")
INTEGER_FIELDS = frozenset({"offset", "length", "size", "mtime_ns"})
SQLITE_TABLE = "images"
SQLITE_BATCH = 5000


# -- the object address -------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectAddress:
    """Where one source file's bytes are: a byte range of one object in one bucket."""

    scheme: str
    bucket: str
    key: str
    offset: int
    length: int
    encoding: str = ""  # "zstd": the range is one zstd frame of the file

    @property
    def http_range(self) -> str | None:
        """The HTTP Range header value; None for an empty file (ranges are inclusive)."""
        return f"bytes={self.offset}-{self.offset + self.length - 1}" if self.length else None


def object_uri(dest: Destination, key: str, *, offset: int, length: int, encoding: str = ""
               ) -> str:
    """The address of a file's bytes: `SCHEME://BUCKET/KEY#offset=N&length=N`.

    SCHEME names the store kind (`s3`: AWS S3 or any S3-compatible store; the endpoint is
    the store's configuration, not part of the address), BUCKET the bucket or container,
    KEY the object key (with the destination prefix) percent-encoded per RFC 3986: every
    byte of its UTF-8 except unreserved characters and `/` is written `%XX`. The fragment
    gives the byte range in decimal: `offset` of the first byte, `length` in bytes, i.e.
    `Range: bytes=offset-(offset+length-1)`. Example:
    `s3://hospital-archive/pacs/3f/a2/3fa2.../b81c....tar#offset=1536&length=525314`.
    parse_object_uri is the inverse. A local directory's address is the file's own URL,
    `file:///srv/archive/3f/a2/...tar#offset=...`, whose path can be opened as it is.
    A member stored compressed (`--compress zstd`) adds `&encoding=zstd`: the range is one
    zstd frame, `zstd -d` gives the file.
    """
    fragment = f"#offset={int(offset)}&length={int(length)}"
    if encoding:
        fragment += f"&encoding={encoding}"
    if dest.scheme == "file":
        return f"file://{quote(dest.bucket.rstrip('/') + '/' + key, safe='/')}{fragment}"
    return f"{dest.scheme}://{quote(dest.bucket, safe='')}/{quote(key, safe='/')}{fragment}"


_RANGE_RE = re.compile(r"offset=(\d+)&length=(\d+)|length=(\d+)&offset=(\d+)")


def parse_object_uri(uri: str) -> ObjectAddress:
    """The parts of an address written by object_uri; ValueError if it is not one.

    For a local directory (`file:`) bucket is "" and key the file's absolute path.
    """
    parts = urlsplit(uri)
    fragment, _, encoding = parts.fragment.partition("&encoding=")
    m = _RANGE_RE.fullmatch(fragment)
    local = parts.scheme == "file" and not parts.netloc
    if not parts.scheme or not (parts.netloc or local) or len(parts.path) < 2 or parts.query \
            or not m:
        raise ValueError(f"not an object address (SCHEME://BUCKET/KEY#offset=N&length=N): "
                         f"{uri!r}")
    offset, length = (m[1], m[2]) if m[1] is not None else (m[4], m[3])
    key = unquote(parts.path) if local else unquote(parts.path[1:])
    return ObjectAddress(parts.scheme, unquote(parts.netloc), key, int(offset), int(length),
                         encoding)


# -- rows ---------------------------------------------------------------------------------
def rows(cp: Checkpoint, *, mapping: PrefixMap | None = None) -> Iterator[dict[str, Any]]:
    """Export rows in source-path byte order, streamed from the checkpoint.

    `source_path` is written through `mapping` (as the RIS knows it); `source_path_b64`,
    when set, stays the exact bytes of the path as migrated.
    """
    dest = destination_of(cp)
    for _, row in cp.iter_db("index"):
        yield export_row(row, dest=dest, mapping=mapping)


class CsvRows:
    """CSV rows, one a line ("\n"): a row with a carriage return in a field (a path may
    hold one) is written with every field quoted, else a reader would cut the row there
    (Python's csv quotes only a line terminator's own characters)."""

    def __init__(self, out: IO[str], fields: Sequence[str]) -> None:
        self._plain = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        self._quoted = csv.DictWriter(out, fieldnames=fields, lineterminator="\n",
                                      quoting=csv.QUOTE_ALL)
        self._plain.writeheader()

    def writerow(self, row: dict[str, Any]) -> None:
        cr = any(isinstance(v, str) and "\r" in v for v in row.values())
        (self._quoted if cr else self._plain).writerow(row)


def export_row(row: dict[str, Any], *, dest: Destination, mapping: PrefixMap | None = None
               ) -> dict[str, Any]:
    """One checkpoint index row as exported: EXPORT_FIELDS, the path through `mapping`."""
    out = {f: row.get(f, "") for f in ROW_FIELDS}
    if mapping:
        out["source_path"] = mapping.apply(out["source_path"])
    out["object_uri"] = object_uri(dest, out["key"], offset=int(out["offset"]),
                                   length=int(out["length"]), encoding=out["encoding"])
    return out


# -- export -------------------------------------------------------------------------------
def export(cp: Checkpoint, out: IO[str], *, fmt: str, mapping: PrefixMap | None = None,
           sql: SqlTarget | None = None) -> int:
    """Write the index as csv, jsonl or sql to a text stream; returns the number of rows.

    Paths: `source_path` is exact when the path is UTF-8. Otherwise it shows each invalid
    byte as \\xNN and `source_path_b64` holds the exact bytes (base64); it is empty for
    UTF-8 paths, so a reader can always recover the path byte for byte. `object_uri` is the
    address of the bytes (see object_uri). For sqlite, see export_sqlite.
    """
    if fmt not in FORMATS or fmt == "sqlite":
        text_formats = ", ".join(f for f in FORMATS if f != "sqlite")
        raise ValueError(f"unknown text format {fmt!r}; choose one of {text_formats}")
    n = 0
    if fmt == "csv":
        writer = CsvRows(out, EXPORT_FIELDS)
        for row in rows(cp, mapping=mapping):
            writer.writerow(row)
            n += 1
    elif fmt == "jsonl":
        for row in rows(cp, mapping=mapping):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    else:
        n = _write_sql(cp, out, mapping=mapping, target=sql or SqlTarget())
    return n


def _write_sql(cp: Checkpoint, out: IO[str], *, mapping: PrefixMap | None,
               target: SqlTarget) -> int:
    """UPDATE statements in one transaction; a path that is not UTF-8 gets a comment with
    its exact bytes, since its escaped text is all a RIS can have matched."""
    out.write("-- pacsmigrate: object addresses for the RIS, "
              "SCHEME://BUCKET/KEY#offset=N&length=N\n")
    if target.dialect == "mysql":
        out.write("-- MySQL dialect: backslashes are escaped; run without NO_BACKSLASH_ESCAPES\n")
    else:
        out.write("-- standard SQL: quotes doubled, backslashes literal "
                  "(MySQL: SET sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES'))\n")
    out.write("BEGIN;\n")
    n = 0
    for row in rows(cp, mapping=mapping):
        update = target.update(path=row["source_path"], uri=row["object_uri"])
        if row["source_path_b64"]:
            out.write(f"-- path not UTF-8; exact bytes (base64): {row['source_path_b64']}\n")
            text = display(base64.b64decode(row["source_path_b64"]))
            if cp.index_row(text.encode("utf-8", "surrogateescape")) is not None:
                # A file is named by this very text: its row must not get this address.
                out.write("-- not applied: a UTF-8 file of the index has this escaped text "
                          "as its name (its own UPDATE names it)\n-- ")
        out.write(update + "\n")
        n += 1
    out.write("COMMIT;\n")
    return n


def _sqlite_columns() -> str:
    return ", ".join(f'"{f}" {"INTEGER" if f in INTEGER_FIELDS else "TEXT"}'
                     for f in EXPORT_FIELDS)


def export_sqlite(cp: Checkpoint, path: Path, *, mapping: PrefixMap | None = None,
                  batch: int = SQLITE_BATCH) -> int:
    """Write the index as a ready-to-query SQLite file; returns the number of rows.

    One table `images` (the export columns; offset, length, size and mtime_ns INTEGER, the
    rest TEXT) with indexes on source_path and sop_uid. Rows are streamed and inserted in
    batches in one transaction into a temporary file beside `path`, which then replaces
    `path`: a failed export leaves no half-written database.
    """
    placeholders = ", ".join("?" for _ in EXPORT_FIELDS)
    n = 0
    with scratch_db(path) as con:
        con.execute("BEGIN")
        con.execute(f"CREATE TABLE {SQLITE_TABLE} ({_sqlite_columns()})")
        insert = f"INSERT INTO {SQLITE_TABLE} VALUES ({placeholders})"
        it = rows(cp, mapping=mapping)
        while chunk := [tuple(r[f] for f in EXPORT_FIELDS) for r in islice(it, batch)]:
            con.executemany(insert, chunk)
            n += len(chunk)
        # Built after the inserts: one sorted pass instead of updates row by row.
        con.execute(f"CREATE INDEX {SQLITE_TABLE}_source_path ON {SQLITE_TABLE} (source_path)")
        con.execute(f"CREATE INDEX {SQLITE_TABLE}_sop_uid ON {SQLITE_TABLE} (sop_uid)")
        con.execute("COMMIT")
    return n


# -- lookup -------------------------------------------------------------------------------
# What paths.display writes for bytes >= 0x80, and paths.shown for control characters.
_ESCAPE_RE = re.compile(rb"\\x([89a-f][0-9a-f]|[01][0-9a-f]|7f)")


def candidates(path: str | bytes, *, mapping: PrefixMap | None = None) -> list[bytes]:
    """The index keys a path may stand for, most literal first: as given (or through the
    reverse of `mapping`, for a path as the RIS writes it), made absolute, with symlinks
    resolved, and with `\\xNN` escapes (the export's text for names that are not UTF-8)
    turned back into bytes."""
    return [q for pair in _candidate_pairs(path, mapping) for q in pair if q is not None]


def _candidate_pairs(path: str | bytes, mapping: PrefixMap | None
                     ) -> list[tuple[bytes, bytes | None]]:
    """Each spelling of the path, with its `\\xNN` escapes turned into bytes beside it
    (None when it has none, or when an earlier pair holds it)."""
    given = os.fsencode(path)
    if mapping:
        back = mapping.reverse(os.fsdecode(given))
        if back is not None:
            given = os.fsencode(back)
    seen: set[bytes] = set()
    out: list[tuple[bytes, bytes | None]] = []
    for p in (given, os.path.abspath(given), os.path.realpath(given)):
        q: bytes | None = _ESCAPE_RE.sub(lambda m: bytes.fromhex(m[1].decode()), p)
        q = None if q == p or q in seen else q
        if p not in seen:
            out.append((p, q))
        elif q is not None:
            out.append((q, None))
        seen.update(x for x in (p, q) if x is not None)
    return out


def find_row(cp: Checkpoint, path: str | bytes, *, mapping: PrefixMap | None = None,
             exact: bool = False) -> tuple[bytes, dict[str, Any]] | None:
    """The index key and row of a path, trying each of `candidates(path)` (only the bytes
    given when `exact`); None if nowhere. A `\\xNN` text that names both a file with
    that text in its name and one with that byte is refused (ConfigError): the export
    shows both alike, only their bytes (`source_path_b64`) tell them apart."""
    if exact:
        key = os.fsencode(path)
        row = cp.index_row(key)
        return None if row is None else (key, row)
    for literal, unescaped in _candidate_pairs(path, mapping):
        row = cp.index_row(literal)
        other = cp.index_row(unescaped) if unescaped is not None else None
        if row is not None and other is not None:
            raise ConfigError(
                f"{display(literal)} names two migrated files: one with that text in its "
                "name and one whose name has the bytes it escapes; give the exact path's "
                "bytes in base64 with --b64 (the export's source_path_b64; for the first, "
                "the base64 of its UTF-8)")
        if row is not None:
            return literal, row
        if other is not None:
            assert unescaped is not None
            return unescaped, other
    return None


def decode_b64_path(text: str) -> bytes:
    """A path given as base64 of its exact bytes (the export's `source_path_b64`)."""
    try:
        out = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise ConfigError("--b64: SOURCE_PATH is not base64 (give the export's "
                          "source_path_b64)") from None
    if not out:
        raise ConfigError("--b64: SOURCE_PATH decodes to an empty path")
    return out


@dataclass(frozen=True)
class Located:
    """Where one source file now lives: its index row and the address of its bytes."""

    path: bytes
    row: dict[str, Any]
    address: ObjectAddress

    def to_json(self) -> dict[str, Any]:
        """The export's row (every field; `size` is the file's, `length` the range's: they
        differ when `encoding` says the range is a compressed frame) and the bucket."""
        r = self.row
        head = {"source_path": display(self.path), "source_path_b64": r["source_path_b64"],
                "object_uri": r["object_uri"], "bucket": self.address.bucket,
                "key": r["key"], "offset": int(r["offset"]), "length": int(r["length"]),
                "size": int(r["size"] or 0), "encoding": r["encoding"]}
        return {**head, **{f: r[f] for f in ROW_FIELDS if f not in head}}


def locate(cp: Checkpoint, path: str | bytes, *, mapping: PrefixMap | None = None,
           exact: bool = False) -> Located | None:
    """Where a source file now lives (see find_row); None if nowhere."""
    found = find_row(cp, path, mapping=mapping, exact=exact)
    if found is None:
        return None
    key, row = found
    out = export_row(row, dest=destination_of(cp))
    return Located(key, out, parse_object_uri(out["object_uri"]))
