"""Disaster-recovery drills: restore a study, a prefix or everything, verified, resumable."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import config, index_rows, source_files

from pacsmigrate import migrate
from pacsmigrate.synth import make_tree


@pytest.fixture
def migrated(s3: S3Target, tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "pacs"
    make_tree(root / "a", studies=3, seed=21, layout="date", scale=0.05)
    make_tree(root / "cd", studies=1, seed=22, layout="cd", scale=0.02)
    shutil.copy(TEST_FILES / "image_dfl.dcm", root / "deflated.dcm")
    state = tmp_path / "state"
    run(migrate(config([root], s3.url, state, s3.info.endpoint_url)))
    return root, state


def _restored(to: Path, src: Path) -> Path:
    return to / str(src.resolve()).lstrip("/")


def test_restore_all_byte_identical_and_valid_dicom(s3: S3Target, migrated: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    root, state = migrated
    to = tmp_path / "drill"
    proc = run_cli("restore", "--state", str(state), "--all", "--to", str(to), env=s3.env())
    assert proc.returncode == 0, proc.stderr
    files = source_files(root)
    for src in files.values():
        out = _restored(to, src)
        assert out.read_bytes() == src.read_bytes()
        assert out.stat().st_mtime_ns == src.stat().st_mtime_ns
    if shutil.which("dcmdump") is None:
        pytest.skip("dcmtk not installed (.ci/run installs it)")
    dicom = [r for r in index_rows(state) if r["status"] == "dicom"]
    for r in dicom:
        out = _restored(to, Path(r["source_path"]))
        dump = subprocess.run(["dcmdump", "-q", str(out)], capture_output=True, text=True,
                              check=False)
        assert dump.returncode == 0, (out, dump.stderr)
        assert r["sop_uid"] in dump.stdout


def test_restore_one_study_and_resume(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root, studies=3, seed=23, layout="date", scale=0.05)
    state = tmp_path / "state"
    run(migrate(config([root], moto_s3.url, state, moto_s3.info.endpoint_url)))
    rows = index_rows(state)
    study = rows[0]["study_uid"]
    mine = [r for r in rows if r["study_uid"] == study]
    to = tmp_path / "drill"
    args = ["restore", "--state", str(state), "--study", study, "--to", str(to)]
    first = run_cli(*args, env=moto_s3.env())
    assert first.returncode == 0, first.stderr
    # the bytes of files saved at once (--concurrency 8) all counted
    mb = sum(Path(r["source_path"]).stat().st_size for r in mine) / 1e6
    assert f"restored: {len(mine)} ({mb:,.1f} MB)" in first.stdout, first.stdout
    restored = sorted(p for p in to.rglob("*") if p.is_file())
    assert len(restored) == len(mine)
    # An interrupted drill: one file missing, one corrupted. Re-running repairs just those.
    restored[0].unlink()
    restored[1].write_bytes(b"corrupt")
    second = run_cli(*args, env=moto_s3.env())
    assert second.returncode == 0, second.stderr
    assert "restored: 2 " in second.stdout
    assert f"already present and verified: {len(mine) - 2}" in second.stdout
    for r in mine:
        assert _restored(to, Path(r["source_path"])).read_bytes() == Path(
            r["source_path"]).read_bytes()
    assert not list(to.rglob("*.pacsmigrate-partial"))


def test_restore_prefix_and_selection_errors(s3: S3Target, migrated: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    root, state = migrated
    to = tmp_path / "cd-only"
    proc = run_cli("restore", "--state", str(state), "--path-prefix", str(root.resolve() / "cd"),
                   "--to", str(to), env=s3.env())
    assert proc.returncode == 0, proc.stderr
    got = {p.name for p in to.rglob("*") if p.is_file()}
    assert "DICOMDIR" in got and "deflated.dcm" not in got
    none = run_cli("restore", "--state", str(state), "--study", "1.2.3.4", "--to", str(to),
                   env=s3.env())
    assert none.returncode == 1 and "nothing matched" in none.stderr
    both = run_cli("restore", "--state", str(state), "--all", "--study", "1.2", "--to", str(to),
                   env=s3.env())
    assert both.returncode == 2 and "exactly one of" in both.stderr


def test_restore_strip_prefix_gives_relative_paths(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root / "a", studies=2, seed=24, layout="date", scale=0.03)
    make_tree(root / "b", studies=1, seed=25, layout="date", scale=0.03)
    state = tmp_path / "state"
    run(migrate(config([root], moto_s3.url, state, moto_s3.info.endpoint_url)))
    to = tmp_path / "drill"
    base = str(root.resolve())
    proc = run_cli("restore", "--state", str(state), "--path-prefix", f"{base}/a",
                   "--strip-prefix", f"{base}/", "--to", str(to), env=moto_s3.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wanted = {p.relative_to(root): p for p in source_files(root / "a").values()}
    got = {p.relative_to(to): p for p in to.rglob("*") if p.is_file()}
    assert set(got) == set(wanted) and all(str(k).startswith("a/") for k in got)
    assert all(got[k].read_bytes() == wanted[k].read_bytes() for k in got)
    # Files outside the prefix are refused before anything is written.
    refused = run_cli("restore", "--state", str(state), "--all", "--strip-prefix",
                      f"{base}/a", "--to", str(tmp_path / "other"), env=moto_s3.env())
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "selected files do not lie under --strip-prefix" in refused.stderr
    assert not (tmp_path / "other").exists()
