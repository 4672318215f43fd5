"""`--read-process auto` counts the CPUs a cgroup quota leaves this process, v1 and v2."""

from __future__ import annotations

import os
from pathlib import Path

from pacsmigrate.cpus import cgroup_cpus, usable_cpus

V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 {root} /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTS = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def _write(root: Path, path: str, files: dict[str, str]) -> None:
    d = root / path.lstrip("/")
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text + "\n")


def test_a_v1_container_s_quota(tmp_path: Path) -> None:
    """Docker on a cgroup v1 host: the container's group is the mount's root."""
    _write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct",
           {"cpu.cfs_quota_us": "150000", "cpu.cfs_period_us": "100000"})
    groups = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    assert cgroup_cpus(V1_MOUNTS.format(root="/docker/abc"), groups, tmp_path) == 1.5
    _write(tmp_path, "/proc/self", {"mountinfo": V1_MOUNTS.format(root="/docker/abc"),
                                    "cgroup": groups})
    assert usable_cpus(tmp_path) == 1  # 1.5 CPUs of time: one busy process, not two


def test_a_v1_quota_on_a_parent_slice(tmp_path: Path) -> None:
    """A systemd unit on a v1 host: the slice above it has the quota, the unit none."""
    base = "/sys/fs/cgroup/cpu,cpuacct"
    _write(tmp_path, base, {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"})
    _write(tmp_path, base + "/pacs.slice",
           {"cpu.cfs_quota_us": "400000", "cpu.cfs_period_us": "100000"})
    _write(tmp_path, base + "/pacs.slice/migrate.service",
           {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"})
    groups = "3:cpu,cpuacct:/pacs.slice/migrate.service\n"
    assert cgroup_cpus(V1_MOUNTS.format(root="/"), groups, tmp_path) == 4.0


def test_v2_the_tightest_of_the_group_and_its_ancestors(tmp_path: Path) -> None:
    base = "/sys/fs/cgroup"
    _write(tmp_path, base + "/work.slice", {"cpu.max": "300000 100000"})
    _write(tmp_path, base + "/work.slice/run.scope", {"cpu.max": "max 100000"})
    assert cgroup_cpus(V2_MOUNTS, "0::/work.slice/run.scope\n", tmp_path) == 3.0
    _write(tmp_path, base + "/work.slice/run.scope", {"cpu.max": "50000 100000"})
    assert cgroup_cpus(V2_MOUNTS, "0::/work.slice/run.scope\n", tmp_path) == 0.5
    _write(tmp_path, "/proc/self", {"mountinfo": V2_MOUNTS,
                                    "cgroup": "0::/work.slice/run.scope\n"})
    assert usable_cpus(tmp_path) == 1  # never fewer than one


def test_no_quota_or_nothing_readable(tmp_path: Path) -> None:
    _write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct",
           {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"})
    assert cgroup_cpus(V1_MOUNTS.format(root="/"), "3:cpu,cpuacct:/\n0::/\n", tmp_path) is None
    assert cgroup_cpus("garbage - x\n\n", "nonsense\n", tmp_path) is None
    assert usable_cpus(tmp_path / "nowhere") == len(os.sched_getaffinity(0))
    # This machine, whatever its cgroups: between one and its CPUs.
    assert 1 <= usable_cpus() <= len(os.sched_getaffinity(0))
