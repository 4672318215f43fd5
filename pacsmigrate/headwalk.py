"""The header scan's walk of the top-level data set, as pydicom reads it up to pixel data:
which wanted elements it holds where, where pixel data starts, and every way pydicom's
reading could differ (raised as Unsure; Need: more bytes first). headscan.py reads the
fields from what it found."""

from __future__ import annotations

import struct

from .dicomref import AMBIGUOUS_VR_NAMES, NONE_WHEN_EMPTY_NAMES, dictionary_vr
from .headskip import (
    CHARSET,
    EXPLICIT,
    IMPLICIT,
    ITEM,
    ITEM_END,
    SEQ_END,
    UNDEFINED,
    VR_LONG,
    Buffer,
    Unsure,
    skip_undefined,
    tag_key,
)

EXPLICIT_12 = struct.Struct("<I2sHI").unpack_from  # with the 4-byte length of long VRs

STUDY, SERIES = tag_key(0x0020, 0x000D), tag_key(0x0020, 0x000E)
SOP, MODALITY, STUDY_DATE = tag_key(8, 0x0018), tag_key(8, 0x0060), tag_key(8, 0x0020)
ACCESSION = tag_key(8, 0x0050)
# pydicom's stop_before_pixels stops at any of these.
_PIXELS = frozenset(tag_key(0x7FE0, element) for element in (0x0010, 0x0008, 0x0009))
# Top-level elements pydicom converts while reading a header, with the VR we can decode.
NOTED = {STUDY: b"UI", SERIES: b"UI", SOP: b"UI", MODALITY: b"CS", STUDY_DATE: b"DA",
         ACCESSION: b"SH", CHARSET: b"CS"}
_PIXEL_REPRESENTATION = tag_key(0x0028, 0x0103)
_TOP_SPECIAL = frozenset(NOTED) | _PIXELS | {ITEM, ITEM_END, SEQ_END, _PIXEL_REPRESENTATION}
# Explicit VRs whose empty raw value is None (not b""): pydicom converts those when it
# checks lengths (with use_none_as_empty_text_VR_value off, which the scan requires).
_NONE_WHEN_EMPTY = frozenset(v.encode() for v in NONE_WHEN_EMPTY_NAMES)

Found = dict[int, tuple[int, int, bytes | None]]
# (found elements, where pixel data starts or -1, a value overran EOF, an empty sequence).
Walked = tuple[Found, int, bool, bool] | int


def walk_explicit(data: Buffer, n: int, size: int, pos: int) -> Walked:
    """Walk the top-level explicit VR data set up to pixel data or EOF, as pydicom reads it."""
    found: Found = {}
    empty_sequence = False
    unpack, unpack8, vr_long, special = EXPLICIT_12, EXPLICIT, VR_LONG.get, _TOP_SPECIAL
    none_when_empty = _NONE_WHEN_EMPTY
    undefined, key = UNDEFINED, 0
    while True:
        if pos + 12 > n:
            end = _at_end(found, key, pos, n, size, empty_sequence, 12)
            if end is not None:
                return end
            key, vr, length = unpack8(data, pos)
            if vr_long(vr) is not False:
                raise Unsure  # pydicom fails to unpack the missing 4-byte length
            at = pos + 8
        else:
            key, vr, length, long_length = unpack(data, pos)
            long = vr_long(vr)
            if long:
                length, at = long_length, pos + 12
                if length == undefined:
                    if key in special and _note(found, key, at, length, vr):
                        return found, pos, False, empty_sequence
                    pos = skip_undefined(data, n, size, at, key, vr)
                    continue
            elif long is None:
                raise Unsure  # pydicom switches this element to implicit VR
            else:
                at = pos + 8
        if key in special and _note(found, key, at, length, vr):
            return found, pos, False, empty_sequence
        if not length and vr in none_when_empty and (key & 1 or vr == b"UN") \
                and _empty_converts(key):
            empty_sequence = True
        pos = at + length


def walk_implicit(data: Buffer, n: int, size: int, pos: int) -> Walked:
    """Walk the top-level implicit VR data set up to pixel data or EOF, as pydicom reads it."""
    found: Found = {}
    empty_sequence = False
    unpack, special, undefined, key = IMPLICIT, _TOP_SPECIAL, UNDEFINED, 0
    while True:
        if pos + 8 > n:
            end = _at_end(found, key, pos, n, size, empty_sequence, 8)
            if end is not None:
                return end
        key, length = unpack(data, pos)
        if key in special and _note(found, key, pos + 8, length, None):
            return found, pos, False, empty_sequence
        if not length and _empty_converts(key):
            empty_sequence = True
        if length == undefined:
            pos = skip_undefined(data, n, size, pos + 8, key, None)
        else:
            pos += 8 + length


def _note(found: Found, key: int, at: int, length: int, vr: bytes | None) -> bool:
    """Record a wanted top-level element; True at pixel data, where pydicom stops."""
    if key in _PIXELS:
        return True
    if length == UNDEFINED or not (key in NOTED or key == _PIXEL_REPRESENTATION):
        raise Unsure  # a delimiter at the top level, or a field of undefined length
    if key == CHARSET and key in found:
        raise Unsure  # pydicom decodes each copy as it reads; only the last is checked
    found[key] = (at, length, vr)
    return False


def _at_end(found: Found, key: int, pos: int, n: int, size: int, empty_sequence: bool,
            header: int) -> Walked | None:
    """The walk's end where fewer than `header` bytes are left; None: 8 to 11 bytes left."""
    if pos > size:
        # The last value (of `key`) was cut by EOF; pydicom no longer sees the length of
        # the fields it converted.
        if key in NOTED:
            raise Unsure
        return found, -1, True, empty_sequence
    if n < size:
        return min(size, pos + header)
    if pos + 8 > size:
        return found, -1, False, empty_sequence  # pydicom ends quietly on a cut header
    return None


def _empty_converts(key: int) -> bool:
    """Whether pydicom's conversion of this empty element reads PixelRepresentation.

    Checking lengths, pydicom converts the empty top-level elements whose raw value is None
    (implicit VR, UN, or private of a non-text VR); converting a sequence reads
    PixelRepresentation.
    """
    if key & 1:
        # Private: the VR comes from the private dictionary and converting reads the
        # creator (and the group length), any of which may fail to convert.
        raise Unsure
    try:
        vr = dictionary_vr((key & 0xFFFF) << 16 | key >> 16)
    except KeyError:
        return False  # UN, or UL for a group length
    if vr in AMBIGUOUS_VR_NAMES:
        raise Unsure  # pydicom resolves these from other elements' values, which may fail
    return vr == "SQ"


def check_pixel_representation(found: Found, size: int) -> None:
    # pydicom converts it when it converts a sequence; a bad length raises there.
    if _PIXEL_REPRESENTATION in found:
        at, length, vr = found[_PIXEL_REPRESENTATION]
        if vr not in (None, b"US") or length % 2 or at + length > size:
            raise Unsure
