"""The index exports (csv, jsonl, sqlite, sql), the object URI, `locate`, and the RIS update."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import config, source_files

from pacsmigrate import migrate
from pacsmigrate.config import Destination
from pacsmigrate.devstore import StoreInfo, create_bucket
from pacsmigrate.index import EXPORT_FIELDS, ObjectAddress, object_uri, parse_object_uri
from pacsmigrate.paths import display, from_fields
from pacsmigrate.ris import PrefixMap
from pacsmigrate.synth import make_tree

UNC = r"\\nas01\pacs\2015"
QUOTE_NAME = "O'Brien\\x ü.dcm"             # a quote, a backslash and non-ASCII
INJECTION_NAME = "x'; DROP TABLE images; --.dcm"
LATIN1_NAME = b"r\xf6ntgen.dcm"              # not UTF-8


# -- the object URI -----------------------------------------------------------------------
DEST = Destination.parse("s3://hospital-archive/pacs")


@pytest.mark.parametrize("key", [
    "pacs/3f/a2/3fa2/b81c.tar",
    "pacs/with space/100%/a+b?c#d&e=f.tar",
    "pacs/Müller/日本.tar",
    "pacs//double//slash.tar",
    "pacs/~tilde-_.x",
])
def test_object_uri_round_trips(key: str) -> None:
    uri = object_uri(DEST, key, offset=1536, length=525314)
    assert uri.startswith("s3://hospital-archive/") and uri.endswith("#offset=1536&length=525314")
    assert uri.isascii() and " " not in uri and uri.count("#") == 1 and "?" not in uri
    got = parse_object_uri(uri)
    assert got == ObjectAddress("s3", "hospital-archive", key, 1536, 525314)
    assert got.http_range == "bytes=1536-526849"


def test_object_uri_form() -> None:
    assert object_uri(DEST, "pacs/a b/c.tar", offset=0, length=0) == (
        "s3://hospital-archive/pacs/a%20b/c.tar#offset=0&length=0")
    assert parse_object_uri("s3://b/k#offset=0&length=0").http_range is None
    assert parse_object_uri("s3://b/k#length=5&offset=7") == ObjectAddress("s3", "b", "k", 7, 5)


def test_azure_object_uri_round_trips() -> None:
    az = Destination.parse("https://acct.blob.core.windows.net/pacs-archive/2016")
    uri = object_uri(az, "2016/3f/a b.tar", offset=1, length=2)
    assert uri == "az://pacs-archive/2016/3f/a%20b.tar#offset=1&length=2"
    assert parse_object_uri(uri) == ObjectAddress("az", "pacs-archive", "2016/3f/a b.tar", 1, 2)


def test_local_object_uri_is_the_files_url() -> None:
    local = Destination.parse("/srv/pacs archive")
    uri = object_uri(local, "3f/Müller.tar", offset=7, length=5)
    assert uri == "file:///srv/pacs%20archive/3f/M%C3%BCller.tar#offset=7&length=5"
    got = parse_object_uri(uri)
    assert got == ObjectAddress("file", "", "/srv/pacs archive/3f/Müller.tar", 7, 5)
    assert Path(got.key) == Path(local.bucket) / "3f/Müller.tar"  # open it, seek, read


@pytest.mark.parametrize("bad", ["s3://b/k", "s3://b/k#offset=1", "s3://b/#offset=1&length=2",
                                 "s3:///k#offset=1&length=2", "b/k#offset=1&length=2",
                                 "s3://b/k?x=1#offset=1&length=2", "s3://b/k#offset=-1&length=2",
                                 "s3://b/k#offset=1&length=2&x=3"])
def test_parse_object_uri_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="not an object address"):
        parse_object_uri(bad)


# -- a migrated tree, shared by the module ------------------------------------------------
@dataclass(frozen=True)
class Migrated:
    root: Path          # the tree as mounted: /.../mnt/pacs/2015
    state: Path
    s3: S3Target
    files: dict[bytes, Path]

    @property
    def mapping(self) -> PrefixMap:
        return PrefixMap.parse([f"{self.root}={UNC}"])

    def export(self, *args: str) -> str:
        proc = run_cli("index", "export", "--state", str(self.state), *args, check=True)
        return proc.stdout


@pytest.fixture(scope="module")
def migrated(moto_server: StoreInfo, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Migrated]:
    base = tmp_path_factory.mktemp("ris")
    root = (base / "mnt" / "pacs" / "2015").resolve()
    make_tree(root / "dcm4chee", studies=3, seed=11, layout="date", scale=0.05)
    odd = root / "odd"
    odd.mkdir()
    shutil.copy(TEST_FILES / "CT_small.dcm", odd / QUOTE_NAME)
    (odd / INJECTION_NAME).write_bytes(b"not DICOM; but still indexed\n")
    (odd / os.fsdecode(LATIN1_NAME)).write_bytes((TEST_FILES / "MR_small.dcm").read_bytes())
    (odd / "empty.dcm").write_bytes(b"")
    s3 = S3Target(moto_server, f"ris-{os.getpid()}", "moto")
    create_bucket(moto_server, s3.bucket)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in moto_server.env().items():  # the library's credential chain
            mp.setenv(k, v)
        state = base / "state"
        stats = run(migrate(config([root], s3.url, state, s3.info.endpoint_url)))
        assert stats.not_migrated == 0
        yield Migrated(root, state, s3, source_files(root))


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _range_get(s3: S3Target, uri: str) -> bytes:
    a = parse_object_uri(uri)
    assert (a.scheme, a.bucket) == ("s3", s3.bucket)
    if a.http_range is None:
        return b""
    body: bytes = s3.client.get_object(Bucket=a.bucket, Key=a.key, Range=a.http_range)[
        "Body"].read()
    return body


# -- csv and jsonl ------------------------------------------------------------------------
def test_csv_and_jsonl_carry_object_uri_and_exact_paths(migrated: Migrated) -> None:
    rows = _csv(migrated.export("--format", "csv"))
    assert tuple(rows[0]) == EXPORT_FIELDS
    paths = [from_fields(r["source_path"], r["source_path_b64"]) for r in rows]
    assert set(paths) == set(migrated.files) and len(paths) == len(rows)
    for r in rows:
        a = parse_object_uri(r["object_uri"])
        assert (a.bucket, a.key, a.offset, a.length) == (
            migrated.s3.bucket, r["key"], int(r["offset"]), int(r["length"]))
    by_name = {p.rsplit(b"/", 1)[1]: r for p, r in zip(paths, rows)}
    assert by_name[QUOTE_NAME.encode()]["source_path"] == f"{migrated.root}/odd/{QUOTE_NAME}"
    assert by_name[QUOTE_NAME.encode()]["source_path_b64"] == ""
    assert by_name[LATIN1_NAME]["source_path"].endswith("/odd/r\\xf6ntgen.dcm")

    lines = [json.loads(x) for x in migrated.export("--format", "jsonl").splitlines()]
    assert [{k: str(v) for k, v in x.items()} for x in lines] == rows


def test_map_prefix_rewrites_paths_but_b64_stays_the_original(migrated: Migrated) -> None:
    plain = _csv(migrated.export("--format", "csv"))
    mapped = _csv(migrated.export("--format", "csv", "--map-prefix", f"{migrated.root}={UNC}",
                                  "--map-prefix", "/nowhere=/x"))
    assert len(mapped) == len(plain)
    for p, m in zip(plain, mapped):
        assert m["source_path"] == migrated.mapping.apply(p["source_path"])
        assert m["source_path"].startswith(UNC + "\\") and "/" not in m["source_path"]
        assert {k: v for k, v in m.items() if k != "source_path"} == {
            k: v for k, v in p.items() if k != "source_path"}
    odd = [m for m in mapped if m["source_path_b64"]]
    assert len(odd) == 1
    assert from_fields("", odd[0]["source_path_b64"]) == os.fsencode(
        migrated.root) + b"/odd/" + LATIN1_NAME
    assert odd[0]["source_path"] == UNC + "\\odd\\r\\xf6ntgen.dcm"


# -- sqlite -------------------------------------------------------------------------------
def test_sqlite_has_the_indexes_and_the_csv_rows(migrated: Migrated, tmp_path: Path) -> None:
    db = tmp_path / "index.sqlite"
    db.write_bytes(b"an old export, replaced")
    migrated.export("--format", "sqlite", "-o", str(db))
    rows = _csv(migrated.export("--format", "csv"))
    con = sqlite3.connect(db)
    indexed = {name: [c[2] for c in con.execute(f"PRAGMA index_info({name})")]
               for (name,) in con.execute(
                   "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'images'")}
    assert sorted(indexed.values()) == [["sop_uid"], ["source_path"]]
    cols = [c[1] for c in con.execute("PRAGMA table_info(images)")]
    assert tuple(cols) == EXPORT_FIELDS
    got = [{c: "" if v is None else str(v) for c, v in zip(cols, r)}
           for r in con.execute("SELECT * FROM images ORDER BY rowid")]
    assert got == rows
    # Ready to query: the index answers a path lookup.
    r = rows[len(rows) // 2]
    plan = " ".join(x[3] for x in con.execute(
        "EXPLAIN QUERY PLAN SELECT object_uri FROM images WHERE source_path = ?",
        (r["source_path"],)))
    assert "images_source_path" in plan
    assert con.execute("SELECT object_uri FROM images WHERE source_path = ?",
                       (r["source_path"],)).fetchone() == (r["object_uri"],)
    assert not list(tmp_path.glob(".*partial"))


def test_sqlite_needs_an_output_file(migrated: Migrated) -> None:
    proc = run_cli("index", "export", "--state", str(migrated.state), "--format", "sqlite")
    assert proc.returncode == 2 and "give -o FILE" in proc.stderr


# -- sql: the RIS test from the issue -----------------------------------------------------
def test_ris_update_script_points_every_row_at_its_bytes(migrated: Migrated, tmp_path: Path
                                                         ) -> None:
    # A RIS that knows the files by their UNC path, as the old NAS share named them.
    ris = sqlite3.connect(tmp_path / "ris.sqlite")
    ris.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, file_path TEXT, object_uri TEXT)")
    source_of = {migrated.mapping.apply(display(p)): f for p, f in migrated.files.items()}
    ris.executemany("INSERT INTO images (file_path) VALUES (?)", [(p,) for p in source_of])
    ris.execute("INSERT INTO images (file_path) VALUES (?)", (UNC + r"\never\migrated.dcm",))
    ris.commit()

    script = tmp_path / "ris-update.sql"
    migrated.export("--format", "sql", "--map-prefix", f"{migrated.root}={UNC}",
                    "--table", "images", "--path-column", "file_path",
                    "--uri-column", "object_uri", "-o", str(script))
    text = script.read_text(encoding="utf-8")
    assert text.splitlines()[2] == "BEGIN;" and text.endswith("COMMIT;\n")
    assert "O''Brien\\x ü.dcm" in text   # quote doubled, backslash literal, UTF-8 kept
    ris.executescript(text)

    got = dict(ris.execute("SELECT file_path, object_uri FROM images").fetchall())
    assert got.pop(UNC + r"\never\migrated.dcm") is None
    assert set(got) == set(source_of) and all(got.values())
    assert ris.execute("SELECT count(*) FROM images").fetchone()[0] == len(source_of) + 1
    for ris_path, uri in got.items():
        data = _range_get(migrated.s3, uri)
        assert data == source_of[ris_path].read_bytes(), ris_path
    # The odd names took part.
    for name in (QUOTE_NAME, INJECTION_NAME, "r\\xf6ntgen.dcm"):
        assert any(p.endswith("\\odd\\" + name) for p in got), name


def test_sql_mysql_dialect_and_bad_identifiers(migrated: Migrated) -> None:
    text = migrated.export("--format", "sql", "--dialect", "mysql", "--table", "ris.images")
    assert "UPDATE ris.images SET" in text and "O''Brien\\\\x ü.dcm" in text
    assert "-- path not UTF-8; exact bytes (base64): " in text
    proc = run_cli("index", "export", "--state", str(migrated.state), "--format", "sql",
                   "--table", "images; DROP TABLE images")
    assert proc.returncode == 2 and "not a valid SQL identifier" in proc.stderr
    proc = run_cli("index", "export", "--state", str(migrated.state), "--map-prefix", "nope")
    assert proc.returncode == 2 and "expected OLD=NEW" in proc.stderr


# -- locate -------------------------------------------------------------------------------
def test_locate_finds_a_file_by_any_name_the_ris_knows(migrated: Migrated) -> None:
    path = migrated.root / "odd" / QUOTE_NAME
    proc = run_cli("locate", str(path), "--state", str(migrated.state), "--json", check=True)
    doc = json.loads(proc.stdout)
    assert doc["source_path"] == str(path) and doc["bucket"] == migrated.s3.bucket
    assert _range_get(migrated.s3, doc["object_uri"]) == path.read_bytes()
    assert doc["blake3"] == blake3.blake3(path.read_bytes()).hexdigest()
    assert doc["status"] == "dicom" and doc["sop_uid"] and doc["study_uid"]

    # Relative to the working directory.
    rel = os.path.relpath(path)
    assert json.loads(run_cli("locate", rel, "--state", str(migrated.state), "--json",
                              check=True).stdout) == doc
    # As the RIS writes it. (Not for a name with a backslash of its own: PrefixMap.reverse
    # turns every backslash after the UNC prefix into /.)
    image = next(f for f in migrated.files.values() if "dcm4chee" in f.parts)
    unc = UNC.upper() + migrated.mapping.apply(str(image))[len(UNC):]  # Windows ignores case
    found = json.loads(run_cli("locate", unc, "--state", str(migrated.state), "--json",
                               "--map-prefix", f"{migrated.root}={UNC}", check=True).stdout)
    assert found["source_path"] == str(image)
    assert _range_get(migrated.s3, found["object_uri"]) == image.read_bytes()
    # The export's \xNN escape for a name that is not UTF-8.
    escaped = run_cli("locate", f"{migrated.root}/odd/r\\xf6ntgen.dcm", "--state",
                      str(migrated.state), check=True).stdout
    assert "object_uri" in escaped and "source_path_b64" in escaped and "sop_uid" in escaped


def test_locate_not_in_the_index(migrated: Migrated) -> None:
    proc = run_cli("locate", "/mnt/pacs/2015/nope.dcm", "--state", str(migrated.state))
    assert proc.returncode == 1
    assert "not in the index: /mnt/pacs/2015/nope.dcm" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
