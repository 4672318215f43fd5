"""The header scan's series shortcut (headcache.py): a file read after another of the same
layout gives exactly what the full scan gives it alone, whatever differs between the two;
and the shortcut is taken where only values differ."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import data_store
import pytest
from test_header import SAMPLES, encode, files_under, image, sequences, with_private

from pacsmigrate import headcache
from pacsmigrate.headscan import scan_fields
from pacsmigrate.synth import make_tree

IMPLICIT = "1.2.840.10008.1.2"


def outcome(data: bytes, size: int) -> Any:
    try:
        return scan_fields(data, size)
    except Exception as exc:  # noqa: BLE001 - compared, not hidden: both ways must agree
        return type(exc)


def alone(data: bytes, size: int | None = None) -> Any:
    headcache.forget()
    return outcome(data, len(data) if size is None else size)


def after(template: bytes, data: bytes, size: int | None = None) -> tuple[Any, bool]:
    """The scan of data right after the scan of template; whether it took the shortcut."""
    headcache.forget()
    outcome(template, len(template) if size is None else size)
    size = len(data) if size is None else size
    took = headcache.matching(data, min(len(data), size), size) is not None
    got = outcome(data, size)
    return got, took


@pytest.fixture(autouse=True)
def no_template() -> Iterator[None]:
    headcache.forget()
    yield
    headcache.forget()


BASE = {"InstanceNumber": "1", "AccessionNumber": "A0001", "SeriesNumber": "3"}
# Values of the same length as BASE's and image()'s: each file differs from the first only
# inside values, so the shortcut is taken; what each gives is judged again all the same.
VARIANTS: dict[str, dict[str, object]] = {
    "another instance": {"SOPInstanceUID": "1.2.826.0.1.3680043.2.1125.1.4",
                         "InstanceNumber": "2"},
    "another study": {"StudyInstanceUID": "1.2.826.0.1.3680043.2.1125.7"},
    "another date": {"StudyDate": "20250101"},
    "another modality": {"Modality": "MR"},
    "several modalities": {"Modality": "C\\"},  # two values: pydicom gives a list
    "non-ASCII accession": {"AccessionNumber": "A\xe900\xe9"},
    "another character set": {"SpecificCharacterSet": "ISO_IR 192"},
}
# Values pydicom would not write (it strips UI values): (group, element) -> the new value.
EDITS = {"no study UID": ((0x0020, 0x000D), b" " * 28),
         "padded SOP UID": ((0x0008, 0x0018), b"1.2.826.0.1.3680043.2.1125.1  ")}


def edited(data: bytes, tag: tuple[int, int], new: bytes, *, implicit: bool) -> bytes:
    """data with the data set's element `tag` given the value `new` (of its length)."""
    key = struct.pack("<HH", *tag)
    at = data.index(key if implicit else key + b"UI", 132 + 12)
    length = struct.unpack_from("<I" if implicit else "<H", data, at + 4 + 2 * (not implicit))
    start = at + 8
    assert length[0] == len(new)
    return data[:start] + new + data[start + len(new):]


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("name", sorted(VARIANTS) + sorted(EDITS))
def test_a_file_differing_only_in_values_takes_the_shortcut_and_gives_its_own_fields(
        name: str, implicit: bool) -> None:
    ts = IMPLICIT if implicit else "1.2.840.10008.1.2.1"
    first = encode(image(**BASE, **sequences(undefined=True)), ts=ts)
    if name in EDITS:
        second = edited(first, *EDITS[name], implicit=implicit)
    else:
        second = encode(image(**{**BASE, **sequences(undefined=True), **VARIANTS[name]}),
                        ts=ts)
    assert len(first) == len(second)
    got, took = after(first, second)
    assert took
    assert got == alone(second)
    if name == "another study":
        assert got[0] == "1.2.826.0.1.3680043.2.1125.7"
    if name in ("several modalities", "non-ASCII accession"):
        assert got is None  # pydicom decides those, with or without the shortcut
    if name == "no study UID":
        assert got[0] == "" and got[6] == "DICOM without StudyInstanceUID"


@pytest.mark.parametrize("name", ["another study", "several modalities", "no study UID"])
def test_values_far_apart_take_the_shortcut_too(name: str) -> None:
    """Fields spread over more than the stretch the shortcut decodes at once (a long
    description between the SOP and study UIDs) are read one by one: the same fields."""
    far = {**BASE, "StudyDescription": "x" * 5000}
    first = encode(image(**far))
    second = edited(first, *EDITS[name], implicit=False) if name in EDITS else encode(
        image(**{**far, **VARIANTS[name]}))
    got, took = after(first, second)
    assert took and got == alone(second)
    if name == "another study":
        assert got[0] == "1.2.826.0.1.3680043.2.1125.7"


def test_a_different_layout_is_scanned_in_full() -> None:
    first = encode(image(**BASE))
    longer = encode(image(**{**BASE, "InstanceNumber": "123"}))  # "1 " -> "123 "
    other_vr = bytearray(first)
    at = other_vr.index(b"\x10\x00\x10\x00PN")  # PatientName's VR
    other_vr[at + 4:at + 6] = b"LO"
    for name, data in (("longer", longer), ("moved", encode(image(**BASE, PatientID="X"))),
                       ("another VR", bytes(other_vr))):
        got, took = after(first, data)
        assert got == alone(data), name
        assert not took, name  # a length, the elements or a VR differ: not the same layout


def mutations(data: bytes, count: int, seed: int) -> Iterator[bytes]:
    """Copies of data with one to three bytes changed, mostly within its header."""
    rng = random.Random(seed)
    header = min(len(data), 2048)
    for _ in range(count):
        out = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(header)
            out[at] = rng.choice([rng.randrange(256), out[at] ^ 1, 0x20, 0x00, ord("\\")])
        yield bytes(out)


def crafted() -> dict[str, bytes]:
    return {
        "explicit, sequences of undefined length": encode(image(**sequences(undefined=True))),
        "explicit, sequences of defined length": encode(image(**sequences(undefined=False))),
        "implicit, private": encode(with_private(image(**sequences(undefined=True)),
                                                 undefined=True), ts=IMPLICIT),
        "explicit, private": encode(with_private(image(), undefined=False)),
        "CT_small": (SAMPLES / "CT_small.dcm").read_bytes(),
        "MR_small_implicit": (SAMPLES / "MR_small_implicit.dcm").read_bytes(),
    }


@pytest.mark.parametrize("name", sorted(crafted()))
def test_any_change_of_a_few_bytes_gives_what_the_full_scan_gives(name: str) -> None:
    """Bytes changed anywhere (tags, VRs, lengths, values, inside sequences, the transfer
    syntax): after the original, each copy gives exactly what it gives alone."""
    data = crafted()[name]
    took = 0
    for i, changed in enumerate(mutations(data, 300, seed=len(name))):
        got, shortcut = after(data, changed)
        assert got == alone(changed), f"mutation {i}"
        took += shortcut
    assert 0 < took < 300  # both ways were taken
    # Also as a prefix of the file (the read stage's first bytes of a large file).
    prefix = data[:1024]
    for i, changed in enumerate(mutations(prefix, 100, seed=7)):
        got, _ = after(prefix, changed, len(data))
        assert got == alone(changed, len(data)), f"prefix mutation {i}"


def corpus(tmp_path: Path) -> list[Path]:
    tree = make_tree(tmp_path / "tree", studies=6, layout="patient", scale=0.2).root
    return (files_under(tree) + files_under(SAMPLES)
            + files_under(Path(data_store.__file__).parent / "data"))


def test_files_in_turn_give_what_each_gives_alone(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Real files (pydicom's) and a synthetic tree's series, scanned one after another as a
    walk would: each gives what it gives alone; the series take the shortcut."""
    paths = corpus(tmp_path)
    alone_results = [alone(p.read_bytes()) for p in paths]
    took = 0
    matching = headcache.matching

    def counting(*args: Any) -> Any:
        nonlocal took
        found = matching(*args)
        took += found is not None
        return found

    monkeypatch.setattr(headcache, "matching", counting)
    headcache.forget()
    for path, want in zip(paths, alone_results, strict=True):
        data = path.read_bytes()
        assert outcome(data, len(data)) == want, path
    assert took >= 20


def test_a_tree_of_unlike_files_makes_few_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    made = 0
    real = headcache.Template

    def counting(*args: Any) -> Any:
        nonlocal made
        made += 1
        return real(*args)

    monkeypatch.setattr(headcache, "Template", counting)
    # Each two bytes longer than the one before: never the same layout.
    files = [encode(image(PatientName="P" * (2 * i + 2))) for i in range(200)]
    wanted = [alone(data) for data in files]
    made = 0
    headcache.forget()
    for data, want in zip(files, wanted, strict=True):
        assert outcome(data, len(data)) == want
    assert made <= headcache._PATIENT + 200 // headcache._SPARSE + 1


def test_the_layout_s_checks_are_made_once_and_a_template_failing_one_is_still_exact(
        ) -> None:
    """A template keeps the outcome of the field checks its layout decides (VRs, places,
    pixel data's length): files of its layout then check only their values. Where one of
    those checks fails (here the study UID with another VR: pydicom must decide), the
    template keeps none and each file goes through them all, with the same outcome."""
    first = encode(image(**BASE))
    alone(first)
    assert headcache.last is not None and headcache.last.plan is not None
    second = encode(image(**{**BASE, **VARIANTS["another study"]}))
    got, took = after(first, second)
    assert took and got == alone(second) and got[0] == "1.2.826.0.1.3680043.2.1125.7"

    def other_vr(data: bytes) -> bytes:
        at = data.index(b"\x20\x00\x0d\x00UI")  # StudyInstanceUID, explicit VR
        return data[:at + 4] + b"LO" + data[at + 6:]

    odd_first, odd_second = other_vr(first), other_vr(second)
    alone(odd_first)
    assert headcache.last is not None and headcache.last.plan is None
    got, took = after(odd_first, odd_second)
    assert took and got == alone(odd_second) and got is None
