"""What verify can find, the Finding type, and the spool and report that hold every finding."""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError
from ..paths import path_fields, shown

# What a finding says. All but WARNINGS make verify fail (exit status 1).
OBJECT_MISSING = "object missing"
OBJECT_SIZE = "object size differs"
OBJECT_CHECKSUM = "object checksum differs"
MANIFEST_MISSING = "manifest missing"
UNCOMMITTED_OBJECT = "index names an uncommitted object"
MEMBER_ALTERED = "member altered"
MEMBER_UNREADABLE = "member unreadable"
SOURCE_CHANGED = "source changed"
SOURCE_UNREADABLE = "source unreadable"
SOURCE_NOT_INDEXED = "source not in index"
SOURCE_GONE = "source gone"        # the stored copy is the only one left: safe, but say so
SOURCE_TOUCHED = "source touched"  # mtime moved, bytes identical to the stored copy
WARNINGS = frozenset({SOURCE_GONE, SOURCE_TOUCHED})
# Damage a later `migrate` repairs: every file of such an object, or such a member.
WHOLE_OBJECT = frozenset({OBJECT_MISSING, OBJECT_SIZE, OBJECT_CHECKSUM, UNCOMMITTED_OBJECT})
ONE_MEMBER = frozenset({MEMBER_ALTERED, MEMBER_UNREADABLE})


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that is not as the checkpoint recorded it, named by key and/or path."""

    kind: str
    key: str = ""
    path: bytes | None = None
    detail: str = ""

    @property
    def warning(self) -> bool:
        return self.kind in WARNINGS

    def to_json(self) -> dict[str, Any]:
        where = path_fields(self.path) if self.path is not None else {
            "source_path": "", "source_path_b64": ""}
        return {"kind": self.kind, "severity": "warning" if self.warning else "error",
                "key": self.key, **where, "detail": self.detail}

    def __str__(self) -> str:
        names = " ".join(x for x in (self.key, shown(self.path or b"")) if x)
        return f"{self.kind}: {names}" + (f" ({self.detail})" if self.detail else "")


class Findings:
    """Counts every finding, keeps the first few, spools all of them for the report."""

    def __init__(self, *, keep: int, spool: IO[str] | None) -> None:
        self.kept: list[Finding] = []
        self.by_kind: Counter[str] = Counter()
        self.errors = self.warnings = 0
        self._keep = keep
        self._spool = spool
        self.damaged_objects: set[str] = set()  # keys (staterepair: every file stored again)
        self.damaged_members: list[tuple[bytes, str]] = []  # (path, key)

    def add(self, f: Finding) -> None:
        self.by_kind[f.kind] += 1
        if f.warning:
            self.warnings += 1
        else:
            self.errors += 1
        if f.kind in WHOLE_OBJECT:
            self.damaged_objects.add(f.key)
        elif f.kind in ONE_MEMBER and f.path is not None:
            self.damaged_members.append((f.path, f.key))
        if len(self.kept) < self._keep:
            self.kept.append(f)
        if self._spool is not None:
            self._spool.write(json.dumps(f.to_json(), ensure_ascii=True) + "\n")


def open_spool(path: Path) -> IO[str]:
    """Findings go here as they are found, so the report never holds them all in memory."""
    try:
        return open(path, "w+", encoding="ascii")  # closed by verify()
    except OSError as exc:
        raise ConfigError(f"cannot write the report beside {path}: {exc}") from exc


def write_report(path: Path, head: dict[str, Any], spool: IO[str]) -> None:
    """The head (options, totals), then the findings streamed from the spool."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="ascii") as out:
            out.write(json.dumps(head, ensure_ascii=True, indent=1)[:-2])
            out.write(',\n"findings": [')
            spool.seek(0)
            out.writelines(("\n" if n == 0 else ",\n") + line.rstrip("\n")
                           for n, line in enumerate(spool))
            out.write("\n]\n}\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write report {path}: {exc}") from exc
