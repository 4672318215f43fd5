"""A file's DICOM header fields: a fast byte scan, with pydicom for everything it declines."""

from __future__ import annotations

import io
import logging
import threading
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, cast

from .headscan import DEFLATED, pixel_overrun, scan_fields
from .headskip import Buffer

# pydicom's warnings and log lines can quote element values (names, IDs, UIDs): patient
# data must never reach our output. They are dropped while a thread reads a header for us,
# and only then: the rest of the process (a Dask worker's other tasks) keeps them, and the
# import changes nothing (a filter on the pydicom logger and a showwarning that passes all
# else on are put in place by the first read).
_reading = threading.local()
_hushed = threading.Lock()


class _NotWhileReading(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_reading, "on", False)


_FILTER = _NotWhileReading()


def _hush() -> None:
    """Put the filter and the showwarning wrapper in place, again whenever something took
    them away (a `warnings.catch_warnings` block of another thread restores the
    showwarning it found; `logging.captureWarnings` puts in its own)."""
    if getattr(warnings.showwarning, "_pacsmigrate", False) and \
            _FILTER in logging.getLogger("pydicom").filters:
        return
    with _hushed:
        log = logging.getLogger("pydicom")
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
        if getattr(warnings.showwarning, "_pacsmigrate", False):
            return
        shown = warnings.showwarning

        def showwarning(message: Warning | str, category: type[Warning], filename: str,
                        lineno: int, file: Any = None, line: str | None = None) -> None:
            if not getattr(_reading, "on", False):
                shown(message, category, filename, lineno, file, line)
        showwarning._pacsmigrate = True  # type: ignore[attr-defined]
        warnings.showwarning = showwarning

# The most parse() reads from a file for the scan before it hands the file to pydicom.
MAX_PREFIX = 1 << 20


@dataclass(slots=True)  # built once a file: not frozen, which costs ~3x (records.py)
class Header:
    """What the header says, or why it could not place the file in a study."""

    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    modality: str = ""
    study_date: str = ""
    transfer_syntax: str = ""
    reason: str = ""
    accession: str = ""  # AccessionNumber: for a retention map only, never stored


def scan(data: Buffer, size: int) -> Header | int | None:
    """The header from the file's first bytes `data` (of `size` in all), when sure.

    Returns exactly what read_header would; an int when `data` is too short to tell (read at
    least that many bytes from the start and call again); None when pydicom must decide.
    """
    got = scan_fields(data, size)
    if got is None or isinstance(got, int):
        return got
    return Header(*got)


def parse(data: Buffer, size: int, f: BinaryIO | None = None) -> Header:
    """The header of a file whose first bytes are `data`: the scan, else pydicom.

    `f`, if given, is the open file (any position): the scan may read more of it, up to
    MAX_PREFIX, and pydicom reads it from the start. Without `f`, `data` must be the whole
    file whenever the scan needs more than it.
    """
    got = scan(data, size)
    while isinstance(got, int) and f is not None and len(data) < got <= MAX_PREFIX:
        want = min(size, MAX_PREFIX, max(got, 2 * len(data)))
        f.seek(len(data))
        data = bytes(data) + f.read(want - len(data))
        if len(data) < want:
            break  # the file shrank: pydicom judges what is there
        got = scan(data, size)
    if isinstance(got, Header):
        return got
    if f is not None:
        f.seek(0)
        return read_header(f, size)
    if len(data) >= size:
        return read_header(io.BytesIO(bytes(data[:size])), size)
    raise ValueError(f"the header needs more than the {len(data)} bytes given; pass the file")


def _text(ds: Any, name: str) -> str:
    value = ds.get(name, "")
    return str(value).strip() if value is not None else ""


def _pixels_truncated(f: BinaryIO, size: int, ts: str) -> bool:
    """True when the PixelData element declares more bytes than the file holds.

    dcmread(stop_before_pixels=True) leaves the file positioned at the pixel element's tag,
    so this costs one 12-byte read.
    """
    pos = f.tell()
    if pos >= size or ts in DEFLATED:
        return False
    return pixel_overrun(f.read(12), pos, size, ts)


def read_header(f: BinaryIO, size: int) -> Header:
    """Parse the header of an open file with pydicom (stopping before pixel data)."""
    if size == 0:
        return Header(reason="empty file")
    _hush()
    _reading.on = True
    try:
        return _read_header(f, size)
    finally:
        _reading.on = False


# pydicom reads each data element's tag and length with one read of 8 bytes. In a run of
# zero bytes every 8 are an element (0000,0000) of length 0, which no data set holds twice,
# and pydicom steps on 8 bytes at a time: 2.2 s of CPU for a 6 MiB file of zeros, hours for
# a disk image or a preallocated file of gigabytes. The fallback gives up after this many.
_ZERO_ELEMENTS = 1024
_ZERO8 = bytes(8)
# Other bytes read as elements of small length too: an array of 64-bit integers below
# 2**32 (counters, epoch seconds, row numbers) is one empty element every 8 bytes, 0.4-0.65 s
# of CPU a MiB. A data set holds a few hundred elements outside its sequences (at most 257
# in pydicom's test files and pydicom-data); the fallback gives up after this many.
MOST_ELEMENTS = 16_384
# They can sit inside a sequence too (an SQ header of undefined length, then 6 MiB of
# counters: 3 s of CPU, ~10 min a GB), where a data set's own count never grows. What
# marks them is an empty value: each reads as an element of length 0 (implicit VR: the
# header's last 4 bytes zero). Before the fields the header gives (none past
# SeriesInstanceUID) real files hold few, items and their delimiters aside: at most 11 in
# pydicom's test and charset files and pydicom-data, none in a presentation state's list
# of 20,000 referenced images. The fallback gives up past this many; after the fields it
# reads on as before. (A deflated data set is inflated and read by pydicom itself, past
# this guard.)
MOST_EMPTY_BEFORE_FIELDS = 16_384
_LAST_FIELD = 0x0020000E
_EMPTY = bytes(4)
# (FFFE,xxxx) in either byte order: items and their delimiters, not elements
_ITEM_GROUPS = frozenset({b"\xfe\xff", b"\xff\xfe"})
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # dcmread's stop_before_pixels


class _Implausible(Exception):
    """Bytes that only look like data elements; `why`, in a reason's words."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _stop_before_pixels(guarded: _Guarded) -> Callable[[int, str | None, int], bool]:
    """pydicom's stop_when for a data set's own elements (not its sequences'): at the
    pixel data, as stop_before_pixels; _Implausible past MOST_ELEMENTS of them. Past the
    last field the header gives, `guarded` stops counting empty elements."""
    seen = iter(range(MOST_ELEMENTS))

    def stop(tag: int, vr: str | None, length: int) -> bool:
        if next(seen, None) is None:
            raise _Implausible(f"more than {MOST_ELEMENTS:,} data elements")
        if tag > _LAST_FIELD:
            guarded.counting = False
        return tag in _PIXEL_TAGS
    return stop


# pydicom reads a deflated data set whole and inflates it whole: 636 MiB of peak memory for
# the header of a 200 MiB file. Past DEFLATED_WHOLE bytes the fallback gives it the first
# DEFLATED_HEAD bytes of the inflated data set instead, deflated again, when the pixel data
# element starts in them (the header lies before it); else, or should pydicom fail on the
# head, pydicom reads the file whole after all.
DEFLATED_WHOLE = 64 << 20
DEFLATED_HEAD = 4 << 20
_PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian


# Values larger than this are skipped, not read, by the fallback (none of the fields it
# gives is): a 100 MiB private element before the UIDs cost 100 MiB of memory.
DEFER_SIZE = 1 << 20


class _Guarded:
    """The file as pydicom reads it, stopped once it has read _ZERO_ELEMENTS elements of
    eight zero bytes, or MOST_EMPTY_BEFORE_FIELDS headers of empty elements (nested ones
    too) while `counting`; a large deflated data set cut to its head (`headed`)."""

    def __init__(self, f: BinaryIO, size: int, *, whole: bool = False) -> None:
        self._read, self.seek, self.tell = f.read, f.seek, f.tell
        self._zeros = 0
        self._empty = 0
        self.counting = True
        self._size = size
        self._whole = whole
        self.headed = False

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0:
            return self._rest()
        got = self._read(n)
        if n == 8:
            if got == _ZERO8:
                self._zeros += 1
                if self._zeros > _ZERO_ELEMENTS:
                    raise _Implausible("zero bytes where elements should be")
            if self.counting and got[4:] == _EMPTY and got[:2] not in _ITEM_GROUPS:
                self._empty += 1
                if self._empty > MOST_EMPTY_BEFORE_FIELDS:
                    raise _Implausible(f"more than {MOST_EMPTY_BEFORE_FIELDS:,} empty data "
                                       "elements before its UIDs")
        return got

    def _rest(self) -> bytes:
        """The rest of the file (pydicom reads a deflated data set so), or its head."""
        at = self.tell()
        if self._whole or self._size - at <= DEFLATED_WHOLE:
            return self._read()
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        head = bytearray()
        while len(head) < DEFLATED_HEAD and not inflate.eof:
            data = inflate.unconsumed_tail or self._read(256 << 10)
            if not data:
                break
            head += inflate.decompress(data, DEFLATED_HEAD - len(head))
        if not inflate.eof and _PIXEL_TAG not in head:
            self.seek(at)
            return self._read()
        self.headed = True
        return zlib.compress(head, 1, wbits=-zlib.MAX_WBITS)


def _dcmread(f: BinaryIO, size: int) -> Any:
    """pydicom's dcmread (its reader, read_partial, with our stop_when) through _Guarded;
    a deflated data set that pydicom could not read from its head is read whole."""
    from pydicom.filereader import read_partial

    guarded = _Guarded(f, size)
    try:
        return read_partial(cast(BinaryIO, guarded), _stop_before_pixels(guarded),
                            defer_size=DEFER_SIZE, force=True)
    except Exception:  # _Implausible too: it comes before any head is cut, so it goes on up
        if not guarded.headed:
            raise
    f.seek(0)
    guarded = _Guarded(f, size, whole=True)
    return read_partial(cast(BinaryIO, guarded), _stop_before_pixels(guarded),
                        defer_size=DEFER_SIZE, force=True)


def _read_header(f: BinaryIO, size: int) -> Header:
    # pydicom for the fallback only: the scan reads most headers without it (dicomref)
    from pydicom.errors import InvalidDicomError

    prefix = f.read(132)
    has_marker = prefix[128:132] == b"DICM"
    f.seek(0)
    try:
        ds = _dcmread(f, size)
    except _Implausible as exc:
        return Header(reason=("unreadable DICOM header" if has_marker else "not DICOM")
                      + f" ({exc.why})")
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
                   ts, accession=_text(ds, "AccessionNumber"))
    except Exception as exc:  # noqa: BLE001 - a value that fails to decode
        return Header(reason=f"unreadable DICOM header ({type(exc).__name__})")
    if not has_marker and not (h.study_uid or h.sop_uid or h.series_uid):
        return Header(reason="not DICOM")
    if not h.study_uid:
        return _with_reason(h, "DICOM without StudyInstanceUID")
    try:
        overrun = ts not in DEFLATED and _elements_overrun(ds, size)
    except Exception as exc:  # noqa: BLE001 - an odd element pydicom cannot convert
        return _with_reason(h, f"unreadable DICOM header ({type(exc).__name__})")
    if overrun:
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
        raw = ds.get_item(tag, keep_deferred=True)
        length, at = getattr(raw, "length", None), getattr(raw, "value_tell", None)
        if length is not None and at is not None and length != 0xFFFFFFFF and at + length > size:
            return True
    return False


def _with_reason(h: Header, reason: str) -> Header:
    return replace(h, reason=reason)


def header_from_bytes(data: bytes) -> Header:
    return parse(data, len(data))
