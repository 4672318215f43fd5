"""`migrate --include/--exclude/--study-date-from/--study-date-to/--min-age/--max-age`: a run
takes only what the filters let in, counts what they leave out, and a later run without the
filters takes the rest."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import S3Target, run_cli
from helpers import aged_tree, assert_complete, index_rows

from pacsmigrate.errors import ConfigError
from pacsmigrate.filters import (
    AFTER,
    BEFORE,
    EXCLUDED,
    NO_STUDY_DATE,
    NOT_INCLUDED,
    TOO_OLD,
    TOO_YOUNG,
    Filters,
)
from pacsmigrate.verify.source import NOT_INDEXED


def _migrate(root: Path, s3: S3Target, state: Path, *extra: str) -> list[str]:
    return ["migrate", str(root), s3.url, "--endpoint-url", s3.info.endpoint_url, "--state",
            str(state), "--large-file", "5MiB", "--part-size", "5MiB", "--no-progress", *extra]


def _migrated(state: Path) -> set[str]:
    return {Path(r["source_path"]).parent.name for r in index_rows(state)}


def test_filters_parse_and_decide() -> None:
    f = Filters.parse(include=("*/a/*",), exclude=("*.tmp",), study_from="2015-01-01",
                      study_to="20151231", min_age="30d", max_age="5y")
    assert f.active and f.by_date and f.by_age
    assert f.path(b"/x/a/1.dcm") is None
    assert f.path(b"/x/b/1.dcm") == NOT_INCLUDED
    assert f.path(b"/x/a/1.tmp") == EXCLUDED
    assert f.study("20150601") is None and f.study("20141231") == BEFORE
    assert f.study("20160101") == AFTER and f.study("") == NO_STUDY_DATE
    now_ns = int(f.now * 1e9)
    day = 86_400 * 10**9
    assert f.age(now_ns - 40 * day) is None
    assert f.age(now_ns - 2 * day) == TOO_YOUNG and f.age(now_ns - 2000 * day) == TOO_OLD
    assert not Filters.parse().active
    with pytest.raises(ConfigError, match="--study-date-from '2015-13-01' is not a date: give "
                       "YYYYMMDD or YYYY-MM-DD"):
        Filters.parse(study_from="2015-13-01")
    with pytest.raises(ConfigError, match="is after --study-date-to"):
        Filters.parse(study_from="20160101", study_to="20150101")
    with pytest.raises(ConfigError, match="not an age"):
        Filters.parse(min_age="3 weeks")
    with pytest.raises(ConfigError, match="--min-age 1y is above --max-age 30d"):
        Filters.parse(min_age="1y", max_age="30d")


def test_oldest_studies_first_then_the_rest(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    aged_tree(root)  # studies 10, 400 and 3000 days old, one without a date, a large .bin
    state, report = tmp_path / "state", tmp_path / "report.json"
    cut = (datetime.now(UTC).date() - timedelta(days=365)).isoformat()
    dry = run_cli(*_migrate(root, moto_s3, tmp_path / "dry", "--dry-run",
                            "--study-date-to", cut), env=moto_s3.env())
    assert dry.returncode == 0, dry.stderr
    assert "plan: 2 studies, 2 files" in dry.stdout
    first = run_cli(*_migrate(root, moto_s3, state, "--study-date-to", cut, "--report",
                              str(report)), env=moto_s3.env())
    assert first.returncode == 0, first.stdout + first.stderr  # left out is not "to do"
    assert _migrated(state) == {"mid", "old"}
    said = first.stdout
    assert "filtered out (a run without the filter takes them): 1 StudyDate after " \
           "--study-date-to" in said
    assert "filtered out (a run without the filter takes them): 2 no StudyDate " \
           "(--study-date-from/--to)" in said  # the undated study and the large .bin
    run = json.loads(report.read_text())["run"]
    assert run["filtered"] == {AFTER: 1, NO_STUDY_DATE: 2}
    assert run["not_migrated"] == 0
    rest = run_cli(*_migrate(root, moto_s3, state), env=moto_s3.env())
    assert rest.returncode == 0, rest.stderr
    assert "already migrated: 2" in rest.stdout and "filtered out" not in rest.stdout
    assert_complete(moto_s3, state, root)


def test_paths_and_ages(moto_s3: S3Target, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    aged_tree(root)
    (root / "new" / "draft.tmp").write_bytes(b"scratch")
    old = time.time() - 400 * 86_400
    for name in ("old", "mid"):
        os.utime(root / name / "img.dcm", (old, old))
    state = tmp_path / "state"
    proc = run_cli(*_migrate(root, moto_s3, state, "--exclude", "*.tmp", "--exclude",
                             "*/scan.bin", "--min-age", "1y"), env=moto_s3.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _migrated(state) == {"old", "mid"}
    assert "2 excluded by --exclude" in proc.stdout
    assert "2 younger than --min-age" in proc.stdout  # new/img.dcm, undated/img.dcm
    # The state keeps no filters: verify --source lists what they left out, and says why.
    check = run_cli("verify", "--state", str(state), "--source", env=moto_s3.env())
    assert check.returncode == 1, check.stdout + check.stderr
    left_out = {p for p in check.stdout.splitlines()
                if p.startswith("source not in index: ")}
    assert left_out == {f"source not in index: {root.resolve() / name} ({NOT_INDEXED})"
                        for name in ("new/draft.tmp", "scan.bin", "new/img.dcm",
                                     "undated/img.dcm")}, check.stdout
    proc = run_cli(*_migrate(root, moto_s3, state, "--include", "*/new/*", "--max-age",
                             "30d"), env=moto_s3.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _migrated(state) == {"old", "mid", "new"}
    # Left out before they are opened: the two migrated already count here too.
    assert "4 not matched by --include" in proc.stdout
    proc = run_cli(*_migrate(root, moto_s3, state), env=moto_s3.env())
    assert proc.returncode == 0
    assert_complete(moto_s3, state, root)
    check = run_cli("verify", "--state", str(state), "--source", env=moto_s3.env())
    assert check.returncode == 0, check.stdout + check.stderr


def test_bad_filter_values_are_one_line(moto_s3: S3Target, tmp_path: Path) -> None:
    aged_tree(tmp_path / "pacs")
    for args, said in ((["--study-date-from", "yesterday"], "is not a date"),
                       (["--max-age", "-3d"], "not an age"),
                       (["--study-date-from", "2020-01-02", "--study-date-to", "2020-01-01"],
                        "is after --study-date-to")):
        proc = run_cli(*_migrate(tmp_path / "pacs", moto_s3, tmp_path / "s", *args),
                       env=moto_s3.env())
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("error: ") and said in proc.stderr, proc.stderr
        assert not (tmp_path / "s").exists()
