"""The header scan's shortcut for a series: the last header's layout, reused when the next
file's bytes differ only inside element values.

Files of one series sit side by side in a walk and their headers differ in a few values
(SOP UIDs, instance number, position), not in their layout. What the scan's walk decides
(headscan.py: where the data set starts, its transfer syntax, which elements it found where,
where pixel data starts, and every Unsure on the way) follows from the bytes outside values
(tags, VRs, lengths, anything inside sequences of undefined length, the transfer syntax
UID), the bytes it has (n) and the file's size. So when a file has the last template's n
and size and differs from it only inside the values of defined-length elements, the walk
would come out the same, and the scan goes straight to reading the fields from the new
bytes (`headscan._fields`, which judges every value-dependent thing again). Anything
else: the full scan, which may leave a template for the next file.

The comparison is one AND of big integers: the header's bytes (up to the pixel element's
header) with the template's mask of the bytes outside values, against the template's.
On the bench's small files (a series in each folder): ~7 us a header that matches against
~19 for the full scan, ~12 % of a --pack run's CPU; a template costs ~30 us to make.
Real series match where their values keep their lengths (UIDs of one length, most of a
series; lengths change at 9 -> 10, 99 -> 100), else the full scan runs as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .headskip import (
    EXPLICIT,
    IMPLICIT,
    U32,
    UNDEFINED,
    VR_LONG,
    Buffer,
    skip_undefined,
)

_TRANSFER_SYNTAX = 0x0010 << 16 | 0x0002  # tag_key(0x0002, 0x0010)
_PREAMBLE = 128
# After this many misses in a row, a template is made for one miss in _SPARSE (a tree of
# unlike files, or of sizes that differ, pays little for the attempts).
_PATIENT, _SPARSE = 8, 16


@dataclass(frozen=True, slots=True)
class Template:
    """One scanned header's layout and the outcome of its walk."""

    n: int  # bytes the scan had
    size: int  # the file's size
    end: int  # bytes [0, end) decide the walk
    mask: int  # 0xFF for each of those bytes outside values (little endian), else 0
    layout: int  # those bytes of the template (its bytes [0, end) & mask)
    walked: Any  # headwalk's outcome (found, stop, overrun, empty_sequence)
    ts: str
    # headscan's checks of the fields that follow from the layout, done once (or None:
    # one failed, and each file goes through them all as the full scan does).
    plan: Any


last: Template | None = None  # replaced whole, never changed: safe to read from any thread
_misses = 0


def matching(data: Buffer, n: int, size: int) -> Template | None:
    """The last template if this header has its layout, else None."""
    global _misses
    t = last
    if t is None:
        return None
    if t.n == n and t.size == size and _same_layout(t, data):
        _misses = 0
        return t
    _misses += 1
    return None


def _same_layout(t: Template, data: Buffer) -> bool:
    return int.from_bytes(data[:t.end], "little") & t.mask == t.layout


def remember(data: Buffer, n: int, size: int, start: int, implicit: bool, walked: Any,
             ts: str, plan: Callable[[], Any]) -> None:
    """Keep the layout of a header whose walk ended at pixel data (`start`: where its data
    set begins) for the files after it."""
    global last
    if _misses >= _PATIENT and _misses % _SPARSE:
        return
    stop = walked[1]
    if stop < 0 or walked[2]:
        return  # ended at EOF, or overran it: the end of the data decides too much there
    starts, ends = [0], [_PREAMBLE]  # the preamble: never read
    if not _meta_spans(data, start, starts, ends):
        return
    if not _data_spans(data, n, size, start, stop, implicit, starts, ends):
        return
    end = min(stop + 12, n)  # every span ends at or before stop
    outside = bytearray(b"\xff") * end
    for a, b in zip(starts, ends, strict=True):
        outside[a:b] = bytes(b - a)
    mask = int.from_bytes(outside, "little")
    last = Template(n, size, end, mask, int.from_bytes(data[:end], "little") & mask, walked,
                    ts, plan())


def _meta_spans(data: Buffer, start: int, starts: list[int], ends: list[int]) -> bool:
    """The file meta's values but the transfer syntax (its value decides the walk)."""
    pos = _PREAMBLE + 4
    while pos < start:
        key, vr, length = EXPLICIT(data, pos)
        if VR_LONG.get(vr):
            (length,) = U32(data, pos + 8)
            at = pos + 12
        else:
            at = pos + 8
        if key != _TRANSFER_SYNTAX:
            starts.append(at)
            ends.append(at + length)
        pos = at + length
    return pos == start


def _data_spans(data: Buffer, n: int, size: int, pos: int, stop: int, implicit: bool,
                starts: list[int], ends: list[int]) -> bool:
    """The top-level values of defined length before pixel data, walked as headscan's walk
    did (which has checked all of it); False where this walk would differ from that one."""
    while pos < stop:
        if implicit:
            key, length = IMPLICIT(data, pos)
            vr = None
            at = pos + 8
        else:
            if pos + 12 > n:
                return False
            key, vr, length = EXPLICIT(data, pos)
            long = VR_LONG.get(vr)
            if long:
                (length,) = U32(data, pos + 8)
                at = pos + 12
            elif long is None:
                return False
            else:
                at = pos + 8
        if length == UNDEFINED:
            pos = skip_undefined(data, n, size, at, key, vr)
            continue
        starts.append(at)
        ends.append(at + length)
        pos = at + length
    return pos == stop


def forget() -> None:
    """No template (tests; a change of pydicom's settings needs none either)."""
    global last, _misses
    last, _misses = None, 0
