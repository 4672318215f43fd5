"""`--shard K/N`: one slice of the source trees, the same on every machine, every run.

Sites that schedule with their own job system (Kubernetes Jobs, Slurm arrays, one
`migrate` per machine) run the N slices side by side, each with its own --state; `index
merge` joins their states into one index. Every file falls in exactly one slice.

The slice of a file is a hash of its *unit*, a path relative to its source root (so two
machines that mount the archive at different places cut it the same way):
- a file two or more folders deep: the folder holding its folder. In the usual layouts
  that is the study's folder (PatientID/StudyDate/Study/Series/file, dcm4chee's
  yyyy/MM/dd/study/series/file, a CD's PT/ST/SE/file), so a study's series stay together
  and make one bundle, as in a single run;
- a file one folder deep: that folder;
- a file directly in a source root: the file itself (a flat storescp folder is spread
  over the slices; its studies, scattered anyway, get one bundle per slice).
The rule and the hash (blake3 of the unit) must never change: a state made with one slice
must find the same files in it on every later run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import blake3

from .errors import ConfigError

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_SHARDS = 1 << 16


@dataclass(frozen=True)
class Shard:
    """Slice `index` of `count` (0 <= index < count)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        m = _SPEC.match(text)
        if m is None:
            raise ConfigError(f"--shard {text!r}: give K/N, e.g. 0/4 for the first of four "
                              "slices (K counts from 0)")
        k, n = int(m.group(1)), int(m.group(2))
        if not 1 <= n <= MAX_SHARDS:
            raise ConfigError(f"--shard {text}: N must be between 1 and {MAX_SHARDS}")
        if k >= n:
            raise ConfigError(f"--shard {text}: K must be less than N (K counts from 0: "
                              f"0/{n} to {n - 1}/{n})")
        return cls(k, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def of(self, unit: bytes) -> int:
        """The slice a unit belongs to."""
        digest = blake3.blake3(b"pacsmigrate-shard\0" + unit).digest(8)
        return int.from_bytes(digest, "big") % self.count

    def folder(self, root: bytes, directory: bytes) -> bool | None:
        """Whether all files directly in `directory` (under `root`) are in this slice;
        None when each file decides for itself (files directly in the root)."""
        rel = directory[len(root):].strip(b"/")
        if not rel:
            return None
        parent, _, _ = rel.rpartition(b"/")
        return self.of(parent or rel) == self.index

    def keeps(self, root: bytes, directory: bytes, name: bytes) -> bool:
        """Whether the file `name` in `directory` (under `root`) is in this slice."""
        whole = self.folder(root, directory)
        return self.of(name) == self.index if whole is None else whole

    def holds(self, roots: list[bytes], path: bytes) -> bool:
        """Whether the file at `path` (under one of `roots`) is in this slice."""
        directory, _, name = path.rpartition(b"/")
        root = root_of(roots, directory)
        return bool(root) and self.keeps(root, directory, name)

    def select(self, root: bytes, directory: bytes, names: list[bytes]) -> list[bytes]:
        """The names of files in `directory` that are in this slice, in order."""
        whole = self.folder(root, directory)
        if whole is None:
            return [n for n in names if self.of(n) == self.index]
        return names if whole else []


def root_of(roots: list[bytes], directory: bytes) -> bytes:
    """The source root a walked directory lies under (the longest that holds it)."""
    best = b""
    for r in roots:
        if (directory == r or directory.startswith(r.rstrip(b"/") + b"/")) and len(r) > len(best):
            best = r
    return best
