"""Builds the DICOM dataset of each planned instance (shared modules and images)."""

from __future__ import annotations

import random
from collections.abc import Iterator

from pydicom import uid as dcmuid
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from .documents import _add_key_objects, _add_report
from .plan import _Geometry, _Modality, _Series, _Study
from .uids import _IMPLEMENTATION_UID, _IMPLEMENTATION_VERSION, _derived_uid, _instance_uid

_PIXEL_DATA_TAG = 0x7FE00010
# Everything _series_instances changes per file (SOPInstanceUID, InstanceNumber,
# ImagePositionPatient, SliceLocation, PixelData); anything else is encoded once per series.
_PER_INSTANCE = frozenset({0x00080018, 0x00200013, 0x00200032, 0x00201041, _PIXEL_DATA_TAG})
# MediaStorageSOPInstanceUID.
_PER_INSTANCE_META = frozenset({0x00020003})
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
