"""Synthetic CT and MR slices for the `compress` section: shapes, not random bytes.

Random pixels (the other trees' fasttree) do not compress; a phantom with air, fat, soft
tissue and bone in smooth shapes plus scanner-like noise compresses roughly as real slices
of that kind do. It is a phantom: its ratios say how zstd treats such pixels, not what a
hospital's archive would save.

CT: 512x512, 0.7 mm pixels (36 cm field of view), HU: air -1000, fat -100, soft tissue 40,
liver 60, kidneys 30, aorta 150 (contrast), lungs -850 (upper slices), bone ellipses
700-1200 (vertebra, ribs, pelvis), a patient table; edges softened by a 3x3 binomial blur;
white Gaussian noise sigma 15 HU; outside the 512-pixel reconstruction circle the stored
value is 0 with no noise, as scanners pad it. Stored unsigned as most scanners write them:
BitsAllocated 16, BitsStored 12, PixelRepresentation 0, RescaleIntercept -1024, slope 1.

MR: 256x256 head-like T1: scalp, dark skull, grey and white matter, ventricles, a smooth
coil-sensitivity bias, Rician noise (magnitude of the signal plus complex Gaussian noise,
sigma 12), uint16 with BitsStored 12.

Anatomy changes smoothly with the slice position; every slice has its own noise, so no two
files are alike (pacsmigrate deduplicates identical content).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom import uid as dcmuid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite

CT_NOISE_HU = 15.0
MR_NOISE = 12.0
CT_SLICES_PER_STUDY = (80, 160)  # one axial series per study, uniform


class _Canvas:
    """An image and its pixel grid; paint() fills an ellipse within its bounding box only."""

    def __init__(self, n: int, value: float) -> None:
        self.img = np.full((n, n), value, dtype=np.float32)
        self.y, self.x = np.mgrid[0:n, 0:n].astype(np.float32)

    def paint(self, cy: float, cx: float, ry: float, rx: float, value: float,
              angle: float = 0.0) -> None:
        n, r = self.img.shape[0], max(ry, rx)
        y0, y1 = max(0, int(cy - r) - 1), min(n, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r) - 1), min(n, int(cx + r) + 2)
        if y0 >= y1 or x0 >= x1:
            return
        dy, dx = self.y[y0:y1, x0:x1] - cy, self.x[y0:y1, x0:x1] - cx
        if angle:
            c, s = np.cos(angle), np.sin(angle)
            dy, dx = c * dy - s * dx, s * dy + c * dx
        inside = (dy / ry) ** 2 + (dx / rx) ** 2 <= 1.0
        self.img[y0:y1, x0:x1][inside] = value


def _blur(a: np.ndarray) -> np.ndarray:
    """3x3 binomial blur (partial volume at edges), edges replicated."""
    p = np.pad(a, 1, mode="edge")
    v = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    out: np.ndarray = (v[:, :-2] + 2 * v[:, 1:-1] + v[:, 2:]) / 4
    return out


class CTPhantom:
    """Axial slices of a trunk; z from 0 (upper thorax) to 1 (pelvis)."""

    n = 512

    def __init__(self) -> None:
        y, x = np.mgrid[0:self.n, 0:self.n]
        self.outside = (y - 255.5) ** 2 + (x - 255.5) ** 2 > 256.0**2  # the FOV circle
        self.table = np.full((self.n, self.n), -1000.0, dtype=np.float32)
        self.table[418:428, 36:476] = 250.0  # table top
        self.table[428:440, 56:456] = -300.0  # table core

    def hu(self, z: float, rng: np.random.Generator) -> np.ndarray:
        c = _Canvas(self.n, -1000.0)
        c.img[:] = self.table
        p = c.paint
        wobble = np.sin(np.pi * z)
        cy, cx = 262.0, 256.0
        ry, rx = 140 + 15 * wobble, 200 + 20 * wobble
        p(cy, cx, ry, rx, -100.0)  # subcutaneous fat
        p(cy, cx, ry - 18, rx - 22, 40.0)  # muscle, soft tissue
        if z < 0.45:  # lungs, with the heart between them
            k = 0.4 + 0.6 * (1 - z / 0.45)
            for side in (-1, 1):
                p(cy - 10, cx + side * 80, 85 * k, 62 * k, -850.0, side * 0.15)
            p(cy + 5, cx + 25, 55 * k + 10, 65 * k + 10, 45.0, 0.5)  # heart
            for i in range(9):  # ribs along the chest wall
                a = -2.6 + i * 0.65
                p(cy + (ry - 26) * np.sin(a), cx + (rx - 30) * np.cos(a), 7, 11, 750.0, a)
        else:  # abdomen and pelvis
            p(cy - 20, cx - 60, 75, 95, 60.0, 0.3)  # liver
            for side in (-1, 1):
                p(cy + 45, cx + side * 75, 30, 18, 30.0, side * 0.4)  # kidneys
            p(cy + 10, cx + 40, 40, 55, -20.0)  # bowel, a little fat
            if z > 0.75:
                for side in (-1, 1):  # iliac wings: cortex and marrow
                    p(cy + 30, cx + side * 110, 60, 28, 1150.0, side * 0.5)
                    p(cy + 30, cx + side * 110, 50, 18, 350.0, side * 0.5)
        p(cy + 40, cx, 14, 14, 150.0)  # aorta (contrast)
        p(cy + 85, cx, 26, 30, 1200.0)  # vertebral body: cortex
        p(cy + 85, cx, 20, 24, 280.0)  # cancellous bone
        p(cy + 122, cx, 12, 9, 1000.0)  # spinous process
        p(cy + 85, cx, 8, 8, 15.0)  # spinal canal
        img = _blur(c.img)
        img += rng.normal(0.0, CT_NOISE_HU, img.shape).astype(np.float32)
        return img

    def stored(self, z: float, rng: np.random.Generator) -> np.ndarray:
        """Stored values: HU + 1024, 12 bits, 0 outside the reconstruction circle."""
        raw = np.clip(np.rint(self.hu(z, rng) + 1024.0), 0, 4095).astype(np.uint16)
        raw[self.outside] = 0
        return raw


class MRPhantom:
    """T1-like axial head slices; z from 0 (skull base) to 1 (vertex)."""

    n = 256

    def __init__(self) -> None:
        y, x = np.mgrid[0:self.n, 0:self.n].astype(np.float32)
        self.bias = 1.0 + 0.25 * np.exp(-((y - 60) ** 2 + (x - 128) ** 2) / 9000.0)

    def stored(self, z: float, rng: np.random.Generator) -> np.ndarray:
        c = _Canvas(self.n, 0.0)
        p = c.paint
        s = np.sin(np.pi * (0.15 + 0.7 * z))
        cy, cx, ry, rx = 128.0, 128.0, 105 * s, 85 * s
        p(cy, cx, ry, rx, 650.0)  # scalp (fat is bright on T1)
        p(cy, cx, ry - 6, rx - 6, 90.0)  # skull
        p(cy, cx, ry - 12, rx - 12, 480.0)  # grey matter
        p(cy, cx, ry - 24, rx - 24, 700.0)  # white matter
        for side in (-1, 1):
            p(cy + 5, cx + side * 12, 30 * s, 7, 150.0, side * 0.25)  # ventricles
            p(cy - 20, cx + side * 45, 18 * s, 10 * s, 480.0)  # deep grey matter
        img = _blur(_blur(c.img)) * self.bias
        re = img + rng.normal(0.0, MR_NOISE, img.shape).astype(np.float32)
        im = rng.normal(0.0, MR_NOISE, img.shape).astype(np.float32)
        out: np.ndarray = np.clip(np.rint(np.sqrt(re * re + im * im)), 0, 4095).astype(np.uint16)
        return out


def uid(kind: int, seed: int, n: int) -> str:
    return f"2.25.{kind}{seed:04d}{n:030d}"


def study_date(study: int) -> str:
    return f"2020{1 + study % 12:02d}{1 + study % 28:02d}"


def dicom_bytes(kind: str, pixels: np.ndarray, *, seed: int, study: int, series: int,
                number: int, z_mm: float, sop: int) -> bytes:
    """One Explicit VR Little Endian CT or MR Image Storage file with file meta."""
    sop_class = dcmuid.CTImageStorage if kind == "CT" else dcmuid.MRImageStorage
    sop_uid = dcmuid.UID(uid(3 if kind == "CT" else 6, seed, sop))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = dcmuid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = dcmuid.UID(uid(9, seed, 2))
    meta.ImplementationVersionName = "PMBENCH_PHANTOM"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyDate = ds.SeriesDate = study_date(study)
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"PH{study:08d}"
    ds.Modality = kind
    ds.Manufacturer = "PACSMIGRATE BENCH PHANTOM"
    ds.StudyDescription = f"PHANTOM {kind}"
    ds.SeriesDescription = "AXIAL"
    ds.PatientName = "PHANTOM^" + kind
    ds.PatientID = f"PHANTOM{study:06d}"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = uid(1 if kind == "CT" else 4, seed, study)
    ds.SeriesInstanceUID = uid(2 if kind == "CT" else 5, seed, series)
    ds.StudyID = str(study)
    ds.SeriesNumber = 2
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [-179.65, -179.65, round(z_mm, 2)] if kind == "CT" else [
        -120.0, -120.0, round(z_mm, 2)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = round(z_mm, 2)
    ds.SliceThickness = 1.25 if kind == "CT" else 4.0
    ds.PixelSpacing = [0.703125, 0.703125] if kind == "CT" else [0.9375, 0.9375]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    if kind == "CT":
        ds.KVP = 120
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
    else:
        ds.RepetitionTime, ds.EchoTime, ds.MagneticFieldStrength = 500, 10, 1.5
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    buf = DicomBytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return bytes(buf.getvalue())


def ct_slices(n: int, seed: int) -> Iterator[tuple[int, int, float]]:
    """(study, slice number, z in 0..1) for n CT slices in studies of 80-160 slices."""
    rng = np.random.default_rng([seed, 7])
    study, left = 0, 0
    count = number = 0
    for _ in range(n):
        if left == 0:
            study += 1
            count = left = int(rng.integers(CT_SLICES_PER_STUDY[0], CT_SLICES_PER_STUDY[1] + 1))
            number = 0
        number += 1
        left -= 1
        yield study, number, (number - 1) / max(count - 1, 1)


def ct_files(n: int, seed: int) -> Iterator[tuple[int, bytes]]:
    """(study, file bytes) of n CT slices; each study one series covering z 0..1."""
    phantom, rng = CTPhantom(), np.random.default_rng([seed, 1])
    for i, (study, number, z) in enumerate(ct_slices(n, seed), 1):
        yield study, dicom_bytes("CT", phantom.stored(z, rng), seed=seed, study=study,
                                 series=study, number=number, z_mm=-400 * z, sop=i)


def mr_files(n: int, seed: int, per_series: int = 24) -> Iterator[bytes]:
    """n MR slices, series of `per_series` 4-mm slices through the head, one per study."""
    phantom, rng = MRPhantom(), np.random.default_rng([seed, 2])
    for i in range(n):
        study, number = i // per_series + 1, i % per_series + 1
        z = (number - 1) / max(per_series - 1, 1)
        yield dicom_bytes("MR", phantom.stored(z, rng), seed=seed, study=study, series=study,
                          number=number, z_mm=4.0 * number, sop=i + 1)


def write_ct_tree(root: Path, megabytes: int, seed: int) -> tuple[int, int, int]:
    """CT slices until the tree holds `megabytes` MB, in the `patient` layout
    (PatientID/StudyDate/StudyUID/SeriesUID/SOPUID.dcm); returns (files, bytes, studies)."""
    one = len(next(ct_files(1, seed))[1])
    n = max(1, -(-megabytes * 10**6 // one))
    total = studies = 0
    for i, (study, data) in enumerate(ct_files(n, seed), 1):
        folder = (root / f"PHANTOM{study:06d}" / study_date(study) / uid(1, seed, study)
                  / uid(2, seed, study))
        if study != studies:
            folder.mkdir(parents=True, exist_ok=True)
            studies = study
        fd = os.open(folder / f"{uid(3, seed, i)}.dcm",
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        total += len(data)
    return n, total, studies
