"""`--shard K/N`: one slice of the source trees, the same on every machine, every run.

Sites that schedule with their own job system (Kubernetes Jobs, Slurm arrays, one
`migrate` per machine) run the N slices side by side, each with its own --state; `index
merge` joins their states into one index. Every file falls in exactly one slice.

The slice of a file is a hash of its *unit*, a path relative to its source root (so two
machines that mount the archive at different places cut it the same way):
- a file two or more folders deep: the folder holding its folder, but no deeper than CUT
  (3) folders from the root. In the usual layouts that is the study's folder or a day's
  (PatientID/Study/Series/file, a CD's PT/ST/SE/file; yyyy/MM/dd of date-named trees and
  dcm4chee's yyyy/MM/dd/HH/..), so a study's series stay together and make one bundle,
  as in a single run;
- a file one folder deep: that folder;
- a file directly in a source root: the file itself (a flat storescp folder is spread
  over the slices; its studies, scattered anyway, get one bundle per slice).
Everything below a folder CUT+1 deep has that folder's unit, so a slice does not enter the
folders of other slices there: it lists the top CUT levels and only its own subtrees below.

A unit found too large when the migration's slicing was planned (slicing.py) is cut finer,
as the plan recorded (marks of folders, never names, so the plan holds no patient data):
- `flat`: a folder of many files directly in it; each of those files is a unit, as in a
  source root (a storescp or import folder of millions);
- `split`: a folder whose unit is cut one folder deeper: each folder in it is a unit (a
  tree narrow at the top, e.g. archive/fs1/2019/..., where the cut leaves a few units).
  A flat folder below the cut is always in a split folder (the walk must enter it).

The rule, the hash (blake3 of the unit) and a migration's plan must never change: a state
made with one slice must find the same files in it on every later run. States made before
the cut existed (`cut` None: the folder holding the file's folder, at any depth) keep their
rule, as those made before plans (nothing split).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import blake3

from .errors import ConfigError

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
MAX_SHARDS = 1 << 16
CUT = 3  # folders from a root below which a whole subtree is one unit


def mark(rel: bytes) -> bytes:
    """How a plan names a folder (its path under the root): a hash, never the name."""
    return blake3.blake3(b"pacsmigrate-split\0" + rel).digest(16)


@dataclass(frozen=True)
class Shard:
    """Slice `index` of `count` (0 <= index < count), units cut at `cut` folders deep
    (None: at no depth, as states made before the cut), finer where the plan says
    (`split`, `flat`: marks of folders)."""

    index: int
    count: int
    cut: int | None = CUT
    split: frozenset[bytes] = frozenset()
    flat: frozenset[bytes] = frozenset()

    @classmethod
    def parse(cls, text: str, *, cut: int | None = CUT) -> Shard:
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
        return cls(k, n, cut)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def of(self, unit: bytes) -> int:
        """The slice a unit belongs to."""
        digest = blake3.blake3(b"pacsmigrate-shard\0" + unit).digest(8)
        return int.from_bytes(digest, "big") % self.count

    def _split_below(self, parts: list[bytes], depth: int) -> int:
        """How deep the unit of `parts[:depth]` goes once the plan's split folders are cut
        finer (never past the folder `parts` itself)."""
        while depth < len(parts) and self.split and mark(b"/".join(parts[:depth])) in self.split:
            depth += 1
        return depth

    def unit(self, rel: bytes) -> bytes | None:
        """The unit of the files directly in the folder `rel` (a path under a root); None
        when each of them is a unit of its own (the root, a flat folder)."""
        if not rel or (self.flat and mark(rel) in self.flat):
            return None
        parts = rel.split(b"/")
        n = len(parts)
        depth = 1 if n == 1 else n - 1 if self.cut is None else min(n - 1, self.cut)
        return b"/".join(parts[:self._split_below(parts, depth)])

    def folder(self, root: bytes, directory: bytes) -> bool | None:
        """Whether all files directly in `directory` (under `root`) are in this slice;
        None when each file decides for itself (the root, a flat folder)."""
        unit = self.unit(_rel(root, directory))
        return None if unit is None else self.of(unit) == self.index

    def subdirs(self, root: bytes, directory: bytes, subdirs: list[bytes]) -> list[bytes]:
        """The subdirectories of `directory` (under `root`) that can hold files of this
        slice: below the cut, a subtree is one unit, in this slice or not at all."""
        if self.cut is None or not subdirs:
            return subdirs
        rel = _rel(root, directory)
        parts = rel.split(b"/") if rel else []
        if len(parts) < self.cut:
            return subdirs  # above the cut
        if self._split_below(parts, self.cut) < len(parts):
            return subdirs  # already inside a subtree of ours
        if not (self.split and mark(rel) in self.split):
            # Every file below a folder at the cut has that folder as its unit.
            return subdirs if self.of(rel) == self.index else []
        # A split folder: each subdirectory is a unit (or is cut finer still).
        base = len(root.rstrip(b"/")) + 1
        return [s for s in subdirs
                if (m := mark(s[base:])) in self.split or m in self.flat
                or self.of(s[base:]) == self.index]

    def keeps(self, root: bytes, directory: bytes, name: bytes) -> bool:
        """Whether the file `name` in `directory` (under `root`) is in this slice."""
        return bool(self.select(root, directory, [name]))

    def holds(self, roots: list[bytes], path: bytes) -> bool:
        """Whether the file at `path` (under one of `roots`) is in this slice."""
        directory, _, name = path.rpartition(b"/")
        root = root_of(roots, directory)
        return bool(root) and self.keeps(root, directory, name)

    def select(self, root: bytes, directory: bytes, names: list[bytes]) -> list[bytes]:
        """The names of files in `directory` that are in this slice, in order."""
        whole = self.folder(root, directory)
        if whole is None:
            # Each file is a unit: its name in a root (as ever), its path under the root in
            # a flat folder.
            rel = _rel(root, directory)
            head = rel + b"/" if rel else b""
            return [n for n in names if self.of(head + n) == self.index]
        return names if whole else []


def _rel(root: bytes, directory: bytes) -> bytes:
    """The path of `directory` under `root`."""
    return directory[len(root):].strip(b"/")


def pruner(roots: list[bytes], shard: Shard | None
           ) -> Callable[[bytes, list[bytes]], list[bytes]] | None:
    """The walk's prune for a slice: enter only the subtrees that can hold its files."""
    if shard is None or shard.cut is None:
        return None
    cut = shard

    def prune(directory: bytes, subdirs: list[bytes]) -> list[bytes]:
        return cut.subdirs(root_of(roots, directory), directory, subdirs)
    return prune


def root_of(roots: list[bytes], directory: bytes) -> bytes:
    """The source root a walked directory lies under (the longest that holds it)."""
    best = b""
    for r in roots:
        if (directory == r or directory.startswith(r.rstrip(b"/") + b"/")) and len(r) > len(best):
            best = r
    return best
