"""The store describes itself: the index rebuilt from the store alone equals the original."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pydicom
import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import config, index_rows, plain_manifests

from pacsmigrate import manifest, migrate
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.synth import make_tree


def test_rebuilt_export_equals_original_row_for_row(s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root, studies=3, seed=31, layout="hashed", scale=0.05)
    shutil.copy(TEST_FILES / "README.txt", root / "notes.txt")
    (root / os.fsdecode(b"\xff-odd.dcm")).write_bytes((TEST_FILES / "CT_small.dcm").read_bytes())
    state = tmp_path / "state"
    cfg = config([root], s3.url, state, s3.info.endpoint_url, large_file=50_000)
    run(migrate(cfg))
    # A file changed after migration is migrated again: the store then holds two versions.
    victim = next(p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".txt"
                  and b"\xff" not in os.fsencode(p.name))
    ds = pydicom.dcmread(victim)
    ds.SeriesDescription = "edited on the NAS after migration"
    ds.save_as(victim)
    os.utime(victim, ns=(0, 2_000_000_000_000_000_000))
    run(migrate(cfg))
    original = index_rows(state)

    new_state = tmp_path / "rebuilt"
    proc = run_cli("index", "rebuild", s3.url, "--endpoint-url", s3.info.endpoint_url,
                   "--state", str(new_state), env=s3.env())
    assert proc.returncode == 0, proc.stderr
    assert "1 older versions superseded" in proc.stdout
    assert index_rows(new_state) == original
    # a row a file, whichever of its versions was listed first
    assert f"rebuilt {len(original):,} index rows from " in proc.stdout, proc.stdout
    # The source roots come back too (verify --source and reports name them).
    cp = Checkpoint(new_state, readonly=True)
    try:
        assert cp.get_meta("config")["sources"] == [os.path.abspath(root)]
    finally:
        cp.close()
    # The rebuilt state serves reads like the original.
    out = tmp_path / "v.dcm"
    run_cli("get", str(victim), "-o", str(out), "--state", str(new_state), env=s3.env(),
            check=True)
    assert out.read_bytes() == victim.read_bytes()


def test_rebuild_refuses_an_empty_prefix(moto_s3: S3Target, tmp_path: Path) -> None:
    proc = run_cli("index", "rebuild", moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
                   "--state", str(tmp_path / "s"), env=moto_s3.env())
    assert proc.returncode == 2 and "no pacsmigrate store at" in proc.stderr


def test_bundles_with_plain_manifests_still_describe_themselves(
        moto_s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bundles written before manifests were gzip-compressed (`<id>.json`, plain JSON)
    beside newer ones (`<id>.json.gz`): the index rebuilt from the store holds both."""
    root = tmp_path / "pacs"
    make_tree(root, studies=3, seed=7, layout="hashed", scale=0.05)
    state = tmp_path / "state"
    cfg = config([root], moto_s3.url, state, moto_s3.info.endpoint_url)
    with monkeypatch.context() as old:  # the writer as it was
        plain_manifests(old)
        old.setattr(manifest, "manifest_name",
                    lambda bundle_id, compressed=False: f"{manifest.MANIFEST_DIR}/{bundle_id}.json")
        run(migrate(cfg))
    first = set(moto_s3.object_keys())
    make_tree(root / "later", studies=2, seed=8, layout="hashed", scale=0.05)
    run(migrate(cfg))
    names = {k: _manifest_member(moto_s3.get(k)) for k in moto_s3.object_keys()
             if k.endswith(".tar")}
    assert {n.endswith(".json") for k, n in names.items() if k in first} == {True}
    assert {n.endswith(".json.gz") for k, n in names.items() if k not in first} == {True}

    new_state = tmp_path / "rebuilt"
    proc = run_cli("index", "rebuild", moto_s3.url, "--endpoint-url",
                   moto_s3.info.endpoint_url, "--state", str(new_state), env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    assert index_rows(new_state) == index_rows(state)


def _manifest_member(bundle: bytes) -> str:
    with tarfile.open(fileobj=io.BytesIO(bundle)) as tf:
        return tf.getnames()[-2]
