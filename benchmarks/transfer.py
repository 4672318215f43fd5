"""Sections 1-3: the small-file, CT-sized and mixed trees through every tool, side by side."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from runs import Ctx, Outcome, disturbance_note, order_lines, run_matrix
from targets import Section, Target, ratio
from tools import Variant, ceiling_variants, transfer_variants
from trees import Tree, Trees

STEADY_SECONDS = 20.0
NOT_LIKE_FOR_LIKE = (
    "Not like for like: the peers PUT one object per file and nothing else; pacsmigrate also "
    "parses every DICOM header, hashes every byte (blake3), packs per-study tar bundles with "
    "manifests (inside each bundle; with --pack, studies under 8 MiB share bundles of up to "
    "8 MiB, each study's members together), uploads with a store-checked checksum and conditional "
    "writes, and commits every object and index row to LMDB. Wall time is process start to "
    "exit, so it "
    "includes each tool's start-up.")


def best(outcomes: list[Outcome], tool: str) -> Outcome | None:
    """The tool's fastest setting by median wall time."""
    mine = [o for o in outcomes if o.variant.tool == tool]
    return min(mine, key=lambda o: o.wall) if mine else None


def defaults(outcomes: list[Outcome], tool: str) -> Outcome | None:
    return next((o for o in outcomes if o.variant.tool == tool and o.variant.is_default), None)


def frugal(outcomes: list[Outcome], tool: str) -> Outcome | None:
    """The tool's setting with the least client CPU (median)."""
    mine = [o for o in outcomes if o.variant.tool == tool]
    return min(mine, key=lambda o: o.cpu) if mine else None


def results_table(outcomes: list[Outcome], tree: Tree) -> list[str]:
    rows = [("| tool | median wall s | runs (s) | files/s | MB/s | files/s, fastest run | "
            "client CPU s | CPU s / 10k files | CPU s / GB | peak RSS MiB | server CPU s | "
            "others' CPU s | objects | stored MB | stored as |"),
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for o in outcomes:
        files = tree.files if o.variant.tool != "ceiling" else 1
        first = o.runs[0]
        server, others = o.median_of("own_cpu"), o.median_of("other_cpu")
        rows.append(
            f"| {o.variant.name} | {o.wall:.2f} | "
            + ", ".join(f"{r.timed.wall:.2f}" for r in o.runs)
            + f" | {files / o.wall:,.0f} | {tree.bytes / 1e6 / o.wall:,.1f} | "
            f"{files / o.fastest:,.0f} | {o.cpu:.1f} | {o.cpu / tree.files * 1e4:.2f} | "
            f"{o.cpu / tree.bytes * 1e9:.2f} | "
            f"{o.peak_rss_mib} | "
            + (f"{server:.1f}" if server is not None else "n/a") + " | "
            + (f"{others:.1f}" if others is not None else "n/a")
            + f" | {first.objects:,} | {sum(first.listing.values()) / 1e6:,.1f} | {first.note} |")
    return rows


def commands(outcomes: list[Outcome]) -> list[str]:
    out = ["```sh"]
    for o in outcomes:
        run = o.runs[0]
        if o.variant.tool == "rclone" and o.variant.is_default:
            out.append("# rclone's env: RCLONE_CONFIG_T_{TYPE=s3,PROVIDER=Other,ENDPOINT,"
                       "ACCESS_KEY_ID,SECRET_ACCESS_KEY,REGION=us-east-1,FORCE_PATH_STYLE=true}; "
                       "AWS_CA_BUNDLE unset (rclone 1.60 fails with it)")
        if o.variant.shown():
            out.append(f"# {o.variant.shown()}")
        out.append(shlex.join(run.timed.argv))
    return [*out, "```"]


def bundles_line(outcomes: list[Outcome], tree: Tree) -> str:
    parts = []
    for o in outcomes:
        if o.variant.tool == "pacsmigrate":
            per = [f"{r.spread:.2f} ({r.tars / tree.studies:.2f})" for r in o.runs
                   if r.spread is not None]
            parts.append(f"{o.variant.name} {', '.join(per)}")
    return (f"**Bundles per study** ({tree.layout} layout, per run: the objects holding each "
            "study's files, averaged over the studies from the index, 1.00 = every study in "
            f"one object; in brackets `.tar` objects in the bucket ÷ {tree.studies:,} studies, "
            "below 1 where --pack lets studies share objects): " + "; ".join(parts) + ".")


def peer_ratios(outcomes: list[Outcome], tree: Tree, *, by: str) -> list[str]:
    """pacsmigrate vs each peer, best vs best and defaults vs defaults."""
    unit = "files/s" if by == "files" else "MB/s"
    scale = tree.files if by == "files" else tree.bytes / 1e6
    pm_best, pm_def = best(outcomes, "pacsmigrate"), defaults(outcomes, "pacsmigrate")
    lines = []
    for tool in ("s5cmd", "rclone", "aws", "ceiling"):
        peer_best, peer_def = best(outcomes, tool), defaults(outcomes, tool)
        if not (pm_best and peer_best):
            continue
        text = (f"- vs {tool}: best of each ({pm_best.variant.name} {scale / pm_best.wall:,.1f} "
                f"vs {peer_best.variant.name} {scale / peer_best.wall:,.1f} {unit}) "
                f"**{peer_best.wall / pm_best.wall:.2f}x**")
        if pm_def and peer_def:
            text += f"; defaults vs defaults {peer_def.wall / pm_def.wall:.2f}x"
        lines.append(text + ".")
    return lines


def _section_text(outcomes: list[Outcome], tree: Tree, ctx: Ctx, *, by: str) -> list[str]:
    lines = [(f"Tree: **{tree.name}** (see Trees). Commands (repeat 1; every run had its own "
             "fresh bucket and pacsmigrate a fresh `--state`):"), "", *commands(outcomes), "",
             "Order (alternates between repeats):", "", *order_lines(outcomes), "",
             ("Every run was verified: pacsmigrate by `pacsmigrate status --state DIR --json` "
             f"(files_migrated = {tree.files:,}, nothing pending, in doubt or with problems; "
             "objects in the bucket) and, after the timed run, `pacsmigrate verify --state DIR "
             "--deep` (every member read back from the store, its blake3 compared with the "
             "index); the peers by listing the bucket (exactly one object per "
             "source file, same keys, same total bytes)."), "",
             (f"Results (median of {ctx.repeats} repeat(s); files/s and MB/s = source files and "
             "bytes ÷ median wall time; client CPU = user+sys of the tool's process and the "
             "children it waited for (wait4); peak RSS = the most the tool's processes held "
             "together (VmRSS summed over its process tree, sampled every 50 ms), max over "
             "repeats; server CPU = SeaweedFS during the run; others' CPU = everything "
             "else on the machine during the run (/proc/stat):"), "",
             *results_table(outcomes, tree), "",
             f"Ratios pacsmigrate ÷ peer ({'files/s' if by == 'files' else 'bytes/s'}):", "",
             *peer_ratios(outcomes, tree, by=by), "",
             disturbance_note(outcomes, ctx), ""]
    short = [o.variant.name for o in outcomes
             if o.variant.tool == "pacsmigrate" and o.wall < STEADY_SECONDS]
    if short:
        lines += [(f"**Too short to be steady state**: {', '.join(short)} ran under "
                  f"{STEADY_SECONDS:.0f} s, so start-up weighs in; raise the tree size "
                  "(`--small-files`, `--ct-mb`)."), ""]
    return lines + [bundles_line(outcomes, tree), "", NOT_LIKE_FOR_LIKE]


def _cpu_target(key: str, text: str, outcomes: list[Outcome], tree: Tree, *, per: float,
                unit: str, goal: float) -> Target:
    pm, s5 = frugal(outcomes, "pacsmigrate"), frugal(outcomes, "s5cmd")
    if not (pm and s5):
        return Target(key, text, "s5cmd not run", None, goal, at_most=True)
    a, b = pm.cpu / per, s5.cpu / per
    return Target(key, text, f"{pm.variant.name} {a:.2f} vs {s5.variant.name} {b:.2f} CPU-s "
                  f"per {unit} (each tool's most frugal setting)", ratio(a, b), goal,
                  at_most=True)


def _speed_target(key: str, text: str, outcomes: list[Outcome], tool: str, *, scale: float,
                  unit: str, goal: float) -> Target:
    pm, peer = best(outcomes, "pacsmigrate"), best(outcomes, tool)
    if not (pm and peer):
        return Target(key, text, f"{tool} not run", None, goal)
    return Target(key, text, f"{pm.variant.name} {scale / pm.wall:,.1f} vs {peer.variant.name} "
                  f"{scale / peer.wall:,.1f} {unit} (best of each)", peer.wall / pm.wall, goal)


def small(ctx: Ctx, trees: Trees, files: int) -> Section:
    tree = trees.fast("small", files)
    outcomes = run_matrix(ctx, transfer_variants(tuned=ctx.tuned, peers=ctx.peers), tree,
                          section="small")
    targets = [_speed_target("1a", "small files: files/s ≥ 5x s5cmd's", outcomes, "s5cmd",
                             scale=tree.files, unit="files/s", goal=5.0),
               _speed_target("1b", "small files: files/s ≥ 10x the aws cli's", outcomes, "aws",
                             scale=tree.files, unit="files/s", goal=10.0),
               _speed_target("1c", "small files: files/s ≥ 10x rclone's", outcomes, "rclone",
                             scale=tree.files, unit="files/s", goal=10.0),
               _cpu_target("1d", "small files: client CPU per 10k files ≤ 1/5 of s5cmd's",
                           outcomes, tree, per=tree.files / 1e4, unit="10k files", goal=0.2)]
    return Section("small", "1. Small-file tree: pacsmigrate vs s5cmd, rclone, aws cli",
                   _section_text(outcomes, tree, ctx, by="files"), targets)


def _ceiling_file(work: Path, size: int) -> Path:
    """One file of the CT tree's total size, for the store's single-object ceiling."""
    path = work / "ceiling" / f"one-{size}.bin"
    if not path.exists() or path.stat().st_size != size:
        path.parent.mkdir(parents=True, exist_ok=True)
        chunk = os.urandom(8 << 20)
        with open(path, "wb") as out:
            left = size
            while left > 0:
                left -= out.write(chunk[:left])
    return path


def ct(ctx: Ctx, trees: Trees, megabytes: int) -> Section:
    import fasttree

    head, _offsets, nbytes = fasttree.template(fasttree.KINDS["ct"], trees.seed)
    tree = trees.fast("ct", -(-megabytes * 10**6 // (len(head) + nbytes)))
    one = _ceiling_file(ctx.work, tree.bytes)
    ceilings = ceiling_variants(tuned=ctx.tuned)
    variants: list[Variant] = [*transfer_variants(tuned=ctx.tuned, peers=ctx.peers), *ceilings]
    outcomes = run_matrix(ctx, variants, tree, section="ct",
                          srcs={v.name: one for v in ceilings})
    mb = tree.bytes / 1e6
    targets = [_speed_target("2a", "CT tree: bytes/s ≥ 1.0x s5cmd's", outcomes, "s5cmd",
                             scale=mb, unit="MB/s", goal=1.0),
               _speed_target("2b", "CT tree: bytes/s ≥ 0.85x the store's ceiling (one object "
                             "of the same size by s5cmd, same run)", outcomes, "ceiling",
                             scale=mb, unit="MB/s", goal=0.85),
               _cpu_target("2c", "CT tree: client CPU per GB ≤ s5cmd's", outcomes, tree,
                           per=tree.bytes / 1e9, unit="GB", goal=1.0)]
    lines = _section_text(outcomes, tree, ctx, by="bytes")
    lines.insert(0, f"The store's ceiling: `{one.name}`, one file of {tree.bytes:,} bytes "
                 "(random), uploaded by `s5cmd cp` as one object (multipart), in the same "
                 "matrix as the tools; the ceiling is its best setting's median.")
    lines.insert(1, "")
    return Section("ct", "2. CT-sized tree: bytes/s vs s5cmd and the store's ceiling",
                   lines, targets)


def mixed(ctx: Ctx, trees: Trees, studies: int, scale: float) -> Section:
    tree = trees.synth(studies, scale)
    wanted = {"pacsmigrate (defaults)", "pacsmigrate --concurrency 16", "s5cmd (defaults)",
              "s5cmd --numworkers 32"}
    variants = [v for v in transfer_variants(tuned=ctx.tuned, peers=("s5cmd",))
                if v.name in wanted]
    outcomes = run_matrix(ctx, variants, tree, section="mixed")
    lines = ["Kept for continuity with the sections below (pacsmigrate vs s5cmd only).", "",
             *_section_text(outcomes, tree, ctx, by="files")]
    return Section("mixed", "3. Mixed tree (continuity)", lines, [])
