"""Study planning: modality mix, patients, studies, series and sizes; every random draw."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import date, timedelta

from pydicom import uid as dcmuid
from pydicom.uid import UID

from .uids import _NS, _derived_uid, _uid_from_int

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
