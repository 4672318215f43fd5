"""Section `compress`: what `--compress zstd` saves and costs.

1. pydicom's sample files and 2. phantom CT and MR slices (benchmarks/phantom.py), each file
through `pacsmigrate.encoding.Compressor.encode` as the packer calls it: bytes stored, and
zstd's compress and decompress speed on one core (process CPU time). 3. A phantom CT tree
migrated into the bench's SeaweedFS with and without `--compress zstd`.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import phantom
from measure import disturbed, machine_busy_seconds, wait_idle
from runs import Ctx, Outcome, Run, disturbance_note, fail, order_lines, run_one
from targets import Section
from tools import PM_DEFAULTS, Variant
from trees import Tree, Trees

from pacsmigrate.encoding import LEVEL, UNCOMPRESSED, ZSTD, Compressor, decode

PM_ZSTD = Variant("pacsmigrate --compress zstd", "pacsmigrate", ("--compress", ZSTD))
TS_NAMES = {"1.2.840.10008.1.2": "Implicit VR LE", "1.2.840.10008.1.2.1": "Explicit VR LE",
            "1.2.840.10008.1.2.2": "Explicit VR BE"}
MIGRATED = re.compile(r"^migrated now: ([\d,]+) files in ([\d,]+) new objects \(([\d,.]+) MB\)",
                      re.MULTILINE)
COMPRESSED = re.compile(r"^compressed \(zstd\): ([\d,]+) files, ([\d,.]+) MB stored as "
                        r"([\d,.]+) MB", re.MULTILINE)


@dataclass
class Rate:
    """Median MB/s of the kept timings, each `reps` passes over the data (CPU seconds)."""

    mb_s: float
    reps: int
    kept: list[tuple[float, float]]  # (CPU s per pass, CPUs the rest of the machine used)
    discarded: int  # timings taken again because the rest of the machine was busy

    @property
    def others(self) -> float:
        return max(o for _, o in self.kept)


@dataclass
class Group:
    """Files compressed as the packer would: original and stored sizes, frames, rates."""

    name: str
    items: list[tuple[bytes, str]]  # (file bytes, transfer syntax as pacsmigrate reads it)
    stored: list[int] = field(default_factory=list)
    frames: list[tuple[bytes, int]] = field(default_factory=list)
    comp: Rate | None = None
    decomp: Rate | None = None

    @property
    def size(self) -> int:
        return sum(len(d) for d, _ in self.items)

    @property
    def saving(self) -> float:
        return 100 * (1 - sum(self.stored) / self.size) if self.size else 0.0


def cpu_rate(fn: Callable[[], object], nbytes: int, *, seconds: float, timings: int,
             max_others: float, tries: int) -> Rate:
    """Median MB/s of `timings` timings, each of passes of fn lasting ~`seconds` of CPU.

    A timing during which the rest of the machine averaged more than max_others CPUs is
    taken again, up to timings * tries timings in all; then the least disturbed are kept.
    """
    t0 = time.process_time()
    fn()  # warm-up, and how long one pass takes
    reps = max(1, math.ceil(seconds / max(time.process_time() - t0, 1e-4)))
    good: list[tuple[float, float]] = []
    bad: list[tuple[float, float]] = []
    while len(good) < timings and len(good) + len(bad) < timings * tries:
        busy0, wall0, cpu0 = machine_busy_seconds(), time.perf_counter(), time.process_time()
        for _ in range(reps):
            fn()
        mine, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        busy1 = machine_busy_seconds()
        others = 0.0 if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - mine) / wall
        (good if others <= max_others else bad).append((mine / reps, others))
    kept = good + sorted(bad, key=lambda x: x[1])[:timings - len(good)]
    return Rate(nbytes / 1e6 / statistics.median(c for c, _ in kept), reps, kept,
                len(bad) - (len(kept) - len(good)))


@dataclass
class Timing:
    seconds: float  # CPU seconds one timing should last
    timings: int  # timings per measurement (the median is reported)
    idle_wait: float
    max_others: float  # a timing during which others used more CPUs is taken again
    retries: int
    notes: list[str] = field(default_factory=list)

    def rate(self, name: str, fn: Callable[[], object], nbytes: int) -> Rate:
        if self.idle_wait > 0:
            wait_idle(self.idle_wait)
        r = cpu_rate(fn, nbytes, seconds=self.seconds, timings=self.timings,
                     max_others=self.max_others, tries=self.retries + 1)
        busy = sum(o > self.max_others for _, o in r.kept)
        parts = [f"{r.discarded} timing(s) taken again"] if r.discarded else []
        if busy:
            parts.append(f"{busy} of {len(r.kept)} kept with up to {r.others:.2f} CPUs of others")
        if parts:
            self.notes.append(f"{name}: " + ", ".join(parts))
            print(f"    {self.notes[-1]}", flush=True)
        return r


def measure_group(g: Group, t: Timing, *, rates: bool = True) -> Group:
    packer = Compressor()
    for data, ts in g.items:
        frame = packer.encode(data, ts)
        g.stored.append(len(frame) if frame is not None else len(data))
        if frame is not None:
            if decode(frame, ZSTD, size=len(data)) != data:
                raise SystemExit(f"bench: FAILED: a {g.name} frame does not decode to its file")
            g.frames.append((frame, len(data)))
    if not rates:
        return g

    def comp() -> None:
        for data, ts in g.items:
            packer.encode(data, ts)

    def decomp() -> None:
        for frame, size in g.frames:
            decode(frame, ZSTD, size=size)

    print(f"  timing {g.name}: {len(g.items)} files, {g.size / 1e6:.1f} MB", flush=True)
    g.comp = t.rate(f"{g.name} compress", comp, g.size)
    if g.frames:
        g.decomp = t.rate(f"{g.name} decompress", decomp, sum(n for _, n in g.frames))
    return g


def real_samples() -> tuple[list[tuple[str, bytes, str]], list[str], int]:
    """(name, bytes, transfer syntax) of every sample pydicom reads; names skipped; total."""
    import pydicom
    from pydicom.data import get_testdata_files

    from pacsmigrate.header import header_from_bytes

    paths = sorted(p for p in get_testdata_files() if os.path.isfile(p))
    out, skipped = [], []
    for path in paths:
        try:
            pydicom.dcmread(path)
        except Exception:  # noqa: BLE001 - whatever pydicom cannot read is left out
            skipped.append(os.path.basename(path))
            continue
        data = Path(path).read_bytes()
        out.append((os.path.basename(path), data, header_from_bytes(data).transfer_syntax))
    return out, skipped, len(paths)


def _rate(r: Rate | None) -> str:
    return f"{r.mb_s:,.0f}" if r else "—"


def group_rows(groups: Sequence[Group]) -> list[str]:
    out = [("| group | files | MB | MB stored | saving % | stored as frames | zstd compress "
            "MB/s | decompress MB/s |"), "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for g in groups:
        out.append(f"| {g.name} | {len(g.items):,} | {g.size / 1e6:,.1f} | "
                   f"{sum(g.stored) / 1e6:,.1f} | {g.saving:.1f} | {len(g.frames):,} | "
                   f"{_rate(g.comp)} | {_rate(g.decomp)} |")
    return out


def _others(groups: Sequence[Group]) -> float:
    return max((r.others for g in groups for r in (g.comp, g.decomp) if r), default=0.0)


def samples_part(timing: Timing) -> tuple[list[str], list[Group]]:
    samples, skipped, total = real_samples()
    unc = Group("uncompressed transfer syntaxes (compressed where smaller)",
                [(d, ts) for _, d, ts in samples if ts in UNCOMPRESSED])
    other = Group("compressed syntaxes (stored as they are)",
                  [(d, ts) for _, d, ts in samples if ts not in UNCOMPRESSED])
    measure_group(unc, timing)
    measure_group(other, timing, rates=False)  # encode only checks the syntax: no zstd
    # zstd on the compressed syntaxes anyway (what the transfer-syntax rule avoids).
    forced = Group("the same, zstd forced", [(d, "1.2.840.10008.1.2.1") for d, _ in other.items])
    measure_group(forced, timing)
    no_ts = sum(1 for _, _, ts in samples if not ts)
    by_ts = []
    for ts, name in TS_NAMES.items():
        sub = [(len(d), n) for (d, t), n in zip(unc.items, unc.stored, strict=True) if t == ts]
        if sub:
            before, after = sum(b for b, _ in sub), sum(a for _, a in sub)
            by_ts.append(f"{name} ({ts}) {len(sub)} files, {before / 1e6:.1f} → "
                         f"{after / 1e6:.1f} MB ({100 * (1 - after / before):.1f} %)")
    per_file = [100 * (1 - s / len(d)) for (d, _), s in zip(unc.items, unc.stored, strict=True)]
    names = {id(d): n for n, d, _ in samples}
    big = sorted(zip(unc.items, unc.stored, strict=True), key=lambda x: -len(x[0][0]))[:4]
    lines = [
        (f"**Real samples**: every regular file `pydicom.data.get_testdata_files()` returns "
         f"here ({total} files: pydicom's test files and the installed pydicom-data); "
         f"{len(skipped)} that `pydicom.dcmread` (without `force`) cannot read are left out "
         f"({', '.join(sorted(skipped))}), leaving {len(samples)} files, "
         f"{sum(len(d) for _, d, _ in samples) / 1e6:.1f} MB. Grouped by the transfer syntax "
         "pacsmigrate's header parser reads (`pacsmigrate.header.header_from_bytes`)"
         + (f"; {no_ts} file(s) without one count as stored as they are" if no_ts else "")
         + ". Each file is one `Compressor().encode(data, transfer_syntax)` call, as the "
         f"packer makes per tar member (zstd level {LEVEL}; files under 1 KiB, or whose frame "
         "is not smaller, stay as they are); every frame was checked to decode to its file."),
        "", *group_rows([unc, other]), "",
        "- uncompressed, by syntax: " + "; ".join(by_ts) + ".",
        (f"- per-file saving in the uncompressed group: median {statistics.median(per_file):.1f} "
         f"%, range {min(per_file):.1f} - {max(per_file):.1f} %; the 4 largest files are "
         f"{100 * sum(len(d) for (d, _), _ in big) / unc.size:.0f} % of its bytes: "
         + ", ".join(f"{names[id(d)]} {len(d) / 1e6:.1f} MB ({100 * (1 - s / len(d)):.0f} %)"
                     for (d, _), s in big) + "."),
        (f"- zstd level {LEVEL} forced on the compressed-syntax files would save "
         f"{forced.saving:.1f} % ({forced.size / 1e6:.1f} → {sum(forced.stored) / 1e6:.1f} MB, "
         f"{len(forced.frames)} of {len(forced.items)} files smaller) at "
         f"{_rate(forced.comp)} MB/s: the transfer-syntax rule skips that work."),
        ""]
    return lines, [unc, other, forced]


def phantom_part(timing: Timing, ct_n: int, mr_n: int, seed: int
                 ) -> tuple[list[str], list[Group]]:
    ct = Group(f"phantom CT, 512x512 ({ct_n} slices)",
               [(d, "1.2.840.10008.1.2.1") for _, d in phantom.ct_files(ct_n, seed)])
    mr = Group(f"phantom MR, 256x256 ({mr_n} slices)",
               [(d, "1.2.840.10008.1.2.1") for d in phantom.mr_files(mr_n, seed)])
    for g in (ct, mr):
        measure_group(g, timing)
    lines = [
        ("**Synthetic CT and MR (a phantom, not patient data)**: slices drawn by "
         "`benchmarks/phantom.py` with numpy and written by pydicom as Explicit VR Little "
         "Endian CT / MR Image Storage files with file meta and Study/Series/SOP UIDs (one "
         f"series per study; seed {seed}). CT: a trunk of ellipses, air -1000 HU, fat -100, "
         "soft tissue 40-60, contrast aorta 150, lungs -850 in upper slices, bone 700-1200 "
         f"(vertebra, ribs, pelvis), a table; 3x3 blur at edges; white Gaussian noise sigma "
         f"{phantom.CT_NOISE_HU:.0f} HU; stored unsigned (PixelRepresentation 0, BitsStored 12, "
         "RescaleIntercept -1024), 0 outside the 512-pixel reconstruction circle; series of "
         f"{phantom.CT_SLICES_PER_STUDY[0]}-{phantom.CT_SLICES_PER_STUDY[1]} slices from "
         "thorax to pelvis. MR: a T1-like head (scalp, dark skull, grey and white matter, "
         "ventricles), smooth coil bias, Rician noise (sigma "
         f"{phantom.MR_NOISE:.0f}), uint16 with BitsStored 12, 24 slices per series. Real "
         "scans have texture, other noise and kernels; these ratios show how zstd treats "
         "such pixels, not what an archive would save."), "", *group_rows([ct, mr]), ""]
    return lines, [ct, mr]


@dataclass
class Stored:
    mb: float  # "migrated now: ... (X MB)"
    objects: int
    bucket_bytes: int
    zstd: tuple[int, float, float] | None  # files, MB before, MB after


def _parse(run: Run, log: Path, tree: Tree) -> Stored:
    text = log.read_text(errors="replace")
    m = MIGRATED.search(text)
    if not m:
        fail("no 'migrated now:' line in pacsmigrate's output", log)
    assert m is not None
    files = int(m.group(1).replace(",", ""))
    if files != tree.files:
        fail(f"pacsmigrate says it migrated {files} files, the tree has {tree.files}", log)
    c = COMPRESSED.search(text)
    zstd = (int(c.group(1).replace(",", "")), float(c.group(2).replace(",", "")),
            float(c.group(3).replace(",", ""))) if c else None
    if (zstd is not None) != (ZSTD in run.variant.extra):
        fail(f"{run.variant.name}: 'compressed (zstd)' line {'missing' if not c else 'found'}",
             log)
    return Stored(float(m.group(3).replace(",", "")), int(m.group(2).replace(",", "")),
                  sum(run.listing.values()), zstd)


def e2e_part(ctx: Ctx, trees: Trees, megabytes: int) -> list[str]:
    tree = ct_tree(trees, megabytes)
    variants = [PM_DEFAULTS, PM_ZSTD]
    outcomes = {v.name: Outcome(v) for v in variants}
    stored: dict[str, list[Stored]] = {v.name: [] for v in variants}
    for repeat in range(1, ctx.repeats + 1):
        order = variants if repeat % 2 else list(reversed(variants))
        for position, v in enumerate(order, 1):
            for attempt in range(1, ctx.retries + 2):
                run = run_one(ctx, v, tree, section="compress", repeat=repeat,
                              position=position, attempt=attempt)
                label = f"compress-r{repeat}-{v.slug}" + (f"-a{attempt}" if attempt > 1 else "")
                got = _parse(run, ctx.work / "logs" / f"{label}.log", tree)
                if not disturbed(run.timed, ctx.max_others) or attempt > ctx.retries:
                    break
                print("    disturbed: discarded, running it again", flush=True)
                outcomes[v.name].discarded.append(run)
            outcomes[v.name].runs.append(run)
            stored[v.name].append(got)
    mb = tree.bytes / 1e6
    lines = [(f"**End to end**: tree **{tree.name}** ({tree.files:,} phantom CT slices, "
              f"{mb:,.0f} MB, {tree.studies} studies; its size is the bench's `ct` preset, "
              "`--ct-mb`: 1,000 MB full, 200 MB quick) migrated by `pacsmigrate migrate` into "
              "this run's SeaweedFS, fresh bucket and state per run, "
              f"{ctx.repeats} repeat(s) in alternating order; every run checked by "
              "`pacsmigrate status --json` (files_migrated = the tree's files) and `verify --deep` "
              "(untimed: every member read back, its blake3 compared). Stored MB from "
              "the migrate summary (`migrated now: ... (X MB)`: bundles, manifests and "
              "descriptor), bucket bytes from listing the bucket after the run."), "",
             ("| variant | median wall s | MB/s | client CPU s | server CPU s | stored MB | "
              "bucket bytes | objects | compressed (zstd) line |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for v in variants:
        o, s = outcomes[v.name], stored[v.name][-1]
        server = o.median_of("own_cpu")
        z = (f"{s.zstd[0]:,} files, {s.zstd[1]:,.1f} MB → {s.zstd[2]:,.1f} MB" if s.zstd
             else "—")
        lines.append(f"| {v.name} | {o.wall:.2f} | {mb / o.wall:.1f} | {o.cpu:.1f} | "
                     f"{'n/a' if server is None else f'{server:.1f}'} | {s.mb:,.1f} | "
                     f"{s.bucket_bytes:,} | {s.objects:,} | {z} |")
    base, comp = outcomes[PM_DEFAULTS.name], outcomes[PM_ZSTD.name]
    kept = stored[PM_DEFAULTS.name][-1].bucket_bytes, stored[PM_ZSTD.name][-1].bucket_bytes
    varied = [v.name for v in variants if len({s.bucket_bytes for s in stored[v.name]}) > 1]
    lines += ["", (f"With `--compress zstd` the bucket holds {100 * kept[1] / kept[0]:.1f} % of "
                   f"the bytes ({100 * (1 - kept[1] / kept[0]):.1f} % saved); wall time "
                   f"{comp.wall / base.wall:.2f}x, client CPU {comp.cpu / base.cpu:.2f}x of the "
                   "run without it. "
                   + (f"Bucket bytes differed between repeats for {', '.join(varied)} (the "
                      "table shows the last run's). " if varied else
                      "Every repeat stored the same number of bytes. ")
                   + "Runs (wall / client CPU): " + "; ".join(
                       f"{o.variant.name}: " + ", ".join(
                           f"{r.timed.wall:.2f} s / {r.timed.cpu:.1f} s" for r in o.runs)
                       for o in outcomes.values()) + "."),
              "", "Order:", "", *order_lines(list(outcomes.values())), "",
              disturbance_note(list(outcomes.values()), ctx)]
    return lines


def ct_tree(trees: Trees, megabytes: int) -> Tree:
    name = f"phantom-ct-{megabytes}mb-patient"
    if name in trees.made:
        return trees.made[name]
    root = trees.base / name
    print(f"writing tree {name} ...", flush=True)
    t0 = time.perf_counter()
    files, nbytes, studies = phantom.write_ct_tree(root, megabytes, trees.seed)
    seconds = time.perf_counter() - t0
    dirs = sum(len(d) for _, d, _ in os.walk(root))
    tree = Tree(name=name, root=root, layout="patient", files=files, bytes=nbytes, dirs=dirs,
                studies=studies, seconds=seconds,
                how=("`benchmarks/phantom.py` (phantom CT 512x512, 12 bits stored in 16, "
                     "explicit VR LE, one series per study; shapes and noise, not random "
                     f"pixels; seed {trees.seed})"), notes=f"{studies:,} series.")
    print(f"  {files:,} files, {nbytes / 1e6:,.1f} MB in {seconds:.1f} s", flush=True)
    trees.made[name] = tree
    return tree


def run_compress(ctx: Ctx, trees: Trees, megabytes: int) -> Section:
    timing = Timing(0.3 if ctx.quick else 2.0, 3 if ctx.quick else 5, ctx.idle_wait,
                    ctx.max_others, ctx.retries)
    ct_n, mr_n = (40, 48) if ctx.quick else (160, 192)
    real, groups = samples_part(timing)
    synth, more = phantom_part(timing, ct_n, mr_n, trees.seed)
    lines = [("zstd speeds are MB of original bytes per CPU second of the bench process on one "
              "core (`time.process_time`): compress = every file of the group through "
              "`Compressor.encode` (also those it leaves as they are; for the compressed syntaxes "
              "it only checks the syntax, so no rate is shown), decompress = "
              "`pacsmigrate.encoding.decode` of each stored frame; each timing repeats the pass "
              f"until it lasts ~{timing.seconds:.1f} CPU-s, median of {timing.timings} timings. "
              "Before each measurement the bench waits for a nearly idle machine (as before a "
              "run); a timing during which the rest of the machine averaged more than "
              f"{ctx.max_others} CPUs is taken again (up to {ctx.retries + 1}x the timings), "
              "then the least disturbed count: " + ("; ".join(timing.notes) or "none needed")
              + f". In the timings kept the rest used at most {_others(groups + more):.2f} CPUs "
              "(CPU time is not stretched by others' work, but shared caches and memory "
              "bandwidth may slow it)."),
             "", *real, *synth, *e2e_part(ctx, trees, megabytes)]
    return Section("compress", "9. Compression: `migrate --compress zstd`", lines)
