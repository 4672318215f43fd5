"""Fast per-series encoder producing dcmwrite-identical DICOM files."""

from __future__ import annotations

import struct

from pydicom import uid as dcmuid
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element

from .datasets import _PER_INSTANCE, _PER_INSTANCE_META

_PREAMBLE = b"\x00" * 128 + b"DICM"
# Explicit VR little endian (0002,0000) UL element: group, element, VR, length, value.
_GROUP_LENGTH = struct.Struct("<HH2sHI")


class _SeriesEncoder:
    """Encodes a series' instances as dcmwrite would, re-encoding only per-instance elements.

    Encoding ~50 static elements per file dominated run time; the output is
    byte-identical to `dcmwrite(..., enforce_file_format=True)` (tests check it).
    """

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._implicit_vr = ds.file_meta.TransferSyntaxUID == dcmuid.ImplicitVRLittleEndian
        # dcmwrite runs this on every write; once is enough as no ambiguous VR varies.
        correct_ambiguous_vr(ds, True)
        self._meta = _segments(ds.file_meta, implicit_vr=False, variable=_PER_INSTANCE_META)
        self._body = _segments(ds, implicit_vr=self._implicit_vr, variable=_PER_INSTANCE)

    def encode(self) -> list[bytes]:
        """Return the dataset's current state as the parts of a DICOM file."""
        meta = _assemble(self._meta, ds=self._ds.file_meta, implicit_vr=False)
        group_length = _GROUP_LENGTH.pack(0x0002, 0x0000, b"UL", 4, sum(map(len, meta)))
        body = _assemble(self._body, ds=self._ds, implicit_vr=self._implicit_vr)
        return [_PREAMBLE, group_length, *meta, *body]


def _segments(ds: Dataset, *, implicit_vr: bool, variable: frozenset[int]) -> list[bytes | int]:
    """Pre-encode runs of static elements; variable ones stay as tags to encode later."""
    segments: list[bytes | int] = []
    static = _new_buffer(implicit_vr=implicit_vr)
    for tag in sorted(ds.keys()):
        if tag in variable:
            segments += [static.getvalue(), int(tag)]
            static = _new_buffer(implicit_vr=implicit_vr)
        elif tag.element != 0:
            # Group lengths are computed per file (meta) or never written (dataset).
            write_data_element(static, ds[tag])
    segments.append(static.getvalue())
    return segments


def _assemble(segments: list[bytes | int], *, ds: Dataset, implicit_vr: bool) -> list[bytes]:
    parts: list[bytes] = []
    for segment in segments:
        if isinstance(segment, bytes):
            parts.append(segment)
            continue
        element = _new_buffer(implicit_vr=implicit_vr)
        write_data_element(element, ds[segment])
        parts.append(element.getvalue())
    return parts


def _new_buffer(*, implicit_vr: bool) -> DicomBytesIO:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit_vr
    return buffer
