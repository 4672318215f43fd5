"""tar_parts()/file_parts(): bundles of real DICOM files, checked with the system tar."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import blake3
import pytest
from helpers import call_unblocked

from pacsmigrate import manifest
from pacsmigrate.bundle import Built, _Parts, file_parts, tar_length, tar_parts
from pacsmigrate.config import Destination
from pacsmigrate.errors import SourceChangedError, SourceError
from pacsmigrate.keys import assign_key, new_secret
from pacsmigrate.read import ReadOptions, read_files
from pacsmigrate.records import DICOM, BundlePlan, Member, Problem

SECRET = new_secret()
DEST = Destination.parse("s3://bucket/archive")
PART = 4096
STUDY_DIR = ("dicomdirtests", "77654033", "CT2")  # four CT images of one real study


@pytest.fixture
def samples(shared_samples: Path) -> Path:
    """Read-only sample files (see conftest.shared_samples)."""
    return shared_samples


def member_of(path: bytes) -> Member:
    """The file as the read stage sees it; its bytes are not kept (hold_max=0), so packing
    reads it again and sees what changed since."""
    directory, _, name = path.rpartition(b"/")
    got = read_files(directory, [name], ReadOptions(SECRET, hold_max=0))
    (m,) = got.members
    return m


def make_plan(paths: list[bytes], kind: str = "tar") -> BundlePlan:
    members = [member_of(p) for p in paths]
    assert len({m.group for m in members}) == 1, "a plan holds one study"
    plan = BundlePlan(members[0].group, kind)
    for m in members:
        plan.add(m)
    assign_key(DEST, plan)
    return plan


def pack(plan: BundlePlan, part_size: int = PART) -> tuple[list[bytes], Built]:
    result = Built()
    parts = list(tar_parts(plan, result, part_size=part_size, secret=SECRET))
    return parts, result


@pytest.fixture
def study(samples: Path, tmp_path: Path) -> list[bytes]:
    """One study's files under awkward names: plain, non-UTF-8, and a very long path."""
    src = tmp_path / "src"
    plain = src.joinpath(*STUDY_DIR)
    plain.mkdir(parents=True)
    images = sorted((samples.joinpath(*STUDY_DIR)).iterdir())
    assert len(images) == 4
    paths = []
    for image in images[:2]:  # fresh copies: tests change and delete them
        shutil.copyfile(image, plain / image.name)
        paths.append(os.fsencode(plain / image.name))
    latin = os.fsencode(src) + b"/caf\xe9-\xff.dcm"  # bytes that are not UTF-8
    shutil.copyfile(images[2], latin)
    deep = src.joinpath(*(["a-rather-long-directory-name-for-a-pacs-share"] * 4))
    deep.mkdir(parents=True)
    long_path = deep / "17196-with-a-long-file-name-too.dcm"
    shutil.copyfile(images[3], long_path)
    paths += [latin, os.fsencode(long_path)]
    assert len(paths[3].lstrip(b"/")) > 100 and len(paths[3]) - paths[3].rfind(b"/") < 100
    return paths


def extract(bundle: bytes, tmp_path: Path) -> bytes:
    tar_file = tmp_path / "bundle.tar"
    tar_file.write_bytes(bundle)
    out = tmp_path / "extracted"
    out.mkdir()
    proc = subprocess.run(["tar", "-xf", str(tar_file), "-C", str(out)],
                          check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return os.fsencode(out)


def test_parts_form_a_tar_the_system_tar_extracts(study: list[bytes], tmp_path: Path) -> None:
    plan = make_plan(study)
    parts, result = pack(plan)

    assert len(parts) > 2
    assert all(len(p) == PART for p in parts[:-1])
    assert 0 < len(parts[-1]) <= PART
    bundle = b"".join(parts)
    assert len(bundle) == result.size
    assert len(bundle) % 512 == 0
    assert result.problems == [] and result.moved == [] and result.reread == 0

    out = extract(bundle, tmp_path)
    for path in study:
        extracted = os.path.join(out, path.lstrip(b"/"))
        with open(path, "rb") as a, open(extracted, "rb") as b:
            assert a.read() == b.read(), path
    # The non-UTF-8 name came back byte for byte (not mangled to '?' or UTF-8).
    latin_dir = os.path.join(out, os.path.dirname(study[2]).lstrip(b"/"))
    assert b"caf\xe9-\xff.dcm" in os.listdir(latin_dir)

    # The manifest is a member too, then the trailer that says where it is.
    with tarfile.open(tmp_path / "bundle.tar") as tf:
        names = tf.getnames()
    assert names[-2:] == [manifest.manifest_name(plan.bundle_id),
                          manifest.trailer_name(plan.bundle_id)]
    assert len(names) == len(study) + 2
    with open(os.path.join(out, manifest.manifest_name(plan.bundle_id).encode()), "rb") as f:
        assert f.read() == result.manifest


@pytest.mark.parametrize("dedup", [False, True])
def test_a_plans_tar_length_is_known_before_packing(study: list[bytes], dedup: bool) -> None:
    """tar_length (a dry run's part count) is the length tar_parts makes: PAX and ustar
    headers, padding, manifest lines (a copy's too, with deduplication), the lock, the
    trailer."""
    copy = study[0] + b"-copy.dcm"
    shutil.copyfile(study[0], copy)
    plan = make_plan([*study, copy])
    for m in plan.members:  # as a dry run reads them: hashed
        m.blake3 = blake3.blake3(Path(os.fsdecode(m.path)).read_bytes()).hexdigest()
    retention = {"retain_until": "2046-01-01", "mode": "COMPLIANCE",
                 "legal_hold": False, "retention": "20y"}
    known = (lambda about, digest: None) if dedup else None
    built = Built(created="2026-12-06T22:40:00+00:00", retention=retention)
    body = b"".join(tar_parts(plan, built, part_size=PART, secret=SECRET, known=known))
    assert built.duplicates == dedup and len(body) == built.size
    assert tar_length(plan, created=built.created, retention=retention, known=known) \
        == len(body) < plan.bound


def test_manifest_members_locate_exact_bytes(study: list[bytes]) -> None:
    plan = make_plan(study)
    parts, result = pack(plan)
    bundle = b"".join(parts)
    doc = manifest.parse(result.manifest)
    assert doc["key"] == plan.key and doc["bundle_id"] == plan.bundle_id
    entries = manifest.entries(doc)
    assert [(e.path, e.offset, e.length, e.blake3) for e in entries] == [
        (e.path, e.offset, e.length, e.blake3) for e in result.entries]
    assert len(entries) == len(study)
    for e, path, rec in zip(entries, study, plan.members):
        with open(path, "rb") as f:
            data = f.read()
        assert e.offset % 512 == 0
        assert bundle[e.offset:e.offset + e.length] == data
        assert e.blake3 == blake3.blake3(data).hexdigest()
        assert (e.size, e.mtime_ns) == (rec.size, rec.mtime_ns)
        assert e.about.sop_uid == rec.about.sop_uid and e.about.status == DICOM
    assert [e.path for e in entries] == study


def test_trailer_locates_the_manifest(study: list[bytes]) -> None:
    parts, result = pack(make_plan(study))
    bundle = b"".join(parts)
    where = manifest.read_trailer(bundle[-manifest.TAIL:])
    assert where is not None
    offset, length = where
    assert bundle[offset:offset + length] == result.manifest
    assert manifest.read_trailer(bundle[-manifest.TAIL - 512:-512]) is None


def test_manifest_found_in_tail(study: list[bytes]) -> None:
    plan = make_plan(study)
    parts, result = pack(plan)
    bundle = b"".join(parts)
    raw = manifest.find_in_tar_tail(bundle, plan.bundle_id)
    assert raw == result.manifest
    # The manifest member: header + data padded to 512, the trailer, two zero end blocks.
    need = 512 + len(result.manifest) + (-len(result.manifest) % 512) + 1024 + 1024
    assert bundle.endswith(b"\0" * 1024)
    for n in (need, need + 512, need + 4096):  # block-aligned tails, as recovery reads them
        assert len(bundle) > n
        assert manifest.find_in_tar_tail(bundle[-n:], plan.bundle_id) == result.manifest
    assert manifest.find_in_tar_tail(bundle[-(need - 512):], plan.bundle_id) is None
    assert manifest.find_in_tar_tail(bundle, "0" * 24) is None  # another bundle's id


def test_manifest_found_in_unaligned_tail(study: list[bytes]) -> None:
    """"The last bytes of a bundle" need not be a multiple of 512 long.

    find_in_tar_tail aligns its 512-byte walk to the start of `tail`, but tar blocks are
    aligned to the bundle's end, so any tail whose length is not a multiple of 512 misses.
    """
    plan = make_plan(study)
    parts, result = pack(plan)
    bundle = b"".join(parts)
    need = 512 + len(result.manifest) + (-len(result.manifest) % 512) + 2048
    for n in (need + 1, need + 300, need + 4000):
        assert n % 512 and len(bundle) > n
        raw = manifest.find_in_tar_tail(bundle[-n:], plan.bundle_id)
        assert raw == result.manifest, f"manifest not found in the last {n} bytes"


def test_file_changed_after_cataloguing_is_reread(study: list[bytes], tmp_path: Path) -> None:
    plan = make_plan(study)
    changed = study[1]
    with open(changed, "ab") as f:
        f.write(b"\0" * 300)  # same header, same study; new size
    with open(changed, "rb") as f:
        new_bytes = f.read()
    assert len(new_bytes) == plan.members[1].size + 300

    parts, result = pack(plan)
    bundle = b"".join(parts)
    assert result.reread == 1
    assert result.reread_bytes == len(new_bytes)
    assert result.moved == [] and result.problems == []
    e = result.entries[1]
    assert bundle[e.offset:e.offset + e.length] == new_bytes
    assert e.size == len(new_bytes)
    assert e.mtime_ns == os.stat(changed).st_mtime_ns
    assert e.blake3 == blake3.blake3(new_bytes).hexdigest()
    assert e.about.sop_uid == plan.members[1].about.sop_uid  # re-parsed, same header

    out = extract(bundle, tmp_path)
    with open(os.path.join(out, changed.lstrip(b"/")), "rb") as f:
        assert f.read() == new_bytes


def test_file_now_of_another_study_is_handed_back(study: list[bytes], samples: Path) -> None:
    plan = make_plan(study)
    other = samples / "dicomdirtests" / "77654033" / "CR1" / "6154"
    shutil.copyfile(other, study[0])
    _, result = pack(plan)
    assert result.reread == 1
    assert [m.path for m in result.moved] == [study[0]]
    assert result.moved[0].group != plan.group
    packed = [e.path for e in manifest.entries(manifest.parse(result.manifest))]
    assert packed == study[1:]


def test_vanished_file_is_problem_not_member(study: list[bytes], tmp_path: Path) -> None:
    plan = make_plan(study)
    gone = study[2]  # the non-UTF-8 one
    os.unlink(gone)
    parts, result = pack(plan)
    assert result.problems == [Problem(gone, "vanished before packing")]
    assert result.problems[0].final
    assert len(result.entries) == len(study) - 1
    assert all(e.path != gone for e in manifest.entries(manifest.parse(result.manifest)))
    out = extract(b"".join(parts), tmp_path)
    assert not os.path.exists(os.path.join(out, gone.lstrip(b"/")))
    with tarfile.open(tmp_path / "bundle.tar") as tf:
        assert len(tf.getnames()) == len(study) + 1  # three files, manifest, trailer


def test_member_replaced_by_fifo_is_problem_and_does_not_block(study: list[bytes]) -> None:
    """A member replaced by a FIFO after cataloguing must neither hang packing nor be packed.

    A plain O_RDONLY open blocks on a FIFO until a writer appears; stable_read() opens
    with O_NONBLOCK and checks that what it opened is still a regular file.
    """
    plan = make_plan(study)
    fifo = study[1]
    os.unlink(fifo)
    os.mkfifo(fifo)
    _, result = call_unblocked(lambda: pack(plan), fifo, what="tar_parts()")
    assert [p.path for p in result.problems] == [fifo]
    packed = [e.path for e in manifest.entries(manifest.parse(result.manifest))]
    assert fifo not in packed and len(packed) == len(study) - 1


def test_all_members_vanished_gives_no_bundle(study: list[bytes]) -> None:
    plan = make_plan(study[:2])
    for p in study[:2]:
        os.unlink(p)
    parts, result = pack(plan)
    assert parts == []
    assert result.entries == [] and result.manifest == b"" and result.size == 0
    assert {p.reason for p in result.problems} == {"vanished before packing"}


# -- one large file as its own object ---------------------------------------------------

def test_file_parts_streams_in_part_size_chunks(samples: Path) -> None:
    path = os.fsencode(samples / "CT_small.dcm")
    plan = make_plan([path], kind="file")
    assert plan.key.endswith(".dcm")
    with open(path, "rb") as f:
        data = f.read()
    result = Built()
    chunks = list(file_parts(plan, result, part_size=PART, secret=SECRET))
    assert b"".join(chunks) == data
    assert all(len(c) == PART for c in chunks[:-1]) and 0 < len(chunks[-1]) <= PART
    assert len(chunks) == -(-len(data) // PART)
    assert result.size == len(data) and result.reread == 0
    (e,) = result.entries
    assert (e.offset, e.length) == (0, len(data))
    assert e.blake3 == blake3.blake3(data).hexdigest()
    assert [m["blake3"] for m in manifest.parse(result.manifest)["members"]] == [e.blake3]


def test_file_parts_raises_when_file_grows_during_read(samples: Path, tmp_path: Path) -> None:
    path = os.fsencode(tmp_path / "growing.dcm")
    shutil.copyfile(samples / "CT_small.dcm", path)
    plan = make_plan([path], kind="file")
    result = Built()
    got = []
    with pytest.raises(SourceChangedError) as info:
        for chunk in file_parts(plan, result, part_size=PART, secret=SECRET):
            got.append(chunk)
            if len(got) == 2:
                with open(path, "ab") as f:
                    f.write(b"more pixels" * 1000)
    assert isinstance(info.value, SourceError)
    assert info.value.path == path
    assert result.entries == [] and result.manifest == b""  # nothing claims success


def test_file_parts_raises_when_file_rewritten_during_read(samples: Path,
                                                           tmp_path: Path) -> None:
    path = os.fsencode(tmp_path / "rewritten.dcm")
    shutil.copyfile(samples / "CT_small.dcm", path)
    plan = make_plan([path], kind="file")
    st = os.stat(path)
    with pytest.raises(SourceChangedError):
        for i, _ in enumerate(file_parts(plan, Built(), part_size=PART, secret=SECRET)):
            if i == 1:  # same size, new mtime: rewritten in place
                os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def test_file_parts_vanished(samples: Path, tmp_path: Path) -> None:
    path = os.fsencode(tmp_path / "gone.dcm")
    shutil.copyfile(samples / "CT_small.dcm", path)
    plan = make_plan([path], kind="file")
    os.unlink(path)
    result = Built()
    assert list(file_parts(plan, result, part_size=PART, secret=SECRET)) == []
    assert result.problems == [Problem(path, "vanished before packing")]


@pytest.mark.parametrize("bound", [0, 1000, 10_000, 1 << 20])
def test_parts_cut_exactly_and_are_never_written_again(bound: int) -> None:
    """Pieces of any size go into parts of exactly part_size (the last one shorter), each
    byte copied once; the bound is only a size hint (a part grows past it, a tar whose
    non-ASCII names took more than BundlePlan.bound counted); a part yielded is never changed."""
    rng = random.Random(7)
    pieces = [rng.randbytes(rng.choice([0, 1, 511, 512, 1208, 4095, 4096, 9000]))
              for _ in range(300)]
    cut = _Parts(PART, bound)
    out = [p for piece in pieces for p in cut.add(piece)] + list(cut.rest())
    kept = [bytes(p) for p in out]
    assert b"".join(out) == b"".join(pieces)
    assert all(len(p) == PART for p in out[:-1]) and 0 < len(out[-1]) <= PART
    assert cut.offset == sum(map(len, pieces))
    assert [bytes(p) for p in out] == kept  # the buffers were not reused
