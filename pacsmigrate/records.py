"""The typed records that travel between pipeline stages, from the read to the commit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .paths import path_fields
from .tarheader import BLOCK

DICOM = "dicom"
UNSORTED = "unsorted"
TAR = "tar"
FILE = "file"


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


# The per-file records are plain slotted dataclasses, not frozen ones: a frozen dataclass
# costs five times as much to build, and the pipeline builds several per file.


@dataclass(slots=True)
class Described:
    """What a file's header says about it, and which group (study or directory) it joins."""

    group: str
    status: str = DICOM
    reason: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    modality: str = ""
    study_date: str = ""
    transfer_syntax: str = ""
    # AccessionNumber, held while the file is planned (a retention map may name it); kept
    # in the spill, never in the index, manifests or keys.
    accession: str = ""


@dataclass(slots=True)
class Member:
    """A file read for packing: its stat, its header, and its bytes (or None: read at upload).

    Small files are read whole once and carried here; larger ones (`data` None) are read
    again only when their bundle is sent, checked against this stat.
    """

    path: bytes
    size: int
    mtime_ns: int
    about: Described
    blake3: str = ""  # of `data` (or, after a dry run, of the whole file)
    data: bytes | None = None

    @property
    def group(self) -> str:
        return self.about.group


@dataclass(slots=True)
class Entry:
    """One stored file as its manifest and the index record it: where its bytes are."""

    path: bytes
    offset: int
    length: int
    blake3: str
    size: int
    mtime_ns: int
    about: Described
    # Deduplicated: the bytes were not stored again; offset and length are those of the
    # same content (same blake3) in the object with this key, stored earlier.
    duplicate_of: str = ""
    encoding: str = ""  # "" as they are, "zstd": one zstd frame (encoding.py)


# How much larger than its members a tar grows at most (bundle.py writes it; ASCII paths):
# a member's tar header (a PAX header too for a long name), padding and manifest line take
# at most MEMBER_OVERHEAD plus 4 bytes a byte of its path (PAX name, path, base64); the
# manifest's header, the trailer and the two end blocks take TAR_OVERHEAD.
MEMBER_OVERHEAD = 3 * BLOCK
TAR_OVERHEAD = 8 * BLOCK


def member_bound(m: Member) -> int:
    """What a member adds to its tar at most, its bytes included."""
    return m.size + MEMBER_OVERHEAD + 4 * len(m.path)


@dataclass(slots=True)
class BundlePlan:
    """Files of one group to pack into one object (a tar bundle, or one large file alone)."""

    group: str
    kind: str  # TAR or FILE
    members: list[Member] = field(default_factory=list)
    key: str = ""
    bundle_id: str = ""
    size: int = 0  # sum of the members' sizes
    # How the store keeps its object (storage class, study-year tag, retention lock), as
    # object metadata: fixed before its key, which depends on it (keys.bundle_id).
    policy: dict[str, str] = field(default_factory=dict)
    # How large its tar grows at most (ASCII paths; TAR_OVERHEAD and member_bound): what
    # --bundle-size and --pack hold objects to, and what a part buffer is sized by.
    bound: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.bound = TAR_OVERHEAD + sum(member_bound(m) for m in self.members)

    @property
    def study_date(self) -> str:
        """The StudyDate its object is kept by (storage class, year tag, lock): its study's;
        none for a folder's unsorted files, which may be of several studies or of none
        (undated: the default class, no year tag, locked from the run's day)."""
        first = self.members[0].about if self.members else None
        return first.study_date if first is not None and first.status == DICOM else ""

    def add(self, m: Member, bound: int | None = None) -> None:
        """Add a member (`bound`: its member_bound, when the caller has it)."""
        self.members.append(m)
        self.size += m.size
        self.bound += member_bound(m) if bound is None else bound

    def extend(self, other: BundlePlan) -> None:
        """Add every member of `other` (a study's plan into a pack)."""
        self.members += other.members
        self.size += other.size
        self.bound += other.bound - TAR_OVERHEAD


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object the store acknowledged (or that a run adopted), with its entries."""

    key: str
    kind: str
    group: str
    bundle_id: str
    size: int
    etag: str
    created: str
    entries: tuple[Entry, ...]
    adopted: bool = False
    retention: dict[str, Any] | None = None  # its lock, as the manifest records it


@dataclass(frozen=True, slots=True)
class Stored:
    """Where committed content is (deduplication): its object, range, encoding and the
    object's lock as retention.lock_of gives it."""

    key: str
    offset: int
    length: int
    encoding: str
    lock: tuple[int, int]


_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """UTC now, to the second, as the manifests, report and checkpoint write it (formatted
    once a second: every bundle's manifest and object record asks)."""
    global _second
    t = int(time.time())
    if _second[0] != t:
        _second = (t, datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds"))
    return _second[1]
