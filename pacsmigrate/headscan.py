"""Scan a DICOM file's first bytes for its header fields, as pydicom would read them, or decline."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from . import headcache
from .dicomref import defaults, private_syntax
from .headskip import (
    ALL_VRS,
    CHARSET,
    LONG_VRS,
    U32,
    UNDEFINED,
    VR_LONG,
    Buffer,
    Need,
    Unsure,
    avail,
    charset_value,
    check_charset,
    check_vr,
    tag_key,
)
from .headwalk import (
    ACCESSION,
    EXPLICIT_12,
    MODALITY,
    NOTED,
    SERIES,
    SOP,
    STUDY,
    STUDY_DATE,
    Found,
    check_pixel_representation,
    walk_explicit,
    walk_implicit,
)

# (study, series, sop, modality, study date, transfer syntax, reason, accession number): a
# Header's fields.
Fields = tuple[str, str, str, str, str, str, str, str]

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99",)
_DECLINED_SYNTAXES = frozenset({EXPLICIT_BE, *DEFLATED})
# Converting these with a length that is not a multiple of the size raises in pydicom.
_NUMERIC_SIZE = {b"UL": 4, b"SL": 4, b"US": 2, b"SS": 2, b"FL": 4, b"FD": 8, b"AT": 4,
                 b"UV": 8, b"SV": 8}

_U16 = struct.Struct("<H").unpack_from
_U32_BE = struct.Struct(">I").unpack_from
_U16_BE = struct.Struct(">H").unpack_from

_TRANSFER_SYNTAX, _META_LENGTH = tag_key(0x0002, 0x0010), tag_key(0x0002, 0x0000)
_FIELDS = (STUDY, SERIES, SOP, MODALITY, STUDY_DATE, ACCESSION)
_NO_STUDY = "DICOM without StudyInstanceUID"


def pixel_overrun(head: bytes, pos: int, size: int, ts: str) -> bool:
    """True when the pixel element whose first bytes are `head` (at `pos`) ends past EOF.

    Encapsulated (undefined length) data is not judged.
    """
    if len(head) < 8:
        return True
    u32, u16 = (_U32_BE, _U16_BE) if ts == EXPLICIT_BE else (U32, _U16)
    # Judge VR from the bytes: some files declare explicit VR but are written implicit.
    if ts == IMPLICIT_LE or head[4:6] not in ALL_VRS:
        (length,) = u32(head, 4)
        header_len = 8
    elif head[4:6] in LONG_VRS:
        if len(head) < 12:
            return True
        (length,) = u32(head, 8)
        header_len = 12
    else:
        (length,) = u16(head, 6)
        header_len = 8
    if length == UNDEFINED:
        return False
    return bool(pos + header_len + length > size)


def scan_fields(data: Buffer, size: int) -> Fields | int | None:
    """A Header's fields from the file's first bytes; an int: read this many; None: use pydicom."""
    if size == 0:
        return "", "", "", "", "", "", "empty file", ""
    n = min(len(data), size)
    if n < 132 + 12:
        return min(size, 4096) if n < size else None
    if data[128:132] != b"DICM" or not defaults():
        return None
    try:
        like = headcache.matching(data, n, size)
        if like is not None:  # the last header's layout: its walk's outcome holds here
            if like.plan is not None:
                return _planned(data, like.plan)
            return _fields(data, n, size, like.walked, like.ts)
        return _scan(data, n, size)
    except Need as need:
        return need.end
    except Unsure:
        return None


def _text(data: Buffer, n: int, size: int, at: int, length: int) -> str:
    """A single UI/CS/DA value as pydicom gives it after str().strip()."""
    end = at + length
    if end > n:
        avail(n, size, end)
    return _value(data, at, end)


def _value(data: Buffer, at: int, end: int) -> str:
    value = str(data[at:end], "latin-1").rstrip(" \x00")
    if "\\" in value:
        raise Unsure  # several values: pydicom gives a list
    return value.strip()


def _scan(data: Buffer, n: int, size: int) -> Fields | int | None:
    pos, ts = _meta(data, n, size)
    key = U32(data, pos)[0]
    if key & 0xFFFF == 0:
        raise Unsure  # a command set group
    # pydicom trusts the first element's bytes over the transfer syntax (explicit or not).
    implicit = not (0x40 < data[pos + 4] < 0x5B and 0x40 < data[pos + 5] < 0x5B)
    walked = (walk_implicit if implicit else walk_explicit)(data, n, size, pos)
    if not isinstance(walked, tuple):
        return walked
    headcache.remember(data, n, size, pos, implicit, walked, ts,
                       lambda: _plan(data, n, size, walked, ts))
    return _fields(data, n, size, walked, ts)


def _fields(data: Buffer, n: int, size: int, walked: tuple[Found, int, bool, bool], ts: str
            ) -> Fields:
    """The fields a walk found, read from the data, with every check that depends on their
    values (the walk itself depends on none: headcache.py)."""
    found, stop, overrun, empty_sequence = walked
    charset = found.get(CHARSET)
    if charset is not None:
        check_charset(data, n, size, *charset)
    values: list[str] = []
    for key in _FIELDS:
        field = found.get(key)
        if field is None:
            values.append("")
            continue
        at, length, vr = field
        if vr is not None and vr != NOTED[key]:
            check_vr(vr, NOTED[key], length)
        text = _text(data, n, size, at, length)
        if key == ACCESSION and not text.isascii():
            raise Unsure  # SH follows the character set: pydicom decodes it
        values.append(text)
    if values[0] and empty_sequence:
        check_pixel_representation(found, size)
    reason = _reason(data, n, size, stop, overrun, ts) if values[0] else _NO_STUDY
    return values[0], values[1], values[2], values[3], values[4], ts, reason, values[5]


def _reason(data: Buffer, n: int, size: int, stop: int, overrun: bool, ts: str) -> str:
    """Why a file with a study UID is not whole, or ""."""
    if overrun:
        return "truncated DICOM (data set shorter than declared)"
    if stop >= 0:
        head_end = min(stop + 12, size)
        avail(n, size, head_end)
        if pixel_overrun(bytes(data[stop:head_end]), stop, size, ts):
            return "truncated DICOM (pixel data shorter than declared)"
    return ""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What _fields decides from a walk's layout alone, decided once for a template: where
    the values are, and the outcomes that follow from the layout (headcache.py)."""

    charset: tuple[int, int] | None  # the value's span
    spans: tuple[tuple[int, int] | None, ...]  # _FIELDS' value spans
    pixel_representation_unsure: bool  # with a study UID, pydicom's conversion may fail
    reason: str  # a file with a study UID: "" or why it is truncated
    ts: str
    # The bytes all spans lie within, and each span within them ((0, 0): no such field),
    # when that stretch is short: the values are then decoded in one go (_planned).
    window: tuple[int, int] | None = None
    within: tuple[tuple[int, int], ...] = ()


_WINDOW = 4096  # at most this stretch of header is decoded for the values at once


def _plan(data: Buffer, n: int, size: int, walked: tuple[Found, int, bool, bool], ts: str
          ) -> _Plan | None:
    """_fields' checks that depend on the layout only, or None if one of them fails (each
    file then goes through _fields, so that what it raises first stays the same)."""
    found, stop, overrun, empty_sequence = walked
    try:
        charset = found.get(CHARSET)
        if charset is not None:
            at, length, vr = charset
            check_vr(vr, b"CS", length)
            avail(n, size, at + length)
        spans: list[tuple[int, int] | None] = []
        for key in _FIELDS:
            field = found.get(key)
            if field is None:
                spans.append(None)
                continue
            at, length, vr = field
            if vr is not None and vr != NOTED[key]:
                check_vr(vr, NOTED[key], length)
            avail(n, size, at + length)
            spans.append((at, at + length))
        unsure = False
        if empty_sequence:
            try:
                check_pixel_representation(found, size)
            except Unsure:
                unsure = True
        reason = _reason(data, n, size, stop, overrun, ts)
    except (Need, Unsure):
        return None
    placed = [span for span in spans if span is not None]
    lo = min((a for a, _ in placed), default=0)
    hi = max((b for _, b in placed), default=0)
    short = hi - lo <= _WINDOW
    return _Plan(None if charset is None else (charset[0], charset[0] + charset[1]),
                 tuple(spans), unsure, reason, ts, (lo, hi) if short else None,
                 tuple((0, 0) if span is None else (span[0] - lo, span[1] - lo)
                       for span in spans) if short else ())


def _planned(data: Buffer, plan: _Plan) -> Fields:
    """_fields for a file of a planned template's layout: only what depends on values."""
    if plan.charset is not None:
        charset_value(data, *plan.charset)
    text = None if plan.window is None else str(data[slice(*plan.window)], "latin-1")
    if text is not None and "\\" not in text:  # one decode, str slices: as _value gives
        values = [text[a:b].rstrip(" \x00").strip() for a, b in plan.within]
    else:
        values = [_value(data, *span) if span is not None else "" for span in plan.spans]
    if not values[5].isascii():
        raise Unsure  # the accession number: as in _fields
    if not values[0]:
        return "", values[1], values[2], values[3], values[4], plan.ts, _NO_STUDY, values[5]
    if plan.pixel_representation_unsure:
        raise Unsure
    return (values[0], values[1], values[2], values[3], values[4], plan.ts, plan.reason,
            values[5])


def _meta(data: Buffer, n: int, size: int) -> tuple[int, str]:
    """Walk the group 0002 file meta; return where the data set starts and the syntax."""
    pos, ts_at, first = 132, None, -1
    unpack, vr_long = EXPLICIT_12, VR_LONG.get
    while True:
        # pydicom peeks at up to 12 bytes past the meta; fewer make it fail in odd ways.
        if pos + 12 > n:
            avail(n, size, pos + 12)
        key, vr, length, long_length = unpack(data, pos)
        if key & 0xFFFF != 2:
            if first < 0:
                raise Unsure  # no file meta: pydicom guesses the syntax
            return pos, _syntax(data, n, size, ts_at)
        long = vr_long(vr)
        if long:
            if vr == b"UN" or long_length == UNDEFINED:
                raise Unsure
            length, at = long_length, pos + 12
        elif long is None:
            raise Unsure
        else:
            at = pos + 8
        if first < 0:
            first = key
        # pydicom converts the first tag (with its last value) and the group length: a bad
        # length or a sequence may fail there.
        if key in (first, _META_LENGTH) and (vr == b"SQ" or length % _NUMERIC_SIZE.get(vr, 1)):
            raise Unsure
        if key == _TRANSFER_SYNTAX:
            if vr != b"UI":
                raise Unsure
            ts_at = (at, length)
        pos = at + length


def _syntax(data: Buffer, n: int, size: int, ts_at: tuple[int, int] | None) -> str:
    if ts_at is None:
        raise Unsure  # pydicom guesses the syntax from the data set
    ts = _text(data, n, size, *ts_at)
    if ts in _DECLINED_SYNTAXES or private_syntax(ts):
        raise Unsure
    return ts
