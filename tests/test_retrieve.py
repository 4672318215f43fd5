"""`get` and the library's `pacsmigrate.open`: one range GET, blake3 checked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import config, index_rows

import pacsmigrate
from pacsmigrate import IntegrityError, NotInIndexError, migrate
from pacsmigrate.synth import make_tree


@pytest.fixture
def migrated(moto_s3: S3Target, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "pacs"
    make_tree(root, studies=2, seed=4, layout="patient", scale=0.05)
    shutil.copy(TEST_FILES / "CT_small.dcm", root / "ct.dcm")
    state = tmp_path / "state"
    run(migrate(config([root], moto_s3.url, state, moto_s3.info.endpoint_url)))
    return root, state


def test_get_by_path_and_by_sop(moto_s3: S3Target, migrated: tuple[Path, Path],
                                tmp_path: Path) -> None:
    root, state = migrated
    src = root / "ct.dcm"
    out = tmp_path / "out.dcm"
    proc = run_cli("get", str(src), "-o", str(out), "--state", str(state), env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == src.read_bytes()
    assert out.stat().st_mtime_ns == src.stat().st_mtime_ns
    sop = str(pydicom.dcmread(src).SOPInstanceUID)
    piped = subprocess.run([sys.executable, "-m", "pacsmigrate", "get", "--sop", sop,
                            "--state", str(state)], env=moto_s3.env(), capture_output=True,
                           check=False)
    assert piped.returncode == 0 and piped.stdout == src.read_bytes()  # to a pipe: stdout
    out2 = tmp_path / "by-sop.dcm"
    run_cli("get", "--sop", sop, "-o", str(out2), "--state", str(state), env=moto_s3.env(),
            check=True)
    assert out2.read_bytes() == src.read_bytes()


def test_get_unknown_path_is_a_clear_error(moto_s3: S3Target, migrated: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    _, state = migrated
    proc = run_cli("get", "/no/such/file.dcm", "-o", str(tmp_path / "x"), "--state", str(state),
                   env=moto_s3.env())
    assert proc.returncode == 2 and "not in the index: /no/such/file.dcm" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_library_open_read_stream_and_integrity(moto_s3: S3Target, migrated: tuple[Path, Path]
                                                ) -> None:
    root, state = migrated
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]

    async def go() -> None:
        async with pacsmigrate.open(state) as archive:
            for p in files:
                assert await archive.read(str(p)) == p.read_bytes()
            sop = str(pydicom.dcmread(files[0]).SOPInstanceUID)
            assert await archive.read(sop=sop) == files[0].read_bytes()
            chunks = [c async for c in archive.stream(str(files[0]), chunk=1000)]
            assert len(chunks) > 1 and b"".join(chunks) == files[0].read_bytes()
            with pytest.raises(NotInIndexError):
                await archive.read("/nope")
            # Alter the stored bytes behind the index's back: reads must refuse them.
            row = archive.locate(str(files[0]))
            blob = bytearray(moto_s3.get(row["key"]))
            blob[int(row["offset"]) + 10] ^= 0xFF
            moto_s3.client.put_object(Bucket=moto_s3.bucket, Key=row["key"], Body=bytes(blob))
            with pytest.raises(IntegrityError):
                await archive.read(str(files[0]))
            with pytest.raises(IntegrityError):
                async for _ in archive.stream(str(files[0]), chunk=1000):
                    pass

    run(go())


def test_relative_path_is_resolved(moto_s3: S3Target, migrated: tuple[Path, Path],
                                   tmp_path: Path) -> None:
    root, state = migrated
    rows = index_rows(state)
    assert rows
    proc = run_cli("get", os.path.relpath(root / "ct.dcm"), "-o", str(tmp_path / "r.dcm"),
                   "--state", str(state), env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
