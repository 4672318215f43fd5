"""A migration's slicing plan: which units of the cut (shard.py) are too large, cut finer.

Planned once, by the first run of a migration cut into slices (the Dask coordinator, or the
first `--shard K/N` to start), from one listing of the folders above the cut, and recorded
in the store (keys.RUN_DIR/slicing.json, never overwritten) where every slice, on any
machine, every later run, reads the same plan. It names folders by marks (a hash of the
path under the root), so it holds no patient data. Two kinds of too large:
- a folder with more than FLAT_FILES files directly in it (a storescp or import folder of
  millions): each of its files is a unit of its own (`flat`);
- a tree narrow at the top (archive/fs1/2019/...: the cut leaves fewer than
  UNITS_PER_SLICE units per slice): the folders at the cut are cut one level deeper
  (`split`), again up to DEEPER levels, until there are enough units; never a folder
  whose folders hold only files (a study's series stay together).
The listing is streamed (folders counted as they come, at most a few per slice kept); the
plan stays as it was made: files added later, even many, do not move between slices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from .shard import Shard, mark, root_of
from .walk import walk

log = logging.getLogger("pacsmigrate.pipeline")

FLAT_FILES = 10_000  # files directly in one folder above which each file is a unit
UNITS_PER_SLICE = 8  # units per slice below which a narrow tree is cut deeper
DEEPER = 3  # levels below the cut a narrow tree may be cut at
LISTINGS = 100_000  # folders a level of a narrow tree may list to plan its cut


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


async def _folders(starts: list[bytes], deeper: Any, threads: int
                   ) -> AsyncIterator[tuple[bytes, int, list[bytes]]]:
    """Each folder listed: its path, how many files directly in it, its subfolders.
    `deeper(path)`: whether to list the subfolders of `path` too."""
    subdirs: dict[bytes, list[bytes]] = {}  # met by the walk's prune, until listed

    def prune(directory: bytes, found: list[bytes]) -> list[bytes]:
        subdirs[directory] = found
        return found if deeper(directory) else []

    files = 0
    async for got in walk(starts, threads=threads, prune=prune):
        files += len(got.files)  # the pieces of one folder come one after the other
        if got.rest is None:
            yield got.path, files, subdirs.pop(got.path, [])
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

    async for path, files, subs in _folders(roots, lambda p: depth(p) < cut - 1, threads):
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
        kids: dict[bytes, list[bytes]] = {}
        async for path, files, subs in _folders(frontier, lambda p: False, threads):
            listed += 1
            kids[path] = subs
            if files > flat_files:
                flat.add(mark(rel(path)))
                units += files
        children = [c for subs in kids.values() for c in subs]
        if len(children) > LISTINGS:
            break
        inner: set[bytes] = set()  # children that hold folders, or are flat
        async for path, files, subs in _folders(children, lambda p: False, threads):
            listed += 1
            if subs:
                inner.add(path)
            if files > flat_files:  # its folder is split below, as a flat folder needs
                flat.add(mark(rel(path)))
                inner.add(path)
                units += files
        frontier = []
        for path, subs in kids.items():
            # A folder whose folders hold only files is left whole: they may be a
            # study's series, which one bundle should keep together.
            if any(c in inner for c in subs):
                split.add(mark(rel(path)))
                units += len(subs) - 1
                frontier.extend(c for c in subs if c in inner and mark(rel(c)) not in flat)
    log.info("slicing planned from %d folders listed: %d flat, %d cut deeper, about %d "
             "units for %d slices", listed, len(flat), len(split), units, slices)
    return {"cut": cut, "split": sorted(m.hex() for m in split),
            "flat": sorted(m.hex() for m in flat),
            "planned": {"slices": slices, "folders_listed": listed, "units": units,
                        "seconds": round(time.monotonic() - started, 3)}}
