"""The plan a dry run leaves in the state: every file it read, with the hash it read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from .checkpoint import Checkpoint
from .index import CsvRows

PLAN_FIELDS = ("source_path", "source_path_b64", "size", "mtime_ns", "blake3", "study_uid",
               "series_uid", "sop_uid", "modality", "study_date", "transfer_syntax", "status",
               "reason")
FORMATS = ("csv", "jsonl")


def planned(cp: Checkpoint) -> Iterator[dict[str, Any]]:
    """Every file the last dry run read, in path order, with the blake3 of what it read."""
    for _, row in cp.iter_db("plan"):
        yield {f: row.get(f, "") for f in PLAN_FIELDS}


def export_plan(cp: Checkpoint, out: IO[str], *, fmt: str) -> int:
    """Write the plan as CSV or JSON Lines (same path escape as the index); returns rows."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    n = 0
    if fmt == "csv":
        writer = CsvRows(out, PLAN_FIELDS)
        for row in planned(cp):
            writer.writerow(row)
            n += 1
        return n
    for row in planned(cp):
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n
