"""Deterministic synthetic PACS trees of valid DICOM files for demos, tests and benchmarks."""

from __future__ import annotations

import hashlib
import math
import os
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import NamedTuple, Protocol

from pydicom import uid as dcmuid
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import (
    correct_ambiguous_vr,
    dcmwrite,
    write_data_element,
    write_dataset,
    write_file_meta_info,
)
from pydicom.uid import UID

__all__ = ["LAYOUTS", "SynthSummary", "make_tree"]

LAYOUTS = ("patient", "date", "cd", "hashed", "storescp", "mixed")

# Namespaces every derived seed and UID so other generators never collide with ours.
_NS = "pacsmigrate.synth.v1"
_EPOCH = date(2008, 1, 1)
_DATE_SPAN_DAYS = 15 * 365
_IMPLICIT_VR_SHARE = 0.1
_ADDON_SHARE = 0.3
_PATIENT_REUSE_SHARE = 0.3
_ADDON_SERIES_BASE = 900
_MIN_PIXEL_BYTES = 64
_MIN_TEXT_BYTES = 64
# Encoded size of an SR/KO file apart from its report text.
_DOC_OVERHEAD = 1_300
_KEY_IMAGES = 8
_DICOMDIR = "DICOMDIR"
# Explicit VR SQ header: tag (4) + VR (2) + reserved (2) + length (4).
_SQ_HEADER = 12
# Sequence item header: item tag (4) + length (4).
_ITEM_HEADER = 8
_PIXEL_DATA_TAG = 0x7FE00010
_RECORD_SEQUENCE_TAG = 0x00041220
_PREAMBLE = b"\x00" * 128 + b"DICM"
# Everything _series_instances changes per file (SOPInstanceUID, InstanceNumber,
# ImagePositionPatient, SliceLocation, PixelData); anything else is encoded once per series.
_PER_INSTANCE = frozenset({0x00080018, 0x00200013, 0x00200032, 0x00201041, _PIXEL_DATA_TAG})
# MediaStorageSOPInstanceUID.
_PER_INSTANCE_META = frozenset({0x00020003})
# Explicit VR little endian (0002,0000) UL element: group, element, VR, length, value.
_GROUP_LENGTH = struct.Struct("<HH2sHI")


def _uid_from_int(value: int) -> UID:
    # 2.25 UIDs are defined as the integer form of a UUID, so stamp v4 bits on.
    return UID(f"2.25.{uuid.UUID(int=value, version=4).int}")


def _derived_uid(text: str) -> UID:
    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
    return _uid_from_int(int.from_bytes(digest, "big"))


# Our own identity keeps output bytes stable across pydicom upgrades.
_IMPLEMENTATION_UID = _derived_uid(f"{_NS}:implementation")
_IMPLEMENTATION_VERSION = "PACSMIG_SYNTH_1"


@dataclass(frozen=True)
class SynthSummary:
    """What make_tree wrote; files and bytes count SOP instance files, not DICOMDIRs."""

    root: Path
    studies: int
    files: int
    bytes: int
    patient_names: tuple[str, ...]
    patient_ids: tuple[str, ...]
    study_uids: tuple[str, ...]


@dataclass(frozen=True)
class _Geometry:
    rows: int
    columns: int
    samples: int = 1
    bits: int = 16

    @property
    def nbytes(self) -> int:
        return self.rows * self.columns * self.samples * (self.bits // 8)


@dataclass(frozen=True)
class _Modality:
    code: str
    sop_class: UID
    weight: float
    images: tuple[int, int]
    body_parts: tuple[str, ...]
    shapes: tuple[_Geometry, ...] = ()
    doc_bytes: tuple[int, int] = (0, 0)

    @property
    def is_document(self) -> bool:
        return not self.shapes


# File sizes of reports and key object notes; the text is sized to land in this range.
_DOC_BYTES = (2_000, 50_000)
_MODALITIES = (
    _Modality(
        "CT", dcmuid.CTImageStorage, weight=0.24, images=(100, 300),
        body_parts=("HEAD", "CHEST", "ABDOMEN"), shapes=(_Geometry(512, 512),),
    ),
    _Modality(
        "MR", dcmuid.MRImageStorage, weight=0.16, images=(100, 400),
        body_parts=("BRAIN", "KNEE", "LSPINE"),
        shapes=tuple(_Geometry(side, side) for side in (256, 320, 384, 448, 512)),
    ),
    _Modality(
        "CR", dcmuid.ComputedRadiographyImageStorage, weight=0.14, images=(1, 4),
        body_parts=("CHEST", "HAND"),
        shapes=(_Geometry(2140, 1760), _Geometry(2370, 1770), _Geometry(2500, 2048)),
    ),
    _Modality(
        "DX", dcmuid.DigitalXRayImageStorageForPresentation, weight=0.14, images=(1, 4),
        body_parts=("CHEST", "PELVIS"),
        shapes=(_Geometry(2500, 2048), _Geometry(3000, 2500), _Geometry(3000, 3000)),
    ),
    _Modality(
        "MG", dcmuid.DigitalMammographyXRayImageStorageForPresentation, weight=0.06,
        images=(4, 4), body_parts=("BREAST",), shapes=(_Geometry(4096, 3328),),
    ),
    _Modality(
        "US", dcmuid.UltrasoundImageStorage, weight=0.16, images=(5, 30),
        body_parts=("ABDOMEN", "THYROID"),
        shapes=(
            _Geometry(300, 360, samples=1, bits=8),
            _Geometry(480, 640, samples=3, bits=8),
            _Geometry(600, 800, samples=3, bits=8),
            _Geometry(768, 1024, samples=3, bits=8),
        ),
    ),
    _Modality(
        "SR", dcmuid.BasicTextSRStorage, weight=0.05, images=(1, 2), body_parts=("CHEST",),
        doc_bytes=_DOC_BYTES,
    ),
    _Modality(
        "KO", dcmuid.KeyObjectSelectionDocumentStorage, weight=0.05, images=(1, 2),
        body_parts=("CHEST",), doc_bytes=_DOC_BYTES,
    ),
)
_DOCUMENTS = tuple(m for m in _MODALITIES if m.is_document)
_SLICED = frozenset({"CT", "MR"})

_IMAGE_EXTRAS: dict[str, dict[str, object]] = {
    "CT": {"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "KVP": "120", "SliceThickness": "1.25",
           "PixelSpacing": ["0.7", "0.7"], "RescaleIntercept": "-1024", "RescaleSlope": "1",
           "ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"]},
    "MR": {"ImageType": ["ORIGINAL", "PRIMARY", "M"], "MagneticFieldStrength": "1.5",
           "ScanningSequence": "SE", "SequenceVariant": "NONE", "MRAcquisitionType": "2D",
           "SliceThickness": "4", "PixelSpacing": ["0.9", "0.9"],
           "ImageOrientationPatient": ["1", "0", "0", "0", "1", "0"]},
    "CR": {"ImageType": ["ORIGINAL", "PRIMARY"], "ViewPosition": "PA"},
    "DX": {"ImageType": ["ORIGINAL", "PRIMARY"], "ViewPosition": "PA",
           "PresentationIntentType": "FOR PRESENTATION", "ImagerPixelSpacing": ["0.14", "0.14"]},
    "MG": {"ImageType": ["ORIGINAL", "PRIMARY"], "ViewPosition": "CC", "ImageLaterality": "L",
           "PresentationIntentType": "FOR PRESENTATION", "ImagerPixelSpacing": ["0.07", "0.07"]},
    "US": {"ImageType": ["ORIGINAL", "PRIMARY"]},
}

_WORDS = (
    "no", "acute", "abnormality", "is", "seen", "stable", "appearance", "of", "the", "lesion",
    "measuring", "mm", "unremarkable", "mild", "degenerative", "change", "without", "contrast",
    "enhancement", "recommend", "follow-up", "in", "months", "normal", "size", "and", "shape",
    "synthetic", "report", "comparison", "with", "prior", "study", "bilateral", "effusion",
)


@dataclass(frozen=True)
class _Patient:
    name: str
    pid: str
    birth_date: str
    sex: str


@dataclass(frozen=True)
class _Series:
    uid: UID
    number: int
    modality: _Modality
    geometry: _Geometry | None
    count: int
    received: date
    implicit_vr: bool
    text_bytes: int


@dataclass(frozen=True)
class _Study:
    index: int
    uid: UID
    patient: _Patient
    day: date
    time: str
    accession: str
    body_part: str
    series: tuple[_Series, ...]

    @property
    def description(self) -> str:
        return f"{self.series[0].modality.code} {self.body_part}"


def make_tree(
    root: Path, *, studies: int, seed: int = 0, layout: str = "patient", scale: float = 1.0
) -> SynthSummary:
    """Write a deterministic synthetic PACS tree of `studies` studies under `root`.

    The same (studies, seed, layout, scale) always yields the same paths and bytes.
    `scale` (0 < scale <= 1) shrinks both image counts and pixel sizes. Layouts:
    patient `PatientID/StudyDate/StudyUID/SeriesUID/SOPUID.dcm`; date (dcm4chee)
    `yyyy/MM/dd/hash/hash/hash` by day received; cd `DICOMDIR` + `PT../ST../SE../IM..`;
    hashed (Orthanc) `ab/cd/<uuid>`; storescp `yyyymmdd/<MODALITY>.<SOPUID>`; mixed
    deals studies round-robin to the others, each under a folder named after it.
    Raises ValueError for bad arguments or a root that exists and is not empty.
    """
    _check_args(studies=studies, layout=layout, scale=scale)
    root = Path(root)
    _prepare_root(root)
    plans = _plan_studies(studies=studies, seed=seed, scale=scale)
    sinks = _Sinks(root=root, layout=layout, seed=seed)
    for study in plans:
        _write_study(study, sink=sinks.for_study(study.index))
    sinks.finish()
    files, size = _tally(root)
    return SynthSummary(
        root=root,
        studies=len(plans),
        files=files,
        bytes=size,
        patient_names=_unique(s.patient.name for s in plans),
        patient_ids=_unique(s.patient.pid for s in plans),
        study_uids=tuple(s.uid for s in plans),
    )


def _check_args(*, studies: int, layout: str, scale: float) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if isinstance(studies, bool) or not isinstance(studies, int) or studies < 1:
        raise ValueError(f"studies must be an integer >= 1, got {studies!r}")
    # Written this way so NaN is rejected too.
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"scale must satisfy 0 < scale <= 1, got {scale!r}")


def _prepare_root(root: Path) -> None:
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"root {root} exists and is not a directory")
        if any(root.iterdir()):
            raise ValueError(f"root {root} is not empty; refusing to mix synthetic data into it")
    root.mkdir(parents=True, exist_ok=True)


def _unique(values: Iterator[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


# --- planning: every random draw happens here, independent of layout -------------------


def _plan_studies(*, studies: int, seed: int, scale: float) -> list[_Study]:
    patients = _assign_patients(studies=studies, seed=seed)
    return [
        _plan_study(index=index, patient=patient, seed=seed, scale=scale)
        for index, patient in enumerate(patients)
    ]


def _assign_patients(*, studies: int, seed: int) -> list[_Patient]:
    rng = random.Random(f"{_NS}:{seed}:patients")
    known: list[_Patient] = []
    chosen: list[_Patient] = []
    for _ in range(studies):
        # Real archives hold several studies per patient; migrations must group them.
        if known and rng.random() < _PATIENT_REUSE_SHARE:
            chosen.append(rng.choice(known))
            continue
        patient = _make_patient(number=len(known) + 1, seed=seed)
        known.append(patient)
        chosen.append(patient)
    return chosen


def _make_patient(*, number: int, seed: int) -> _Patient:
    rng = random.Random(f"{_NS}:{seed}:patient:{number}")
    born = date(1930, 1, 1) + timedelta(days=rng.randrange(70 * 365))
    return _Patient(
        name=f"SYNTH^PATIENT{number:04d}",
        pid=f"SYNTHPID{number:04d}",
        birth_date=f"{born:%Y%m%d}",
        sex=rng.choice(("F", "M")),
    )


def _plan_study(*, index: int, patient: _Patient, seed: int, scale: float) -> _Study:
    # One stream per study keeps a study identical whatever the number of studies.
    rng = random.Random(f"{_NS}:{seed}:study:{index}")
    main = rng.choices(_MODALITIES, weights=[m.weight for m in _MODALITIES])[0]
    addon = rng.choice(_DOCUMENTS) if not main.is_document and rng.random() < _ADDON_SHARE else None
    day = _EPOCH + timedelta(days=rng.randrange(_DATE_SPAN_DAYS))
    study_uid = _uid_from_int(rng.getrandbits(128))
    main_series = _plan_main_series(rng=rng, study_uid=study_uid, modality=main, day=day,
                                    addon=addon is not None, scale=scale)
    series = list(main_series)
    if addon is not None:
        received = main_series[-1].received + timedelta(days=rng.randint(1, 3))
        series.append(_plan_series(rng=rng, study_uid=study_uid, number=_ADDON_SERIES_BASE,
                                   modality=addon, received=received,
                                   count=_scaled_count(rng.randint(*addon.images), scale=scale),
                                   scale=scale))
    return _Study(
        index=index,
        uid=study_uid,
        patient=patient,
        day=day,
        time=f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
        accession=f"SYNACC{rng.randrange(10**8):08d}",
        body_part=rng.choice(main.body_parts),
        series=tuple(series),
    )


def _plan_main_series(
    *, rng: random.Random, study_uid: str, modality: _Modality, day: date, addon: bool, scale: float
) -> list[_Series]:
    full = rng.randint(*modality.images)
    planned = rng.randint(1, min(4 - int(addon), full))
    counts = _split(_scaled_count(full, scale=scale), parts=planned)
    series: list[_Series] = []
    received = day
    for number, count in enumerate(counts, start=1):
        if number > 1:
            # Series trickle in over days, which scatters date-sorted archives.
            received += timedelta(days=rng.randint(1, 3))
        planned_series = _plan_series(rng=rng, study_uid=study_uid, number=number,
                                      modality=modality, received=received, count=count,
                                      scale=scale)
        # Draws happen even for empty series so scale never shifts the random stream.
        if count:
            series.append(planned_series)
    return series


def _plan_series(
    *, rng: random.Random, study_uid: str, number: int, modality: _Modality, received: date,
    count: int, scale: float
) -> _Series:
    implicit_vr = rng.random() < _IMPLICIT_VR_SHARE
    geometry = None
    text_bytes = 0
    if modality.is_document:
        target = int(rng.randint(*modality.doc_bytes) * scale)
        text_bytes = max(_MIN_TEXT_BYTES, target - _DOC_OVERHEAD)
    else:
        geometry = _scaled_geometry(rng.choice(modality.shapes), scale=scale)
    return _Series(
        uid=_derived_uid(f"{study_uid}:series:{number}"),
        number=number,
        modality=modality,
        geometry=geometry,
        count=count,
        received=received,
        implicit_vr=implicit_vr,
        text_bytes=text_bytes,
    )


def _scaled_count(count: int, *, scale: float) -> int:
    return max(1, round(count * scale))


def _split(total: int, *, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _scaled_geometry(full: _Geometry, *, scale: float) -> _Geometry:
    if scale >= 1.0:
        return full
    target = max(_MIN_PIXEL_BYTES, full.nbytes * scale)
    factor = math.sqrt(target / full.nbytes)
    rows = max(1, round(full.rows * factor))
    # Even columns keep 8-bit frames at even length, so OW needs no padding byte.
    columns = max(2, round(full.columns * factor))
    columns += columns % 2
    geometry = _Geometry(rows, columns, full.samples, full.bits)
    while geometry.nbytes < _MIN_PIXEL_BYTES:
        geometry = _Geometry(geometry.rows + 1, columns, full.samples, full.bits)
    return geometry


def _instance_uid(series_uid: str, number: int) -> UID:
    return _derived_uid(f"{series_uid}:instance:{number}")


# --- datasets -----------------------------------------------------------------------------


def _write_study(study: _Study, *, sink: _Sink) -> None:
    for series in study.series:
        encoder: _SeriesEncoder | None = None
        for ds in _series_instances(study=study, series=series):
            encoder = encoder or _SeriesEncoder(ds)
            sink.write(ds, study=study, series=series, parts=encoder.encode())


def _series_instances(*, study: _Study, series: _Series) -> Iterator[Dataset]:
    # One dataset per series, mutated per instance: building datasets is the slow part.
    ds = _series_dataset(study=study, series=series)
    pixels = ds.get(_PIXEL_DATA_TAG)
    nbytes = series.geometry.nbytes if series.geometry is not None else 0
    rng = random.Random(f"{series.uid}:pixels")
    for number in range(1, series.count + 1):
        sop_uid = _instance_uid(series.uid, number)
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = number
        if pixels is not None:
            # Random bytes defeat compression and dedup, like real noisy pixel data.
            pixels.value = rng.randbytes(nbytes)
        if series.modality.code in _SLICED:
            _set_slice(ds, number=number)
        yield ds


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


def _series_dataset(*, study: _Study, series: _Series) -> Dataset:
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class=series.modality.sop_class, implicit_vr=series.implicit_vr)
    _add_patient_study(ds, study=study)
    _add_series(ds, study=study, series=series)
    if series.geometry is not None:
        _add_image(ds, geometry=series.geometry, modality=series.modality)
    elif series.modality.code == "SR":
        _add_report(ds, study=study, series=series)
    else:
        _add_key_objects(ds, study=study, series=series)
    return ds


def _file_meta(*, sop_class: UID, implicit_vr: bool) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = (
        dcmuid.ImplicitVRLittleEndian if implicit_vr else dcmuid.ExplicitVRLittleEndian
    )
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
    return meta


def _add_patient_study(ds: Dataset, *, study: _Study) -> None:
    patient = study.patient
    ds.PatientName = patient.name
    ds.PatientID = patient.pid
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study.uid
    ds.StudyDate = f"{study.day:%Y%m%d}"
    ds.StudyTime = study.time
    ds.StudyID = f"{study.index + 1:06d}"
    ds.AccessionNumber = study.accession
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = "SYNTH^REFERRER"
    ds.InstitutionName = "SYNTHETIC GENERAL HOSPITAL"
    ds.Manufacturer = "PACSMIGRATE SYNTH"


def _add_series(ds: Dataset, *, study: _Study, series: _Series) -> None:
    ds.SOPClassUID = series.modality.sop_class
    ds.Modality = series.modality.code
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDate = f"{study.day:%Y%m%d}"
    ds.SeriesDescription = f"SYNTH {series.modality.code} SERIES {series.number}"
    ds.BodyPartExamined = study.body_part
    ds.InstanceNumber = 1


def _add_image(ds: Dataset, *, geometry: _Geometry, modality: _Modality) -> None:
    for keyword, value in _IMAGE_EXTRAS[modality.code].items():
        setattr(ds, keyword, value)
    ds.SamplesPerPixel = geometry.samples
    ds.PhotometricInterpretation = "RGB" if geometry.samples == 3 else "MONOCHROME2"
    if geometry.samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows = geometry.rows
    ds.Columns = geometry.columns
    ds.BitsAllocated = geometry.bits
    # Random data uses every bit, so declaring fewer stored bits would be a lie.
    ds.BitsStored = geometry.bits
    ds.HighBit = geometry.bits - 1
    ds.PixelRepresentation = 1 if modality.code == "CT" else 0
    if modality.code in _SLICED:
        ds.FrameOfReferenceUID = _derived_uid(f"{ds.SeriesInstanceUID}:frame")
    ds.add(DataElement(_PIXEL_DATA_TAG, "OW", b""))


def _set_slice(ds: Dataset, *, number: int) -> None:
    location = f"{-number * float(ds.SliceThickness):.2f}"
    ds.ImagePositionPatient = ["-180", "-180", location]
    ds.SliceLocation = location


def _add_document(ds: Dataset, *, study: _Study, series: _Series, title: Dataset) -> None:
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [title]
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentDate = f"{series.received:%Y%m%d}"
    ds.ContentTime = study.time
    ds.ReferencedPerformedProcedureStepSequence = []


def _add_report(ds: Dataset, *, study: _Study, series: _Series) -> None:
    _add_document(ds, study=study, series=series, title=_code("11528-7", "LN", "Radiology Report"))
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PerformedProcedureCodeSequence = []
    text = _report_text(rng=random.Random(f"{series.uid}:text"), size=series.text_bytes)
    ds.ContentSequence = [
        _text_item(concept=_code("121071", "DCM", "Finding"), text=text),
        _text_item(concept=_code("121073", "DCM", "Impression"), text="Synthetic study."),
    ]


def _add_key_objects(ds: Dataset, *, study: _Study, series: _Series) -> None:
    _add_document(ds, study=study, series=series, title=_code("113000", "DCM", "Of Interest"))
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = [template]
    keys = _key_images(study)
    ds.CurrentRequestedProcedureEvidenceSequence = [_evidence(study_uid=study.uid, keys=keys)]
    text = _report_text(rng=random.Random(f"{series.uid}:text"), size=series.text_bytes)
    description = _text_item(concept=_code("113012", "DCM", "Key Object Description"), text=text)
    images = [_image_item(sop_class=key.sop_class, sop_uid=key.sop_uid) for key in keys]
    ds.ContentSequence = [description, *images]


class _KeyImage(NamedTuple):
    series_uid: UID
    sop_class: UID
    sop_uid: UID


def _key_images(study: _Study) -> list[_KeyImage]:
    keys = [
        _KeyImage(series.uid, series.modality.sop_class, _instance_uid(series.uid, number))
        for series in study.series
        if series.geometry is not None
        for number in range(1, series.count + 1)
    ]
    return keys[:_KEY_IMAGES]


def _evidence(*, study_uid: UID, keys: list[_KeyImage]) -> Dataset:
    by_series: dict[UID, list[Dataset]] = {}
    for key in keys:
        ref = _sop_ref(sop_class=key.sop_class, sop_uid=key.sop_uid)
        by_series.setdefault(key.series_uid, []).append(ref)
    evidence = Dataset()
    evidence.StudyInstanceUID = study_uid
    evidence.ReferencedSeriesSequence = [_series_ref(uid, refs) for uid, refs in by_series.items()]
    return evidence


def _series_ref(series_uid: str, refs: list[Dataset]) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series_uid
    item.ReferencedSOPSequence = refs
    return item


def _sop_ref(*, sop_class: str, sop_uid: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class
    ref.ReferencedSOPInstanceUID = sop_uid
    return ref


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = scheme
    code.CodeMeaning = meaning
    return code


def _text_item(*, concept: Dataset, text: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = [concept]
    item.TextValue = text
    return item


def _image_item(*, sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "IMAGE"
    item.ReferencedSOPSequence = [_sop_ref(sop_class=sop_class, sop_uid=sop_uid)]
    return item


def _report_text(*, rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size].rstrip()


# --- layouts ------------------------------------------------------------------------------


class _Sink(Protocol):
    def write(self, ds: Dataset, *, study: _Study, series: _Series, parts: list[bytes]) -> None:
        ...

    def finish(self) -> None: ...


class _Namer(Protocol):
    def __call__(self, *, study: _Study, series: _Series, sop_uid: str) -> str: ...


def _patient_path(*, study: _Study, series: _Series, sop_uid: str) -> str:
    return f"{study.patient.pid}/{study.day:%Y%m%d}/{study.uid}/{series.uid}/{sop_uid}.dcm"


def _java_hash(text: str) -> str:
    # dcm4chee names files with {tag,hash}: Java's String.hashCode as 8 hex digits.
    value = 0
    for char in text:
        value = (31 * value + ord(char)) & 0xFFFFFFFF
    return f"{value:08X}"


class _DateNamer:
    """dcm4chee-arc style `yyyy/MM/dd/{study hash}/{series hash}/{instance hash}`."""

    def __init__(self) -> None:
        self._folder = ""
        self._taken: set[str] = set()

    def __call__(self, *, study: _Study, series: _Series, sop_uid: str) -> str:
        folder = f"{series.received:%Y/%m/%d}/{_java_hash(study.uid)}/{_java_hash(series.uid)}"
        if folder != self._folder:
            # A series is written contiguously, so only its own names can collide.
            self._folder, self._taken = folder, set()
        name = _java_hash(sop_uid)
        salt = 0
        while name in self._taken:
            salt += 1
            name = _java_hash(f"{sop_uid}#{salt}")
        self._taken.add(name)
        return f"{folder}/{name}"


def _hashed_path(*, study: _Study, series: _Series, sop_uid: str) -> str:
    digest = hashlib.sha256(sop_uid.encode()).digest()[:16]
    name = str(uuid.UUID(bytes=digest, version=4))
    return f"{name[:2]}/{name[2:4]}/{name}"


def _storescp_path(*, study: _Study, series: _Series, sop_uid: str) -> str:
    return f"{series.received:%Y%m%d}/{series.modality.code}.{sop_uid}"


_NAMERS: dict[str, Callable[[], _Namer]] = {
    "patient": lambda: _patient_path,
    "date": _DateNamer,
    "hashed": lambda: _hashed_path,
    "storescp": lambda: _storescp_path,
}


class _PathSink:
    def __init__(self, root: Path, *, namer: _Namer) -> None:
        self._root = root
        self._namer = namer
        self._made: set[str] = set()

    def write(self, ds: Dataset, *, study: _Study, series: _Series, parts: list[bytes]) -> None:
        relative = self._namer(study=study, series=series, sop_uid=str(ds.SOPInstanceUID))
        _save(parts, root=self._root, relative=relative, made=self._made)

    def finish(self) -> None:
        pass


def _save(parts: list[bytes], *, root: Path, relative: str, made: set[str]) -> None:
    path = os.path.join(root, relative)
    parent = os.path.dirname(path)
    # mkdir per file costs a syscall per file; each directory is created once.
    if parent not in made:
        os.makedirs(parent, exist_ok=True)
        made.add(parent)
    with open(path, "wb") as handle:
        handle.writelines(parts)


@dataclass
class _DirNode:
    record: Dataset
    name: str
    children: list[_DirNode] = field(default_factory=list)
    offset: int = 0


class _CdSink:
    """Media layout `PT000000/ST000000/SE000000/IM000000` with a DICOMDIR at the root.

    pydicom's FileSet stages every instance in a temp dir and copies it on write,
    doubling I/O and temp space, so the DICOMDIR is encoded here directly.
    """

    def __init__(self, root: Path, *, fileset_uid: UID) -> None:
        self._root = root
        self._fileset_uid = fileset_uid
        self._patients: list[_DirNode] = []
        self._nodes: dict[str, _DirNode] = {}
        self._made: set[str] = set()

    def write(self, ds: Dataset, *, study: _Study, series: _Series, parts: list[bytes]) -> None:
        patient = self._child(key=study.patient.pid, siblings=self._patients, prefix="PT",
                              make=lambda: _patient_record(ds))
        study_node = self._child(key=study.uid, siblings=patient.children, prefix="ST",
                                 make=lambda: _study_record(ds))
        series_node = self._child(key=series.uid, siblings=study_node.children, prefix="SE",
                                  make=lambda: _series_record(ds))
        name = f"IM{len(series_node.children):06d}"
        file_id = [patient.name, study_node.name, series_node.name, name]
        series_node.children.append(_DirNode(_leaf_record(ds, file_id=file_id), name))
        _save(parts, root=self._root, relative="/".join(file_id), made=self._made)

    def _child(
        self, *, key: str, siblings: list[_DirNode], prefix: str, make: Callable[[], Dataset]
    ) -> _DirNode:
        node = self._nodes.get(key)
        if node is None:
            node = _DirNode(make(), f"{prefix}{len(siblings):06d}")
            siblings.append(node)
            self._nodes[key] = node
        return node

    def finish(self) -> None:
        _write_dicomdir(self._root / _DICOMDIR, fileset_uid=self._fileset_uid,
                        patients=self._patients)


def _record(record_type: str) -> Dataset:
    record = Dataset()
    # Offsets are fixed-size UL, so zeros now give the final encoded length.
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = record_type
    return record


def _patient_record(ds: Dataset) -> Dataset:
    record = _record("PATIENT")
    record.PatientName = ds.PatientName
    record.PatientID = ds.PatientID
    return record


def _study_record(ds: Dataset) -> Dataset:
    record = _record("STUDY")
    for keyword in ("StudyDate", "StudyTime", "StudyDescription", "StudyInstanceUID",
                    "StudyID", "AccessionNumber"):
        setattr(record, keyword, ds[keyword].value)
    return record


def _series_record(ds: Dataset) -> Dataset:
    record = _record("SERIES")
    record.Modality = ds.Modality
    record.SeriesInstanceUID = ds.SeriesInstanceUID
    record.SeriesNumber = ds.SeriesNumber
    return record


_LEAF_TYPES = {"SR": "SR DOCUMENT", "KO": "KEY OBJECT DOC"}
_LEAF_KEYWORDS = {
    "IMAGE": ("InstanceNumber",),
    "SR DOCUMENT": ("InstanceNumber", "CompletionFlag", "VerificationFlag", "ContentDate",
                    "ContentTime", "ConceptNameCodeSequence"),
    "KEY OBJECT DOC": ("InstanceNumber", "ContentDate", "ContentTime", "ConceptNameCodeSequence"),
}


def _leaf_record(ds: Dataset, *, file_id: list[str]) -> Dataset:
    record_type = _LEAF_TYPES.get(str(ds.Modality), "IMAGE")
    record = _record(record_type)
    for keyword in _LEAF_KEYWORDS[record_type]:
        setattr(record, keyword, ds[keyword].value)
    record.ReferencedFileID = file_id
    record.ReferencedSOPClassUIDInFile = ds.SOPClassUID
    record.ReferencedSOPInstanceUIDInFile = ds.SOPInstanceUID
    record.ReferencedTransferSyntaxUIDInFile = ds.file_meta.TransferSyntaxUID
    return record


def _flatten(nodes: list[_DirNode]) -> Iterator[_DirNode]:
    for node in nodes:
        yield node
        yield from _flatten(node.children)


def _link(siblings: list[_DirNode]) -> None:
    for position, node in enumerate(siblings):
        following = siblings[position + 1].offset if position + 1 < len(siblings) else 0
        node.record.OffsetOfTheNextDirectoryRecord = following
        lower = node.children[0].offset if node.children else 0
        node.record.OffsetOfReferencedLowerLevelDirectoryEntity = lower
        _link(node.children)


def _new_buffer(*, implicit_vr: bool) -> DicomBytesIO:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit_vr
    return buffer


def _write_dicomdir(path: Path, *, fileset_uid: UID, patients: list[_DirNode]) -> None:
    nodes = list(_flatten(patients))
    ds = _dicomdir_dataset(fileset_uid=fileset_uid)
    # Offsets are byte positions in the file, so mirror dcmwrite's layout to find them.
    head = _new_buffer(implicit_vr=False)
    head.write(_PREAMBLE)
    write_file_meta_info(head, ds.file_meta, enforce_standard=True)
    write_dataset(head, ds[:_RECORD_SEQUENCE_TAG])
    position = head.tell() + _SQ_HEADER
    for node in nodes:
        node.offset = position
        body = _new_buffer(implicit_vr=False)
        write_dataset(body, node.record)
        position += _ITEM_HEADER + body.tell()
    _link(patients)
    if patients:
        ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = patients[0].offset
        ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = patients[-1].offset
    ds.DirectoryRecordSequence = [node.record for node in nodes]
    dcmwrite(path, ds, enforce_file_format=True)


def _dicomdir_dataset(*, fileset_uid: UID) -> Dataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = dcmuid.MediaStorageDirectoryStorage
    meta.MediaStorageSOPInstanceUID = fileset_uid
    meta.TransferSyntaxUID = dcmuid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "PACSMIGRATE"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = []
    return ds


class _Sinks:
    """Routes each study to its layout; `mixed` deals studies round-robin to sublayouts."""

    def __init__(self, *, root: Path, layout: str, seed: int) -> None:
        self._root = root
        self._layout = layout
        self._seed = seed
        self._sinks: dict[str, _Sink] = {}

    def for_study(self, index: int) -> _Sink:
        if self._layout != "mixed":
            return self._get(self._layout, root=self._root)
        others = [name for name in LAYOUTS if name != "mixed"]
        name = others[index % len(others)]
        return self._get(name, root=self._root / name)

    def _get(self, layout: str, *, root: Path) -> _Sink:
        sink = self._sinks.get(layout)
        if sink is None:
            sink = self._sinks[layout] = self._make(layout, root=root)
        return sink

    def _make(self, layout: str, *, root: Path) -> _Sink:
        if layout == "cd":
            root.mkdir(parents=True, exist_ok=True)
            fileset_uid = _derived_uid(f"{_NS}:{self._seed}:fileset:{self._layout}")
            return _CdSink(root, fileset_uid=fileset_uid)
        return _PathSink(root, namer=_NAMERS[layout]())

    def finish(self) -> None:
        for sink in self._sinks.values():
            sink.finish()


def _tally(root: Path) -> tuple[int, int]:
    files = size = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            if name != _DICOMDIR:
                files += 1
                size += os.stat(os.path.join(folder, name)).st_size
    return files, size
