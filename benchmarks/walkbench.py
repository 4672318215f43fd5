"""Section 5: `python -m pacsmigrate.walk` vs `find`, warm and on a NAS-like mount."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from measure import Timed, log_tail, run_timed
from runs import Ctx, fail
from targets import Section, Target
from tools import BIN
from trees import Tree

HERE = Path(__file__).resolve().parent
DELAY_MS = 1.0


def _commands(root: Path) -> dict[str, list[str]]:
    return {"find": ["sh", "-c", f"find {shlex.quote(str(root))} -type f | wc -l"],
            "pacsmigrate.walk": [str(BIN / "python"), "-m", "pacsmigrate.walk", str(root)]}


def _timed_count(ctx: Ctx, name: str, argv: list[str], want: int, log: Path,
                 own_pids: list[int]) -> Timed:
    t = run_timed(argv, env=ctx.store.env, log=log, own_pids=own_pids, idle_wait=ctx.idle_wait,
                  timeout=ctx.timeout)
    out = log.read_text(errors="replace").split()
    if t.code != 0 or not out or out[-1] != str(want):
        fail(f"{name} exited {t.code} and printed {out[-1:] or 'nothing'}, expected {want}", log)
    return t


def _alternate(ctx: Ctx, root: Path, want: int, repeats: int, label: str,
               own_pids: list[int], stats: Path | None = None
               ) -> tuple[dict[str, list[Timed]], dict[str, Counter[str]]]:
    runs: dict[str, list[Timed]] = {"find": [], "pacsmigrate.walk": []}
    calls: dict[str, Counter[str]] = {"find": Counter(), "pacsmigrate.walk": Counter()}
    commands = _commands(root)
    for rep in range(1, repeats + 1):
        order = list(commands) if rep % 2 else list(reversed(commands))
        for name in order:
            before = _fuse_calls(stats)
            log = ctx.work / "logs" / f"walk-{label}-r{rep}-{name}.log"
            t = _timed_count(ctx, name, commands[name], want, log, own_pids)
            runs[name].append(t)
            if stats:
                time.sleep(0.6)  # the daemon rewrites its counts every 0.25 s
                calls[name] += _fuse_calls(stats) - before
            print(f"  walk {label} r{rep} {name:<17} {t.wall:8.2f} s  {want / t.wall:10,.0f} "
                  f"entries/s  CPU {t.cpu:5.1f} s", flush=True)
    return runs, calls


def _fuse_calls(stats: Path | None) -> Counter[str]:
    if stats is None or not stats.exists():
        return Counter()
    try:
        return Counter(json.loads(stats.read_text()))
    except (OSError, ValueError):
        return Counter()


def _mount(ctx: Ctx, tree: Tree) -> tuple[subprocess.Popen[bytes], Path, Path]:
    mnt, stats = ctx.work / f"mnt-{tree.name}", ctx.work / f"nasfs-{tree.name}.json"
    mnt.mkdir(parents=True, exist_ok=True)
    log = ctx.work / "logs" / f"nasfs-{tree.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(HERE / "nasfs.py"), str(tree.root), str(mnt),
                                 "--delay-ms", str(DELAY_MS), "--stats", str(stats)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            _unmount(proc, mnt)
            fail("the FUSE mount did not come up", log)
        time.sleep(0.1)
    return proc, mnt, stats


def _unmount(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    if os.path.ismount(mnt):
        umount = ["umount", str(mnt)] if os.geteuid() == 0 else ["fusermount", "-u", str(mnt)]
        if subprocess.run(umount, capture_output=True, check=False).returncode != 0:
            subprocess.run([*umount[:-1], "-l" if umount[0] == "umount" else "-z", str(mnt)],
                           capture_output=True, check=False)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fuse_possible() -> str | None:
    """Why the FUSE half cannot run here, or None."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing"
    if os.geteuid() != 0 and not shutil.which("fusermount"):
        return "not root and no fusermount (apt-get install fuse)"
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"fusepy unusable ({exc}): pip install fusepy; apt-get install -y libfuse2"
    return None


def _summary(runs: dict[str, list[Timed]], want: int) -> tuple[list[str], float]:
    rows = []
    med = {name: statistics.median(t.wall for t in ts) for name, ts in runs.items()}
    for name, ts in runs.items():
        rows.append(f"| `{name}` | {med[name]:.2f} | " + ", ".join(f"{t.wall:.2f}" for t in ts)
                    + f" | {want / med[name]:,.0f} | {statistics.median(t.cpu for t in ts):.2f} "
                    f"| {max(t.peak_rss_mib or 0 for t in ts):,.0f} |")
    return rows, med["find"] / med["pacsmigrate.walk"]


HEADER = ["| command | median wall s | runs (s) | files/s | CPU s | peak RSS MiB |",
          "|---|---:|---|---:|---:|---:|"]


def run_walk(ctx: Ctx, warm: Tree, nas: Tree | None, *, repeats: int, note: str) -> Section:
    cmds = _commands(warm.root)
    lines = [("Commands (each prints the number of regular files; the bench checks it equals "
             "the tree's; order alternates between repeats):"), "", "```sh",
             *(shlex.join(c) for c in cmds.values()), "```", ""]
    # One untimed pass each, so the dentry and inode caches are warm for both.
    for name, argv in cmds.items():
        _timed_count(ctx, name, argv, warm.files, ctx.work / "logs" / f"walk-warmup-{name}.log",
                     ctx.store.own_pids())
    runs, _ = _alternate(ctx, warm.root, warm.files, repeats, "warm", ctx.store.own_pids())
    rows, warm_ratio = _summary(runs, warm.files)
    lines += [(f"**Warm cache**, {warm.name} ({warm.files:,} files, {warm.dirs:,} directories; "
              "after one untimed pass of each):"), "", *HEADER, *rows, ""]
    walls = {name: statistics.median(t.wall for t in ts) for name, ts in runs.items()}
    targets = [Target("5a", "walk, warm cache: ≥ 0.8x find's speed",
                      f"{warm.files:,} files: find {walls['find']:.2f} s vs walk "
                      f"{walls['pacsmigrate.walk']:.2f} s", warm_ratio, 0.8)]
    why_not = fuse_possible() if nas else "no tree for it"
    if nas is None or why_not:
        lines.append(f"NAS-like mount: skipped ({why_not}).")
        targets.append(Target("5b", "walk on a NAS-like mount: ≥ 3x find's speed",
                              f"skipped: {why_not}", None, 3.0))
        return Section("walk", "5. Walk", lines, targets)
    proc, mnt, stats = _mount(ctx, nas)
    try:
        own = [*ctx.store.own_pids(), proc.pid]
        nas_runs, calls = _alternate(ctx, mnt, nas.files, ctx.repeats, "nas", own, stats)
    finally:
        _unmount(proc, mnt)
        if (tail := log_tail(ctx.work / "logs" / f"nasfs-{nas.name}.log", 5)):
            print(f"  nasfs log: {tail}", flush=True)
    rows, nas_ratio = _summary(nas_runs, nas.files)
    per_run = {name: {op: n // max(len(nas_runs[name]), 1) for op, n in sorted(c.items())}
               for name, c in calls.items()}
    lines += [
        (f"**NAS-like mount**, {nas.name} ({nas.files:,} files, {nas.dirs:,} directories) "
        f"{note}: `benchmarks/nasfs.py`, a read-only FUSE passthrough (fusepy, multithreaded "
        f"libfuse 2) that sleeps {DELAY_MS:g} ms before every getattr, access, readlink, "
        "opendir, readdir, open, read and statfs; readdir returns entry types as NFS does; "
        "the kernel caches entries and attributes for libfuse's default 1 s. Same commands "
        "with the mount point as DIR; the daemon's CPU counts as ours, not as others'."), "",
        *HEADER, *rows, "",
        "Calls the daemon served per run (mean): " + "; ".join(
            f"`{name}` " + ", ".join(f"{op} {n:,}" for op, n in ops.items())
            for name, ops in per_run.items()) + ".",
    ]
    targets.append(Target("5b", "walk on a NAS-like mount (1 ms per call): ≥ 3x find's speed",
                          f"{nas.files:,} files through FUSE", nas_ratio, 3.0))
    return Section("walk", "5. Walk", lines, targets)
