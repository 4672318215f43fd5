"""header's pydicom fallback on what would make pydicom slow or large: bytes that only look
like data elements (zero runs, arrays of integers, also inside a sequence), large values
before the UIDs, large deflated data sets. Each guard gives what pydicom alone gives on
every real file."""

from __future__ import annotations

import io
import os
import zlib

import pytest
from pydicom.dataset import Dataset
from test_header import (
    BIG_ENDIAN,
    DEFLATED,
    EXPLICIT,
    IMPLICIT,
    PREFIX,
    SAMPLES,
    encode,
    fast,
    files_under,
    image,
    reference,
)

from pacsmigrate import header
from pacsmigrate.header import MAX_PREFIX, Header, parse, scan


class _Counted(io.BytesIO):
    """A file that counts the bytes read from it."""

    taken = 0

    def read(self, n: int | None = -1) -> bytes:
        got = super().read(n)
        self.taken += len(got)
        return got


def test_zero_runs_are_judged_without_reading_them_through(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk images, preallocated and sparse files start with zero bytes, which pydicom
    reads as one empty element every 8 bytes, to the end of the file (2.2 s of CPU for
    6 MiB, hours for gigabytes): the fallback stops after a few KiB of them."""
    size = 6 << 20
    zeros = bytes(size)
    files = {"zeros": zeros, "a zip header, then zeros": b"PK\x03\x04" + zeros[4:],
             "preamble and DICM, then zeros": bytes(128) + b"DICM" + zeros[132:]}
    for name, data in files.items():
        f = _Counted(data)
        h = parse(data[:4096], size, f)
        assert "zero bytes where elements should be" in h.reason, (name, h)
        assert h.reason.startswith("unreadable DICOM header" if b"DICM" in data[:132]
                                   else "not DICOM"), (name, h)
        assert f.taken < 64 << 10, (name, f.taken)  # 6 MiB file, < 64 KiB read
    # Every real file gets from the guarded fallback what pydicom alone gives.
    guarded = {path: reference(path.read_bytes()) for path in files_under(SAMPLES)}
    monkeypatch.setattr(header, "_ZERO_ELEMENTS", 1 << 62)
    monkeypatch.setattr(header, "MOST_EMPTY_BEFORE_FIELDS", 1 << 62)  # zeros are empty too
    unguarded = _Counted(bytes(256 << 10))
    assert parse(bytes(4096), 256 << 10, unguarded).reason == "not DICOM"
    assert unguarded.taken >= 256 << 10  # pydicom alone reads zero runs to the end
    for path, got in guarded.items():
        assert reference(path.read_bytes()) == got, path.name


def test_arrays_of_integers_are_judged_without_reading_them_through(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """64-bit integers below 2**32 (counters, epoch seconds: database files, logs, arrays)
    read as one empty element every 8 bytes, each a step of pydicom's (3.9 s of CPU for
    6 MiB of epoch seconds): the fallback stops after MOST_ELEMENTS of a data set's own."""
    n = (6 << 20) // 8
    files = {"a counter": b"".join(i.to_bytes(8, "little") for i in range(n)),
             "epoch seconds": b"".join((1_700_000_000 + 7 * i).to_bytes(8, "little")
                                       for i in range(n))}
    files["preamble and DICM, then a counter"] = bytes(128) + b"DICM" + files["a counter"]
    for name, data in files.items():
        f = _Counted(data)
        h = parse(data[:4096], len(data), f)
        assert h.reason == ("unreadable DICOM header" if b"DICM" in data[:132] else
                            "not DICOM") + " (more than 16,384 data elements)", (name, h)
        assert f.taken < 256 << 10, (name, f.taken)  # 6 MiB file, < 256 KiB read
    # A data set with thousands of its own elements before the UIDs is read as before...
    many = image()
    for i in range(5_000):
        many.add_new((0x0009, 0x1000 + i), "LO", "x")
    assert reference(encode(many)) == fast(encode(many)) and fast(encode(many)).study_uid
    # ...and every real file gets from the guarded fallback what pydicom alone gives.
    guarded = {path: reference(path.read_bytes()) for path in files_under(SAMPLES)}
    monkeypatch.setattr(header, "MOST_ELEMENTS", 1 << 62)
    assert parse(files["a counter"][:4096], 1 << 20, _Counted(files["a counter"][:1 << 20])
                 ).reason == "not DICOM"  # unguarded: read to the end
    for path, got in guarded.items():
        assert reference(path.read_bytes()) == got, path.name


def _items(n: int) -> bytes:
    """A sequence (0040,A730) of undefined length, explicit VR LE: n items of undefined
    length, each one CS element."""
    item = (b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x40\x00\x40\xa0CS\x04\x00TEXT"
            + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00")
    return (b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + item * n
            + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")


def test_empty_elements_inside_a_sequence_are_judged_without_reading_them_through(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bytes inside a sequence of undefined length (its header first, then 6 MiB
    of counters) are one element of the data set's own, and were read to the end (3 s of
    CPU for 6 MiB): the fallback stops after MOST_EMPTY_BEFORE_FIELDS empty elements read
    before the fields it gives. Long sequences of real elements are read as before: a list
    of referenced images before the UIDs (in any encoding), anything after them."""
    counter = b"".join((0x10000 + i).to_bytes(8, "little") for i in range((6 << 20) // 8))
    opening = b"\x08\x00\x40\x11\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    files = {"an SQ and an item, then a counter": opening + counter,
             "preamble and DICM, an SQ, then a counter": bytes(128) + b"DICM" + opening
             + counter}
    for name, data in files.items():
        f = _Counted(data)
        h = parse(data[:4096], len(data), f)
        assert h.reason == ("unreadable DICOM header" if b"DICM" in data[:132] else
                            "not DICOM") + " (more than 16,384 empty data elements before "\
            "its UIDs)", (name, h)
        assert f.taken < 1 << 20, (name, f.taken)  # 6 MiB file, < 1 MiB read
    # A presentation state's 20,000 referenced images before the UIDs, each an item of
    # undefined length with its delimiter (~100,000 element headers), in each encoding...
    refs = Dataset()
    refs.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.7"
    refs.ReferencedImageSequence = [Dataset() for _ in range(20_000)]
    refs["ReferencedImageSequence"].is_undefined_length = True
    for i, item in enumerate(refs.ReferencedImageSequence):
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.2.1125.7.{i}"
        item.is_undefined_length_sequence_item = True
    listing = image(ReferencedSeriesSequence=[refs])
    listing["ReferencedSeriesSequence"].is_undefined_length = True
    for ts in (EXPLICIT, IMPLICIT, BIG_ENDIAN):
        data = encode(listing, ts=ts)  # the UIDs past MAX_PREFIX: pydicom's to read
        assert len(data) > MAX_PREFIX and not isinstance(scan(data[:MAX_PREFIX], len(data)),
                                                         Header)
        got = parse(data[:PREFIX], len(data), io.BytesIO(data))
        assert got.study_uid == "1.2.826.0.1.3680043.2.1125.1" and not got.reason, (ts, got)
    # ...and 25,000 items after them.
    plain = encode(image())
    at = plain.index(b"\xe0\x7f\x10\x00")  # the pixel data: the sequence goes before it
    got = reference(plain[:at] + _items(25_000) + plain[at:])
    assert got.study_uid == "1.2.826.0.1.3680043.2.1125.1" and not got.reason, got
    # Every real file gets from the guarded fallback what pydicom alone gives.
    guarded = {path: reference(path.read_bytes()) for path in files_under(SAMPLES)}
    monkeypatch.setattr(header, "MOST_EMPTY_BEFORE_FIELDS", 1 << 62)
    cut = files["an SQ and an item, then a counter"][:1 << 20]
    unguarded = _Counted(cut)
    h = parse(cut[:4096], len(cut), unguarded)
    assert h.reason.startswith("not DICOM") and "UIDs" not in h.reason, h
    assert unguarded.taken >= len(cut) - 8  # unguarded: read to the end
    for path, got in guarded.items():
        assert reference(path.read_bytes()) == got, path.name


def _deflated(ds: Dataset) -> bytes:
    first = b"\x08\x00\x05\x00CS"  # the data set's first element
    plain, meta = encode(ds), encode(ds, ts=DEFLATED)
    deflate = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    return (meta[:meta.index(first)] + deflate.compress(plain[plain.index(first):])
            + deflate.flush())


def test_a_large_deflated_file_is_read_to_its_head(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom reads and inflates a deflated data set whole (636 MiB of peak memory for the
    header of a 200 MiB file): past DEFLATED_WHOLE bytes only the head is inflated, with the
    same answer; a head without the pixel data element in it is not trusted."""
    ds = image()
    ds.PixelData = os.urandom(2 << 20)  # incompressible: the file is as large as its pixels
    data = _deflated(ds)
    want = reference(data)
    assert want.study_uid == ds.StudyInstanceUID and want.transfer_syntax == DEFLATED
    monkeypatch.setattr(header, "DEFLATED_WHOLE", 256 << 10)
    monkeypatch.setattr(header, "DEFLATED_HEAD", 64 << 10)
    f = _Counted(data)
    assert parse(data[:PREFIX], len(data), f) == want
    assert f.taken < 512 << 10, f.taken  # of a 2 MiB file
    monkeypatch.setattr(header, "DEFLATED_HEAD", 100)  # the head ends inside the header
    f = _Counted(data)
    assert parse(data[:PREFIX], len(data), f) == want
    assert f.taken >= len(data)  # read whole after all


def test_large_values_before_the_uids_are_skipped_not_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A large private value before the UIDs sends the file to pydicom (past the scan's
    prefix), which read it into memory (100 MiB for a 100 MiB element): values over
    DEFER_SIZE are skipped, with the same answer, for the file whole or cut short."""
    ds = image()
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091010, "OB", os.urandom(3 << 20))
    data = encode(ds)
    cut = data[:-256]  # the pixel data cut short
    got = {}
    for name, variant in {"whole": data, "pixels cut": cut}.items():
        f = _Counted(variant)
        got[name] = parse(variant[:PREFIX], len(variant), f)
        assert f.taken < MAX_PREFIX + (512 << 10), (name, f.taken)  # not its 3 MiB
    assert got["whole"].study_uid == ds.StudyInstanceUID and got["whole"].reason == ""
    assert got["pixels cut"].reason == "truncated DICOM (pixel data shorter than declared)"
    monkeypatch.setattr(header, "DEFER_SIZE", None)  # pydicom reads every value
    for name, variant in {"whole": data, "pixels cut": cut}.items():
        f = _Counted(variant)
        assert parse(variant[:PREFIX], len(variant), f) == got[name], name
        assert f.taken > 3 << 20, (name, f.taken)
