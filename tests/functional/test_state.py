"""The state directory: long paths, a map that grows, a full disk that stops and resumes."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import S3Target, run, run_cli
from helpers import assert_complete, config

import pacsmigrate.checkpoint as checkpoint_mod
from pacsmigrate import lmdbfile, migrate
from pacsmigrate.records import Described, Member


def test_map_grows_when_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lmdbfile, "INITIAL_MAP_SIZE", 1 << 16)
    cp = checkpoint_mod.Checkpoint(tmp_path / "state")
    try:
        for i in range(40):
            cp.spill([Member(b"/nas/%d/%d.dcm" % (i, j), 10, 1, Described(f"{i:032x}"))
                      for j in range(200)])
        assert cp.counts()["spill"] == 8000
        assert cp.env.info()["map_size"] > 1 << 16
    finally:
        cp.close()


def test_paths_longer_than_lmdb_keys(moto_s3: S3Target, tmp_path: Path) -> None:
    """LMDB keys stop at 511 bytes; PACS paths may not."""
    root = tmp_path / "deep"
    deep = root
    for i in range(12):
        deep = deep / (f"{i:02d}-" + "d" * 60)
    deep.mkdir(parents=True)
    (deep / ("f" * 200 + ".dcm")).write_bytes(b"not dicom but must be kept")
    (root / "short.txt").write_bytes(b"short")
    assert len(os.fsencode(deep)) > 700
    state = tmp_path / "state"
    stats = run(migrate(config([root], moto_s3.url, state, moto_s3.info.endpoint_url)))
    assert stats.not_migrated == 0
    assert_complete(moto_s3, state, root)
    again = run(migrate(config([root], moto_s3.url, state, moto_s3.info.endpoint_url)))
    assert again.already_migrated == 2 and again.objects_uploaded == 0


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    # Room enough to pass the pre-flight (256 KiB), too little for the state of 3,000 files.
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384k", "tmpfs", str(mnt)],
                        capture_output=True, check=False)
    if ok.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_stops_cleanly_and_resumes(moto_s3: S3Target, tmp_path: Path,
                                             small_tmpfs: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(3000):
        (root / f"{i:05d}-{uuid.UUID(int=i).hex}.txt").write_bytes(b"x" * 64)
    state = small_tmpfs / "state"
    args = ["migrate", str(root), moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
            "--state", str(state), "--no-progress"]
    full = run_cli(*args, env=moto_s3.env())
    assert full.returncode == 2, full.stdout + full.stderr
    assert "no space left for the checkpoint" in full.stderr
    assert "Traceback" not in full.stderr
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_tmpfs)], check=True)
    done = run_cli(*args, env=moto_s3.env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert_complete(moto_s3, state, root)


def test_preflight_refuses_a_state_without_room(moto_s3: S3Target, tmp_path: Path,
                                                small_tmpfs: Path) -> None:
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (256 << 10))  # leaves less than the 256 KiB a state needs
    (tmp_path / "src").mkdir()
    proc = run_cli("check", str(tmp_path / "src"), moto_s3.url, "--endpoint-url",
                   moto_s3.info.endpoint_url, "--state", str(small_tmpfs / "state"),
                   env=moto_s3.env())
    assert proc.returncode == 2
    assert "FAIL  state: only " in proc.stdout and f"kB free under {small_tmpfs}" in proc.stdout
    assert not (small_tmpfs / "state").exists()
