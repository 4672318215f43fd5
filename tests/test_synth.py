"""Tests for the synthetic PACS tree generator."""

from __future__ import annotations

import gc
import hashlib
import io
import math
import re
import warnings
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from pacsmigrate.synth import LAYOUTS, SynthSummary, make_tree
from pacsmigrate.synth.datasets import _series_instances
from pacsmigrate.synth.encode import _SeriesEncoder
from pacsmigrate.synth.plan import _plan_studies

SMALL = 0.01
UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
HEX8 = r"[0-9A-F]{8}"
UUID_TAIL = "[0-9a-f]{4}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
MEDIA = r"PT\d{6}/ST\d{6}/SE\d{6}/IM\d{6}"
SUBLAYOUTS = [name for name in LAYOUTS if name != "mixed"]


def read_tree(root: Path) -> dict[str, Dataset]:
    """Every instance file under root, keyed by its root-relative posix path."""
    return {
        path.relative_to(root).as_posix(): pydicom.dcmread(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "DICOMDIR"
    }


def tree_digest(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def path_matches_layout(layout: str, relative: str, ds: Dataset) -> bool:
    sop = re.escape(str(ds.SOPInstanceUID))
    patterns = {
        "patient": (
            rf"{ds.PatientID}/{ds.StudyDate}/{re.escape(str(ds.StudyInstanceUID))}/"
            rf"{re.escape(str(ds.SeriesInstanceUID))}/{sop}\.dcm"
        ),
        "date": rf"\d{{4}}/\d{{2}}/\d{{2}}/{HEX8}/{HEX8}/{HEX8}",
        "cd": MEDIA,
        # Orthanc: ab/cd/abcd????-????-4???-????-???????????? (a version 4 UUID).
        "hashed": rf"([0-9a-f]{{2}})/([0-9a-f]{{2}})/\1\2{UUID_TAIL}",
        "storescp": rf"\d{{8}}/{ds.Modality}\.{sop}",
    }
    if layout == "mixed":
        sublayout, _, rest = relative.partition("/")
        return sublayout in SUBLAYOUTS and path_matches_layout(sublayout, rest, ds)
    return re.fullmatch(patterns[layout], relative) is not None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_writes_readable_dicom_matching_the_summary(
    tmp_path: Path, layout: str
) -> None:
    root = tmp_path / layout
    summary = make_tree(root, studies=5, seed=3, layout=layout, scale=SMALL)
    instances = read_tree(root)

    assert isinstance(summary, SynthSummary)
    assert summary.root == root and summary.studies == 5
    assert summary.files == len(instances) >= 5
    assert summary.bytes == sum((root / rel).stat().st_size for rel in instances)
    assert {str(ds.StudyInstanceUID) for ds in instances.values()} == set(summary.study_uids)
    assert {str(ds.PatientName) for ds in instances.values()} == set(summary.patient_names)
    assert {str(ds.PatientID) for ds in instances.values()} == set(summary.patient_ids)
    for relative, ds in instances.items():
        assert path_matches_layout(layout, relative, ds), relative


def test_files_carry_a_consistent_file_meta_and_identity(tmp_path: Path) -> None:
    summary = make_tree(tmp_path / "t", studies=40, seed=0, scale=0.001)
    instances = read_tree(summary.root)

    syntaxes = [ds.file_meta.TransferSyntaxUID for ds in instances.values()]
    assert set(syntaxes) == {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    assert syntaxes.count(ExplicitVRLittleEndian) > syntaxes.count(ImplicitVRLittleEndian)
    for relative, ds in instances.items():
        raw = (summary.root / relative).read_bytes()
        assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert len(uid) <= 64 and UID_RE.match(uid), uid
        assert re.fullmatch(r"SYNTH\^PATIENT\d{4}", str(ds.PatientName))
        assert re.fullmatch(r"SYNTHPID\d{4}", ds.PatientID)
        assert re.fullmatch(r"\d{8}", ds.StudyDate)

    # Per-instance fields must really change from file to file within a series.
    numbers: dict[str, list[int]] = defaultdict(list)
    for ds in instances.values():
        numbers[str(ds.SeriesInstanceUID)].append(int(ds.InstanceNumber))
    assert all(sorted(found) == list(range(1, len(found) + 1)) for found in numbers.values())
    assert len({ds.SOPInstanceUID for ds in instances.values()}) == len(instances)
    assert len({bytes(ds.PixelData) for ds in instances.values() if "PixelData" in ds}) == sum(
        "PixelData" in ds for ds in instances.values()
    )


def test_modality_mix_with_consistent_pixel_data(tmp_path: Path) -> None:
    summary = make_tree(tmp_path / "t", studies=40, seed=0, scale=0.001)
    instances = read_tree(summary.root).values()

    modalities_by_study: dict[str, set[str]] = defaultdict(set)
    for ds in instances:
        modalities_by_study[str(ds.StudyInstanceUID)].add(str(ds.Modality))
        if ds.Modality in ("SR", "KO"):
            assert "PixelData" not in ds and "ContentSequence" in ds
            continue
        expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
        assert len(ds.PixelData) == expected >= 64
        assert ds["PixelData"].VR == "OW"
    seen = set().union(*modalities_by_study.values())
    assert {"CT", "MR", "US", "SR", "KO"} <= seen and len(seen) >= 6
    mixed = [mods for mods in modalities_by_study.values() if len(mods) > 1]
    assert any(mods & {"SR", "KO"} and mods - {"SR", "KO"} for mods in mixed)


def test_series_counts_stay_within_one_to_four(tmp_path: Path) -> None:
    summary = make_tree(tmp_path / "t", studies=30, seed=5, scale=0.001)
    series_by_study: dict[str, set[str]] = defaultdict(set)
    for ds in read_tree(summary.root).values():
        series_by_study[str(ds.StudyInstanceUID)].add(str(ds.SeriesInstanceUID))
    counts = {len(series) for series in series_by_study.values()}
    assert counts <= {1, 2, 3, 4} and len(counts) > 1


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    first = make_tree(tmp_path / "a", studies=5, seed=11, layout="mixed", scale=SMALL)
    second = make_tree(tmp_path / "b", studies=5, seed=11, layout="mixed", scale=SMALL)
    other = make_tree(tmp_path / "c", studies=5, seed=12, layout="mixed", scale=SMALL)

    digest = tree_digest(first.root)
    assert "cd/DICOMDIR" in digest
    assert digest == tree_digest(second.root)
    assert (first.files, first.bytes, first.study_uids) == (
        second.files,
        second.bytes,
        second.study_uids,
    )
    assert set(first.study_uids).isdisjoint(other.study_uids)
    assert set(digest.values()).isdisjoint(tree_digest(other.root).values())


def test_layout_does_not_change_the_studies(tmp_path: Path) -> None:
    by_patient = make_tree(tmp_path / "p", studies=4, seed=2, layout="patient", scale=SMALL)
    by_hash = make_tree(tmp_path / "h", studies=4, seed=2, layout="hashed", scale=SMALL)

    def sops(root: Path) -> set[str]:
        return {str(ds.SOPInstanceUID) for ds in read_tree(root).values()}

    assert by_patient.study_uids == by_hash.study_uids
    assert by_patient.bytes == by_hash.bytes
    assert sops(by_patient.root) == sops(by_hash.root)


def test_date_layout_scatters_a_study_over_several_days(tmp_path: Path) -> None:
    summary = make_tree(tmp_path / "t", studies=6, seed=0, layout="date", scale=SMALL)
    days: dict[str, set[str]] = defaultdict(set)
    study_dates: dict[str, str] = {}
    for relative, ds in read_tree(summary.root).items():
        uid = str(ds.StudyInstanceUID)
        days[uid].add("".join(relative.split("/")[:3]))
        study_dates[uid] = ds.StudyDate

    assert max(len(found) for found in days.values()) >= 2
    # The first series arrives on the study day; later ones only after it.
    assert all(min(found) == study_dates[uid] for uid, found in days.items())


def test_cd_layout_has_a_dicomdir_indexing_every_file(tmp_path: Path) -> None:
    summary = make_tree(tmp_path / "cd", studies=6, seed=4, layout="cd", scale=SMALL)
    dicomdir = pydicom.dcmread(summary.root / "DICOMDIR")
    instances = read_tree(summary.root)

    assert dicomdir.file_meta.MediaStorageSOPClassUID == MediaStorageDirectoryStorage
    assert dicomdir.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    records = dicomdir.DirectoryRecordSequence
    leaves = [r for r in records if r.DirectoryRecordType not in ("PATIENT", "STUDY", "SERIES")]
    assert len(leaves) == summary.files
    by_file = {"/".join(r.ReferencedFileID): r for r in leaves}
    assert set(by_file) == set(instances)
    for relative, record in by_file.items():
        assert record.ReferencedSOPInstanceUIDInFile == instances[relative].SOPInstanceUID
    patients = [r for r in records if r.DirectoryRecordType == "PATIENT"]
    assert {r.PatientID for r in patients} == set(summary.patient_ids)

    # FileSet walks the record offsets, so this checks the hierarchy links too.
    with warnings.catch_warnings():
        # FileSet never closes its staging TemporaryDirectory; collect it here, quietly.
        warnings.simplefilter("ignore", ResourceWarning)
        fileset = FileSet(dicomdir)
        assert len(fileset) == summary.files
        assert all(Path(instance.path).is_file() for instance in fileset)
        for study_uid in summary.study_uids:
            assert fileset.find(StudyInstanceUID=study_uid)
        del fileset
        gc.collect()


def test_files_are_canonical_pydicom_encodings(tmp_path: Path) -> None:
    summary = make_tree(tmp_path / "t", studies=5, seed=8, layout="mixed", scale=SMALL)
    for relative, ds in read_tree(summary.root).items():
        rewritten = io.BytesIO()
        ds.save_as(rewritten, enforce_file_format=True)
        assert rewritten.getvalue() == (summary.root / relative).read_bytes(), relative


def test_fast_encoder_matches_dcmwrite() -> None:
    plans = _plan_studies(studies=12, seed=9, scale=SMALL)
    checked = set()
    for study in plans:
        for series in study.series:
            encoder = None
            for ds in _series_instances(study=study, series=series):
                encoder = encoder or _SeriesEncoder(ds)
                expected = io.BytesIO()
                dcmwrite(expected, ds, enforce_file_format=True)
                assert b"".join(encoder.encode()) == expected.getvalue()
                checked.add((str(ds.Modality), ds.file_meta.TransferSyntaxUID))
    assert len({modality for modality, _ in checked}) >= 4
    assert {syntax for _, syntax in checked} == {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def test_scale_shrinks_counts_and_sizes(tmp_path: Path) -> None:
    larger = make_tree(tmp_path / "l", studies=4, seed=6, scale=0.05)
    smaller = make_tree(tmp_path / "s", studies=4, seed=6, scale=0.01)
    tiny = make_tree(tmp_path / "t", studies=4, seed=6, scale=1e-9)

    assert larger.study_uids == smaller.study_uids == tiny.study_uids
    assert larger.bytes > 3 * smaller.bytes > 3 * tiny.bytes
    assert larger.files > smaller.files >= tiny.files >= tiny.studies
    for ds in read_tree(tiny.root).values():
        if "PixelData" in ds:
            assert 64 <= len(ds.PixelData) < 200


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"studies": 1, "layout": "pacs"}, "unknown layout"),
        ({"studies": 0}, "studies"),
        ({"studies": -3}, "studies"),
        ({"studies": 2.5}, "studies"),
        ({"studies": 1, "scale": 0.0}, "scale"),
        ({"studies": 1, "scale": -0.5}, "scale"),
        ({"studies": 1, "scale": 1.5}, "scale"),
        ({"studies": 1, "scale": math.nan}, "scale"),
    ],
)
def test_bad_arguments_raise_before_touching_disk(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    root = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        make_tree(root, **kwargs)  # type: ignore[arg-type]
    assert not root.exists()


def test_refuses_a_non_empty_or_non_directory_root(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="not empty"):
        make_tree(tmp_path, studies=1, scale=SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]

    with pytest.raises(ValueError, match="not a directory"):
        make_tree(tmp_path / "keep.txt", studies=1, scale=SMALL)


def test_creates_missing_root_and_accepts_an_empty_one(tmp_path: Path) -> None:
    nested = make_tree(tmp_path / "x" / "y", studies=1, scale=SMALL)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    reused = make_tree(empty_dir, studies=1, scale=SMALL)
    assert nested.files >= 1 and reused.files >= 1


# Full-size sizes per modality (MB for images, KB for documents), checked on the plan
# because writing scale=1 trees would take gigabytes.
FULL_SIZE_MB = {
    "CT": (0.5, 0.53),
    "MR": (0.13, 0.53),
    "CR": (7.5, 18.1),
    "DX": (7.5, 18.1),
    "MG": (26.0, 28.0),
    "US": (0.1, 2.4),
}
FULL_IMAGES = {
    "CT": (100, 300),
    "MR": (100, 400),
    "CR": (1, 4),
    "DX": (1, 4),
    "MG": (4, 4),
    "US": (5, 30),
    "SR": (1, 2),
    "KO": (1, 2),
}


def test_full_scale_plan_is_realistic() -> None:
    plans = _plan_studies(studies=200, seed=1, scale=1.0)
    for study in plans:
        main = study.series[0].modality.code
        images = sum(s.count for s in study.series if s.modality.code == main)
        low, high = FULL_IMAGES[main]
        assert low <= images <= high, (main, images)
        assert 1 <= len(study.series) <= 4
        for series in study.series:
            if series.geometry is not None:
                low_mb, high_mb = FULL_SIZE_MB[series.modality.code]
                assert low_mb <= series.geometry.nbytes / 1e6 <= high_mb, series.modality.code
                continue
            ds = next(_series_instances(study=study, series=series))
            size = sum(map(len, _SeriesEncoder(ds).encode()))
            assert 2_000 <= size <= 55_000, (series.modality.code, size)
