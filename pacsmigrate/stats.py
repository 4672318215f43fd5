"""Counters a run keeps for its summary and report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .records import Problem


@dataclass
class Stats:
    """What one run saw and did (this run only; `status` reads the totals)."""

    files_seen: int = 0
    bytes_seen: int = 0
    already_migrated: int = 0
    classified: int = 0
    spilled: int = 0  # files of scattered studies, packed after the walk
    unsorted: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)  # left out by a filter, by reason
    objects_uploaded: int = 0
    bundles_uploaded: int = 0
    files_migrated: int = 0
    bytes_uploaded: int = 0
    compressed_files: int = 0  # stored as zstd frames: their bytes before and after
    compressed_from: int = 0
    compressed_to: int = 0
    # Study objects a --retention-map does not name: locked for --retain-years, or unlocked.
    retention_defaulted: int = 0
    retention_unlocked: int = 0
    duplicate_files: int = 0  # stored once already (same blake3): indexed, not sent again
    duplicate_bytes: int = 0
    objects_adopted: int = 0
    adopted_other_policy: int = 0  # of them: stored under another class or lock than asked
    files_adopted: int = 0  # their files: committed by this run (in files_migrated)
    commit_transactions: int = 0
    uploads_aborted: int = 0
    uploads_restarted: int = 0  # of them: too old to take up (12 h), so sent anew
    uploads_resumed: int = 0  # unfinished multipart uploads a killed run left, completed now
    parts_reused: int = 0  # multipart parts a killed run had sent, kept by this one
    requests: int = 0
    retries: Counter[str] = field(default_factory=Counter)  # by cause: "503 SlowDown", ...
    throttle_slowdowns: int = 0
    lowest_concurrency: int = 0
    intents_dropped: int = 0
    reread_changed: int = 0
    repaired_files: int = 0  # found damaged by a verify, stored again by this run
    damaged_objects: list[str] = field(default_factory=list)  # keys no longer indexed
    damaged_source_gone: int = 0  # damaged, but the source is gone: rows kept
    reread_bytes: int = 0
    moved_study: int = 0
    dry_run_mismatch: int = 0
    planned_objects: int = 0
    planned_studies: int = 0  # DICOM studies with files in a dry run's plan
    planned_files: int = 0
    planned_bytes: int = 0
    planned_requests: int = 0
    setup_requests: int = 0  # a dry run's: a real run's requests besides its objects'
    # A dry run without --pack: its objects that --pack HINT_SIZE would join, and the
    # packs they would make (pack.py, the same packer the run would use).
    packable_objects: int = 0
    packs: int = 0
    store: dict[str, Any] | None = None  # a dry run's: what the store holds (survey.py)
    store_lines: list[str] = field(default_factory=list)
    counted_files: int = 0  # a sampled dry run's: the files of the whole tree, listed
    read_seconds: float = 0.0  # a sampled dry run's: reading its slice
    folders_read: int = 0  # folders whose files were read (a sample's spread)
    # By folder read: n, sums of files, bytes, files², bytes², files x bytes (sample.py's
    # error of the bytes estimate). Not added up across slices (a sample runs in one).
    folder_moments: dict[str, float] = field(default_factory=dict)
    estimate: dict[str, Any] | None = None  # a sampled dry run's: the whole tree (sample.py)
    estimate_lines: list[str] = field(default_factory=list)
    objects_by_class: Counter[str] = field(default_factory=Counter)  # with a tier policy
    bytes_by_class: Counter[str] = field(default_factory=Counter)
    small_by_class: Counter[str] = field(default_factory=Counter)  # billed above their size
    billed_by_class: Counter[str] = field(default_factory=Counter)
    cost: dict[str, Any] | None = None  # the dry run's estimate (costs.py), with prices
    cost_lines: list[str] = field(default_factory=list)
    studies: int = 0
    pending_after: int = 0
    not_migrated: int = 0
    first_object_seconds: float = 0.0  # from the start until the first object was committed
    checksum: str = ""  # what single PUTs carried: md5 or crc32 (`--checksum auto` decided)
    seconds: float = 0.0

    def fold_folder(self, files_bytes: list[int]) -> None:
        """One folder's files and bytes into folders_read and folder_moments."""
        f, b = files_bytes
        if not f:
            return
        self.folders_read += 1
        m = self.folder_moments
        for name, value in (("n", 1), ("f", f), ("b", b), ("ff", f * f), ("bb", b * b),
                            ("fb", f * b)):
            m[name] = m.get(name, 0.0) + value

    def count_problems(self, problems: Iterable[Problem]) -> None:
        for p in problems:
            (self.skipped if p.final else self.failed)[p.reason] += 1

    def add(self, other: dict[str, Any]) -> None:
        """Add another run's totals (as_dict) to these: a slice's, on a Dask worker."""
        for name, value in other.items():
            mine = getattr(self, name)
            if isinstance(mine, Counter):
                mine.update(value)
            elif isinstance(mine, list):  # damaged_objects: each slice's
                mine.extend(value)
            elif name == "lowest_concurrency":
                if value and (not mine or value < mine):
                    self.lowest_concurrency = value
            elif name == "first_object_seconds":
                if value and (not mine or value < mine):
                    self.first_object_seconds = value
            elif isinstance(mine, int | float) and not isinstance(mine, bool):
                setattr(self, name, mine + value)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, Counter) else value
        return out
