"""make_tree: validates arguments, plans studies and routes their files to layout sinks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from . import LAYOUTS
from .datasets import _series_instances
from .dicomdir import _DICOMDIR, _CdSink
from .encode import _SeriesEncoder
from .layouts import _NAMERS, _PathSink
from .plan import _plan_studies, _Series, _Study
from .uids import _NS, _derived_uid


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


class _Sink(Protocol):
    def write(self, ds: Dataset, *, study: _Study, series: _Series, parts: list[bytes]) -> None:
        ...

    def finish(self) -> None: ...


def _write_study(study: _Study, *, sink: _Sink) -> None:
    for series in study.series:
        encoder: _SeriesEncoder | None = None
        for ds in _series_instances(study=study, series=series):
            encoder = encoder or _SeriesEncoder(ds)
            sink.write(ds, study=study, series=series, parts=encoder.encode())


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
