"""Read a file's DICOM header to place it in a study, or give the reason it is unsorted."""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from dataclasses import dataclass
from typing import Any, BinaryIO

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import VR

from .keys import study_group, unsorted_group
from .records import DICOM, UNSORTED, Described

# pydicom's warnings and log lines can quote element values (names, IDs, UIDs): patient
# data must never reach our output, so they are silenced; our reasons carry no values.
warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
logging.getLogger("pydicom").setLevel(logging.CRITICAL)

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99",)
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
_ALL_VRS = frozenset(v.value.encode() for v in VR)


@dataclass(frozen=True, slots=True)
class Header:
    """What the header says, or why it could not place the file in a study."""

    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    modality: str = ""
    study_date: str = ""
    transfer_syntax: str = ""
    reason: str = ""


def _text(ds: Any, name: str) -> str:
    value = ds.get(name, "")
    return str(value).strip() if value is not None else ""


def _pixels_truncated(f: BinaryIO, size: int, ts: str) -> bool:
    """True when the PixelData element declares more bytes than the file holds.

    dcmread(stop_before_pixels=True) leaves the file positioned at the pixel element's tag,
    so this costs one 12-byte read. Encapsulated (undefined length) data is not judged.
    """
    pos = f.tell()
    if pos >= size or ts in _DEFLATED:
        return False
    head = f.read(12)
    if len(head) < 8:
        return True
    endian = ">" if ts == _EXPLICIT_BE else "<"
    # Judge VR from the bytes: some files declare explicit VR but are written implicit.
    if ts == _IMPLICIT_LE or head[4:6] not in _ALL_VRS:
        (length,) = struct.unpack(endian + "I", head[4:8])
        header_len = 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return True
        (length,) = struct.unpack(endian + "I", head[8:12])
        header_len = 12
    else:
        (length,) = struct.unpack(endian + "H", head[6:8])
        header_len = 8
    if length == 0xFFFFFFFF:
        return False
    return bool(pos + header_len + length > size)


def read_header(f: BinaryIO, size: int) -> Header:
    """Parse the header of an open file (stopping before pixel data)."""
    if size == 0:
        return Header(reason="empty file")
    prefix = f.read(132)
    has_marker = prefix[128:132] == b"DICM"
    f.seek(0)
    try:
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
    except (InvalidDicomError, EOFError) as exc:
        return Header(reason="truncated DICOM header" if has_marker
                      else f"not DICOM ({type(exc).__name__})")
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on garbage input
        return Header(reason=("unreadable DICOM header" if has_marker else "not DICOM")
                      + f" ({type(exc).__name__})")
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    try:
        h = Header(_text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID"),
                   _text(ds, "SOPInstanceUID"), _text(ds, "Modality"), _text(ds, "StudyDate"),
                   ts)
    except Exception as exc:  # noqa: BLE001 - a value that fails to decode
        return Header(reason=f"unreadable DICOM header ({type(exc).__name__})")
    if not has_marker and not (h.study_uid or h.sop_uid or h.series_uid):
        return Header(reason="not DICOM")
    if not h.study_uid:
        return _with_reason(h, "DICOM without StudyInstanceUID")
    if ts not in _DEFLATED and _elements_overrun(ds, size):
        return _with_reason(h, "truncated DICOM (data set shorter than declared)")
    if _pixels_truncated(f, size, ts):
        return _with_reason(h, "truncated DICOM (pixel data shorter than declared)")
    return h


def _elements_overrun(ds: Any, size: int) -> bool:
    """True when a top-level element declares more bytes than the file has.

    pydicom reads a value cut short by the end of the file without complaint; the raw
    elements still carry where their value starts and how long it claims to be.
    """
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        length, at = getattr(raw, "length", None), getattr(raw, "value_tell", None)
        if length is not None and at is not None and length != 0xFFFFFFFF and at + length > size:
            return True
    return False


def _with_reason(h: Header, reason: str) -> Header:
    return Header(h.study_uid, h.series_uid, h.sop_uid, h.modality, h.study_date,
                  h.transfer_syntax, reason)


def header_of(data: bytes) -> Header:
    """The header of a whole file's bytes."""
    return read_header(io.BytesIO(data), len(data))


def describe(path: bytes, header: Header, *, secret: bytes) -> Described:
    """The file's place: its study's group when the header names a study, else its folder's."""
    if header.reason:
        return Described(unsorted_group(secret, os.path.dirname(path)), UNSORTED, header.reason,
                         header.study_uid, header.series_uid, header.sop_uid, header.modality,
                         header.study_date, header.transfer_syntax)
    return Described(study_group(secret, header.study_uid), DICOM, "", header.study_uid,
                     header.series_uid, header.sop_uid, header.modality, header.study_date,
                     header.transfer_syntax)
