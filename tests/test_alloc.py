"""alloc: freed part buffers go back to the system (glibc), and releases are paced."""

from __future__ import annotations

import platform

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


@glibc
def test_a_freed_part_buffer_is_unmapped_at_once() -> None:
    assert alloc.tune()
    for _ in range(3):  # glibc would raise its threshold after the first free; not now
        before = rss_anon()
        part = bytearray(b"x") * (16 << 20)  # written: resident
        assert rss_anon() - before >= 15 << 20
        del part
        assert rss_anon() - before < 2 << 20


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
