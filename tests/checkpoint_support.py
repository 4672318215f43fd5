"""What the checkpoint tests (test_checkpoint*.py) share: the rows they commit (about,
member, stored), the writer on a fresh state directory (the `cp` fixture) and reopening it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.records import DICOM, Described, Entry, Member, StoredObject

GROUPS = ["0" * 32, "7f" * 16, "ff" * 16]


def about(group: str = GROUPS[0], sop: str = "1.2.3.4.5") -> Described:
    return Described(group, DICOM, "", "1.2.3", "1.2.3.4", sop, "CT", "20240101",
                     "1.2.840.10008.1.2.1")


def member(path: bytes, group: str = GROUPS[0], size: int = 100, mtime_ns: int = 1000,
           sop: str = "") -> Member:
    return Member(path, size, mtime_ns, about(group, sop or "1.2.3.4." + str(len(path))))


def stored(key: str, members: list[Member], group: str = GROUPS[0]) -> StoredObject:
    entries = tuple(Entry(m.path, 512 * (i + 1), m.size, f"{i + 1:064x}", m.size, m.mtime_ns,
                          m.about) for i, m in enumerate(members))
    return StoredObject(key, "tar", group, key.rsplit("/", 1)[1], 4096, "etag", "2026-01-01",
                        entries)


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[Checkpoint]:
    c = Checkpoint(tmp_path / "state")
    yield c
    if c._lock_fd is not None:  # not closed by the test itself
        c.close()


def reopen(cp: Checkpoint) -> Checkpoint:
    cp.close()
    return Checkpoint(cp.state_dir)
