"""What the read-stage tests (test_classify*.py) share: the key secret, the read-only
samples fixture, and one file through the read stage (`classify`, `cat`)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pacsmigrate.keys import new_secret
from pacsmigrate.read import ReadOptions, read_files
from pacsmigrate.records import Problem

SECRET = new_secret()


@pytest.fixture
def samples(shared_samples: Path) -> Path:
    """Read-only sample files (see conftest.shared_samples)."""
    return shared_samples


def classify(path: Path | bytes, *, secret: bytes = SECRET, hash_all: bool = False,
             hold_max: int = 2 << 20) -> SimpleNamespace | Problem:
    """One file through the read stage: a flat record of what it read, or its Problem."""
    directory, _, name = os.fsencode(path).rpartition(b"/")
    got = read_files(directory, [name], ReadOptions(secret, dry_run=hash_all,
                                                    hold_max=hold_max))
    if got.problems:
        return got.problems[0]
    (m,) = got.members
    return SimpleNamespace(path=m.path, size=m.size, mtime_ns=m.mtime_ns,
                           blake3=m.blake3, data=m.data, **asdict(m.about))


def cat(path: Path, **kwargs: Any) -> SimpleNamespace:
    rec = classify(path, **kwargs)
    assert isinstance(rec, SimpleNamespace), rec
    return rec
