"""walk(): what a walk of a real directory tree yields, listing by listing, in order."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

import pacsmigrate.walk as walk_mod
from pacsmigrate import faults
from pacsmigrate.records import Problem
from pacsmigrate.walk import CHUNK, count_files, walk

BATCH = CHUNK


def collect(roots: list[bytes], **kwargs: int) -> list[list[bytes | Problem]]:
    """Each listing piece as its files (full paths) then its problems."""
    async def go() -> list[list[bytes | Problem]]:
        out: list[list[bytes | Problem]] = []
        async for listing in walk(roots, **kwargs):
            out.append([listing.path + b"/" + n for n in listing.files] + listing.problems)
        return out
    return asyncio.run(asyncio.wait_for(go(), 30))


def flatten(batches: list[list[bytes | Problem]]) -> list[bytes | Problem]:
    return [item for batch in batches for item in batch]


def path_of(item: bytes | Problem) -> bytes:
    return item.path if isinstance(item, Problem) else item


def write(path: bytes, data: bytes) -> bytes:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


class Tree(NamedTuple):
    root: bytes
    files: list[bytes]
    problems: dict[bytes, str]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """A tree with every kind of entry a hospital share can hold, and what scan must say.

    Module-scoped (built once, never modified by the tests).
    """
    root = os.fsencode(tmp_path_factory.mktemp("scan") / "src")
    os.mkdir(root)
    j = os.path.join
    files = [
        write(j(root, b"top.dcm"), b"t" * 10),
        write(j(root, b"caf\xe9.dcm"), b"latin-1 name"),  # not UTF-8
    ]
    os.makedirs(j(root, b"a", b"b", b"c"))
    os.mkdir(j(root, b"empty"))
    files.append(write(j(root, b"a", b"one.dcm"), b"1" * 100))
    files.append(write(j(root, b"a", b"b", b"c", b"deep.dcm"), b"d" * 3000))
    files.append(write(j(root, b"a", b"b", b"\xff\xfe"), b""))  # zero bytes, odd name
    big = j(root, b"big")
    os.mkdir(big)
    for i in range(BATCH * 2 + 77):
        files.append(write(j(big, b"f%05d.dcm" % i), b"x" * (i % 7)))
    problems: dict[bytes, str] = {}
    os.symlink(j(root, b"top.dcm"), j(root, b"link-to-file"))
    problems[j(root, b"link-to-file")] = "symlink not followed"
    os.symlink(j(root, b"does-not-exist"), j(root, b"a", b"broken-link"))
    problems[j(root, b"a", b"broken-link")] = "symlink not followed"
    os.symlink(j(root, b"a"), j(root, b"link-to-dir"))
    problems[j(root, b"link-to-dir")] = "symlink not followed"
    os.mkfifo(j(root, b"a", b"pipe"))
    problems[j(root, b"a", b"pipe")] = "fifo skipped"
    return Tree(root, files, problems)


def test_walk_yields_exact_entries_and_problems(tree: Tree) -> None:
    root = tree.root
    items = flatten(collect([root], threads=4))

    paths = [i for i in items if isinstance(i, bytes)]
    problems = [i for i in items if isinstance(i, Problem)]
    assert len(paths) + len(problems) == len(items)

    # Every regular file exactly once, nothing else (no dirs, no link targets twice).
    assert len(paths) == len(set(paths))
    assert set(paths) == set(tree.files)
    assert os.path.join(root, b"caf\xe9.dcm") in paths
    assert count_files([root]) == len(tree.files)

    assert {p.path: p.reason for p in problems} == tree.problems
    assert all(p.final for p in problems)  # deliberate skips: the run may still succeed


def test_walk_order_is_depth_first_and_the_same_when_listing_ahead(
        tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    inline = [path_of(i) for i in flatten(collect([tree.root]))]
    assert inline == [path_of(i) for i in flatten(collect([tree.root]))]
    # Depth-first: once the walk leaves a directory it never comes back to it.
    dirs = [os.path.dirname(p) for p in inline]
    left: set[bytes] = set()
    for prev, cur in itertools.pairwise(dirs):
        if prev != cur:
            left.add(prev)
            assert cur not in left
    # Slow listings (a NAS) are fetched ahead in threads: the order does not change.
    monkeypatch.setattr(walk_mod, "SLOW", -1.0)
    monkeypatch.setattr(walk_mod, "FAST", -2.0)
    assert [path_of(i) for i in flatten(collect([tree.root], threads=3))] == inline


def test_walk_lists_a_large_directory_in_pieces(tree: Tree) -> None:
    root = tree.root
    batches = collect([root], threads=2)
    assert max(len(b) for b in batches) <= BATCH
    big = os.path.join(root, b"big")
    big_batches = [b for b in batches if any(os.path.dirname(path_of(i)) == big for i in b)]
    # 2 * CHUNK + 77 entries cannot fit in fewer than three pieces; they are not one list.
    assert len(big_batches) >= 3
    assert sum(1 for b in big_batches for i in b if os.path.dirname(path_of(i)) == big) == \
        BATCH * 2 + 77
    assert any(len(b) == BATCH for b in big_batches)


def test_walk_multiple_roots_and_single_thread(tmp_path: Path) -> None:
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    (r1 / "x").mkdir(parents=True)
    (r2).mkdir()
    (r1 / "x" / "a").write_bytes(b"a")
    (r2 / "b").write_bytes(b"bb")
    items = flatten(collect([os.fsencode(r1), os.fsencode(r2)], threads=1))
    assert [i for i in items if isinstance(i, bytes)] == [
        os.fsencode(r1 / "x" / "a"), os.fsencode(r2 / "b")]
    assert not [i for i in items if isinstance(i, Problem)]


def test_walk_missing_root_is_a_problem(tmp_path: Path) -> None:
    gone = os.fsencode(tmp_path / "gone")
    items = flatten(collect([gone], threads=2))
    assert items == [Problem(gone, "directory vanished during scan")]


def test_walk_unreadable_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "src"
    locked = root / "locked"
    locked.mkdir(parents=True)
    (locked / "hidden.dcm").write_bytes(b"h")
    (root / "ok.dcm").write_bytes(b"ok")
    # Its listing fails with EACCES (the fault hook: CI runs as root, which lists mode 000).
    monkeypatch.setattr(faults, "DENY_OPEN", b"locked")
    items = flatten(collect([os.fsencode(root)], threads=2))
    assert [i for i in items if isinstance(i, bytes)] == [os.fsencode(root / "ok.dcm")]
    probs = [i for i in items if isinstance(i, Problem)]
    assert len(probs) == 1
    assert probs[0].path == os.fsencode(locked)
    assert probs[0].reason == "unreadable directory"
    assert probs[0].final is False  # still needs migrating: the run must not report success


# -- stopping early ---------------------------------------------------------------------
# Run in a child process: a walk that fails to stop leaves non-daemon threads behind, and
# they would hang pytest itself at exit instead of failing one test. Listings go ahead in
# threads (as on a NAS), so there are threads to stop.

_EARLY_STOP = textwrap.dedent("""
    import asyncio, sys, threading, time
    import pacsmigrate.walk as w

    w.SLOW, w.FAST = -1.0, -2.0
    root, how = sys.argv[1].encode(), sys.argv[2]
    held = []

    async def main():
        gen = w.walk([root, root + b"/sub"], threads=4)
        if how == "held":
            held.append(gen)  # still referenced when asyncio.run() tears the loop down
        n = 0
        async for listing in gen:
            n += len(listing.files)
            break
        if how == "aclose":
            await gen.aclose()
        return n

    n = asyncio.run(main())
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and any(
            t.name.startswith("walk") for t in threading.enumerate()):
        time.sleep(0.05)
    left = [t.name for t in threading.enumerate() if t.name.startswith("walk")]
    print(n, len(left), flush=True)
""")


@pytest.fixture(scope="module")
def flat_dir(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One directory of many files: its walker is mid-listing when the consumer stops."""
    d = os.fsencode(tmp_path_factory.mktemp("walk-early") / "flat")
    os.makedirs(os.path.join(d, b"sub"))
    for i in range(BATCH * 3):
        write(os.path.join(d, b"%05d" % i), b"")
    return d


@pytest.mark.parametrize("how", ["aclose", "break", "held"])
def test_walk_stopping_early_does_not_hang(flat_dir: bytes, how: str) -> None:
    try:
        proc = subprocess.run([sys.executable, "-c", _EARLY_STOP, os.fsdecode(flat_dir), how],
                              check=False, capture_output=True, text=True, timeout=4)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"walk did not stop after the consumer stopped early ({how}): the process "
                    f"hung at exit on leftover walk threads; '<entries> <threads left>' was "
                    f"{exc.stdout!r}")
    assert proc.returncode == 0, proc.stderr
    first_batch, threads_left = map(int, proc.stdout.split())
    assert first_batch == BATCH
    assert threads_left == 0
