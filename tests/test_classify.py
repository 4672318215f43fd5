"""The read stage: real DICOM headers (pydicom's samples) decide study group or unsorted.

This file: what each sample is (DICOM in any encoding, truncated, not DICOM, without a
study), the groups that follow study and directory, and reasons and stderr that never carry
patient data. How files are read (vanished or replaced files, short reads, files that grow,
files the index holds unchanged) is in test_classify_reads.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import blake3
import classify_support
import pydicom
import pytest
from classify_support import SECRET, cat, classify

from pacsmigrate.keys import new_secret, study_group, unsorted_group
from pacsmigrate.records import DICOM, UNSORTED, Problem

# The read-only samples: a fixture defined once in classify_support.
samples = classify_support.samples


def test_ct_small_is_dicom_with_header_fields(samples: Path) -> None:
    path = samples / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    rec = cat(path)
    st = os.stat(path)
    assert rec.status == DICOM
    assert rec.reason == ""
    assert rec.path == os.fsencode(path)
    assert (rec.size, rec.mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert rec.study_uid == ds.StudyInstanceUID
    assert rec.series_uid == ds.SeriesInstanceUID
    assert rec.sop_uid == ds.SOPInstanceUID
    assert rec.modality == ds.Modality == "CT"
    assert rec.study_date == ds.StudyDate
    assert rec.transfer_syntax == ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert rec.group == study_group(SECRET, ds.StudyInstanceUID)
    # Read whole once: the bytes and their hash go on to the bundle.
    assert rec.data == path.read_bytes()
    assert rec.blake3 == blake3.blake3(rec.data).hexdigest()
    # A larger file gives its header only; its hash is taken when it is packed.
    big = cat(path, hold_max=0)
    assert (big.data, big.blake3, big.study_uid) == (None, "", rec.study_uid)


@pytest.mark.parametrize("name, syntax", [
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2"),   # explicit VR big endian
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99"),         # deflated
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2"),      # implicit VR little endian
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),          # encapsulated pixel data
])
def test_other_encodings_are_dicom(samples: Path, name: str, syntax: str) -> None:
    path = samples / name
    ds = pydicom.dcmread(path)
    rec = cat(path)
    assert (rec.status, rec.reason) == (DICOM, "")
    assert rec.transfer_syntax == syntax
    assert (rec.study_uid, rec.sop_uid, rec.modality) == (
        ds.StudyInstanceUID, ds.SOPInstanceUID, ds.Modality)


def test_cd_layout_extensionless_files(samples: Path) -> None:
    cd = samples / "dicomdirtests" / "TINY_ALPHA"
    image = cd / "PT000000" / "ST000000" / "SE000000" / "IM000000"
    ds = pydicom.dcmread(image)
    rec = cat(image)
    assert (rec.status, rec.study_uid, rec.sop_uid) == (
        DICOM, ds.StudyInstanceUID, ds.SOPInstanceUID)
    # The DICOMDIR itself is DICOM but belongs to no study.
    dicomdir = cat(cd / "DICOMDIR")
    assert (dicomdir.status, dicomdir.reason) == (UNSORTED, "DICOM without StudyInstanceUID")


def test_files_without_preamble_are_read_with_force(samples: Path, tmp_path: Path) -> None:
    # pydicom's explicit-VR sample written with neither preamble nor file meta.
    path = samples / "ExplVR_LitEndNoMeta.dcm"
    assert path.read_bytes()[128:132] != b"DICM"
    ds = pydicom.dcmread(path, force=True)
    rec = cat(path)
    assert (rec.status, rec.study_uid, rec.sop_uid) == (
        DICOM, ds.StudyInstanceUID, ds.SOPInstanceUID)
    assert rec.transfer_syntax == ""  # nothing in the file says which

    # CT_small.dcm's data set alone (no preamble, no meta): an image, not only a plan.
    ct = (samples / "CT_small.dcm").read_bytes()
    ct_ds = pydicom.dcmread(samples / "CT_small.dcm")
    bare = tmp_path / "bare"
    bare.write_bytes(ct[ct.index(b"\x08\x00\x05\x00CS"):])
    rec = cat(bare)
    assert (rec.status, rec.reason) == (DICOM, "")
    assert rec.study_uid == ct_ds.StudyInstanceUID

    # pydicom's no_meta.dcm starts one byte early (a stray 0x20), so it is no valid data set;
    # it must still be catalogued (unsorted), not crash or vanish.
    rec = cat(samples / "no_meta.dcm")
    assert rec.status == UNSORTED and rec.reason
    assert rec.group == unsorted_group(SECRET, os.fsencode(samples))


def test_truncated_pixel_data_is_unsorted(samples: Path) -> None:
    path = samples / "MR_truncated.dcm"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    rec = cat(path)
    assert rec.status == UNSORTED
    assert "truncated" in rec.reason
    # The header was still read: the index can say which study the damaged file claims.
    assert rec.study_uid == ds.StudyInstanceUID
    assert rec.group == unsorted_group(SECRET, os.fsencode(samples))


def test_truncated_copy_of_good_file(samples: Path, tmp_path: Path) -> None:
    data = (samples / "CT_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-1000])
    rec = cat(cut)
    assert (rec.status, rec.reason) == (UNSORTED, "truncated DICOM (pixel data shorter than declared)")
    big = tmp_path / "be.dcm"
    big.write_bytes((samples / "MR_small_bigendian.dcm").read_bytes()[:-7])
    assert "truncated" in cat(big).reason


def test_truncated_header_is_not_good_dicom(samples: Path) -> None:
    """rtplan_truncated.dcm is rtplan.dcm cut mid data set (2129 of 2672 bytes).

    pydicom stops at the early EOF with only a warning (silenced by classify) and returns the
    elements it got, so the damaged file is catalogued as a good study member.
    """
    full = (samples / "rtplan.dcm").read_bytes()
    cut = (samples / "rtplan_truncated.dcm").read_bytes()
    assert full.startswith(cut) and len(cut) < len(full)
    rec = cat(samples / "rtplan_truncated.dcm")
    assert rec.status == UNSORTED, "a file cut inside its data set was classified as good DICOM"
    assert "truncated" in rec.reason


def test_implicit_vr_despite_explicit_syntax_not_misjudged(samples: Path) -> None:
    """SC_rgb_jpeg.dcm declares explicit VR but is encoded implicit VR; pydicom reads it whole.

    Its encapsulated PixelData has undefined length. The truncation check decodes the pixel
    element header by the declared syntax, reads the length from the wrong bytes (0xFFFF) and
    wrongly calls the complete file truncated.
    """
    path = samples / "SC_rgb_jpeg.dcm"
    ds = pydicom.dcmread(path)  # complete: every fragment of the pixel data is present
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert len(ds.PixelData) > 0
    rec = cat(path)
    assert (rec.status, rec.reason) == (DICOM, ""), rec.reason


def test_truncated_pixels_without_meta_detected(samples: Path, tmp_path: Path) -> None:
    """CT_small.dcm's explicit-VR data set without meta, its pixel data cut by 1000 bytes.

    With no transfer syntax the check assumes implicit VR, reads the length from the bytes
    b"OW\\0\\0" (22351) instead of the real 32768, and misses the truncation.
    """
    ct = (samples / "CT_small.dcm").read_bytes()
    bare = ct[ct.index(b"\x08\x00\x05\x00CS"):]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.write_bytes(bare)
    cut.write_bytes(bare[:-1000])
    assert cat(whole).reason == ""
    rec = cat(cut)
    assert rec.status == UNSORTED, "pixel data 1000 bytes short was not noticed"
    assert "truncated" in rec.reason


def test_readme_is_not_dicom(samples: Path) -> None:
    rec = cat(samples / "README.txt")
    assert rec.status == UNSORTED
    assert rec.reason.startswith("not DICOM")
    assert rec.study_uid == rec.sop_uid == rec.transfer_syntax == ""
    assert rec.group == unsorted_group(SECRET, os.fsencode(samples))


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    rec = cat(empty)
    assert (rec.status, rec.reason, rec.size) == (UNSORTED, "empty file", 0)


def test_dicom_without_study_uid(samples: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(samples / "CT_small.dcm")
    sop = ds.SOPInstanceUID
    del ds.StudyInstanceUID
    out = tmp_path / "nostudy.dcm"
    ds.save_as(out)
    rec = cat(out)
    assert (rec.status, rec.reason) == (UNSORTED, "DICOM without StudyInstanceUID")
    assert rec.sop_uid == sop  # what the header did say is kept for the index
    assert rec.modality == "CT"
    assert rec.group == unsorted_group(SECRET, os.fsencode(tmp_path))


def test_groups_follow_study_and_directory(samples: Path, tmp_path: Path) -> None:
    # Two copies of a study in different directories: one group, because one study.
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = tmp_path / "x" / "a.dcm"
    b = tmp_path / "y" / "b.dcm"
    shutil.copy(samples / "CT_small.dcm", a)
    shutil.copy(samples / "CT_small.dcm", b)
    assert cat(a).group == cat(b).group

    # Real multi-study CD layout: group equal exactly when pydicom's StudyInstanceUID is.
    paths = sorted(p for p in (samples / "dicomdirtests").rglob("*")
                   if p.is_file() and p.parent.name[:2] in ("CT", "CR", "MR"))
    assert len(paths) > 10
    studies = {p: pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in paths}
    assert len(set(studies.values())) >= 3
    groups = {p: cat(p).group for p in paths}
    for p in paths:
        for q in paths:
            assert (groups[p] == groups[q]) == (studies[p] == studies[q]), (p, q)

    # Unsorted files group per directory, and never with a study.
    (tmp_path / "x" / "note.txt").write_bytes(b"hello")
    (tmp_path / "x" / "empty").write_bytes(b"")
    (tmp_path / "y" / "note.txt").write_bytes(b"hello")
    gx1 = cat(tmp_path / "x" / "note.txt").group
    gx2 = cat(tmp_path / "x" / "empty").group
    gy = cat(tmp_path / "y" / "note.txt").group
    assert gx1 == gx2 != gy
    assert gx1 not in groups.values() and gx1 != cat(a).group

    # A different key secret gives unrelated groups (keys reveal nothing across runs).
    assert cat(a, secret=new_secret()).group != cat(a).group


def _patient_values(path: Path) -> set[str]:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        values = {str(ds.get("PatientName", "") or ""), str(ds.get("PatientID", "") or "")}
    except Exception:  # noqa: BLE001 - not every sample is readable
        return set()
    return {v.strip() for v in values if len(v.strip()) >= 3}


def test_reasons_never_carry_patient_data(samples: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = sorted(p for p in samples.rglob("*") if p.is_file())
    assert len(files) > 50
    secrets_seen: set[str] = set()
    texts: list[str] = []
    for p in files:
        values = _patient_values(p)
        secrets_seen |= values
        got = classify(p)
        text = got.reason + " " + (got.detail if isinstance(got, Problem) else "")
        texts.append(text)
        for v in values:
            assert v not in text, f"{p.name}: patient value in reason {text!r}"
    assert "CompressedSamples^CT1" in secrets_seen  # the check did look at real names
    assert any(texts)  # and at real reasons
    for v in secrets_seen:
        assert v not in caplog.text


_CLASSIFY_ALL = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from pacsmigrate.keys import new_secret
    from pacsmigrate.read import ReadOptions, read_files
    secret, n = new_secret(), 0
    for p in sorted(Path(sys.argv[1]).rglob("*")):
        if p.is_file():
            d, _, name = os.fsencode(p).rpartition(b"/")
            read_files(d, [name], ReadOptions(secret))
            n += 1
    print(n)
""")


def test_pydicom_warnings_and_logs_stay_silent(samples: Path) -> None:
    """pydicom's warnings quote element values; classify must not let them reach stderr.

    A fresh process, with every warning enabled (-W always) as an admin's environment might.
    """
    proc = subprocess.run([sys.executable, "-W", "always", "-c", _CLASSIFY_ALL, str(samples)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 50
    assert proc.stderr == ""
