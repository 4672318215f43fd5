"""The RIS path -> object index: export one row per source file as CSV or JSON Lines."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import IO, Any

from .checkpoint import Checkpoint
from .manifest import ROW_FIELDS

FORMATS = ("csv", "jsonl")


def rows(cp: Checkpoint) -> Iterator[dict[str, Any]]:
    """Index rows in source-path byte order, streamed from the checkpoint."""
    for _, row in cp.iter_db("index"):
        yield {f: row.get(f, "") for f in ROW_FIELDS}


def export(cp: Checkpoint, out: IO[str], *, fmt: str) -> int:
    """Write the index; returns the number of rows.

    Paths: `source_path` is exact when the path is UTF-8. Otherwise it shows each invalid
    byte as \\xNN and `source_path_b64` holds the exact bytes (base64); it is empty for
    UTF-8 paths, so a reader can always recover the path byte for byte.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    n = 0
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=ROW_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows(cp):
            writer.writerow(row)
            n += 1
    else:
        for row in rows(cp):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
