"""The benchmark harness's own helpers (benchmarks/ is not a package: bench.py runs it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

# Loaded by path: benchmarks/ on sys.path would shadow any module named like its files
# (store, report, tools, ...) for the rest of the session.
_SPEC = importlib.util.spec_from_file_location(
    "bench_measure", Path(__file__).resolve().parent.parent / "benchmarks" / "measure.py")
assert _SPEC is not None and _SPEC.loader is not None
measure = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = measure  # its dataclasses look their module up there
_SPEC.loader.exec_module(measure)


def test_warm_reads_a_tree_and_a_single_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A tree is read file by file; the store's ceiling run warms one file, not a folder
    (scandir on it stopped `bench.py --quick` in its ct section)."""
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "one.dcm").write_bytes(b"x" * 3000)
    (tree / "a" / "b" / "two.dcm").write_bytes(b"y" * (3 << 20))
    single = tmp_path / "one-object.bin"
    single.write_bytes(b"z" * 5000)
    read: dict[bytes, int] = {}
    real_readv = measure.os.readv
    opened: dict[int, bytes] = {}
    real_open = measure.os.open

    def spy_open(path: bytes, flags: int) -> int:
        fd = real_open(path, flags)
        opened[fd] = path
        return fd

    def spy_readv(fd: int, buffers: list[bytearray]) -> int:
        n = real_readv(fd, buffers)
        read[opened[fd]] = read.get(opened[fd], 0) + n
        return n

    monkeypatch.setattr(measure.os, "open", spy_open)
    monkeypatch.setattr(measure.os, "readv", spy_readv)
    measure.warm(tree)
    assert read == {bytes(tree / "a" / "one.dcm"): 3000,
                    bytes(tree / "a" / "b" / "two.dcm"): 3 << 20}
    read.clear()
    measure.warm(single)
    assert read == {bytes(single): 5000}
