"""The source trees of a run: written once, described once, shared by the sections."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import fasttree

SIZE_BINS = ((16 << 10, "< 16 KiB"), (64 << 10, "16-64 KiB"), (256 << 10, "64-256 KiB"),
             (1 << 20, "256 KiB-1 MiB"), (4 << 20, "1-4 MiB"), (16 << 20, "4-16 MiB"),
             (None, ">= 16 MiB"))
LAYOUT_TEXT = {
    "date": "dcm4chee `yyyy/MM/dd/hash/hash/hash` (date received, Java hashCode hex)",
    "patient": "`PatientID/StudyDate/StudyUID/SeriesUID/SOPUID.dcm`",
}


@dataclass
class Tree:
    name: str
    root: Path
    how: str  # generator and its arguments, for the report
    layout: str
    files: int
    bytes: int
    dirs: int
    studies: int
    seconds: float
    sizes: tuple[int, ...] = ()  # every file's size, only for varied trees
    notes: str = ""
    _rels: frozenset[str] | None = field(default=None, repr=False)

    def rel_paths(self) -> frozenset[str]:
        """Every file's path relative to the root (what a peer's keys must be)."""
        if self._rels is None:
            rels = set()
            for folder, _subdirs, names in os.walk(self.root):
                rel = os.path.relpath(folder, self.root)
                for name in names:
                    rels.add(name if rel == "." else f"{rel}/{name}")
            self._rels = frozenset(rels)
        return self._rels

    def describe(self) -> list[str]:
        size_text = human(self.bytes / self.files) + (" each" if not self.sizes else " mean")
        lines = [f"- **{self.name}**: {self.files:,} files, {self.bytes:,} bytes "
                 f"({self.bytes / 1e6:,.1f} MB), {size_text}, {self.studies:,} studies "
                 f"(~{self.files / max(self.studies, 1):.1f} files/study), {self.dirs:,} "
                 f"directories; layout {LAYOUT_TEXT.get(self.layout, self.layout)}; "
                 f"{self.how}; written in {self.seconds:.1f} s. {self.notes}".rstrip()]
        if self.sizes:
            s = self.sizes
            lines.append(f"  - file size: min {human(s[0])}, p10 {human(pct(s, 0.1))}, median "
                         f"{human(pct(s, 0.5))}, p90 {human(pct(s, 0.9))}, p99 "
                         f"{human(pct(s, 0.99))}, max {human(s[-1])}; "
                         + "; ".join(_bins(self)))
        return lines


def _bins(tree: Tree) -> list[str]:
    out, lower = [], 0
    for upper, label in SIZE_BINS:
        chosen = [s for s in tree.sizes if s >= lower and (upper is None or s < upper)]
        if chosen:
            out.append(f"{label}: {len(chosen):,} files, "
                       f"{100 * sum(chosen) / tree.bytes:.1f} % of bytes")
        lower = upper or 0
    return out


def pct(sorted_values: Sequence[int], q: float) -> int:
    if not sorted_values:
        return 0
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError


def _count_dirs(root: Path) -> tuple[int, int]:
    """(files, directories) below root, from directory listings alone (no stat per file)."""
    files = dirs = 0
    stack = [os.fsencode(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    dirs += 1
                    stack.append(entry.path)
                else:
                    files += 1
    return files, dirs


class Trees:
    """Writes each tree the first time a section asks for it, under work/trees/."""

    def __init__(self, base: Path, *, seed: int) -> None:
        self.base, self.seed = base, seed
        self.made: dict[str, Tree] = {}

    def fast(self, kind: str, files: int, *, layout: str = "date") -> Tree:
        name = f"{kind}-{files}-{layout}"
        if name in self.made:
            return self.made[name]
        spec = fasttree.Spec(kind=kind, files=files, layout=layout, seed=self.seed)
        k = fasttree.KINDS[kind]
        print(f"writing tree {name} ...", flush=True)
        t0 = time.perf_counter()
        written = fasttree.write_tree(spec, self.base / name)
        seconds = time.perf_counter() - t0
        found, dirs = _count_dirs(self.base / name)
        if found != files:
            raise SystemExit(f"bench: tree {name} has {found} files, expected {files}")
        tree = Tree(
            name=name, root=self.base / name, layout=layout, files=files, bytes=written.bytes,
            dirs=dirs, studies=written.studies, seconds=seconds,
            how=(f"`benchmarks/fasttree.py` (kind {kind}: {k.modality} {k.rows}x{k.columns} "
                 f"{k.bits}-bit, explicit VR LE; one template, distinct Study/Series/SOP UIDs, "
                 f"patient and accession patched per file; random pixels; seed {self.seed})"),
            notes=(f"{written.series:,} series; {written.addon_studies:,} studies have a series "
                   "received 1-30 days later, so it lies in another day's folder."
                   if layout == "date" else f"{written.series:,} series."))
        print(f"  {files:,} files, {tree.bytes / 1e6:,.1f} MB in {seconds:.1f} s", flush=True)
        self.made[name] = tree
        return tree

    def synth(self, studies: int, scale: float, *, layout: str = "date") -> Tree:
        name = f"synth-{studies}-{scale}-{layout}"
        if name in self.made:
            return self.made[name]
        from pacsmigrate.synth import make_tree

        print(f"writing tree {name} ...", flush=True)
        t0 = time.perf_counter()
        summary = make_tree(self.base / name, studies=studies, seed=self.seed, layout=layout,
                            scale=scale)
        seconds = time.perf_counter() - t0
        sizes: list[int] = []
        dirs = 0
        for folder, subdirs, names in os.walk(self.base / name):
            dirs += len(subdirs)
            sizes += [os.lstat(os.path.join(folder, n)).st_size for n in names]
        tree = Tree(
            name=name, root=self.base / name, layout=layout, files=len(sizes),
            bytes=sum(sizes), dirs=dirs, studies=summary.studies, seconds=seconds,
            sizes=tuple(sorted(sizes)),
            how=(f"`pacsmigrate.synth.make_tree(studies={studies}, scale={scale}, "
                 f"seed={self.seed}, layout={layout!r})` (real modality mix: CT, MR, CR, DX, "
                 "MG, US, SR, KO)"))
        print(f"  {tree.files:,} files, {tree.bytes / 1e6:,.1f} MB in {seconds:.1f} s",
              flush=True)
        self.made[name] = tree
        return tree
