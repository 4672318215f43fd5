"""alloc: freed part buffers go back to the system (glibc), and releases are paced."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from pacsmigrate import alloc

glibc = pytest.mark.skipif(alloc._LIBC is None or platform.system() != "Linux",
                           reason="glibc only")


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no RssAnon")


_FREED = """
from pacsmigrate import alloc
from test_alloc import rss_anon
assert alloc.tune()
for _ in range(3):  # glibc would raise its threshold after the first free; not now
    before = rss_anon()
    part = bytearray(b"x") * (16 << 20)  # written: resident
    assert rss_anon() - before >= 15 << 20, (rss_anon(), before)
    del part
    assert rss_anon() - before < 2 << 20, (rss_anon(), before)
"""


@glibc
def test_a_freed_part_buffer_is_unmapped_at_once() -> None:
    """In a process of its own: one that ran other tests may hold free heap that a new
    buffer reuses (once seen in the suite: RSS unchanged by a 16 MiB buffer)."""
    proc = subprocess.run([sys.executable, "-c", _FREED], capture_output=True, text=True,
                          cwd=Path(__file__).parent, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_release_is_paced(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class Libc:
        def malloc_trim(self, pad: int) -> int:
            calls.append(pad)
            return 1

    now = [1000.0]
    monkeypatch.setattr(alloc, "_LIBC", Libc())
    monkeypatch.setattr(alloc, "_last", 0.0)
    monkeypatch.setattr(alloc.time, "monotonic", lambda: now[0])
    alloc.release()
    alloc.release()  # too soon: skipped
    assert calls == [0]
    now[0] += alloc.RELEASE_EVERY
    alloc.release()
    assert calls == [0, 0]


def test_elsewhere_both_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alloc, "_LIBC", None)
    assert alloc.tune() is False
    alloc.release()  # no error
