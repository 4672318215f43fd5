"""Timing one command: wall clock, wait4 rusage, /proc CPU of our servers and of the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (SeaweedFS, the FUSE daemon), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")": state is field 3, utime 14, stime 15 (1-based in proc(5)).
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes on the machine spent busy so far (first line of /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...; idle and iowait are not busy.
    ticks = [int(x) for x in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


def warm(root: Path) -> None:
    """Read every file under root once (untimed), so the run that follows reads the page
    cache, as every tool's run does: this machine pages out memory idle for about a minute
    (see report.page_cache_reclaim), so without it a tool run after a long one (s5cmd's
    2.5 minutes) read part of the tree from disk and paid for it in CPU too (probe: the
    read stage alone 13.9 CPU-s after 90 s idle, 10-11 s warm). A root that is one file
    (the store's ceiling: one object of the tree's size) is read itself."""
    buf = bytearray(1 << 20)

    def read(path: bytes) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            while os.readv(fd, [buf]):
                pass
        finally:
            os.close(fd)

    top = os.fsencode(root)
    if not os.path.isdir(top):
        read(top)
        return
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    read(e.path)


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


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _status_kib(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class TreeSampler(threading.Thread):
    """Peak RssAnon, RssFile and VmRSS summed over a process and its descendants, and the
    largest VmHWM of any one of them.

    wait4's ru_maxrss cannot serve: exec records the forking parent's high-water mark in
    the child, so every tool would look at least as big as the bench itself. Samples every
    `interval` s; the descendants are looked up again every second, as scanning all of
    /proc each time would cost more than the sampling itself.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.stop = threading.Event()
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0, "VmHWM": 0}
        self.samples = 0

    def _tree(self) -> list[int]:
        kids, out, todo = _children_map(), [], [self.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(kids.get(pid, []))
        return out

    def run(self) -> None:
        pids, rescan = [self.pid], 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= rescan:
                pids, rescan = self._tree(), now + 1.0
            total = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
            for pid in pids:
                for key, value in _status_kib(pid).items():
                    if key == "VmHWM":
                        self.peak[key] = max(self.peak[key], value)
                    else:
                        total[key] += value
            for key, value in total.items():
                self.peak[key] = max(self.peak[key], value)
            self.samples += 1
            self.stop.wait(self.interval)


@dataclass
class Timed:
    """One command's run: what wait4 and /proc said."""

    argv: list[str]
    code: int
    wall: float
    user: float
    sys: float
    maxrss_kib: int  # wait4; floored by the bench's own size (see TreeSampler)
    own_cpu: float | None  # our servers (SeaweedFS, FUSE daemon) during the run
    other_cpu: float | None  # everything else on the machine during the run
    started_idle: bool
    peak_kib: dict[str, int] | None = None  # TreeSampler peaks

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    @property
    def peak_rss_mib(self) -> float | None:
        """Peak of the tree's summed VmRSS, or None when the run ended before a sample."""
        kib = (self.peak_kib or {}).get("VmRSS", 0)
        return kib / 1024 if kib else None


def run_timed(argv: Sequence[str], *, env: dict[str, str], log: Path, own_pids: Sequence[int] = (),
              idle_wait: float = 0.0, sample_every: float = 0.05, timeout: float | None = None,
              cwd: Path | None = None) -> Timed:
    """Run argv (after waiting for an idle machine) and measure it.

    CPU = user+sys from wait4: the process and every descendant it waited for.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    idle = wait_idle(idle_wait) if idle_wait > 0 else True
    own0 = [proc_cpu_seconds(p) for p in own_pids]
    busy0 = machine_busy_seconds()
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
        sampler = TreeSampler(proc.pid, sample_every)
        sampler.start()
        timer = None
        if timeout:
            # A hung tool must not hang the bench: its whole session is ended.
            timer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
            timer.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if timer:
            timer.cancel()
        sampler.stop.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
    own1 = [proc_cpu_seconds(p) for p in own_pids]
    busy1 = machine_busy_seconds()
    own = None
    if all(x is not None for x in own0 + own1):
        own = sum(b - a for a, b in zip(own0, own1, strict=True))  # type: ignore[operator]
    cpu = usage.ru_utime + usage.ru_stime
    other = None if busy0 is None or busy1 is None or own is None else max(
        0.0, busy1 - busy0 - cpu - own)
    return Timed(argv=list(argv), code=proc.returncode, wall=wall, user=usage.ru_utime,
                 sys=usage.ru_stime, maxrss_kib=usage.ru_maxrss, own_cpu=own, other_cpu=other,
                 started_idle=idle, peak_kib=dict(sampler.peak) if sampler.samples else None)


def disturbed(t: Timed, max_others: float) -> bool:
    """Did the rest of the machine use more than max_others CPUs on average during the run?"""
    return t.other_cpu is not None and t.other_cpu / max(t.wall, 1e-9) > max_others


def log_tail(log: Path, lines: int = 20) -> str:
    if not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
