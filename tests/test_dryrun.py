"""The dry run as an estimate to plan with: the requests the run will make, what the store
holds already, and `--sample` for a tree too large to read twice."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import AzureTarget, LocalTarget, S3Target, run, run_cli
from helpers import multipart_tree

from pacsmigrate.backends import opened
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.config import Destination, TransferConfig
from pacsmigrate.errors import ConfigError
from pacsmigrate.sample import bytes_error, scale
from pacsmigrate.stats import Stats
from pacsmigrate.survey import Holdings, survey
from pacsmigrate.synth import make_tree

Target = S3Target | LocalTarget | AzureTarget


def _args(tree: Path, store: Target, state: Path, *extra: str) -> list[str]:
    endpoint = ["--endpoint-url", store.info.endpoint_url] if isinstance(store, S3Target) \
        else []
    return ["migrate", str(tree), store.url, *endpoint,
            "--state", str(state), "--bundle-size", "8MiB", "--large-file", "3MiB",
            "--part-size", "5MiB", "--no-progress", *extra]


def _run(tree: Path, s3: Target, state: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    report = state.parent / f"{state.name}-report.json"
    proc = run_cli(*_args(tree, s3, state, "--report", str(report), *extra), env=s3.env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    run: dict[str, Any] = json.loads(report.read_text())["run"]
    return proc.stdout, run


def _estimated(out: str) -> int:
    m = re.search(r"^requests: ([\d,]+) \(([\d,]+) for the objects, ([\d,]+) for the",
                  out, re.MULTILINE)
    assert m, out
    total, objects, setup = (int(g.replace(",", "")) for g in m.groups())
    assert total == objects + setup
    return total


def test_the_dry_run_counts_the_requests_the_run_makes(moto_s3: S3Target,
                                                       tmp_path: Path) -> None:
    """It said ~369 for a run that made 465: now the plan's requests (single PUTs, multipart
    create/parts/complete) plus the pre-flight's and the migration's records are the
    count a run without retries makes, on a first run and on a later one."""
    tree = multipart_tree(tmp_path / "pacs")
    state = tmp_path / "state"
    classes = ("--storage-class", "STANDARD_IA")  # the pre-flight probes the class too
    out, plan = _run(tree, moto_s3, state, "--dry-run", *classes)
    estimate = _estimated(out)
    assert plan["planned_requests"] > plan["planned_objects"]  # some objects go in parts
    _, done = _run(tree, moto_s3, state, *classes)
    assert done["retries"] == {} and done["objects_uploaded"] == plan["planned_objects"]
    assert done["requests"] == estimate, (done["requests"], estimate)

    extra = next(p for p in sorted(tree.rglob("*.dcm")))
    shutil.copy(extra, tree / "new.dcm")
    big = tree / "b" / "large.bin"
    big.write_bytes(bytes(range(256)) * (12 << 12))  # 12 MiB: an object of three parts
    out, plan = _run(tree, moto_s3, state, "--dry-run", *classes)
    estimate = _estimated(out)
    # A bundle's PUT; the large file's listings, create, 3 parts, completion and sidecar.
    assert plan["planned_objects"] == 2 and plan["planned_requests"] == 1 + (4 + 3 + 1)
    _, done = _run(tree, moto_s3, state, *classes)
    assert done["requests"] == estimate, (done["requests"], estimate)


def test_packs_as_large_as_a_part_go_in_one_put_each(moto_s3: S3Target, tmp_path: Path
                                                    ) -> None:
    """--pack as large as --part-size: every pack is one PUT, as the dry run counts. (Packs
    were filled to SIZE of the files' bytes, and their tar headers, padding and manifest
    pushed each over the part size: a multipart upload of four requests where the dry run
    had counted one.)"""
    tree = tmp_path / "pacs"
    make_tree(tree, studies=40, seed=4, scale=0.05, layout="date")  # 219 files, 13 MiB
    state = tmp_path / "state"
    out, plan = _run(tree, moto_s3, state, "--dry-run", "--pack", "5MiB")
    estimate = _estimated(out)
    assert 3 <= plan["planned_objects"] < 40 and plan["planned_requests"] == plan[
        "planned_objects"]
    _, done = _run(tree, moto_s3, state, "--pack", "5MiB")
    assert done["retries"] == {} and done["objects_uploaded"] == plan["planned_objects"]
    assert done["requests"] == estimate, (done["requests"], estimate)
    assert moto_s3.pending_uploads() == []
    assert max(o["Size"] for o in moto_s3.client.list_objects_v2(
        Bucket=moto_s3.bucket)["Contents"]) <= 5 << 20


@pytest.mark.parametrize("kind", ["local", "azure"])
def test_the_dry_run_counts_the_requests_on_every_store(kind: str, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    """The same on a directory and on Azure (blocks and a commit, no create), an object in
    parts included."""
    store = request.getfixturevalue(f"{kind}_store")
    tree = tmp_path / "pacs"
    make_tree(tree, studies=3, seed=4, scale=0.05)
    (tree / "large.bin").write_bytes(bytes(range(256)) * (12 << 12))  # 12 MiB: in parts
    state = tmp_path / "state"
    out, plan = _run(tree, store, state, "--dry-run")
    estimate = _estimated(out)
    assert plan["planned_requests"] > plan["planned_objects"]
    _, done = _run(tree, store, state)
    assert done["retries"] == {} and done["objects_uploaded"] == plan["planned_objects"]
    assert done["requests"] == estimate, (done["requests"], estimate)


@pytest.mark.seaweed
def test_a_wrong_secret_stops_the_dry_run_in_one_line(seaweed_s3: S3Target,
                                                       tmp_path: Path) -> None:
    """With a wrong secret a dry run ended "OK: nothing left to migrate", exit 0: now its
    pre-flight lists the store and stops on the refusal (SeaweedFS checks signatures; moto
    does not), before reading the tree or making the state."""
    tree, state = tmp_path / "pacs", tmp_path / "state"
    make_tree(tree, studies=1, seed=2, scale=0.05)
    env = {**seaweed_s3.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    proc = run_cli(*_args(tree, seaweed_s3, state, "--dry-run"), env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "error: store refused (SignatureDoesNotMatch): the secret key from AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY does not belong to its access key ID"), lines[0]
    assert "not-the-secret" not in proc.stderr and "OK" not in proc.stdout, proc.stdout
    assert not state.exists()


def test_the_dry_run_says_what_the_store_holds(moto_s3: S3Target, tmp_path: Path) -> None:
    make_tree(tmp_path / "src", studies=4, seed=5, scale=0.05)
    src, state = tmp_path / "src", tmp_path / "state"
    out, _ = _run(src, moto_s3, state, "--dry-run")
    assert f"store: {moto_s3.url} holds nothing yet: the run stores every file" in out
    _, done = _run(src, moto_s3, state)
    objects = done["objects_uploaded"]
    out, plan = _run(src, moto_s3, state, "--dry-run")
    assert plan["planned_objects"] == 0
    m = re.search(r"holds ([\d,]+) objects \([\d.,]+ MB\): ([\d,]+) of this state's migration, "
                  r"([\d,]+) of the migration's own records, 0 others", out)
    assert m, out
    assert int(m.group(2)) == objects and int(m.group(1)) == objects + int(m.group(3))
    assert "OK: nothing left to migrate" in out
    # A foreign object, and an upload an interrupted client left unfinished.
    bucket, prefix = moto_s3.bucket, "archive"
    moto_s3.client.put_object(Bucket=bucket, Key=f"{prefix}/notes.txt", Body=b"x")
    moto_s3.client.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/ab/cd/left.tar")
    out, _ = _run(src, moto_s3, state, "--dry-run")
    assert re.search(r"1 others\nstore: the 1 others are not in this state's index", out), out
    assert "store: 1 unfinished multipart uploads under the prefix" in out
    # A new state against the same store: every file would be stored again.
    out, _ = _run(src, moto_s3, tmp_path / "other-state", "--dry-run")
    assert ("WARNING: store: a pacsmigrate migration is stored there that this --state does "
            "not know") in out, out
    assert ": 0 of this state's migration" in out


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Many small studies, one folder each (PatientID/Study/Series/file)."""
    root = tmp_path_factory.mktemp("sample") / "pacs"
    make_tree(root, studies=300, seed=21, layout="patient", scale=0.02)
    return root


def test_a_sample_estimates_the_whole_tree(moto_s3: S3Target, big_tree: Path,
                                           tmp_path: Path) -> None:
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"name": "flat", "classes": {
        "STANDARD": {"storage_gb_month": 0.02, "put_per_1000": 0.005}}}))
    whole_out, whole = _run(big_tree, moto_s3, tmp_path / "whole", "--dry-run",
                            "--prices", str(prices))
    out, part = _run(big_tree, moto_s3, tmp_path / "part", "--dry-run", "--sample", "20%",
                     "--prices", str(prices))
    est = part["estimate"]
    # Only a part was read; every file was counted.
    assert est["files"] == whole["files_seen"]
    assert part["files_seen"] == est["sampled_files"] < 0.45 * whole["files_seen"]
    assert 0 < est["percent"] < 45
    # Scaled from whole study folders of this tree, within a third of the whole plan's.
    for mine, theirs in ((est["bytes"], whole["bytes_seen"]),
                         (est["objects"], whole["planned_objects"]),
                         (est["requests"], whole["planned_requests"] + whole["setup_requests"])):
        assert abs(mine - theirs) <= theirs / 3, (mine, theirs)
        print(f"sample {est['percent']:.1f}%: estimated {mine:,}, whole tree {theirs:,}")
    # Its error from how the study folders read differ: a number, said on the line.
    assert 0 < est["bytes_error"] < 0.5
    assert re.search(r"GB \(±\d+%: one standard error, from how the folders read differ\)",
                     out), out
    assert abs(est["bytes"] - whole["bytes_seen"]) <= 3 * est["bytes_error"] * est["bytes"]
    rates = est["rates"]
    assert rates["bytes_per_second"] > 0 and rates["requests_per_second"] > 0
    assert est["upload_seconds"] > 0 and est["read_seconds"] > 0
    assert re.search(r"estimate of time: reading ~[\d,.]+ \w+, uploading ~[\d,.]+ \w+ "
                     r"\(probe objects: [\d,.]+ MB/s", out), out
    assert "cost estimate for the whole tree (flat;" in out
    whole_cost = {ln["storage_class"]: ln for ln in whole["cost"]["bundles"]}
    for line in part["cost"]["bundles"]:
        theirs = whole_cost[line["storage_class"]]["objects"]
        assert abs(line["objects"] - theirs) <= theirs / 3
    assert "OK: the whole tree estimated above from a sample" in out
    assert "(only probe objects, to time uploads, deleted at once)" in out
    assert moto_s3.object_keys() == []  # the probe objects are gone, nothing else written
    assert "Traceback" not in whole_out

    off, _ = _run(big_tree, moto_s3, tmp_path / "off", "--dry-run", "--sample", "20%",
                  "--offline")
    assert "uploading not measured (--offline)" in off
    assert "nothing was written to the destination" in off


@pytest.mark.parametrize("extra, message", [
    (["--dry-run", "--sample", "0%"], "--sample '0%': give a percentage from 0.01% to 50%"),
    (["--dry-run", "--sample", "ten"], "--sample 'ten': give a percentage"),
    (["--sample", "10%"], "--sample estimates a run without making it: add --dry-run"),
    (["--dry-run", "--sample", "10%", "--shard", "0/2"], "--sample reads a slice of its own"),
])
def test_a_bad_sample_is_one_line(extra: list[str], message: str, moto_s3: S3Target,
                                  tmp_path: Path) -> None:
    make_tree(tmp_path / "src", studies=1, seed=2, scale=0.02)
    proc = run_cli(*_args(tmp_path / "src", moto_s3, tmp_path / "state", *extra),
                   env=moto_s3.env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "state").exists()


def test_a_survey_cut_short_still_finds_the_migration(moto_s3: S3Target, tmp_path: Path) -> None:
    """On a store too large to list in time, the data's hashed folders come first in the
    listing: the descriptor and the sources record are asked for by name, so the warning
    about a migration this state does not know still comes."""
    src = tmp_path / "src"
    make_tree(src, studies=4, seed=5, scale=0.05)
    _run(src, moto_s3, tmp_path / "state")
    dest = Destination.parse(moto_s3.url, endpoint_url=moto_s3.info.endpoint_url)

    async def go() -> Holdings:
        cp = Checkpoint(tmp_path / "other")
        try:
            async with opened(dest, TransferConfig()) as backend:
                return await survey(backend, dest, cp, [str(src.resolve())], seconds=0,
                                    every=1)
        finally:
            cp.close()

    h = run(go())
    assert not h.complete and h.objects - h.records == 1  # stopped at the first data object
    assert h.descriptor and h.sources_recorded and h.known == 0
    lines = h.lines(dest)
    assert "(listed for 20 s only: at least)" in lines[0]
    assert lines[1].startswith("WARNING: store: a pacsmigrate migration is stored there")


def test_an_empty_or_thin_sample_says_so() -> None:
    stats = Stats(files_seen=0, counted_files=500)
    with pytest.raises(ConfigError, match="the part of the tree read holds none of its 500"):
        scale(stats, total_files=500, read_seconds=1.0, setup=8, rates=None, tally=None,
              prices=None)
    stats = Stats(files_seen=50, bytes_seen=5_000_000, planned_objects=5, planned_requests=5,
                  folders_read=3)
    est = scale(stats, total_files=500, read_seconds=1.0, setup=8, rates=None, tally=None,
                prices=None)
    assert (est.files, est.bytes, est.objects, est.requests) == (500, 50_000_000, 50, 58)
    assert any(line.startswith("WARNING: the sample read files in 3 folders only")
               for line in est.lines())
    # The bytes' error, from the folders read: none when all hold the same per file.
    same = Stats()
    for f, b in ((10, 1000), (20, 2000), (5, 500)):
        same.fold_folder([f, b])
    assert same.folders_read == 3 and bytes_error(same.folder_moments) == 0
    mixed = Stats()
    for f, b in ((10, 1000), (10, 3000), (10, 2000)):
        mixed.fold_folder([f, b])
    # bytes per file 100, 300, 200 around 200: sd 100, so 100 / 200 / sqrt(3).
    assert bytes_error(mixed.folder_moments) == pytest.approx(0.5 / 3 ** 0.5)
    one = Stats()
    one.fold_folder([10, 1000])
    assert bytes_error(one.folder_moments) is None


@pytest.mark.parametrize("files, above", [(2, 0), (3, 1)])
def test_a_bundle_whose_tar_outgrows_its_parts_is_counted_so(
        moto_s3: S3Target, tmp_path: Path, files: int, above: int) -> None:
    """A bundle whose files' bytes fill `files` - 1 parts (--part-size 5MiB) within a few
    KiB: its tar headers, padding and manifest make it one part more (a multipart upload
    where one PUT was counted, or three parts where two were). The dry run counted the
    files' bytes."""
    tree = tmp_path / "pacs"
    (tree / "study").mkdir(parents=True)
    each = (((files - 1) * 5 << 20) - 1000) // files
    for i in range(files):  # not DICOM: one folder's files go in one bundle
        (tree / "study" / f"f{i}.bin").write_bytes(bytes([i]) * each)
    state = tmp_path / "state"
    extra = ("--bundle-size", "64MiB", "--large-file", "20MiB")
    out, plan = _run(tree, moto_s3, state, "--dry-run", *extra)
    estimate = _estimated(out)
    assert plan["planned_objects"] == 1 and plan["planned_requests"] > 1  # in parts
    _, done = _run(tree, moto_s3, state, *extra)
    assert done["retries"] == {} and done["objects_uploaded"] == 1
    assert done["requests"] == estimate, (done["requests"], estimate)
    (size,) = (o["Size"] for o in moto_s3.client.list_objects_v2(
        Bucket=moto_s3.bucket)["Contents"] if o["Key"].endswith(".tar"))
    assert -(-size // (5 << 20)) == files  # one part more than the files' bytes fill


def test_copies_left_out_of_a_bundle_are_not_counted_as_parts(moto_s3: S3Target,
                                                              tmp_path: Path) -> None:
    """Files of 6 MiB (two parts of 5 MiB by their bytes), of which 2 MiB are a copy of
    another file in the bundle, and later of files stored already: deduplication stores
    each content once, so the tar fits one part, and the dry run counts one PUT."""
    tree = tmp_path / "pacs"
    first, later = tree / "study", tree / "later"
    first.mkdir(parents=True)
    later.mkdir()
    each = 2 << 20
    (first / "a.bin").write_bytes(b"\x01" * each)
    (first / "b.bin").write_bytes(b"\x01" * each)  # a copy of a.bin
    (first / "c.bin").write_bytes(b"\x02" * each)
    state = tmp_path / "state"
    extra = ("--bundle-size", "64MiB", "--large-file", "20MiB")
    for copies in (1, 2):
        out, plan = _run(tree, moto_s3, state, "--dry-run", *extra)
        estimate = _estimated(out)
        assert plan["planned_objects"] == 1 and plan["planned_requests"] == 1
        _, done = _run(tree, moto_s3, state, *extra)
        assert done["retries"] == {} and done["objects_uploaded"] == 1
        assert done["duplicate_files"] == copies, done
        assert done["requests"] == estimate, (done["requests"], estimate)
        # Next: two files with committed content (a's and c's) and a new one.
        shutil.copy(first / "a.bin", later / "d.bin")
        shutil.copy(first / "c.bin", later / "e.bin")
        (later / "f.bin").write_bytes(b"\x03" * each)


def test_the_dry_run_says_what_pack_would_make_of_small_studies(moto_s3: S3Target,
                                                                tmp_path: Path) -> None:
    """Without --pack, a tree of small studies gets a line saying how many objects
    --pack 8MiB would make of them (the run's own packer, counting); the run with it
    makes that many packs. With --pack, or with large studies, no such line."""
    tree = tmp_path / "pacs"
    make_tree(tree, studies=40, seed=4, scale=0.05, layout="date")  # 13 MiB
    state = tmp_path / "state"
    out, plan = _run(tree, moto_s3, state, "--dry-run")
    m = re.search(r"^small studies: with --pack 8MiB, the ([\d,]+) objects smaller than "
                  r"that would be ([\d,]+) \(far fewer", out, re.MULTILINE)
    assert m, out
    packable, packs = (int(g.replace(",", "")) for g in m.groups())
    assert plan["packable_objects"] == packable >= 30 and plan["packs"] == packs >= 2
    out, _ = _run(tree, moto_s3, state, "--dry-run", "--pack", "8MiB")
    assert "small studies:" not in out
    _, done = _run(tree, moto_s3, state, "--pack", "8MiB")
    assert done["objects_uploaded"] == plan["planned_objects"] - packable + packs
    big = tmp_path / "big"
    make_tree(big, studies=3, seed=4, scale=0.25)
    out, _ = _run(big, moto_s3, tmp_path / "state2", "--dry-run")
    assert "small studies:" not in out
    # Nor where --pack 8MiB would be refused (it may not exceed --bundle-size).
    out, _ = _run(tree, moto_s3, tmp_path / "state3", "--dry-run", "--bundle-size", "4MiB")
    assert "small studies:" not in out
