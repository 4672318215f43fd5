"""The ordered read window: results in walk order whatever the pool, budgets and slices."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pacsmigrate import reads
from pacsmigrate.read import ReadOptions, ReadResult
from pacsmigrate.reads import JOB_FILES, Job, Mode, read_tree
from pacsmigrate.walk import count_files


def collect(root: Path, opts: ReadOptions, jobs: int) -> list[ReadResult]:
    async def go() -> list[ReadResult]:
        with ThreadPoolExecutor(4) as pool:
            return [r async for r in read_tree([os.fsencode(root)], pool, opts, None,
                                               jobs=jobs)]
    return asyncio.run(asyncio.wait_for(go(), 60))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reads") / "src"
    for d in range(12):
        folder = root / f"{d:02d}"
        folder.mkdir(parents=True)
        # Folder 3 is wide (more than a job), the rest small; sizes vary per file.
        for i in range(JOB_FILES * 2 + 5 if d == 3 else 4):
            (folder / f"f{i:03d}").write_bytes(bytes([i % 251]) * (1000 + 37 * i))
    (root / "link").symlink_to(root / "00")
    return root


@pytest.mark.parametrize("slow", [False, True])
@pytest.mark.parametrize("jobs, budget", [(1, 1 << 30), (8, 1 << 30), (8, 5000)])
def test_results_in_walk_order_and_complete(tree: Path, jobs: int, budget: int, slow: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny budgets cut jobs mid-directory; the remainder still comes next, in order.
    `slow`: every read looks like a NAS's, so jobs go to the pool (with inline probes)."""
    if slow:
        monkeypatch.setattr(reads, "SLOW_FILE", -1.0)
        monkeypatch.setattr(reads, "PROBE_EVERY", 3)
    opts = ReadOptions(b"k" * 32, budget=budget)
    results = collect(tree, opts, jobs)
    paths = [m.path for r in results for m in r.members]
    reference = [m.path for r in collect(tree, ReadOptions(b"k" * 32), 1) for m in r.members]
    assert paths == reference and len(paths) == count_files([os.fsencode(tree)])
    assert all(m.data == Path(os.fsdecode(m.path)).read_bytes() for r in results
               for m in r.members)
    # A directory's results are contiguous (the walk never comes back to it).
    dirs = [r.directory for r in results]
    assert sorted(set(dirs), key=dirs.index) == [d for i, d in enumerate(dirs)
                                                 if i == 0 or dirs[i - 1] != d]
    assert [p.reason for r in results for p in r.problems] == ["symlink not followed"]
    if budget < 1 << 30:
        assert any(r.held >= budget for r in results)  # the budget did cut jobs


def test_mode_goes_to_the_pool_when_reads_wait_and_probes_back() -> None:
    mode = Mode(8)
    assert mode.inline and mode.jobs() == 1
    mode.note(Job([], [], files=64, io_wait=0.054, cpu=0.010), inline=True)  # a NAS
    assert not mode.inline and mode.jobs() == 8
    for _ in range(reads.PROBE_EVERY - 1):
        mode.note(Job([], [], files=64, io_wait=0.5, cpu=0.01), inline=False)
        assert not mode.inline
    mode.note(Job([], [], files=64, io_wait=0.5, cpu=0.01), inline=False)
    assert mode.inline  # one job inline to look again
    mode.note(Job([], [], files=64, io_wait=0.0001, cpu=0.0039), inline=True)  # cached
    assert mode.inline
