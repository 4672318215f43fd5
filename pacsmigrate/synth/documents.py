"""Content of the SR report and KO key object documents."""

from __future__ import annotations

import random
from typing import NamedTuple

from pydicom.dataset import Dataset
from pydicom.uid import UID

from .plan import _Series, _Study
from .uids import _instance_uid

_KEY_IMAGES = 8
_WORDS = (
    "no", "acute", "abnormality", "is", "seen", "stable", "appearance", "of", "the", "lesion",
    "measuring", "mm", "unremarkable", "mild", "degenerative", "change", "without", "contrast",
    "enhancement", "recommend", "follow-up", "in", "months", "normal", "size", "and", "shape",
    "synthetic", "report", "comparison", "with", "prior", "study", "bilateral", "effusion",
)


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
    text = _series_text(series)
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
    text = _series_text(series)
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


def _series_text(series: _Series) -> str:
    return _report_text(rng=random.Random(f"{series.uid}:text"), size=series.text_bytes)


def _report_text(*, rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size].rstrip()

