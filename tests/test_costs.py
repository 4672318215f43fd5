"""The dry run's cost estimate: per class, for the bundles and for one object per file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli
from helpers import aged_tree

from pacsmigrate.costs import AWS_US_EAST_1, KB, GiB, PriceTable, Tally, estimate
from pacsmigrate.errors import ConfigError

POLICY = "0-180d=STANDARD,180d-5y=GLACIER_IR,5y-=DEEP_ARCHIVE"


def test_deep_archive_small_files_cost_more_one_by_one() -> None:
    """1,000 files of 10 KiB in DEEP_ARCHIVE: one bundle, or 1,000 objects each billed 32 KiB
    more at the class's rate and 8 KiB at STANDARD's, and 1,000 PUTs at 0.05 per 1,000."""
    t = Tally()
    t.add(AWS_US_EAST_1, "DEEP_ARCHIVE", 1000 * 10 * KB + 600_000, [10 * KB] * 1000,
          requests=1, scheme="s3", part_size=8 << 20)
    (bundle,), (files,) = estimate(AWS_US_EAST_1, t).values()
    assert (bundle.objects, bundle.requests, files.objects, files.requests) == (1, 1, 1000, 1000)
    assert files.one_off == pytest.approx(0.05)
    assert bundle.one_off == pytest.approx(0.00005)
    want = (1000 * (10 + 32) * KB / GiB * 0.00099) + (1000 * 8 * KB / GiB * 0.023)
    assert files.monthly == pytest.approx(want)
    assert bundle.monthly == pytest.approx(((1000 * 10 * KB + 600_000 + 32 * KB) / GiB * 0.00099)
                                           + 8 * KB / GiB * 0.023)
    assert files.monthly > 10 * bundle.monthly  # the overheads dominate small objects
    # Below the 128 KiB minimum of GLACIER_IR, a file is billed as 128 KiB.
    t = Tally()
    t.add(AWS_US_EAST_1, "GLACIER_IR", 300 * KB, [100 * KB, 200 * KB], requests=1,
          scheme="s3", part_size=8 << 20)
    (bundle,), (files,) = estimate(AWS_US_EAST_1, t).values()
    assert files.gb_billed * GiB == pytest.approx((128 + 200) * KB)
    assert bundle.gb_billed * GiB == pytest.approx(300 * KB)


def test_the_dry_run_prints_and_reports_the_estimate(tmp_path: Path) -> None:
    aged_tree(tmp_path / "pacs")
    report = tmp_path / "plan.json"
    proc = run_cli("migrate", str(tmp_path / "pacs"), "s3://hospital-archive/pacs", "--dry-run", "--offline",
                   "--state", str(tmp_path / "s"), "--tier-policy", POLICY, "--large-file",
                   "5MiB", "--part-size", "5MiB", "--report", str(report))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cost estimate (AWS S3 us-east-1 list prices" in proc.stdout
    cost = json.loads(report.read_text())["run"]["cost"]
    assert cost["currency"] == "USD"
    classes = {ln["storage_class"] for ln in cost["bundles"]}
    assert classes == {"STANDARD", "GLACIER_IR", "DEEP_ARCHIVE"}
    # Four one-image studies and a 6 MiB file (two 5 MiB parts + create and complete; a
    # per-file copier does not list unfinished uploads as pacsmigrate does).
    assert sum(ln["objects"] for ln in cost["bundles"]) == 5
    assert sum(ln["objects"] for ln in cost["per_file"]) == 5
    assert sum(ln["requests"] for ln in cost["per_file"]) == 4 + 4
    assert sum(ln["multipart"] for ln in cost["per_file"]) == 1  # the 6 MiB file
    assert all(ln["monthly"] > 0 and ln["one_off"] > 0 for ln in cost["bundles"])


def test_a_price_table_of_ones_own(tmp_path: Path) -> None:
    aged_tree(tmp_path / "pacs")
    prices = tmp_path / "azure.json"
    prices.write_text(json.dumps({
        "name": "our Azure contract, West Europe LRS, 2026-11", "currency": "EUR",
        "default_class": "Hot", "classes": {
            "Hot": {"storage_gb_month": 0.02, "put_per_1000": 0.0065},
            "Cool": {"storage_gb_month": 0.01, "put_per_1000": 0.013}}}))
    args = ["migrate", str(tmp_path / "pacs"), "az://pacs", "--dry-run", "--offline", "--state",
            str(tmp_path / "s"), "--tier-policy", "0-1y=Hot,1y-=Cool"]
    proc = run_cli(*args, "--prices", str(prices))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cost estimate (our Azure contract, West Europe LRS, 2026-11;" in proc.stdout
    assert "EUR a month" in proc.stdout
    # Without a table there is no made-up price for Azure: the plan says what to give.
    bare = run_cli(*args[:-2], "--state", str(tmp_path / "s2"))
    assert "no default prices for this store" in bare.stdout


@pytest.mark.parametrize("text, why", [
    ("{not json", "is not a price table"),
    ('{"classes": {"Hot": {"storage_gb_month": "cheap"}}}', "is not a price table"),
    ('{"classes": {"Hot": {"storage_gb_month": 0.02}}, "default_class": "Cold"}',
     "default_class 'Cold' has no prices"),
    ('{"classes": {"Hot": {"storage_gb_month": 0.02}}, "gb_bytes": 0}',
     "gb_bytes must be a positive number of bytes"),  # was a ZeroDivisionError traceback
])
def test_a_bad_price_table_is_one_line(text: str, why: str, tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=why):
        PriceTable.load(bad)
    (tmp_path / "pacs").mkdir()
    proc = run_cli("migrate", str(tmp_path / "pacs"), "az://pacs", "--dry-run", "--offline", "--state",
                   str(tmp_path / "s"), "--prices", str(bad))
    assert proc.returncode == 2 and why in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()  # refused before the state was made


def test_bundles_are_billed_as_stored_not_as_their_files(tmp_path: Path) -> None:
    """The estimate billed a bundle as its files' bytes: 600 files of 1,000 bytes were
    0.60 MB billed (the tar holds 0.96 MB: a header and padding each), so bundles looked no
    dearer to keep than one object a file."""
    src = tmp_path / "pacs" / "study"
    src.mkdir(parents=True)
    for i in range(600):
        (src / f"{i:04d}.txt").write_bytes(i.to_bytes(2, "big") * 500)  # no two alike
    report = tmp_path / "plan.json"
    run_cli("migrate", str(tmp_path / "pacs"), "s3://hospital-archive/pacs", "--dry-run",
            "--offline", "--state", str(tmp_path / "s"), "--report", str(report), check=True)
    cost = json.loads(report.read_text())["run"]["cost"]
    [line] = cost["bundles"]
    billed = round(line["gb_billed"] * GiB)
    assert 600 * (512 + 1024) <= billed <= 600 * (512 + 1024) + 64 * 1024, billed
    assert round(sum(ln["gb_billed"] for ln in cost["per_file"]) * GiB) == 600 * 1000
