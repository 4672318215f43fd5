"""Skip DICOM sequences, items and fragments of undefined length the way pydicom reads them."""

from __future__ import annotations

import struct

from .dicomref import LONG_VR_NAMES, VR_NAMES, dictionary_vr, replace_un_with_known_vr

Buffer = bytes | memoryview

ALL_VRS = frozenset(v.encode() for v in VR_NAMES)
LONG_VRS = frozenset(v.encode() for v in LONG_VR_NAMES)
# The VRs pydicom reads as explicit: whether each has the 4-byte length.
VR_LONG = {v: v in LONG_VRS for v in ALL_VRS if len(v) == 2}

# Tags as the little-endian uint32 of their 4 bytes (element << 16 | group): one unpack each.
EXPLICIT = struct.Struct("<I2sH").unpack_from
IMPLICIT = struct.Struct("<II").unpack_from
U32 = struct.Struct("<I").unpack_from
UNDEFINED = 0xFFFFFFFF


def tag_key(group: int, element: int) -> int:
    return element << 16 | group


CHARSET = tag_key(0x0008, 0x0005)
ITEM, ITEM_END, SEQ_END = (tag_key(0xFFFE, element) for element in (0xE000, 0xE00D, 0xE0DD))


class Need(Exception):
    """The prefix ends before the scan could decide: read up to `end`."""

    def __init__(self, end: int) -> None:
        self.end = end


class Unsure(Exception):
    """Something pydicom may read differently: leave the file to pydicom."""


def avail(n: int, size: int, end: int) -> None:
    """Raise unless the first `end` bytes are in the prefix (`n` of the file's `size`)."""
    if end > size:
        raise Unsure
    if end > n:
        raise Need(end)


def check_vr(vr: bytes | None, expected: bytes, length: int) -> None:
    # pydicom reads UN as the dictionary VR when the value is shorter than 64 KiB.
    if vr is not None and vr != expected and not (
            vr == b"UN" and length < 0xFFFF and replace_un_with_known_vr()):
        raise Unsure


def check_charset(data: Buffer, n: int, size: int, at: int, length: int,
                  vr: bytes | None) -> None:
    # pydicom looks odd character sets up in the codec registry; plain ASCII names are safe.
    check_vr(vr, b"CS", length)
    avail(n, size, at + length)
    charset_value(data, at, at + length)


def charset_value(data: Buffer, at: int, end: int) -> None:
    """The value check of check_charset (its VR and place checked)."""
    value = bytes(data[at:end]).rstrip(b" \x00")
    if not (value.isascii() and value.decode().isprintable()):
        raise Unsure


def skip_undefined(data: Buffer, n: int, size: int, at: int, key: int,
                   vr: bytes | None) -> int:
    """Skip an undefined-length value starting at `at` the way pydicom reads it."""
    if vr is None:
        try:
            is_sequence = dictionary_vr((key & 0xFFFF) << 16 | key >> 16) == "SQ"
        except KeyError:
            avail(n, size, at + 4)
            is_sequence = U32(data, at)[0] == ITEM  # pydicom looks ahead for an item
    else:
        is_sequence = vr in (b"SQ", b"UN")
    if is_sequence:
        return _skip_sequence(data, n, size, at, vr is None)
    return _skip_fragments(data, n, size, at)


def _skip_sequence(data: Buffer, n: int, size: int, pos: int, implicit: bool) -> int:
    while True:
        avail(n, size, pos + 8)
        key, length = IMPLICIT(data, pos)
        pos += 8
        if key == SEQ_END:
            return pos
        if key != ITEM:
            raise Unsure
        item_implicit = implicit
        if not implicit:
            # Items of an explicit sequence may be implicit: pydicom judges each one.
            avail(n, size, pos + 6)
            item_implicit = not (0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B)
        end = None if length == UNDEFINED else pos + length
        pos = _skip_item(data, n, size, pos, item_implicit, end)


def _skip_item(data: Buffer, n: int, size: int, pos: int, implicit: bool,
               end: int | None) -> int:
    while end is None or pos < end:
        avail(n, size, pos + 8)
        key, length = IMPLICIT(data, pos)
        vr: bytes | None = None
        if key & 0xFFFF == 0xFFFE:
            if key == ITEM_END and length == 0 and end is None:
                return pos + 8
            raise Unsure
        at = pos + 8
        if not implicit:
            key, vr, length = EXPLICIT(data, pos)
            long = VR_LONG.get(vr)
            if long is None:
                raise Unsure
            if long:
                avail(n, size, pos + 12)
                length = U32(data, pos + 8)[0]
                at = pos + 12
        if key == CHARSET:
            check_charset(data, n, size, at, length, vr)
        if length == UNDEFINED:
            pos = skip_undefined(data, n, size, at, key, vr)
            continue
        pos = at + length
        if pos > size:
            raise Unsure
    if pos != end:
        raise Unsure  # elements overran their item
    return pos


def _skip_fragments(data: Buffer, n: int, size: int, pos: int) -> int:
    """Skip items up to the sequence delimiter, as pydicom's encapsulated-data reader does."""
    while True:
        avail(n, size, pos + 8)
        key, length = IMPLICIT(data, pos)
        if key == SEQ_END:
            return pos + 8
        if key != ITEM:
            raise Unsure  # pydicom falls back to a byte search for the delimiter
        pos += 8 + length
