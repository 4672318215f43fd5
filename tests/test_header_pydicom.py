"""header and pydicom: files the scan declines (a cut or odd meta header, deflated, big
endian, no meta, not DICOM, odd values) are parsed by pydicom with the same answer; and
pydicom's side of it: its warnings stay silent and are hushed only inside our reads, its VR
tables and settings (non-default, from the environment, private transfer syntaxes) are
followed, and a process that only scans never imports it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from test_header import BIG_ENDIAN, DEFLATED, PREFIX, SAMPLES, declined, encode, image, reference

from pacsmigrate.header import Header, parse, scan


def test_truncated_in_the_meta_header() -> None:
    data = encode(image())
    for cut in (130, 140, 160, 200):
        assert declined(data[:cut]).reason == reference(data[:cut]).reason


def test_odd_meta_goes_to_pydicom() -> None:
    data = encode(image())
    group_length = data[132:144]
    assert group_length[:6] == b"\x02\x00\x00\x00UL"
    for odd in (b"\x02\x00\x00\x00SQ\x00\x00" + group_length[8:],  # pydicom converts it
                b"\x02\x00\x00\x00UL\x03\x00" + group_length[8:11],  # a bad length
                b"\x02\x00\x00\x00\x04\x00\x00\x00" + group_length[8:]):  # implicit meta
        variant = data[:132] + odd + data[144:]
        assert scan(variant, len(variant)) is None
        with io.BytesIO(variant) as f:
            assert parse(variant[:PREFIX], len(variant), f) == reference(variant)
    no_syntax = data.replace(b"\x02\x00\x10\x00UI", b"\x02\x00\x11\x00UI")
    assert declined(no_syntax).study_uid == image().StudyInstanceUID


def test_deflated_big_endian_and_no_meta_go_to_pydicom() -> None:
    ds = image()
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    plain = encode(ds)
    body = plain[plain.index(b"\x08\x00\x05\x00CS"):]
    meta = encode(ds, ts=DEFLATED)
    deflated = meta[:meta.index(b"\x08\x00\x05\x00CS")] + deflate.compress(body) + deflate.flush()
    assert declined(deflated).study_uid == ds.StudyInstanceUID
    assert declined(encode(ds, ts=BIG_ENDIAN)).study_uid == ds.StudyInstanceUID
    assert declined(body).study_uid == ds.StudyInstanceUID  # no preamble, no meta
    for name in ("image_dfl.dcm", "MR_small_bigendian.dcm", "ExplVR_LitEndNoMeta.dcm"):
        assert declined((SAMPLES / name).read_bytes()).reason == ""


def test_empty_and_non_dicom_files() -> None:
    assert scan(b"", 0) == Header(reason="empty file") == reference(b"")
    assert parse(b"", 0) == Header(reason="empty file")
    for junk in (b"hello\n", os.urandom(3000), b"\0" * 128 + b"DICM" + os.urandom(500),
                 (SAMPLES / "README.txt").read_bytes()):
        assert declined(junk).reason.startswith(("not DICOM", "unreadable", "truncated", "DICOM"))


def test_odd_values_are_left_to_pydicom() -> None:
    """Several values, a field encoded with another VR: pydicom's str() of them decides."""
    assert declined(encode(image(Modality=["CT", "MR"]))).modality == "['CT', 'MR']"
    odd_vr = encode(image(StudyDate="20240131"))
    odd_vr = odd_vr.replace(b"\x08\x00\x20\x00DA", b"\x08\x00\x20\x00LO")
    assert declined(odd_vr).study_date == "20240131"
    # A character set pydicom cannot look up fails the read, also when a good copy follows.
    data = encode(image())
    charset = data.index(b"\x08\x00\x05\x00CS")
    bad = b"\x08\x00\x05\x00CS\x04\x00a\x00bc"
    before, good, after = data[:charset], data[charset:charset + 18], data[charset + 18:]
    for variant in (before + bad + after, before + bad + good + after):
        assert declined(variant).reason == "unreadable DICOM header (ValueError)"


_PARSE_ALL = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pacsmigrate.header import parse
    n = 0
    for p in sorted(Path(sys.argv[1]).rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            parse(data, len(data))
            n += 1
    print(n)
""")


def test_pydicom_warnings_and_logs_stay_silent() -> None:
    """pydicom's warnings quote element values; importing header silences them."""
    proc = subprocess.run([sys.executable, "-W", "always", "-c", _PARSE_ALL, str(SAMPLES)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 50
    assert proc.stderr == ""


def test_scan_declines_under_non_default_pydicom_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = (SAMPLES / "CT_small.dcm").read_bytes()
    assert isinstance(scan(data, len(data)), Header)
    monkeypatch.setattr(pydicom.config, "datetime_conversion", True)
    assert scan(data, len(data)) is None
    assert parse(data, len(data)) == reference(data)


def test_pydicom_is_hushed_only_while_it_reads_for_us(tmp_path: Path) -> None:
    """Importing pacsmigrate changes nothing process-wide (a Dask worker runs other tasks);
    pydicom's warnings, which can quote patient data, are dropped only inside our reads."""
    ds = Dataset()
    ds.PatientName = "DOE^SECRET"
    ds.StudyInstanceUID = "1.2.3.SECRET"  # not a valid UID: pydicom warns, quoting it
    ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3.4", "1.2.3.5"
    ds.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "odd.dcm"
    ds.save_as(path, enforce_file_format=True)
    script = textwrap.dedent(f"""
        import logging, sys, warnings
        warnings.simplefilter("always")
        logging.basicConfig(level=logging.WARNING)
        import pydicom  # its own imports (requests, urllib3) add filters of theirs
        before = list(warnings.filters), logging.getLogger("pydicom").level
        from pacsmigrate.header import read_header
        assert (list(warnings.filters), logging.getLogger("pydicom").level) == before
        import threading
        entered, leave = threading.Event(), threading.Event()

        def other_task():  # another thread's catch_warnings spans our first read
            with warnings.catch_warnings():
                entered.set()
                leave.wait()
        t = threading.Thread(target=other_task)
        t.start()
        entered.wait()
        for _ in range(2):  # the second read comes after that block put back what it found
            with open({str(path)!r}, "rb") as f:
                h = read_header(f, {path.stat().st_size})
            assert h.study_uid == "1.2.3.SECRET", h
            leave.set()
            t.join()
        print("OURS-DONE", file=sys.stderr, flush=True)
        str(pydicom.dcmread({str(path)!r}).StudyInstanceUID)  # anyone else's read: warns
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ours, _, theirs = proc.stderr.partition("OURS-DONE")
    assert "SECRET" not in ours
    assert "SECRET" in theirs  # pydicom still warns outside our reads


def test_the_scans_vr_tables_are_pydicoms() -> None:
    """dicomref keeps pydicom's VR sets so the scan runs without importing pydicom."""
    from pydicom.dataelem import empty_value_for_VR
    from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32, VR

    from pacsmigrate import dicomref

    assert dicomref.VR_NAMES == {v.value for v in VR}
    assert dicomref.LONG_VR_NAMES == {str(v) for v in EXPLICIT_VR_LENGTH_32}
    assert dicomref.AMBIGUOUS_VR_NAMES == {str(v) for v in AMBIGUOUS_VR}
    assert dicomref.NONE_WHEN_EMPTY_NAMES == {
        v.value for v in VR if len(v.value) == 2 and empty_value_for_VR(v.value, raw=True) is None}


def _probe(code: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run code in a fresh interpreter; its output lines."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, check=True, env=env
                          ).stdout.splitlines()


_SCAN_THEN_PARSE = """
    import sys
    from pathlib import Path
    import pacsmigrate.cli
    from pacsmigrate.header import parse
    from pacsmigrate.headscan import scan_fields
    for path in sys.argv[1:]:
        data = Path(path).read_bytes()
        scanned = type(scan_fields(data, len(data))).__name__
        loaded = "pydicom" in sys.modules
        print(scanned, loaded, parse(data, len(data)).study_uid != "", "pydicom" in sys.modules)
    """


def test_headers_are_scanned_without_importing_pydicom() -> None:
    """A process that only scans never imports pydicom (about 0.2 CPU-s each). A file
    the scan declines, or an implicit VR file that needs pydicom's data dictionary, imports
    it then; the fields are pydicom's either way."""
    explicit, declined, implicit = (SAMPLES / n for n in
                                    ("CT_small.dcm", "ExplVR_BigEnd.dcm", "rtplan.dcm"))
    assert _probe(_SCAN_THEN_PARSE, str(explicit), str(declined)) == [
        "tuple False True False", "NoneType False True True"]
    assert _probe(_SCAN_THEN_PARSE, str(implicit)) == ["tuple True True True"]
    for path in (explicit, declined, implicit):
        data = path.read_bytes()
        assert parse(data, len(data)) == reference(data)


def test_the_scan_follows_pydicom_settings_from_the_environment() -> None:
    """PYDICOM_FUTURE may change pydicom's defaults: with it set, the scan loads pydicom to
    read its settings before it trusts itself."""
    env = {k: v for k, v in os.environ.items() if k != "PYDICOM_FUTURE"}
    ct = str(SAMPLES / "CT_small.dcm")
    assert _probe(_SCAN_THEN_PARSE, ct, env=env) == ["tuple False True False"]
    assert _probe(_SCAN_THEN_PARSE, ct, env={**env, "PYDICOM_FUTURE": "1"}) == [
        "tuple True True True"]


def test_a_private_transfer_syntax_goes_to_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    from pacsmigrate import dicomref

    assert not dicomref.private_syntax("1.2.3.4.5")
    monkeypatch.setattr(pydicom.uid, "PrivateTransferSyntaxes", [UID("1.2.3.4.5")])
    assert dicomref.private_syntax("1.2.3.4.5")
