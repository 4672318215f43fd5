"""A migration's slicing plan: which units of the cut (shard.py) are too large, cut finer.

Planned once, by the first run of a migration cut into slices (on Dask, one task on a
worker, which sees the sources; else the first `--shard K/N` to start), from one listing of
the folders above the cut, and recorded
in the store (keys.RUN_DIR/slicing.json, never overwritten) where every slice, on any
machine, every later run, reads the same plan. It names folders by marks (a hash of the
path under the root), so it holds no patient data. Two kinds of too large:
- a folder with more than FLAT_FILES files directly in it (a storescp or import folder of
  millions): each of its files is a unit of its own (`flat`);
- a tree narrow at the top (archive/fs1/2019/...: the cut leaves fewer than
  UNITS_PER_SLICE units per slice): the folders at the cut are cut one level deeper
  (`split`), again up to DEEPER levels, until there are enough units; never a folder
  whose folders hold only files (a study's series stay together).
The listing is streamed: folders are counted as they come; what is kept is the plan, up to
UNITS_PER_SLICE folders per slice to cut next and SAMPLE names of each (beside the walk's
own listing of one folder at a time). Slices started together before any plan is recorded
each plan, and the first recorded stands. The plan stays as it was made: files added
later, even many, do not move between slices.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from .errors import SourceError
from .shard import Shard, mark, root_of
from .walk import walk

log = logging.getLogger("pacsmigrate.pipeline")

FLAT_FILES = 10_000  # files directly in one folder above which each file is a unit
UNITS_PER_SLICE = 8  # units per slice below which a narrow tree is cut deeper
DEEPER = 3  # levels below the cut a narrow tree may be cut at
SAMPLE = 16  # folders of a folder looked into to tell a study's series from a deeper tree


def as_doc(shard: Shard) -> dict[str, Any]:
    """A slice's plan as the store and the state record it (JSON)."""
    return {"cut": shard.cut, "split": sorted(m.hex() for m in shard.split),
            "flat": sorted(m.hex() for m in shard.flat)}


def with_plan(shard: Shard, doc: dict[str, Any] | None) -> Shard:
    """The slice cut as `doc` says (a doc from before plans splits nothing)."""
    if not doc:
        return shard
    return replace(shard, cut=doc.get("cut"),
                   split=frozenset(bytes.fromhex(m) for m in doc.get("split", ())),
                   flat=frozenset(bytes.fromhex(m) for m in doc.get("flat", ())))


def recorded_slice(config: dict[str, Any]) -> Shard | None:
    """The slice a state's config records, cut as it was (None: a whole migration)."""
    if not config.get("shard"):
        return None
    return with_plan(Shard.parse(config["shard"], cut=config.get("shard_cut")),
                     config.get("shard_plan"))


async def _folders(starts: list[bytes], deeper: Callable[[bytes], bool], threads: int, *,
                   strict: bool = False
                   ) -> AsyncIterator[tuple[bytes, int, list[bytes]]]:
    """Each folder listed: its path, how many files directly in it, its subfolders.
    `deeper(path)`: whether to list the subfolders of `path` too. `strict`: a start that
    cannot be listed is an error (a source root: a plan made without it would stand)."""
    def prune(directory: bytes, found: list[bytes]) -> list[bytes]:
        return found if deeper(directory) else []

    files = 0
    async for got in walk(starts, threads=threads, prune=prune):
        if strict and got.problems and got.path in starts and any(
                p.path == got.path for p in got.problems):
            raise SourceError(f"cannot list {os.fsdecode(got.path)} to plan the slicing "
                              f"({got.problems[0].reason}): check the SOURCE is mounted here")
        files += len(got.files)  # the pieces of one folder come one after the other
        if got.rest is None:
            yield got.path, files, got.subdirs  # all of them, also those not entered
            files = 0


async def plan(roots: list[bytes], slices: int, cut: int | None, *,
               flat_files: int | None = None, threads: int = 16) -> dict[str, Any]:
    """Plan the slicing of the trees under roots into `slices` slices (as_doc's form)."""
    started = time.monotonic()
    flat_files = FLAT_FILES if flat_files is None else flat_files
    if cut is None:
        return {"cut": None, "split": [], "flat": []}
    want = UNITS_PER_SLICE * slices
    split: set[bytes] = set()
    flat: set[bytes] = set()
    units = listed = 0
    frontier: list[bytes] = []  # folders at the level to cut next (all of them, if few)

    def rel(path: bytes) -> bytes:
        return path[len(root_of(roots, path)):].strip(b"/")

    def depth(path: bytes) -> int:
        r = rel(path)
        return r.count(b"/") + 1 if r else 0

    async for path, files, subs in _folders(roots, lambda p: depth(p) < cut - 1, threads,
                                            strict=True):
        listed += 1
        d = depth(path)
        if d == 0 or files > flat_files:
            units += files  # a root's files, or a flat folder's: each is a unit
            if d:
                flat.add(mark(rel(path)))
        elif files:
            units += 1
        if d == cut - 1:
            units += len(subs)
            frontier.extend(subs[:want + 1 - len(frontier)])
    for _ in range(DEEPER):
        if units >= want or not frontier:
            break
        # Each folder of the level: how many folders it holds, and the first SAMPLE of them
        # (by name), looked into to tell a study's series from a deeper tree.
        kids: dict[bytes, tuple[int, list[bytes]]] = {}
        async for path, files, subs in _folders(frontier, lambda p: False, threads):
            listed += 1
            kids[path] = len(subs), sorted(subs)[:SAMPLE]
            if files > flat_files:
                flat.add(mark(rel(path)))
                units += files
        looked = [c for _, some in kids.values() for c in some]
        inner: set[bytes] = set()  # of those, the ones that hold folders or are flat
        async for path, files, subs in _folders(looked, lambda p: False, threads):
            listed += 1
            if subs:
                inner.add(path)
            if files > flat_files:  # its folder is split below, as a flat folder needs
                flat.add(mark(rel(path)))
                inner.add(path)
                units += files
        frontier = []
        for path, (count, some) in kids.items():
            # A folder whose folders hold only files is left whole: they may be a
            # study's series, which one bundle should keep together.
            if any(c in inner for c in some):
                split.add(mark(rel(path)))
                units += count - 1
                frontier.extend(c for c in some if c in inner and mark(rel(c)) not in flat)
        del frontier[want + 1:]
    log.info("slicing planned from %d folders listed: %d flat, %d cut deeper, about %d "
             "units for %d slices", listed, len(flat), len(split), units, slices)
    return {"cut": cut, "split": sorted(m.hex() for m in split),
            "flat": sorted(m.hex() for m in flat),
            "planned": {"slices": slices, "folders_listed": listed, "units": units,
                        "seconds": round(time.monotonic() - started, 3)}}
