"""Source paths as bytes: display text, exact base64 escape, tar member names."""

from __future__ import annotations

import base64
import os

import pytest

from pacsmigrate.index import candidates
from pacsmigrate.paths import (
    b64_if_needed,
    display,
    from_fields,
    member_name,
    path_fields,
    shown,
)

CASES = [
    pytest.param(b"/pacs/2019/CT/IM0001.dcm", id="ascii"),
    pytest.param("/pacs/Müller/Bild_ß_日本.dcm".encode(), id="utf8"),
    pytest.param(b"/pacs/caf\xe9/\xff\xfe.dcm", id="latin1"),
    pytest.param(b"/pacs/half\xe2\x82.dcm", id="cut-utf8-sequence"),
]


@pytest.mark.parametrize("path", CASES)
def test_round_trip(path: bytes) -> None:
    text, b64 = display(path), b64_if_needed(path)
    assert from_fields(text, b64) == path
    assert path_fields(path) == {"source_path": text, "source_path_b64": b64}
    assert isinstance(text, str) and text.encode("utf-8")  # always printable as UTF-8


def test_utf8_paths_are_exact_text_without_b64() -> None:
    path = "/pacs/Müller/Bild_ß_日本.dcm".encode()
    assert display(path) == "/pacs/Müller/Bild_ß_日本.dcm"
    assert b64_if_needed(path) == ""
    assert b64_if_needed(b"/plain") == ""


def test_non_utf8_is_escaped_for_people_and_exact_in_b64() -> None:
    path = b"/pacs/caf\xe9/\xff.dcm"
    assert display(path) == "/pacs/caf\\xe9/\\xff.dcm"
    assert base64.b64decode(b64_if_needed(path)) == path
    # The display text alone would decode to other bytes: b64 is what makes it exact.
    assert display(path).encode() != path
    assert from_fields(display(path), b64_if_needed(path)) == path


def test_member_name_strips_leading_slash() -> None:
    assert member_name(b"/pacs/a/b.dcm") == "pacs/a/b.dcm"
    assert member_name(b"relative/b.dcm") == "relative/b.dcm"
    assert member_name(b"//double/lead") == "double/lead"
    name = member_name(b"/pacs/caf\xe9.dcm")
    assert not name.startswith("/")
    assert os.fsencode(name) == b"pacs/caf\xe9.dcm"  # surrogate escape keeps the bytes


def test_a_path_on_a_terminal_line_stays_one_line_and_can_be_given_back() -> None:
    """Control characters (a newline in a name) shown as \\xNN, like bytes that are not
    UTF-8; `get` and `locate` take that form back."""
    path = b"/pacs/two\nlines\t\x7f\xff.dcm"
    text = shown(path)
    assert text == "/pacs/two\\x0alines\\x09\\x7f\\xff.dcm" and text.isprintable()
    assert path in candidates(text)
    assert shown("/pacs/Müller.dcm".encode()) == "/pacs/Müller.dcm"
