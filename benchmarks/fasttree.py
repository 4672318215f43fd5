"""Fast synthetic PACS trees: one DICOM template per kind, per-file UIDs patched into its bytes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from pydicom import uid as dcmuid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite

EPOCH = date(2015, 1, 5)
STUDIES_PER_DAY = 50
# Share of studies with a series received days after the rest (reports, add-on series):
# in the date layout that series lands in another day's folder, far away in walk order.
ADDON_SHARE = 0.2
FILES_PER_STUDY = (7, 21)  # uniform, mean 14
# Template values patched per file; each must occur exactly `count` times in the header.
_PATCHES = {  # name: (placeholder, count)
    "sop": (f"2.25.37777{0:033d}", 2),  # meta + dataset
    "study": (f"2.25.17777{0:033d}", 1),
    "series": (f"2.25.27777{0:033d}", 1),
    "date": ("19991231", 2),  # StudyDate + SeriesDate
    "pid": ("PID7654321", 1),
    "acc": ("ACC1234567", 1),
    "inst": ("571113", 1),
    "sernum": ("8642", 1),
}


@dataclass(frozen=True)
class Kind:
    """One file shape: every file of a kind has the same size (header + pixels)."""

    name: str
    modality: str
    sop_class: str
    rows: int
    columns: int
    bits: int


KINDS = {
    # ~1.2 KiB: the 100M-file archives' long tail (thumbnails, secondary captures).
    "tiny": Kind("tiny", "OT", dcmuid.SecondaryCaptureImageStorage, 16, 16, 8),
    # ~9 KiB: small MR/NM frames.
    "small": Kind("small", "MR", dcmuid.MRImageStorage, 64, 64, 16),
    # ~0.5 MiB: one 512x512 16-bit CT slice.
    "ct": Kind("ct", "CT", dcmuid.CTImageStorage, 512, 512, 16),
}


def uid(kind: int, seed: int, n: int) -> str:
    """Fixed-length UID (43 chars) so it can be patched into the template in place."""
    return f"2.25.{kind}{seed:04d}{n:033d}"


def random_uid(kind: int, seed: int, n: int) -> str:
    """As `uid`, the digits after the kind and seed random (from n): UUID-derived UIDs
    (2.25.<a UUID as an integer>) share no prefix, so a table keyed by them gets each new
    row on a page of its own."""
    digest = hashlib.blake2b(f"{seed}-{n}".encode(), digest_size=16).digest()
    return f"2.25.{kind}{seed:04d}{int.from_bytes(digest, 'big') % 10**33:033d}"


def template(kind: Kind, seed: int) -> tuple[bytes, dict[str, list[int]], int]:
    """(header bytes up to the pixel value, offsets of each placeholder, pixel bytes)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = kind.sop_class
    meta.MediaStorageSOPInstanceUID = _PATCHES["sop"][0]
    meta.TransferSyntaxUID = dcmuid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = uid(9, seed, 1)
    meta.ImplementationVersionName = "PMBENCH_1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = kind.sop_class
    ds.SOPInstanceUID = _PATCHES["sop"][0]
    ds.StudyDate = ds.SeriesDate = _PATCHES["date"][0]
    ds.StudyTime = "101500"
    ds.AccessionNumber = _PATCHES["acc"][0]
    ds.Modality = kind.modality
    ds.Manufacturer = "PACSMIGRATE BENCH"
    ds.InstitutionName = "SYNTHETIC GENERAL HOSPITAL"
    ds.StudyDescription = "BENCH STUDY"
    ds.SeriesDescription = "BENCH SERIES"
    ds.PatientName = "BENCH^PATIENT"
    ds.PatientID = _PATCHES["pid"][0]
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = _PATCHES["study"][0]
    ds.SeriesInstanceUID = _PATCHES["series"][0]
    ds.StudyID = "1"
    ds.SeriesNumber = _PATCHES["sernum"][0]
    ds.InstanceNumber = _PATCHES["inst"][0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = kind.rows, kind.columns
    ds.BitsAllocated = ds.BitsStored = kind.bits
    ds.HighBit = kind.bits - 1
    ds.PixelRepresentation = 0
    nbytes = kind.rows * kind.columns * kind.bits // 8
    ds.PixelData = b"\x00" * nbytes
    ds["PixelData"].VR = "OW" if kind.bits > 8 else "OB"
    buf = DicomBytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()
    head = data[: len(data) - nbytes]
    offsets: dict[str, list[int]] = {}
    for name, (text, count) in _PATCHES.items():
        found, at = [], head.find(text.encode())
        while at >= 0:
            found.append(at)
            at = head.find(text.encode(), at + 1)
        if len(found) != count:
            raise AssertionError(f"template: {name} found {len(found)} times, want {count}")
        offsets[name] = found
    return head, offsets, nbytes


def java_hash(text: str) -> str:
    # dcm4chee names folders and files by Java's String.hashCode as 8 hex digits.
    value = 0
    for char in text:
        value = (31 * value + ord(char)) & 0xFFFFFFFF
    return f"{value:08X}"


@dataclass(frozen=True)
class Spec:
    """What to write: `files` files of one kind in studies of ~14, in one layout."""

    kind: str
    files: int
    layout: str = "date"  # "date" (dcm4chee) or "patient"
    seed: int = 0
    sop_uids: str = "sequential"  # or "random" (random_uid)

    def study_sizes(self) -> list[int]:
        rng = random.Random(f"{self.seed}:{self.kind}:{self.files}")
        sizes, left = [], self.files
        while left > 0:
            n = min(left, rng.randint(*FILES_PER_STUDY))
            sizes.append(n)
            left -= n
        return sizes


@dataclass(frozen=True)
class Written:
    files: int
    bytes: int
    studies: int
    series: int
    dirs: int
    file_size: int
    addon_studies: int


def _series_plan(spec: Spec, study: int, count: int) -> list[tuple[int, int]]:
    """[(files, days after the study's day)] per series; the last one may arrive later."""
    rng = random.Random(f"{spec.seed}:{study}")
    n_series = min(count, rng.randint(1, 3))
    cuts = sorted(rng.sample(range(1, count), n_series - 1)) if n_series > 1 else []
    bounds = [0, *cuts, count]
    plan = [(bounds[i + 1] - bounds[i], 0) for i in range(n_series)]
    if n_series > 1 and rng.random() < ADDON_SHARE:
        plan[-1] = (plan[-1][0], rng.randint(1, 30))
    return plan


class _Writer:
    def __init__(self, spec: Spec, root: Path) -> None:
        self.spec, self.root = spec, os.fsencode(root)
        kind = KINDS[spec.kind]
        self.head, self.offsets, self.nbytes = template(kind, spec.seed)
        # Random pixels (no compression or dedup can shortcut them), a window per file.
        self.pool = memoryview(random.Random(spec.seed).randbytes(max(1 << 20, 4 * self.nbytes)))
        self.flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

    def study(self, study: int, first_file: int, count: int) -> tuple[int, int, int]:
        """Write one study; returns (series, directories made, add-on series)."""
        spec, seed = self.spec, self.spec.seed
        study_uid = uid(1, seed, study)
        day = EPOCH + timedelta(days=study // STUDIES_PER_DAY)
        fields = {"study": study_uid, "pid": f"P{study // 2:09d}", "acc": f"A{study:09d}"}
        n_file, dirs, addons = first_file, 0, 0
        plan = _series_plan(spec, study, count)
        for number, (files, delay) in enumerate(plan, 1):
            series_uid = uid(2, seed, n_file)
            received = day + timedelta(days=delay)
            addons += delay > 0
            if spec.layout == "date":
                folder = (f"{received:%Y/%m/%d}/{java_hash(study_uid)}/"
                          f"{java_hash(series_uid)}")
            else:
                folder = f"{fields['pid']}/{day:%Y%m%d}/{study_uid}/{series_uid}"
            directory = os.path.join(self.root, folder.encode())
            os.makedirs(directory, exist_ok=True)
            dirs += 1
            taken: set[str] = set()
            for inst in range(1, files + 1):
                sop_uid = (random_uid if spec.sop_uids == "random" else uid)(3, seed, n_file)
                values = {**fields, "series": series_uid, "sop": sop_uid,
                          "date": f"{day:%Y%m%d}", "inst": f"{inst:06d}",
                          "sernum": f"{number:04d}"}
                if spec.layout == "date":
                    name, salt = java_hash(sop_uid), 0
                    while name in taken:  # Java hashes collide now and then
                        salt += 1
                        name = java_hash(f"{sop_uid}#{salt}")
                    taken.add(name)
                else:
                    name = sop_uid + ".dcm"
                self._write(os.path.join(directory, name.encode()), values, n_file)
                n_file += 1
        return len(plan), dirs, addons

    def _write(self, path: bytes, values: dict[str, str], n: int) -> None:
        head = bytearray(self.head)
        for name, at_list in self.offsets.items():
            value = values[name].encode()
            if len(value) != len(_PATCHES[name][0]):
                raise AssertionError(f"{name}={value!r} is not as long as its placeholder")
            for at in at_list:
                head[at:at + len(value)] = value
        start = (n * 4099) % (len(self.pool) - self.nbytes)
        fd = os.open(path, self.flags, 0o644)
        try:
            os.writev(fd, [head, self.pool[start:start + self.nbytes]])
        finally:
            os.close(fd)


def _chunks(spec: Spec, per_chunk: int) -> Iterator[list[tuple[int, int, int]]]:
    chunk: list[tuple[int, int, int]] = []
    first = 0
    for study, count in enumerate(spec.study_sizes()):
        chunk.append((study, first, count))
        first += count
        if len(chunk) >= per_chunk:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_WORKER: _Writer | None = None


def _init(spec: Spec, root: Path) -> None:
    global _WORKER
    _WORKER = _Writer(spec, root)


def _run_chunk(chunk: list[tuple[int, int, int]]) -> tuple[int, int, int, int]:
    assert _WORKER is not None
    series = dirs = addons = 0
    for study, first, count in chunk:
        s, d, a = _WORKER.study(study, first, count)
        series, dirs, addons = series + s, dirs + d, addons + a
    return len(chunk), series, dirs, addons


def write_tree(spec: Spec, root: Path, *, processes: int | None = None) -> Written:
    """Write the tree (root must not exist or be empty), in parallel processes."""
    if spec.kind not in KINDS or spec.layout not in ("date", "patient") \
            or spec.sop_uids not in ("sequential", "random"):
        raise ValueError(f"unknown kind, layout or SOP UIDs: {spec}")
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise ValueError(f"{root} is not empty")
    head, _offsets, nbytes = template(KINDS[spec.kind], spec.seed)
    procs = processes or max(1, len(os.sched_getaffinity(0)))
    totals = [0, 0, 0, 0]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs, initializer=_init, initargs=(spec, root)) as pool:
        for result in pool.imap_unordered(_run_chunk, _chunks(spec, 200)):
            totals = [a + b for a, b in zip(totals, result, strict=True)]
    studies, series, dirs, addons = totals
    return Written(files=spec.files, bytes=spec.files * (len(head) + nbytes), studies=studies,
                   series=series, dirs=dirs, file_size=len(head) + nbytes, addon_studies=addons)
