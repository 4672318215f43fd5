"""The cd media layout: PT/ST/SE/IM folders indexed by a directly encoded DICOMDIR."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import uid as dcmuid
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite, write_dataset, write_file_meta_info
from pydicom.uid import UID

from .datasets import _file_meta
from .encode import _PREAMBLE, _new_buffer
from .layouts import _save
from .plan import _Series, _Study

_DICOMDIR = "DICOMDIR"
# Explicit VR SQ header: tag (4) + VR (2) + reserved (2) + length (4).
_SQ_HEADER = 12
# Sequence item header: item tag (4) + length (4).
_ITEM_HEADER = 8
_RECORD_SEQUENCE_TAG = 0x00041220


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
                              make=lambda: _record("PATIENT", ds))
        study_node = self._child(key=study.uid, siblings=patient.children, prefix="ST",
                                 make=lambda: _record("STUDY", ds))
        series_node = self._child(key=series.uid, siblings=study_node.children, prefix="SE",
                                  make=lambda: _record("SERIES", ds))
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


# What each directory record type copies from the instance it first indexes.
_RECORD_KEYWORDS = {
    "PATIENT": ("PatientName", "PatientID"),
    "STUDY": ("StudyDate", "StudyTime", "StudyDescription", "StudyInstanceUID", "StudyID",
              "AccessionNumber"),
    "SERIES": ("Modality", "SeriesInstanceUID", "SeriesNumber"),
    "IMAGE": ("InstanceNumber",),
    "SR DOCUMENT": ("InstanceNumber", "CompletionFlag", "VerificationFlag", "ContentDate",
                    "ContentTime", "ConceptNameCodeSequence"),
    "KEY OBJECT DOC": ("InstanceNumber", "ContentDate", "ContentTime", "ConceptNameCodeSequence"),
}
_LEAF_TYPES = {"SR": "SR DOCUMENT", "KO": "KEY OBJECT DOC"}


def _record(record_type: str, ds: Dataset) -> Dataset:
    record = Dataset()
    # Offsets are fixed-size UL, so zeros now give the final encoded length.
    record.OffsetOfTheNextDirectoryRecord = 0
    record.RecordInUseFlag = 0xFFFF
    record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    record.DirectoryRecordType = record_type
    for keyword in _RECORD_KEYWORDS[record_type]:
        setattr(record, keyword, ds[keyword].value)
    return record


def _leaf_record(ds: Dataset, *, file_id: list[str]) -> Dataset:
    record = _record(_LEAF_TYPES.get(str(ds.Modality), "IMAGE"), ds)
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
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class=dcmuid.MediaStorageDirectoryStorage, implicit_vr=False)
    ds.file_meta.MediaStorageSOPInstanceUID = fileset_uid
    ds.FileSetID = "PACSMIGRATE"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = []
    return ds
