"""header: the fast scan gives exactly pydicom's read_header, or asks for more, or declines.

This file: real files (pydicom's samples and data package, synthetic trees) and crafted
files the scan decides (sequences and private tags before the UIDs, values past the end,
cut files, short prefixes). What goes to pydicom, and pydicom's settings, warnings and
import, are in test_header_pydicom.py. The helpers here (image, encode, fast, declined, ...)
are imported by test_header_pydicom.py, test_header_fallback.py and test_headcache.py.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import data_store
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import UID

from pacsmigrate.header import Header, parse, read_header, scan
from pacsmigrate.synth import LAYOUTS, make_tree

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
SAMPLES = PYDICOM_DATA / "test_files"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
DEFLATED, BIG_ENDIAN = "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"
PREFIX = 4096


def files_under(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*") if p.is_file())


def reference(data: bytes) -> Header:
    return read_header(io.BytesIO(data), len(data))


def check(data: bytes) -> bool:
    """parse() equals read_header() on the whole file and on a prefix; True if scan decided."""
    want = reference(data)
    assert parse(data, len(data)) == want
    assert parse(memoryview(data), len(data)) == want
    with io.BytesIO(data) as f:
        f.seek(7)  # parse must not rely on where the file is positioned
        assert parse(data[:PREFIX], len(data), f) == want
    got = scan(data, len(data))
    assert not isinstance(got, int), "the whole file was given, yet the scan asked for more"
    if got is not None:
        assert got == want
    return got is not None


def check_corpus(paths: list[Path]) -> tuple[int, int]:
    """Check every file; return how many the scan decided, and how many of those it decided
    only after asking for more than the prefix."""
    fast = more = 0
    for path in paths:
        data = path.read_bytes()
        try:
            decided = check(data)
        except AssertionError as exc:
            raise AssertionError(f"{path}: {exc}") from exc
        fast += decided
        more += decided and isinstance(scan(data[:PREFIX], len(data)), int)
    return fast, more


# --- real files ----------------------------------------------------------------------------


def test_pydicom_sample_files() -> None:
    paths = files_under(SAMPLES, PYDICOM_DATA / "charset_files")
    assert len(paths) > 150
    fast, more = check_corpus(paths)
    # The rest are big endian, deflated, without preamble or meta, or not DICOM at all.
    assert fast >= 0.8 * len(paths), f"the scan decided only {fast} of {len(paths)}"
    assert more >= 10  # headers longer than the prefix: parse read more of the file


def test_pydicom_data_package_files() -> None:
    paths = files_under(Path(data_store.__file__).parent / "data")
    assert len(paths) == 68
    fast, _ = check_corpus(paths)
    assert fast >= 0.75 * len(paths), f"the scan decided only {fast} of {len(paths)}"


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trees")
    return {layout: make_tree(root / layout, studies=12, layout=layout, scale=0.1).root
            for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_synthetic_trees(trees: dict[str, Path], layout: str) -> None:
    paths = files_under(trees[layout])
    assert len(paths) > 50
    fast, _ = check_corpus(paths)
    assert fast == len(paths), f"the scan decided only {fast} of {len(paths)}"


def test_synthetic_trees_cover_both_syntaxes(trees: dict[str, Path]) -> None:
    syntaxes = {h.transfer_syntax for p in files_under(trees["mixed"])
                if isinstance(h := scan(p.read_bytes(), p.stat().st_size), Header)}
    assert {EXPLICIT, IMPLICIT} <= syntaxes


# --- crafted files -------------------------------------------------------------------------


def image(**extra: object) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.2.1125.1.3"
    ds.StudyDate = "20240131"
    ds.Modality = "CT"
    ds.PatientName = "Crafted^Case"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1125.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.2.1125.1.2"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * 2
    ds["PixelData"].VR = "OW"
    return ds


def encode(ds: Dataset, *, ts: str = EXPLICIT, implicit: bool | None = None) -> bytes:
    """Preamble, meta saying `ts`, and the data set encoded as `implicit` says (default: ts)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.2.1125.9")
    head = DicomBytesIO()
    write_file_meta_info(head, meta)
    body = DicomBytesIO()
    body.is_little_endian = ts != BIG_ENDIAN
    body.is_implicit_VR = ts == IMPLICIT if implicit is None else implicit
    write_dataset(body, ds)
    return b"\0" * 128 + b"DICM" + head.getvalue() + body.getvalue()


def fast(data: bytes) -> Header:
    """The scan's answer, which must be a Header equal to pydicom's (and parse's)."""
    got = scan(data, len(data))
    assert isinstance(got, Header), got
    assert check(data)
    return got


def declined(data: bytes) -> Header:
    """The scan declines; parse still gives pydicom's answer."""
    assert scan(data, len(data)) is None
    assert not check(data)
    return parse(data, len(data))


def sequences(*, undefined: bool) -> dict[str, object]:
    """Private elements and sequences (nested, two levels) before the study and series UIDs."""
    def item(**fields: object) -> Dataset:
        ds = Dataset()
        for keyword, value in fields.items():
            setattr(ds, keyword, value)
        ds.is_undefined_length_sequence_item = undefined
        return ds

    def seq(*items: Dataset) -> Sequence:
        s = Sequence(items)
        s.is_undefined_length = undefined
        return s

    inner = seq(item(ReferencedSOPClassUID="1.2.3", ReferencedSOPInstanceUID="1.2.3.4"),
                item(ReferencedSOPClassUID="1.2.3", ReferencedSOPInstanceUID="1.2.3.5"))
    codes = seq(item(CodeValue="X1", CodingSchemeDesignator="99TEST", CodeMeaning="test"))
    return {"ReferencedStudySequence": seq(item(ReferencedSOPClassUID="1.2.3",
                                                ReferencedSOPInstanceUID="1.2.4")),
            "ProcedureCodeSequence": codes,
            "ReferencedImageSequence": seq(item(ReferencedSOPClassUID="1.2.3",
                                                ReferencedSOPInstanceUID="1.2.5",
                                                ReferencedSeriesSequence=inner), item()),
            "OtherPatientIDsSequence": seq()}


def with_private(ds: Dataset, *, undefined: bool, blob: int = 100) -> Dataset:
    block = ds.private_block(0x0009, "PACSMIGRATE TEST", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "OB", b"\x01" * blob)
    private_seq = Sequence([Dataset()])
    private_seq[0].add_new(0x00100020, "LO", "inner")
    private_seq.is_undefined_length = undefined
    block.add_new(0x03, "SQ", private_seq)
    return ds


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("undefined", [False, True])
def test_private_tags_and_sequences_before_the_uids(implicit: bool, undefined: bool) -> None:
    ds = with_private(image(**sequences(undefined=undefined)), undefined=undefined)
    h = fast(encode(ds, ts=IMPLICIT if implicit else EXPLICIT))
    assert (h.study_uid, h.series_uid, h.sop_uid) == (
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert (h.modality, h.study_date, h.reason) == ("CT", "20240131", "")


def test_items_of_an_explicit_sequence_written_implicit() -> None:
    """pydicom judges each item of an undefined-length sequence by its first element's bytes."""
    ds = image()
    data = encode(ds)
    item = DicomBytesIO()
    item.is_little_endian, item.is_implicit_VR = True, True
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.4"
    write_dataset(item, inner)
    body = item.getvalue()
    sq = (b"\x08\x00\x10\x11SQ\0\0\xff\xff\xff\xff"  # (0008,1110) SQ, undefined length
          + b"\xfe\xff\x00\xe0" + len(body).to_bytes(4, "little") + body
          + b"\xfe\xff\xdd\xe0\0\0\0\0")
    at = data.index(b"\x20\x00\x0d\x00UI")  # before StudyInstanceUID
    assert fast(data[:at] + sq + data[at:]).study_uid == ds.StudyInstanceUID


def test_meta_says_explicit_but_data_set_is_implicit() -> None:
    ds = image(**sequences(undefined=True))
    h = fast(encode(ds, ts=EXPLICIT, implicit=True))
    assert (h.study_uid, h.transfer_syntax, h.reason) == (ds.StudyInstanceUID, EXPLICIT, "")
    # The other way round too, and pydicom's own sample of the first kind.
    assert fast(encode(ds, ts=IMPLICIT, implicit=False)).study_uid == ds.StudyInstanceUID
    assert fast((SAMPLES / "SC_rgb_jpeg.dcm").read_bytes()).reason == ""


def test_encapsulated_pixel_data_and_compressed_syntax() -> None:
    ds = image()
    data = encode(ds, ts="1.2.840.10008.1.2.4.70")
    pixels = data.index(b"\xe0\x7f\x10\x00")
    fragments = (b"\xe0\x7f\x10\x00OB\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\0\0\0\0"
                 + b"\xfe\xff\x00\xe0\x04\0\0\0abcd" + b"\xfe\xff\xdd\xe0\0\0\0\0")
    h = fast(data[:pixels] + fragments)
    assert (h.transfer_syntax, h.reason) == ("1.2.840.10008.1.2.4.70", "")


def test_uids_beyond_the_prefix_need_more_bytes() -> None:
    ds = with_private(image(**sequences(undefined=True)), undefined=True, blob=3 * PREFIX)
    data = encode(ds)
    assert data.index(b"\x20\x00\x0d\x00UI") > PREFIX
    got, have = scan(data[:PREFIX], len(data)), PREFIX
    while isinstance(got, int):  # the least that could do: the next element's header
        assert have < got <= len(data)
        have = got
        got = scan(data[:have], len(data))
    assert isinstance(got, Header)
    with io.BytesIO(data) as f:
        assert parse(data[:PREFIX], len(data), f) == fast(data)
    with pytest.raises(ValueError, match="pass the file"):
        parse(data[:PREFIX], len(data))


def test_value_running_past_eof() -> None:
    ds = image()
    block = ds.private_block(0x0029, "PACSMIGRATE TEST", create=True)  # after the UIDs
    block.add_new(0x01, "OB", b"\x02" * 2000)
    data = encode(ds)
    cut = data[:data.index(b"\x02" * 2000) + 1000]
    h = fast(cut)
    assert h.reason == "truncated DICOM (data set shorter than declared)"
    assert h.study_uid == ds.StudyInstanceUID


def test_truncated_pixel_data() -> None:
    data = (SAMPLES / "CT_small.dcm").read_bytes()
    assert fast(data[:-1000]).reason == "truncated DICOM (pixel data shorter than declared)"
    implicit = encode(image(), ts=IMPLICIT)
    assert fast(implicit[:-1]).reason == "truncated DICOM (pixel data shorter than declared)"
    truncated = (SAMPLES / "MR_truncated.dcm").read_bytes()
    assert fast(truncated).reason == reference(truncated).reason != ""


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm"])
def test_cut_anywhere(name: str) -> None:
    """A file cut at every byte of its header (and every 97th of the rest): always exact."""
    data = (SAMPLES / name).read_bytes()
    header_end = min(len(data), 3000)
    cuts = [*range(header_end), *range(header_end, len(data), 97)]
    decided = 0
    for cut in cuts:
        if cut % 10 == 0:
            decided += check(data[:cut])  # the prefix path too (pydicom thrice: slow)
            continue
        got = scan(data[:cut], cut)
        assert got is None or got == reference(data[:cut]), cut
        decided += got is not None
    assert decided > 0.7 * len(cuts)
    rtplan_cut = (SAMPLES / "rtplan_truncated.dcm").read_bytes()
    assert "truncated" in parse(rtplan_cut, len(rtplan_cut)).reason


def test_padding_and_empty_fields_match_pydicom() -> None:
    ds = image(StudyDate="", Modality="CT ")
    data = encode(ds)
    # UIDs padded with a NUL (pydicom's writer) and a space (other writers) read the same.
    spaced = data.replace(b"1.2.826.0.1.3680043.2.1125.1\0", b"1.2.826.0.1.3680043.2.1125.1 ")
    for variant in (data, spaced):
        h = fast(variant)
        assert (h.study_uid, h.study_date, h.modality) == (ds.StudyInstanceUID, "", "CT")
    del ds.StudyInstanceUID
    assert fast(encode(ds)).reason == "DICOM without StudyInstanceUID"


def _iter_prefixes(data: bytes) -> Iterator[int]:
    yield from (0, 1, 131, 132, 143, 144, 200, 1000, PREFIX, len(data))


def test_short_prefixes_ask_for_more_and_parse_reads_it() -> None:
    data = (SAMPLES / "CT_small.dcm").read_bytes()
    want = reference(data)
    for cut in _iter_prefixes(data):
        got = scan(data[:cut], len(data))
        assert got == want or (isinstance(got, int) and cut < got <= len(data)), (cut, got)
        with io.BytesIO(data) as f:
            assert parse(data[:cut], len(data), f) == want


def test_empty_elements_pydicom_converts() -> None:
    """read_header converts empty implicit elements while it checks lengths: the scan copes
    with the plain ones and declines those whose conversion looks at other elements."""
    plain = image(OtherPatientIDsSequence=Sequence(), AccessionNumber="")
    assert fast(encode(plain, ts=IMPLICIT)).reason == ""
    ambiguous = image(SmallestImagePixelValue=None)  # 'US or SS': needs PixelRepresentation
    assert declined(encode(ambiguous, ts=IMPLICIT)).reason == ""
    private = image()
    block = private.private_block(0x0009, "PACSMIGRATE TEST", create=True)
    block.add_new(0x01, "LO", "")
    assert declined(encode(private, ts=IMPLICIT)).reason == ""
    assert fast(encode(private, ts=EXPLICIT)).reason == ""  # empty text stays b"", unconverted
    block.add_new(0x02, "OB", b"")
    assert declined(encode(private, ts=EXPLICIT)).reason == ""
