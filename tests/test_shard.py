"""`migrate --shard K/N` and `index merge`: slices of one migration, run apart, one index.

This file: the slicing (slices cover the tree once and merge to a single run's index; the
cut does not depend on where the archive is mounted; a state keeps its slice and its cut;
what a slice walks and lists). What `index merge` joins or refuses is in
test_shard_merge.py. The helpers here (_tree, _migrate, _same) are imported by
test_shard_merge.py, test_workers.py and test_workers_store.py.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import LocalTarget, S3Target, run, run_cli
from helpers import assert_complete, config, index_rows, source_files

from pacsmigrate import migrate
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.errors import ConfigError
from pacsmigrate.paths import from_fields
from pacsmigrate.reads import in_shard
from pacsmigrate.records import Problem
from pacsmigrate.shard import Shard, pruner
from pacsmigrate.synth import make_tree
from pacsmigrate.walk import Listing, Walker

# Columns that say what a file is and holds; key, offset and length name the bundle it
# went into, which depends on how the tree was sliced.
SAME = ("source_path", "source_path_b64", "blake3", "size", "mtime_ns", "study_uid",
        "series_uid", "sop_uid", "modality", "study_date", "status", "reason")


def _tree(root: Path) -> Path:
    make_tree(root / "p", studies=4, seed=71, layout="patient", scale=0.05)
    make_tree(root / "d", studies=4, seed=72, layout="date", scale=0.05)
    make_tree(root / "h", studies=3, seed=73, layout="hashed", scale=0.05)
    # Files directly in the root are spread over the slices one by one.
    for i, src in enumerate(sorted((root / "h").rglob("*"))[:6]):
        if src.is_file():
            shutil.copy(src, root / f"loose-{i}.dcm")
    (root / "notes.txt").write_text("not DICOM")
    return root


def _migrate(target: S3Target | LocalTarget, root: Path, state: Path, *extra: str) -> None:
    endpoint = ["--endpoint-url", target.info.endpoint_url] if isinstance(target, S3Target) \
        else []
    run_cli("migrate", str(root), target.url, *endpoint, "--state", str(state),
            "--no-progress", *extra, env=target.env(), check=True)


def _same(rows: list[dict[str, str]]) -> list[tuple[str, ...]]:
    return sorted(tuple(r[c] for c in SAME) for r in rows)


def test_slices_cover_the_tree_once_and_merge_to_a_single_runs_index(
        moto_s3: S3Target, local_store: LocalTarget, tmp_path: Path) -> None:
    root = _tree(tmp_path / "pacs")
    _migrate(local_store, root, tmp_path / "single")
    single = index_rows(tmp_path / "single")

    slices = [tmp_path / f"slice{k}" for k in range(3)]
    seen: set[bytes] = set()
    for k, state in enumerate(slices):
        _migrate(moto_s3, root, state, "--shard", f"{k}/3")
        paths = {from_fields(r["source_path"], r["source_path_b64"]) for r in index_rows(state)}
        assert paths and not paths & seen, "a file is in two slices"
        seen |= paths
    assert seen == set(source_files(root))

    merged = tmp_path / "merged"
    proc = run_cli("index", "merge", *map(str, slices), "--state", str(merged), check=True)
    assert f"{len(single):,} index rows" in proc.stdout and "slices: 0/3, 1/3, 2/3" in proc.stdout
    rows = assert_complete(moto_s3, merged, root)  # each row's range GET is its file
    assert _same(rows) == _same(single)
    # The merged state is read like any other.
    verify = run_cli("verify", "--state", str(merged), "--deep", "--source", env=moto_s3.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr
    victim = next(p for p in sorted((root / "d").rglob("*")) if p.is_file())
    out = tmp_path / "got.dcm"
    run_cli("get", str(victim), "-o", str(out), "--state", str(merged), env=moto_s3.env(),
            check=True)
    assert out.read_bytes() == victim.read_bytes()
    status = run_cli("status", "--state", str(merged), "--json", check=True).stdout
    assert json.loads(status)["files_migrated"] == len(single)


def test_two_machines_mounting_the_archive_elsewhere_cut_it_alike(
        local_store: LocalTarget, tmp_path: Path) -> None:
    """No shared path: each machine has its own mount point and its own state; the slices
    follow paths relative to the source root, so together they hold every file once."""
    first = _tree(tmp_path / "machine-a" / "mnt" / "pacs")
    second = tmp_path / "machine-b" / "nas"
    shutil.copytree(first, second, copy_function=shutil.copy2)
    _migrate(local_store, first, tmp_path / "machine-a" / "state", "--shard", "0/2")
    _migrate(local_store, second, tmp_path / "machine-b" / "state", "--shard", "1/2")
    merged = tmp_path / "merged"
    run_cli("index", "merge", str(tmp_path / "machine-a" / "state"),
            str(tmp_path / "machine-b" / "state"), "--state", str(merged), check=True)
    rel = []
    for r in index_rows(merged):
        path = os.fsdecode(from_fields(r["source_path"], r["source_path_b64"]))
        base = first if path.startswith(str(first)) else second
        rel.append(os.path.relpath(path, base))
    assert sorted(rel) == sorted(os.path.relpath(os.fsdecode(p), first)
                                 for p in source_files(first))


def test_a_state_keeps_its_slice(local_store: LocalTarget, tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root, studies=2, seed=74, layout="patient", scale=0.05)
    state = tmp_path / "state"
    _migrate(local_store, root, state, "--shard", "0/2")
    for other, says in ((["--shard", "1/2"], "--shard 1/2"), ([], "no --shard")):
        proc = run_cli("migrate", str(root), local_store.url, "--state", str(state),
                       "--no-progress", *other)
        assert proc.returncode == 2, proc.stderr
        assert f"holds slice 0/2 (--shard); this run asks for {says}" in proc.stderr
        assert "Traceback" not in proc.stderr
    _migrate(local_store, root, state, "--shard", "0/2")  # the same slice resumes


@pytest.mark.parametrize(("spec", "says"), [("2/2", "K must be less than N"),
                                            ("one/4", "give K/N"), ("0/0", "N must be")])
def test_a_bad_shard_is_one_line(spec: str, says: str, local_store: LocalTarget,
                                 tmp_path: Path) -> None:
    (tmp_path / "pacs").mkdir()
    proc = run_cli("migrate", str(tmp_path / "pacs"), local_store.url, "--state",
                   str(tmp_path / "s"), "--shard", spec)
    assert proc.returncode == 2 and says in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_the_slicing_rule() -> None:
    root = b"/mnt/pacs"
    shards = [Shard(k, 4) for k in range(4)]

    def owners(directory: bytes, name: bytes) -> list[int]:
        return [s.index for s in shards if s.keeps(root, directory, name)]

    # Two folders deep or more: the folder holding the file's folder decides, so a study's
    # series folders stay in one slice.
    study = b"/mnt/pacs/PID1/20200101/1.2.3"
    series = [owners(study + b"/" + s, b"IM1") for s in (b"1.2.3.1", b"1.2.3.2", b"1.2.3.3")]
    assert all(len(o) == 1 for o in series) and len({o[0] for o in series}) == 1
    # Files directly in the root: one by one.
    loose = {owners(root, b"f%d" % i)[0] for i in range(64)}
    assert loose == {0, 1, 2, 3}
    # Balanced over many study folders.
    counts = [0, 0, 0, 0]
    for i in range(4000):
        (k,) = owners(b"/mnt/pacs/PID%d/study/series" % i, b"IM1")
        counts[k] += 1
    assert min(counts) > 850
    # Below the cut (3 folders) a subtree is one unit: a day of a date-named tree, whatever
    # its studies; a slice enters only its own days' folders, and lists the levels above.
    day = b"/mnt/pacs/2020/01/05"
    below = {owners(day + b"/%s/%s" % (st, se), b"IM%d" % i)[0]
             for st in (b"A", b"B", b"C") for se in (b"1", b"2") for i in range(3)}
    assert len(below) == 1
    (mine,) = below
    subs = [day + b"/A", day + b"/B"]
    assert [len(s.subdirs(root, day, subs)) for s in shards] == [
        2 if s.index == mine else 0 for s in shards]
    assert all(s.subdirs(root, b"/mnt/pacs/2020/01", subs) == subs for s in shards)
    # Files directly in the day's folder belong to its month's unit (the folder holding it).
    assert owners(day, b"x") == owners(b"/mnt/pacs/2020/01/06", b"y")
    # States made before the cut keep their rule: each study folder decides.
    legacy = [Shard(k, 4, cut=None) for k in range(4)]
    units = {tuple(s.index for s in legacy if s.keeps(root, day + b"/S%d/1" % i, b"x"))
             for i in range(64)}
    assert len(units) == 4 and all(s.subdirs(root, day, subs) == subs for s in legacy)
    # A relative rule: the same cut under another mount point.
    moved = Shard(1, 4)
    assert moved.keeps(b"/nas", b"/nas/a/b/c", b"x") == moved.keeps(root, root + b"/a/b/c", b"x")
    with pytest.raises(ConfigError):
        Shard.parse("4/4")


def test_a_slices_verify_walks_only_its_slice(local_store: LocalTarget, tmp_path: Path) -> None:
    root = _tree(tmp_path / "pacs")
    state = tmp_path / "slice"
    _migrate(local_store, root, state, "--shard", "1/3")
    verify = run_cli("verify", "--state", str(state), "--source")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_folder_that_cannot_be_listed_is_reported_by_the_slice_of_its_files() -> None:
    root = b"/mnt/pacs"
    for k in range(200):
        folder = b"/mnt/pacs/PID%d/2020/study%d" % (k, k)
        listing = Listing(folder, problems=[Problem(folder, "unreadable directory")])
        owners = [s for s in range(8) if in_shard(listing, [root], Shard(s, 8)).problems]
        assert owners == [s for s in range(8) if Shard(s, 8).keeps(root, folder, b"any")]
    # The root itself: every slice reads files in it, so every slice reports it.
    listing = Listing(root, problems=[Problem(root, "unreadable directory")])
    assert all(in_shard(listing, [root], Shard(s, 4)).problems for s in range(4))


def test_a_state_of_a_run_on_workers_refuses_other_runs_from_the_start(
        local_store: LocalTarget, tmp_path: Path) -> None:
    """A run on workers killed before its first merge has no config yet: still refused."""
    root = tmp_path / "pacs"
    make_tree(root, studies=1, seed=78, layout="patient", scale=0.05)
    state = tmp_path / "state"
    cp = Checkpoint(state)
    try:
        cp.put_meta("workers", {"slices": 2, "dest": local_store.url})
    finally:
        cp.close()
    for extra in ([], ["--shard", "0/2"]):
        proc = run_cli("migrate", str(root), local_store.url, "--state", str(state),
                       "--no-progress", *extra)
        assert proc.returncode == 2 and "run on Dask workers" in proc.stderr


def test_a_slice_lists_the_upper_folders_and_only_its_own_subtrees(tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root, studies=12, seed=75, layout="date", scale=0.05)
    roots = [os.fsencode(root)]

    def walked(shard: Shard | None) -> tuple[int, set[bytes]]:
        walker = Walker(roots, prune=pruner(roots, shard))
        files: set[bytes] = set()
        try:
            while (got := walker.next_sync()) is not None:
                kept = in_shard(got, roots, shard) if shard is not None else got
                files |= {got.path + b"/" + name for name in kept.files}
        finally:
            walker.close()
        return walker.listings, files

    listings, every = walked(None)
    parts = [walked(Shard(k, 3)) for k in range(3)]
    assert set().union(*(p[1] for p in parts)) == every
    assert sum(len(p[1]) for p in parts) == len(every)  # each file in one slice
    assert all(0 < p[0] < listings for p in parts)
    # The folders above the cut are listed by every slice, the rest by one.
    upper = sum(1 for d in [root, *root.rglob("*")] if d.is_dir()
                and len(d.relative_to(root).parts) <= 3)
    assert sum(p[0] for p in parts) == listings + 2 * upper


def test_a_slice_state_made_before_the_cut_keeps_its_rule(local_store: LocalTarget,
                                                          tmp_path: Path) -> None:
    root = tmp_path / "pacs"
    make_tree(root, studies=8, seed=76, layout="date", scale=0.05)
    files = source_files(root)
    roots = [os.fsencode(root)]
    legacy, now = Shard(0, 2, cut=None), Shard.parse("0/2")
    assert {p for p in files if legacy.holds(roots, p)} != {p for p in files
                                                             if now.holds(roots, p)}
    state = tmp_path / "state"
    run(migrate(replace(config([root], local_store.url, state, None), shard=legacy)))
    before = index_rows(state)
    assert before
    proc = run_cli("migrate", str(root), local_store.url, "--state", str(state), "--shard",
                   "0/2", "--no-progress", check=True)
    assert "migrated now: 0 files" in proc.stdout, proc.stdout
    assert index_rows(state) == before


def test_every_slice_takes_the_cut_the_migration_recorded(local_store: LocalTarget,
                                                          tmp_path: Path) -> None:
    """The first slice records its cut in the store; a new slice state on any machine takes
    it, so slices made by different versions still cover the tree once. Slices that were
    cut two ways anyway (their states held files already) are refused by index merge."""
    root = tmp_path / "pacs"
    make_tree(root, studies=8, seed=77, layout="date", scale=0.05)
    old = tmp_path / "old"
    run(migrate(replace(config([root], local_store.url, old, None),
                        shard=Shard(0, 2, cut=None))))
    record = local_store.root / "pacsmigrate-run" / "slicing.json"
    assert json.loads(record.read_text())["cut"] is None
    new = tmp_path / "new"
    _migrate(local_store, root, new, "--shard", "1/2")
    cp = Checkpoint(new, readonly=True)
    try:
        assert cp.get_meta("config")["shard_cut"] is None
    finally:
        cp.close()
    paths = [{from_fields(r["source_path"], r["source_path_b64"]) for r in index_rows(s)}
             for s in (old, new)]
    assert not paths[0] & paths[1] and paths[0] | paths[1] == set(source_files(root))
    # Cut two ways: a slice made while no record was there to read.
    record.unlink()
    other = tmp_path / "other"
    _migrate(local_store, root, other, "--shard", "1/2")
    proc = run_cli("index", "merge", str(old), str(other), "--state", str(tmp_path / "m"))
    assert proc.returncode == 2 and "cut another way" in proc.stderr, proc.stderr
