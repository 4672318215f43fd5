"""What verify returns: the counts of what it looked at, and its findings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .findings import Finding


@dataclass(frozen=True)
class Counts:
    """What verify looked at."""

    objects: int = 0             # data objects in the checkpoint, compared with the store
    manifests: int = 0           # their sidecar manifests, checked present
    listed: int = 0              # of those, answered by LIST (no HEAD needed)
    heads: int = 0               # HEAD requests: LIST lacked the key or its ETag
    rows: int = 0                # index rows (source files migrated)
    members_selected: int = 0    # rows chosen for --deep (all, or the --sample)
    members_checked: int = 0     # read back and hashed
    members_unverified: int = 0  # not read: their object is missing or unreadable
    range_requests: int = 0
    bytes_read: int = 0
    sources_selected: int = 0    # rows chosen for --source
    sources_checked: int = 0     # stat'ed (and hashed when the size matched)
    sources_bytes: int = 0       # source bytes hashed
    sources_walked: int = 0      # regular files the walk of the source roots found


@dataclass(frozen=True)
class VerifyResult:
    """Counts and findings of one verify; `ok` when no finding is an error."""

    counts: Counts
    errors: int
    warnings: int
    by_kind: Mapping[str, int]
    findings: tuple[Finding, ...]  # the first VerifyConfig.keep_findings, in order found
    seconds: float
    damaged: tuple[bytes, ...] = ()  # source files behind damage in the store (repair list)

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def totals(self) -> dict[str, Any]:
        return {**{f.name: getattr(self.counts, f.name) for f in fields(Counts)},
                "errors": self.errors, "warnings": self.warnings,
                "by_kind": dict(self.by_kind), "seconds": self.seconds}
