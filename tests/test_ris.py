"""Paths as the RIS writes them (prefix mapping, UNC) and SQL quoting of any path."""

from __future__ import annotations

import sqlite3

import pytest

from pacsmigrate.errors import ConfigError
from pacsmigrate.ris import PrefixMap, SqlTarget, sql_identifier, sql_string

UNC = r"\\nas01\pacs\2015"


def test_longest_old_wins_whatever_the_order() -> None:
    m = PrefixMap.parse(["/mnt/pacs=/srv/pacs", "/mnt/pacs/2015=/archive/2015", "/=/root"])
    assert m.apply("/mnt/pacs/2015/CT/a.dcm") == "/archive/2015/CT/a.dcm"
    assert m.apply("/mnt/pacs/2016/CT/a.dcm") == "/srv/pacs/2016/CT/a.dcm"
    assert m.apply("/other/a.dcm") == "/root/other/a.dcm"


def test_unc_new_turns_the_rest_into_backslashes() -> None:
    m = PrefixMap.parse([f"/mnt/pacs/2015={UNC}"])
    assert m.apply("/mnt/pacs/2015/04/01/IM 1.dcm") == r"\\nas01\pacs\2015\04\01\IM 1.dcm"
    assert m.apply("/mnt/pacs/2015") == UNC
    # Drive letters and trailing separators on either side.
    m = PrefixMap.parse(["/mnt/pacs/=D:\\PACS\\"])
    assert m.apply("/mnt/pacs/x/y.dcm") == r"D:\PACS\x\y.dcm"


@pytest.mark.parametrize("path", [
    "/mnt/pacs/20150/a.dcm",        # OLD matches whole components only
    "/srv/mnt/pacs/2015/a.dcm",     # only at the start
    "/mnt/PACS/2015/a.dcm",         # source paths are case-sensitive
    "relative/mnt/pacs/2015",
])
def test_no_match_leaves_the_path_unchanged(path: str) -> None:
    assert PrefixMap.parse([f"/mnt/pacs/2015={UNC}"]).apply(path) == path
    assert PrefixMap().apply(path) == path


def test_escaped_non_utf8_and_odd_names_pass_through() -> None:
    m = PrefixMap.parse([f"/mnt/pacs/2015={UNC}"])
    assert m.apply("/mnt/pacs/2015/r\\xf6ntgen.dcm") == r"\\nas01\pacs\2015\r\xf6ntgen.dcm"
    assert m.apply("/mnt/pacs/2015/O'Brien ü.dcm") == "\\\\nas01\\pacs\\2015\\O'Brien ü.dcm"


def test_reverse_maps_a_ris_path_back() -> None:
    m = PrefixMap.parse([f"/mnt/pacs/2015={UNC}", "/mnt/pacs=/srv/pacs"])
    assert m.reverse(r"\\nas01\pacs\2015\04\a.dcm") == "/mnt/pacs/2015/04/a.dcm"
    assert m.reverse(r"\\NAS01\PACS\2015\04\a.dcm") == "/mnt/pacs/2015/04/a.dcm"  # Windows
    assert m.reverse("/srv/pacs/2016/a.dcm") == "/mnt/pacs/2016/a.dcm"
    assert m.reverse("/srv/PACS/2016/a.dcm") is None
    assert m.reverse(r"\\nas01\pacs\20150\a.dcm") is None


@pytest.mark.parametrize("spec, message", [
    ("/mnt/pacs", "expected OLD=NEW"),
    ("=/x", "expected OLD=NEW"),
    (r"\\nas01\pacs=/mnt/pacs", "OLD must be an absolute path"),
])
def test_bad_map_prefix_is_a_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PrefixMap.parse([spec])
    with pytest.raises(ConfigError, match="two NEW prefixes"):
        PrefixMap.parse(["/a=/b", "/a/=/c"])
    assert PrefixMap.parse(["/a=/b=c"]).apply("/a/x") == "/b=c/x"  # split at the first =


NASTY = [
    "/pacs/O'Brien\\x ü.dcm",
    "/pacs/x'; DROP TABLE images; --.dcm",
    "/pacs/''' OR '1'='1",
    "/pacs/a\\'b\\\\c\\",
    "/pacs/line\nbreak\ttab;",
    "/pacs/日本語/Bild_ß.dcm",
    '/pacs/"double" `back`',
    r"\\nas01\pacs\2015\r\xf6ntgen.dcm",
]


@pytest.mark.parametrize("text", NASTY)
def test_standard_literal_reads_back_exactly_in_sqlite(text: str) -> None:
    con = sqlite3.connect(":memory:")
    assert con.execute(f"SELECT {sql_string(text)}").fetchone()[0] == text


def test_quoting_rules() -> None:
    assert sql_string("O'Brien\\x") == "'O''Brien\\x'"
    assert sql_string("O'Brien\\x", dialect="mysql") == "'O''Brien\\\\x'"
    assert sql_string("ü") == "'ü'"  # UTF-8 kept, not escaped
    with pytest.raises(ValueError, match="NUL"):
        sql_string("a\x00b")
    with pytest.raises(ConfigError, match="unknown SQL dialect"):
        sql_string("a", dialect="oracle")


@pytest.mark.parametrize("name", ["images", "ris.images", "_x1", "image$2", '"Order Items"',
                                  'ris."Order Items"'])
def test_identifiers_accepted(name: str) -> None:
    assert sql_identifier(name, dotted=True) == name


@pytest.mark.parametrize("name", ["images; DROP TABLE x", "1abc", "a b", "", "a.b.c",
                                  '"a"b"', "`x`", "images--", "a.b"])
def test_identifiers_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid SQL identifier"):
        sql_identifier(name, dotted=name != "a.b")
    assert sql_identifier("`Order Items`", dialect="mysql") == "`Order Items`"


def test_update_statements_run_and_match_only_their_row() -> None:
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, file_path TEXT, object_uri TEXT)")
    con.executemany("INSERT INTO images (file_path) VALUES (?)", [(p,) for p in NASTY])
    con.execute("INSERT INTO images (file_path) VALUES ('/pacs/untouched')")
    target = SqlTarget()
    script = "BEGIN;\n" + "\n".join(
        target.update(path=p, uri=f"s3://b/k{i}#offset=0&length=1") for i, p in enumerate(NASTY)
    ) + "\nCOMMIT;\n"
    con.executescript(script)
    got = dict(con.execute("SELECT file_path, object_uri FROM images").fetchall())
    assert got == {**{p: f"s3://b/k{i}#offset=0&length=1" for i, p in enumerate(NASTY)},
                   "/pacs/untouched": None}
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == len(NASTY) + 1


def test_sql_target_validates_its_identifiers() -> None:
    with pytest.raises(ConfigError, match="not a valid SQL identifier"):
        SqlTarget(table="images; DROP TABLE images")
    with pytest.raises(ConfigError, match="not a valid SQL identifier"):
        SqlTarget(path_column="file path")
    assert SqlTarget(table="ris.images", dialect="mysql").update(path="a\\b", uri="u") == (
        "UPDATE ris.images SET object_uri = 'u' WHERE file_path = 'a\\\\b';")
