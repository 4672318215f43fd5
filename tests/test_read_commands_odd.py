"""The read and export commands on odd input (a fifth bug hunt): rows a RIS loads exactly,
long names restored, bad arguments and unwritable outputs in one line, nothing written into
a source by `check`, files of other bytes at a restore's targets said."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from pathlib import Path

import pytest
from conftest import TEST_FILES, run_cli
from helpers import index_rows

from pacsmigrate.index import CsvRows

CT = (TEST_FILES / "CT_small.dcm").read_bytes()


def _migrated(tmp_path: Path, names: list[bytes]) -> tuple[Path, Path, Path]:
    src, store, state = tmp_path / "pacs", tmp_path / "store", tmp_path / "state"
    src.mkdir()
    store.mkdir()
    for i, name in enumerate(names):
        Path(os.fsdecode(os.fsencode(src) + b"/" + name)).write_bytes(CT + bytes([i]))
    run_cli("migrate", str(src), str(store), "--state", str(state), "--no-progress",
            check=True)
    return src, store, state


def test_a_carriage_return_in_a_field_keeps_the_row_whole() -> None:
    out = io.StringIO()
    rows = [{"a": "x\rname.dcm", "b": "1"}, {"a": "plain", "b": "2"}]
    writer = CsvRows(out, ["a", "b"])
    for row in rows:
        writer.writerow(row)
    assert list(csv.DictReader(io.StringIO(out.getvalue(), newline=""))) == rows
    assert out.getvalue().endswith("plain,2\n")  # rows without one as before


def test_csv_exports_keep_one_row_a_file_with_a_carriage_return(tmp_path: Path) -> None:
    src, _, state = _migrated(tmp_path, [b"cr\rname.dcm", b"plain.dcm"])
    out = tmp_path / "index.csv"
    for command in (("index", "export", "--format", "csv"),):
        run_cli(*command, "--state", str(state), "-o", str(out), check=True)
        with open(out, newline="", encoding="utf-8") as f:
            got = list(csv.DictReader(f))
        assert sorted(r["source_path"] for r in got) == sorted(
            [f"{src}/cr\rname.dcm", f"{src}/plain.dcm"]), got


def test_sql_does_not_give_a_utf8_file_s_row_another_file_s_address(tmp_path: Path) -> None:
    """`lit\\xff.dcm` (its name is those 7 characters) and lit<0xFF>.dcm (shown so): the
    second's UPDATE would name the first's row; it is left as a comment."""
    src, _, state = _migrated(tmp_path, [b"lit\\xff.dcm", b"lit\xff.dcm"])
    text = run_cli("index", "export", "--format", "sql", "--state", str(state),
                   check=True).stdout
    literal = f"{src}/lit\\xff.dcm"
    updates = [line for line in text.splitlines()
               if line.startswith("UPDATE") and literal in line]
    assert len(updates) == 1, text
    [row] = [r for r in index_rows(state) if r["source_path"] == literal and
             not r["source_path_b64"]]
    assert row["key"] in updates[0]
    assert "-- not applied: a UTF-8 file of the index has this escaped text" in text


def test_locate_and_get_refuse_an_escape_that_names_two_files(tmp_path: Path) -> None:
    """The same two files: their shared `\\xNN` text is refused by locate and get (each
    found the literal one before); --b64 of each one's bytes finds that one."""
    src, _, state = _migrated(tmp_path, [b"lit\\xff.dcm", b"lit\xff.dcm"])
    text = f"{src}/lit\\xff.dcm"
    for command in (("locate", text), ("get", text, "-o", str(tmp_path / "out.dcm"))):
        proc = run_cli(*command, "--state", str(state))
        assert proc.returncode == 2 and "names two migrated files" in proc.stderr, proc
        assert len(proc.stderr.strip().splitlines()) == 1 and "--b64" in proc.stderr
    assert not (tmp_path / "out.dcm").exists()
    for i, name in enumerate((b"lit\\xff.dcm", b"lit\xff.dcm")):
        exact = os.fsencode(src) + b"/" + name
        b64 = base64.b64encode(exact).decode()
        doc = json.loads(run_cli("locate", "--b64", b64, "--state", str(state), "--json",
                                 check=True).stdout)
        assert doc["source_path_b64"] == ("" if i == 0 else b64), doc
        out = tmp_path / f"got{i}.dcm"
        run_cli("get", "--b64", b64, "--state", str(state), "-o", str(out), check=True)
        assert out.read_bytes() == CT + bytes([i])
    # The bytes themselves are not ambiguous; an unknown or bad --b64 is one line.
    run_cli("locate", os.fsdecode(os.fsencode(src) + b"/lit\xff.dcm"), "--state", str(state),
            check=True)
    proc = run_cli("locate", "--b64", base64.b64encode(b"/nope.dcm").decode(), "--state",
                   str(state))
    assert proc.returncode == 1 and "not in the index: /nope.dcm" in proc.stderr, proc
    proc = run_cli("get", "--b64", "not base64!", "--state", str(state), "-o",
                   str(tmp_path / "x"))
    assert proc.returncode == 2 and "is not base64" in proc.stderr, proc


def test_locate_json_says_size_and_encoding(tmp_path: Path) -> None:
    src, _, state = _migrated(tmp_path, [b"a.dcm"])
    doc = json.loads(run_cli("locate", str(src / "a.dcm"), "--state", str(state), "--json",
                             check=True).stdout)
    assert doc["size"] == len(CT) + 1 and doc["encoding"] == "" and doc["length"] == doc["size"]
    assert {"transfer_syntax", "study_date", "mtime_ns", "duplicate_of"} <= set(doc)


def test_a_name_near_the_longest_a_file_may_have_is_restored(tmp_path: Path) -> None:
    name = b"n" * 240 + b".dcm"  # 244 bytes: its temporary name would pass 255
    src, _, state = _migrated(tmp_path, [name])
    to = tmp_path / "restored"
    run_cli("restore", "--state", str(state), "--all", "--to", str(to), "--no-progress",
            check=True)
    [back] = [p for p in to.rglob("*") if p.is_file()]
    assert back.name == name.decode() and back.read_bytes() == (src / name.decode()).read_bytes()
    assert not list(to.rglob("*.pacsmigrate-partial"))

    # A file of other bytes at a target is replaced, and said.
    back.write_bytes(b"a local edit")
    again = run_cli("restore", "--state", str(state), "--all", "--to", str(to),
                    "--no-progress", check=True)
    assert "replaced: 1 of the files restored were at their targets with other bytes" in \
        again.stdout, again.stdout
    assert back.read_bytes() == (src / name.decode()).read_bytes()


def test_bad_arguments_and_unwritable_outputs_are_one_line(tmp_path: Path) -> None:
    src, _, state = _migrated(tmp_path, [b"a.dcm"])
    for args in (("locate", ""), ("get", ""), ("get", "--sop", "")):
        proc = run_cli(*args, "--state", str(state))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert "is empty" in proc.stderr, proc.stderr
    (tmp_path / "adir").mkdir()
    for args in (("get", str(src / "a.dcm"), "-o", str(tmp_path / "adir")),
                 ("index", "export", "-o", str(tmp_path / "no" / "such" / "x.csv"))):
        proc = run_cli(*args, "--state", str(state))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, \
            proc.stderr
        assert proc.stderr.startswith("error: "), proc.stderr


@pytest.mark.parametrize("inside", ["archive-out", "link"])
def test_check_writes_nothing_into_a_source_that_holds_the_destination(
        tmp_path: Path, inside: str) -> None:
    src = tmp_path / "pacs"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.dcm").write_bytes(CT)
    dest = src / "archive-out"
    if inside == "link":  # a symlink outside the source to a folder inside it
        (src / "sub" / "out").mkdir()
        dest = tmp_path / "link"
        dest.symlink_to(src / "sub" / "out")
    else:
        dest.mkdir()
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    proc = run_cli("check", str(src), str(dest), "--state", str(tmp_path / "state"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "overlap: the source is never written to" in proc.stdout + proc.stderr
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before
