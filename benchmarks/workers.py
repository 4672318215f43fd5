"""Section `workers`: the small-file tree by pacsmigrate in one process and on 1, 2 and 4
Dask worker processes (`--workers N`), with s5cmd in the same matrix; client CPU per worker
and what the per-file cost says about bigger machines."""

from __future__ import annotations

from runs import Ctx, Outcome, disturbance_note, order_lines, run_matrix
from targets import Section
from tools import S5_DEFAULTS, Variant
from trees import Trees

COUNTS = (1, 2, 4)
SINGLE = Variant("pacsmigrate (defaults)", "pacsmigrate")
LINK = 10e9 / 8  # a 10 Gbit/s link, bytes per second
CORES = 16


def _variants() -> list[Variant]:
    return [SINGLE, *(Variant(f"pacsmigrate --workers {n}", "pacsmigrate",
                              ("--workers", str(n))) for n in COUNTS), S5_DEFAULTS]


def _workers(o: Outcome) -> int:
    extra = o.variant.extra
    return int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 0


def run_workers(ctx: Ctx, trees: Trees, files: int) -> Section:
    tree = trees.fast("small", files)
    outcomes = run_matrix(ctx, _variants(), tree, section="workers")
    by = {o.variant.name: o for o in outcomes}
    single = by[SINGLE.name].wall
    s5 = by[S5_DEFAULTS.name].wall
    lines = [(f"Tree: **{tree.name}** ({tree.files:,} files of {tree.bytes / tree.files / 1024:.1f}"
              f" KiB). Each run: a fresh bucket and --state; `--workers N` starts a Dask "
              "LocalCluster of N processes (one thread each) on 127.0.0.1, cuts the run into "
              "4N slices (states under --state) and merges them at the end, all inside the "
              "timed run (cluster "
              f"start-up included). {ctx.repeats} repeats in alternating order; CPU is the "
              "whole process tree's (workers included), median of the repeats."), "",
             "Order:", "", *order_lines(outcomes), "",
             ("| tool | workers | median wall s | files/s | vs one process | vs s5cmd | "
             "client CPU s | CPU s per 10k files | CPU s per worker | peak RSS MiB |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for o in outcomes:
        n = _workers(o)
        per = f"{o.cpu / n:.1f}" if n else "—"
        lines.append(f"| {o.variant.name} | {n or '—'} | {o.wall:.2f} | "
                     f"{tree.files / o.wall:,.0f} | {single / o.wall:.2f}x | {s5 / o.wall:.2f}x | "
                     f"{o.cpu:.1f} | {o.cpu / tree.files * 1e4:.2f} | {per} | "
                     f"{o.peak_rss_mib} |")
    best = min((o for o in outcomes if _workers(o)), key=lambda o: o.wall)
    frugal = min((o for o in outcomes if o.variant.tool == "pacsmigrate"),
                 key=lambda o: o.cpu)
    per_file = frugal.cpu / tree.files
    size = tree.bytes / tree.files
    cores_rate = CORES / per_file
    link_rate = LINK / size
    lines += ["", disturbance_note(outcomes, ctx), "",
              (f"**Reading the curve.** This machine has 2 CPUs and the store (SeaweedFS) runs "
               f"on them too, so the curve flattens at once: the best, {best.variant.name}, "
               f"runs at {single / best.wall:.2f}x one process. The client's cost is "
               f"{per_file * 1e6:,.0f} µs of CPU per file ({frugal.variant.name}, the most "
               f"frugal here). At that cost, {CORES} cores kept busy by {CORES} workers would "
               f"send about {cores_rate:,.0f} files/s ({cores_rate * size / 1e6:,.0f} MB/s of "
               f"{size / 1024:.0f} KiB files), which is "
               + ("below" if cores_rate < link_rate else "above")
               + f" what a 10 Gbit/s link carries of such files ({link_rate:,.0f} files/s): "
               + ("the cores would be the limit. " if cores_rate < link_rate else
                  "the link would be the limit. ")
               + "Before either, the NAS (its latency per call, times the calls a file "
               "takes) and the store's request rate (S3 takes about 3,500 PUT/s per prefix; "
               "a bundle is one PUT for ~14 files here) may decide: a bigger machine must be "
               "measured, not assumed.")]
    return Section("workers", "10. Workers: one migration on 1, 2 and 4 Dask worker processes",
                  lines)
