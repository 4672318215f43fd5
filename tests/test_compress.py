"""--compress zstd: uncompressed-pixel members stored as zstd frames, still one range GET,
restored byte-identical, and readable without the tool (tar + the zstd CLI)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import blake3
import pydicom
import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import assert_complete, config, index_rows

from pacsmigrate import migrate
from pacsmigrate.encoding import UNCOMPRESSED, Compressor, check, decode, hasher
from pacsmigrate.errors import ConfigError, IntegrityError
from pacsmigrate.index import parse_object_uri
from pacsmigrate.paths import from_fields

CT = TEST_FILES / "CT_small.dcm"          # Explicit VR Little Endian, real CT pixels
JPEG = TEST_FILES / "JPEG2000.dcm"        # pixels already compressed
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def test_only_uncompressed_pixels_that_shrink_are_framed() -> None:
    c = Compressor()
    data = CT.read_bytes()
    frame = c.encode(data, EXPLICIT_LE)
    assert frame is not None and len(frame) < len(data)
    assert decode(frame, "zstd", size=len(data)) == data
    h = hasher("zstd")
    for i in range(0, len(frame), 1000):  # fed in pieces, as verify reads ranges
        h.update(frame[i:i + 1000])
    assert h.hexdigest() == blake3.blake3(data).hexdigest()
    assert c.encode(data, "1.2.840.10008.1.2.4.90") is None  # JPEG 2000: as it is
    assert c.encode(os.urandom(100_000), EXPLICIT_LE) is None  # would not shrink
    assert c.encode(data[:500], EXPLICIT_LE) is None  # too small to be worth a frame
    with pytest.raises(IntegrityError):
        decode(frame[:-10], "zstd", size=len(data))
    with pytest.raises(ConfigError, match="--compress must be zstd"):
        check("gzip")


def test_missing_library_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import now fails
    with pytest.raises(ConfigError, match=r"pip install 'pacsmigrate\[zstd\]'"):
        check("zstd")


def _tree(root: Path) -> Path:
    """Real samples (compressed and uncompressed syntaxes), a study copy, and a text file."""
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm",
                 "rtplan.dcm"):
        d = root / name.split(".")[0]
        d.mkdir(parents=True)
        shutil.copy(TEST_FILES / name, d / "img.dcm")
    shutil.copytree(root / "CT_small", root / "CT_copy")  # the same image again
    shutil.copy(TEST_FILES / "README.txt", root / "notes.txt")
    return root


def test_compressed_members_restore_byte_identical(s3: S3Target, tmp_path: Path) -> None:
    root = _tree(tmp_path / "pacs")
    state = tmp_path / "state"
    stats = run(migrate(config([root], s3.url, state, s3.info.endpoint_url, compress="zstd")))
    assert stats.compressed_files >= 2 and stats.compressed_to < stats.compressed_from
    assert stats.duplicate_files == 1
    rows = {from_fields(r["source_path"], r["source_path_b64"]): r for r in index_rows(state)}
    for path, r in rows.items():
        ts = pydicom.dcmread(os.fsdecode(path), stop_before_pixels=True).file_meta.get(
            "TransferSyntaxUID", "") if path.endswith(b".dcm") else ""
        if r["encoding"]:
            assert ts in UNCOMPRESSED and int(r["length"]) < int(r["size"])
            assert parse_object_uri(r["object_uri"]).encoding == "zstd"
        else:
            assert ts not in UNCOMPRESSED or path.endswith(b"rtplan/img.dcm")
    ct, copy = rows[os.fsencode(root / "CT_small" / "img.dcm")], rows[
        os.fsencode(root / "CT_copy" / "img.dcm")]
    assert ct["encoding"] == copy["encoding"] == "zstd"
    assert bool(ct["duplicate_of"]) != bool(copy["duplicate_of"])  # one is the other's copy
    assert (ct["key"], ct["offset"]) == (copy["key"], copy["offset"])
    assert_complete(s3, state, root)  # every range GET decodes to its file
    verify = run_cli("verify", "--state", str(state), "--deep", "--source", env=s3.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
    out = tmp_path / "out"
    run_cli("restore", "--state", str(state), "--all", "--to", str(out), env=s3.env(),
            check=True)
    for path in rows:
        restored = out / os.fsdecode(path).lstrip("/")
        assert restored.read_bytes() == Path(os.fsdecode(path)).read_bytes()
    again = run_cli("restore", "--state", str(state), "--all", "--to", str(out), env=s3.env(),
                    check=True)  # resumes: every file is there, decoded and verified
    assert f"restored: 0 (0.0 MB); already present and verified: {len(rows)}" in again.stdout
    rebuilt = tmp_path / "rebuilt"
    run_cli("index", "rebuild", s3.url, "--endpoint-url", s3.info.endpoint_url, "--state",
            str(rebuilt), env=s3.env(), check=True)
    assert index_rows(rebuilt) == index_rows(state)


@pytest.mark.skipif(shutil.which("zstd") is None or shutil.which("tar") is None,
                    reason="needs the tar and zstd command-line tools")
def test_no_tool_recipe_tar_then_zstd(moto_s3: S3Target, tmp_path: Path) -> None:
    """The README's recipe: download a bundle, `tar -xf`, `zstd -d` every .zst file."""
    root = _tree(tmp_path / "pacs")
    state = tmp_path / "state"
    run(migrate(config([root], moto_s3.url, state, moto_s3.info.endpoint_url, compress="zstd")))
    rows = index_rows(state)
    ct = next(r for r in rows if r["encoding"] and not r["duplicate_of"])
    bundle = tmp_path / "bundle.tar"
    bundle.write_bytes(moto_s3.get(ct["key"]))
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(bundle), "-C", str(out)], check=True)
    zst = [p for p in out.rglob("*.zst")]
    assert zst
    subprocess.run(["zstd", "-q", "-d", "--rm", *map(str, zst)], check=True)
    got = out / ct["source_path"].lstrip("/")
    assert got.read_bytes() == Path(ct["source_path"]).read_bytes()
    # One instance by its row's range: a frame the zstd CLI decodes to the file.
    one = tmp_path / "x.zst"
    one.write_bytes(moto_s3.get(ct["key"], int(ct["offset"]), int(ct["length"])))
    subprocess.run(["zstd", "-q", "-d", str(one), "-o", str(tmp_path / "out.dcm")], check=True)
    assert (tmp_path / "out.dcm").read_bytes() == Path(ct["source_path"]).read_bytes()
    # The manifest inside says which members are frames.
    manifest = json.loads(gzip.decompress(next(out.rglob("*.json.gz")).read_bytes()))
    assert {m["encoding"] for m in manifest["members"] if "encoding" in m} == {"zstd"}
