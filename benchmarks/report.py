"""The dated RESULTS.md section: machine, trees, targets table, then each section's details."""

from __future__ import annotations

import os
import platform
import subprocess
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path

from targets import Section, table
from tools import versions
from trees import Tree

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_HEADER = """# Benchmark results

Produced by `benchmarks/bench.py` (`make bench`); see `benchmarks/README.md`. Each section
is one run, newest first. Only measured numbers; client and server share the same machine.

<!-- new sections are inserted below this line -->
"""
INSERT_MARK = "<!-- new sections are inserted below this line -->"


def _read(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def page_cache_reclaim(base: Path = Path("/sys/kernel/mm/damon/admin/kdamonds")) -> str:
    """Proactive reclaim that evicts idle page cache (DAMON `pageout` schemes), which
    makes a tree no run has touched for a while cold again; "none found" without it."""
    found = []
    for state in sorted(base.glob("*/state")):
        try:
            if state.read_text().strip() != "on":
                continue
            for ctx in sorted(state.parent.glob("contexts/*")):
                aggr_us = int((ctx / "monitoring_attrs/intervals/aggr_us").read_text())
                for scheme in sorted(ctx.glob("schemes/*")):
                    if (scheme / "action").read_text().strip() != "pageout":
                        continue
                    age = int((scheme / "access_pattern/age/min").read_text())
                    quota = int((scheme / "quotas/bytes").read_text())
                    every = int((scheme / "quotas/reset_interval_ms").read_text())
                    rate = (f"up to {quota / 2**20:,.0f} MiB per {every / 1000:g} s"
                            if quota and every else "no rate limit")
                    found.append(f"DAMON pages out memory idle for ~{age * aggr_us / 1e6:.0f} s "
                                 f"or more ({rate}): a tree no run has read for that long "
                                 "is read from disk again (cold)")
        except (OSError, ValueError):
            continue
    return "; ".join(found) or "none found (trees stay in the page cache between runs)"


def machine(work: Path) -> dict[str, str]:
    ram = _read("/proc/meminfo", "MemTotal:")
    if ram.endswith("kB"):
        ram = f"{int(ram.split()[0]) / 1024 / 1024:.1f} GiB"
    try:
        pm_version = metadata.version("pacsmigrate")
    except metadata.PackageNotFoundError:
        pm_version = "unknown"
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or "unknown"
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "pacsmigrate"],
                           capture_output=True, text=True, check=False).stdout.strip()
    fs = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True,
                        check=False).stdout.splitlines()[-1:]
    load = Path("/proc/loadavg").read_text().split()[:3]
    return {
        "CPUs (nproc)": str(len(os.sched_getaffinity(0))),
        "CPU model": _read("/proc/cpuinfo", "model name"),
        "RAM": ram,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "pacsmigrate": f"{pm_version} (git {commit}{', pacsmigrate/ modified' if dirty else ''}) "
                       f"at {REPO}",
        **versions(),
        "workdir file system": " ".join(fs[0].split()[:2]) if fs else "unknown",
        "load average at start": " ".join(load),
        "page cache reclaim": page_cache_reclaim(),
    }


def compose(*, started: datetime, finished: datetime, invocation: str, mode: str,
            info: dict[str, str], trees: list[Tree], sections: list[Section],
            endpoint: str, profile: list[str] | None, skipped: list[str],
            warm: bool = True, restarts: Sequence[str] = ()) -> str:
    targets = sorted((t for s in sections for t in s.targets), key=lambda t: t.key)
    met = sum(t.met is True for t in targets)
    judged = sum(t.met is not None for t in targets)
    out = [f"## {started:%Y-%m-%d %H:%M} UTC — {mode}: "
           + ", ".join(s.key for s in sections), "",
           (f"Command: `{invocation}` (took {(finished - started).total_seconds() / 60:.1f} min). "
           + (f"One SeaweedFS (`weed mini`) at `{endpoint}` for the whole run; "
              if not restarts else
              f"One SeaweedFS (`weed mini`) at a time, restarted fresh and empty "
              f"{len(restarts)} time(s) ("
              + "; ".join(f"{why} x{n}" for why, n in Counter(restarts).items())
              + f"), last at `{endpoint}`; ")
           + "credentials via "
           "`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, region us-east-1, path-style. "
           + ("Before every timed run the bench read each file of its tree once, untimed, "
              "whatever the tool, so every run reads the page cache"
              if warm else "Trees were read from the page cache unless the machine evicted "
              "them (--no-warm)")
           + " (see Machine: page cache reclaim), and every tool talks to the store over "
           "loopback: these numbers compare the tools' client-side cost, not a real NAS → "
           "S3 migration."), "",
           "**Machine**", "", *[f"- {k}: {v}" for k, v in info.items()],
           ("- Client (each tool) and server (SeaweedFS) share the machine's CPUs; the bench "
           "runs one tool at a time, but other people's jobs may run too (see others' CPU)."),
           "", "**Trees**", "", *[ln for t in trees for ln in t.describe()], "",
           (f"**Targets** ({met} of {judged} judged targets met; value = pacsmigrate ÷ peer "
           "unless a unit is given):"), "", *table(targets), ""]
    if skipped:
        out += ["Skipped: " + "; ".join(skipped) + ".", ""]
    for s in sections:
        out += [f"### {s.title}", "", *s.lines, ""]
    if profile:
        out += ["### Profile", "", *profile, ""]
    return "\n".join(out).rstrip("\n") + "\n"


def write_results(path: Path, section: str) -> None:
    old = path.read_text() if path.exists() else ""
    if INSERT_MARK in old:
        head, tail = old.split(INSERT_MARK, 1)
        new = head + INSERT_MARK + "\n\n" + section + "\n" + tail.lstrip("\n")
    elif old.strip():
        new = RESULTS_HEADER + "\n" + section + "\n" + old
    else:
        new = RESULTS_HEADER + "\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new.rstrip("\n") + "\n")
