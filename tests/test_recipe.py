"""The README's "without this tool" recipe, run with the aws CLI, tar and the CSV index only."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import config

from pacsmigrate import migrate
from pacsmigrate.synth import make_tree

AWS = shutil.which("aws") or str(Path(sys.executable).parent / "aws")


def _aws(target: S3Target, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AWS, "--endpoint-url", target.info.endpoint_url, *args],
                          env={**target.env(), "AWS_EC2_METADATA_DISABLED": "true"},
                          capture_output=True, text=True, check=True, timeout=120)


@pytest.mark.skipif(not Path(AWS).exists(), reason="aws CLI not installed")
def test_any_image_back_with_aws_cli_tar_and_csv(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root, studies=2, seed=41, layout="patient", scale=0.05)
    shutil.copy(TEST_FILES / "CT_small.dcm", root / "wanted.dcm")
    state = tmp_path / "state"
    run(migrate(config([root], moto_s3.url, state, moto_s3.info.endpoint_url)))
    index = tmp_path / "index.csv"
    run_cli("index", "export", "--state", str(state), "--format", "csv", "-o", str(index),
            check=True)
    # --- from here on, only the CSV, the aws CLI and tar (as the README says) -------------
    wanted = str((root / "wanted.dcm").resolve())
    with open(index, newline="", encoding="utf-8") as f:
        row = next(r for r in csv.DictReader(f) if r["source_path"] == wanted)
    bucket = moto_s3.bucket
    first = int(row["offset"])
    last = first + int(row["length"]) - 1
    out = tmp_path / "one.dcm"
    _aws(moto_s3, "s3api", "get-object", "--bucket", bucket, "--key", row["key"],
         "--range", f"bytes={first}-{last}", str(out))
    assert out.read_bytes() == (root / "wanted.dcm").read_bytes()
    # Or the whole bundle, untarred: files come back under their original paths.
    _aws(moto_s3, "s3", "cp", f"s3://{bucket}/{row['key']}", str(tmp_path / "bundle.tar"))
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "bundle.tar"), "-C", str(x)], check=True)
    assert (x / wanted.lstrip("/")).read_bytes() == (root / "wanted.dcm").read_bytes()
    manifests = list((x / "pacsmigrate-manifests").glob("*.json.gz"))
    assert len(manifests) == 1
    text = subprocess.run(["zcat", str(manifests[0])], check=True, capture_output=True).stdout
    assert "wanted.dcm" in json.loads(text)["members"][0]["source_path"]
