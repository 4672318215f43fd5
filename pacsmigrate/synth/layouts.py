"""Path layouts: per-layout file namers and the sink that writes by name."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from .plan import _Series, _Study


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
