"""How many CPUs this process can use: its affinity, capped by a cgroup's CPU quota.

A container or a systemd unit (`CPUQuota=`) may get less CPU time than the machine has
CPUs; `--read-process auto` must not start a second busy process on one CPU's worth. Both
cgroup versions count: v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us`, still the default of
RHEL 7 and 8 and of many container hosts); the tightest quota of the process's group and
its ancestors (within the mount) is the limit.
"""

from __future__ import annotations

import os
from pathlib import Path


def usable_cpus(root: Path = Path("/")) -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup's CPU quota (whole
    CPUs: a quota of 1.5 is one)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    try:
        mounts = (root / "proc/self/mountinfo").read_text()
        groups = (root / "proc/self/cgroup").read_text()
    except OSError:
        return n
    quota = cgroup_cpus(mounts, groups, root)
    return n if quota is None else max(1, min(n, int(quota)))


def cgroup_cpus(mountinfo: str, cgroups: str, root: Path = Path("/")) -> float | None:
    """The tightest CPU quota (in CPUs) over this process's cgroups, or None: no quota.

    `mountinfo` and `cgroups`: /proc/self/mountinfo and /proc/self/cgroup; `root`: where
    the mount points are (a test's tree).
    """
    limits: list[float] = []
    for point, mount_root, v2 in _cpu_mounts(mountinfo):
        path = _group(cgroups, v2)
        if path is None:
            continue
        rel = os.path.relpath(path, mount_root)
        top = root / point.lstrip("/")
        here = top if rel.startswith("..") else top / rel
        while True:
            limit = _limit(here, v2)
            if limit is not None:
                limits.append(limit)
            if here == top or top not in here.parents:
                break
            here = here.parent
    return min(limits) if limits else None


def _cpu_mounts(mountinfo: str) -> list[tuple[str, str, bool]]:
    """(mount point, the mount's root in the hierarchy, whether v2) of the cgroup mounts
    that carry the cpu controller."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 4 or sep < 5:
            continue
        fstype, options = fields[sep + 1], fields[sep + 3].split(",")
        if fstype == "cgroup2" or (fstype == "cgroup" and "cpu" in options):
            out.append((fields[4], fields[3], fstype == "cgroup2"))
    return out


def _group(cgroups: str, v2: bool) -> str | None:
    """The process's group in the v2 hierarchy ("0::/path") or in v1's cpu controller's."""
    for line in cgroups.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if v2 and parts[0] == "0" and parts[1] == "":
            return parts[2]
        if not v2 and "cpu" in parts[1].split(","):
            return parts[2]
    return None


def _limit(group: Path, v2: bool) -> float | None:
    """One group's quota in CPUs, or None (none set, or not readable)."""
    try:
        if v2:
            quota, period = (group / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = (group / "cpu.cfs_quota_us").read_text().strip()
        period = (group / "cpu.cfs_period_us").read_text().strip()
        return None if int(quota) < 0 else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None
