"""The small value objects that flow between pipeline stages."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from .paths import path_fields

DICOM = "dicom"
UNSORTED = "unsorted"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A regular file found by the scan, with what its stat said then."""

    path: bytes
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Problem:
    """A path that was not migrated (or not as DICOM) and why.

    final=True marks a deliberate skip (symlink, device, vanished file): the run can still
    succeed. final=False means the file still needs migrating: the run exits non-zero.
    """

    path: bytes
    reason: str
    detail: str = ""
    final: bool = True

    def to_json(self) -> dict[str, Any]:
        return {**path_fields(self.path), "reason": self.reason, "detail": self.detail,
                "final": self.final}


@dataclass(frozen=True, slots=True)
class Catalogued:
    """One classified file waiting to be packed, keyed in the catalogue by its group."""

    path: bytes
    size: int
    mtime_ns: int
    group: str
    status: str = DICOM
    reason: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    modality: str = ""
    study_date: str = ""
    transfer_syntax: str = ""
    blake3: str = ""  # set only by a dry-run, which hashes everything up front

    def dumps(self) -> bytes:
        d = asdict(self)
        d["path"] = self.path.hex()
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> Catalogued:
        d = json.loads(raw)
        d["path"] = bytes.fromhex(d["path"])
        return cls(**d)


@dataclass(slots=True)
class BundlePlan:
    """Files of one group to pack into one object (a tar bundle, or one large file alone)."""

    group: str
    kind: str  # "tar" or "file"
    members: list[Catalogued] = field(default_factory=list)
    key: str = ""
    bundle_id: str = ""

    @property
    def size(self) -> int:
        return sum(m.size for m in self.members)


def now_iso() -> str:
    """UTC now, to the second, as the manifests, report and checkpoint write it."""
    return datetime.now(UTC).isoformat(timespec="seconds")
