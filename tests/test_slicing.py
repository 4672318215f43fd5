"""A migration's slicing plan: units too large for one slice are cut finer, once, for good."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import LocalTarget, run, run_cli
from helpers import config, index_rows, source_files

from pacsmigrate import migrate, slicing
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.errors import SourceError
from pacsmigrate.paths import from_fields
from pacsmigrate.reads import in_shard
from pacsmigrate.shard import Shard, mark, pruner
from pacsmigrate.slicing import plan, with_plan
from pacsmigrate.synth import make_tree
from pacsmigrate.walk import Walker


def _flat(root: Path, gen: Path, studies: int, seed: int) -> Path:
    """A storescp-like import folder: every file directly in root/incoming."""
    make_tree(gen, studies=studies, seed=seed, layout="storescp", scale=0.05)
    (root / "incoming").mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in gen.rglob("*") if p.is_file()):
        shutil.move(f, root / "incoming" / f.name)
    shutil.rmtree(gen)
    return root


def _narrow(root: Path) -> Path:
    """A tree with one folder at the cut (archive/fs1/data) holding everything."""
    make_tree(root / "archive" / "fs1" / "data", studies=8, seed=82, layout="patient",
              scale=0.05)
    return root


def _sliced(root: Path, shards: list[Shard]) -> list[set[bytes]]:
    """The files each slice's walk finds (pruned as a slice walks, then selected)."""
    roots = [os.fsencode(root)]
    found = []
    for shard in shards:
        walker = Walker(roots, prune=pruner(roots, shard))
        files: set[bytes] = set()
        try:
            while (got := walker.next_sync()) is not None:
                files |= {got.path + b"/" + n for n in in_shard(got, roots, shard).files}
        finally:
            walker.close()
        found.append(files)
    return found


def _once(parts: list[set[bytes]], root: Path) -> None:
    every = {os.fsencode(p) for p in source_files(root)}
    assert set().union(*parts) == every
    assert sum(len(p) for p in parts) == len(every)  # each file in one slice


def test_a_flat_folder_is_spread_over_the_slices(tmp_path: Path) -> None:
    root = _flat(tmp_path / "pacs", tmp_path / "gen", studies=20, seed=81)
    make_tree(root / "p", studies=4, seed=83, layout="patient", scale=0.05)
    n = len(list((root / "incoming").iterdir()))
    assert n > 30
    doc = run(plan([os.fsencode(root)], 3, 3, flat_files=n - 1))
    assert doc["flat"] == [mark(b"incoming").hex()]
    assert doc["planned"]["folders_listed"] > 1
    shards = [with_plan(Shard(k, 3), doc) for k in range(3)]
    parts = _sliced(root, shards)
    _once(parts, root)
    inbox = os.fsencode(root / "incoming") + b"/"
    spread = [sum(1 for p in part if p.startswith(inbox)) for part in parts]
    assert sum(spread) == n and max(spread) < n * 0.7, spread
    # Without the plan the folder is one unit: all of it in one slice.
    before = [sum(1 for p in part if p.startswith(inbox))
              for part in _sliced(root, [Shard(k, 3) for k in range(3)])]
    assert sorted(before) == [0, 0, n]
    # A folder just under the threshold stays whole.
    assert run(plan([os.fsencode(root)], 3, 3, flat_files=n))["flat"] == []


def test_a_tree_narrow_at_the_top_is_cut_deeper(tmp_path: Path) -> None:
    root = _narrow(tmp_path / "pacs")
    # and, deep in it, an import folder of many files
    patient = b"archive/fs1/data/" + min(os.listdir(os.fsencode(root) + b"/archive/fs1/data"))
    imports = Path(os.fsdecode(os.fsencode(root) + b"/" + patient))
    _flat(imports, tmp_path / "gen", studies=16, seed=89)
    n = len(list((imports / "incoming").iterdir()))
    plain = _sliced(root, [Shard(k, 3) for k in range(3)])
    assert sorted(len(p) > 0 for p in plain) == [False, False, True]  # one unit at the cut
    doc = run(plan([os.fsencode(root)], 3, 3, flat_files=n - 1))
    assert mark(b"archive/fs1/data").hex() in doc["split"]
    assert doc["flat"] == [mark(patient + b"/incoming").hex()]
    assert mark(patient).hex() in doc["split"]  # so the walk of every slice enters it
    shards = [with_plan(Shard(k, 3), doc) for k in range(3)]
    parts = _sliced(root, shards)
    _once(parts, root)
    assert sum(1 for p in parts if p) >= 2, [len(p) for p in parts]
    inbox = os.fsencode(imports / "incoming") + b"/"
    assert sum(1 for p in parts if any(f.startswith(inbox) for f in p)) >= 2
    # Cut at most DEEPER levels below the cut: here the study folders (PatientID/date/
    # study), so each study's series stay in one slice, as in one run.
    owner: dict[bytes, set[int]] = {}
    for k, part in enumerate(parts):
        for p in part:
            study = p[len(os.fsencode(root)) + 1:].split(b"/")[:6]
            owner.setdefault(b"/".join(study), set()).add(k)
    assert all(len(v) == 1 for v in owner.values())
    # A slice lists the folders above the units and only its own subtrees below.
    roots = [os.fsencode(root)]
    listed = []
    for shard in [*shards, None]:
        walker = Walker(roots, prune=pruner(roots, shard))
        while walker.next_sync() is not None:
            pass
        walker.close()
        listed.append(walker.listings)
    assert all(n < listed[-1] for n in listed[:-1]), listed


def _slices(store: LocalTarget, root: Path, states: Path, n: int) -> list[set[bytes]]:
    """Run each slice K/n in turn (in this process); the files each state's index holds."""
    held = []
    for k in range(n):
        state = states / f"s{k}"
        run(migrate(replace(config([root], store.url, state, None),
                            shard=Shard.parse(f"{k}/{n}"))))
        held.append({from_fields(r["source_path"], r["source_path_b64"])
                     for r in index_rows(state)})
    return held


def test_slices_keep_the_recorded_plan_as_the_tree_grows(
        local_store: LocalTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first slice plans and records; the others, and later runs after the folder has
    grown and new large folders appeared, cut the tree the same way: nothing moves between
    slices, every file is in exactly one."""
    monkeypatch.setattr(slicing, "FLAT_FILES", 25)
    root = _flat(tmp_path / "pacs", tmp_path / "gen", studies=16, seed=84)
    make_tree(root / "p", studies=4, seed=85, layout="patient", scale=0.05)
    held = _slices(local_store, root, tmp_path, 3)
    record = local_store.root / "pacsmigrate-run" / "slicing.json"
    planned = json.loads(record.read_text())
    assert planned["flat"] == [mark(b"incoming").hex()]
    files = set(source_files(root))
    assert set().union(*held) == files and sum(map(len, held)) == len(files)
    inbox = os.fsencode(root / "incoming") + b"/"
    assert sum(1 for h in held if any(p.startswith(inbox) for p in h)) >= 2
    for k in range(3):
        cp = Checkpoint(tmp_path / f"s{k}", readonly=True)
        try:
            assert cp.get_meta("config")["shard_plan"]["flat"] == planned["flat"]
        finally:
            cp.close()
    # It grows: more files in the flat folder, a new folder larger than the threshold.
    _flat(root, tmp_path / "gen2", studies=8, seed=86)
    _flat(root / "new", tmp_path / "gen3", studies=16, seed=87)
    assert len(list((root / "new" / "incoming").iterdir())) > 25
    again = _slices(local_store, root, tmp_path, 3)
    assert json.loads(record.read_text()) == planned
    files = set(source_files(root))
    assert set().union(*again) == files and sum(map(len, again)) == len(files)
    assert all(before <= after for before, after in zip(held, again, strict=True))
    newer = os.fsencode(root / "new" / "incoming") + b"/"
    assert sum(1 for h in again if any(p.startswith(newer) for p in h)) == 1  # not planned
    # verify --source of a slice checks its own files against the source, as cut by its plan.
    for k in range(3):
        proc = run_cli("verify", "--state", str(tmp_path / f"s{k}"), "--source")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # The slices merge to one index, a row per file.
    proc = run_cli("index", "merge", *(str(tmp_path / f"s{k}") for k in range(3)),
                   "--state", str(tmp_path / "merged"), check=True)
    assert "(slices: 0/3, 1/3, 2/3)" in proc.stdout, proc.stdout
    rows = index_rows(tmp_path / "merged")
    assert Counter(from_fields(r["source_path"], r["source_path_b64"]) for r in rows) == \
        Counter(files)
    # A slice planned another way (no record to read when it began) is not merged with them.
    record.unlink()
    monkeypatch.setattr(slicing, "FLAT_FILES", 10**6)
    run(migrate(replace(config([root], local_store.url, tmp_path / "other", None),
                        shard=Shard.parse("0/3"))))
    proc = run_cli("index", "merge", str(tmp_path / "other"), str(tmp_path / "s1"),
                   str(tmp_path / "s2"), "--state", str(tmp_path / "m2"))
    assert proc.returncode == 2 and "another slicing plan" in proc.stderr, proc.stderr
    # and a slice that holds files refuses to go on under another plan than the store's
    proc = run_cli("migrate", str(root), local_store.url, "--state", str(tmp_path / "s1"),
                   "--shard", "1/3", "--no-progress")
    assert proc.returncode == 2 and "cut another way than the migration's recorded plan" \
        in proc.stderr, proc.stderr


def test_a_dry_run_of_a_slice_plans_as_its_run_will(
        local_store: LocalTarget, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slicing, "FLAT_FILES", 25)
    root = _flat(tmp_path / "pacs", tmp_path / "gen", studies=16, seed=88)
    state = tmp_path / "s"
    cfg = replace(config([root], local_store.url, state, None), shard=Shard.parse("1/3"))
    run(migrate(replace(cfg, dry_run=True)))
    cp = Checkpoint(state, readonly=True)
    try:
        dry = cp.get_meta("config")["shard_plan"]
    finally:
        cp.close()
    assert dry["flat"] == [mark(b"incoming").hex()]
    record = local_store.root / "pacsmigrate-run" / "slicing.json"
    assert not record.exists()  # a dry run writes nothing to the store
    run(migrate(cfg))
    assert {k: v for k, v in json.loads(record.read_text()).items() if k != "planned"} == \
        {k: v for k, v in dry.items() if k != "planned"}


def test_a_flat_folder_deep_in_a_narrow_tree_is_reached_by_every_slice(tmp_path: Path) -> None:
    """Its folder is split although its other folders hold only files: else the slice of
    that folder's unit would be the only one to enter it, and the other slices' share of
    the flat folder's files would be lost."""
    root = tmp_path / "pacs"
    deep = root / "a" / "b" / "c" / "d"
    for name, count in (("imports", 40), ("series1", 3), ("series2", 3)):
        (deep / name).mkdir(parents=True)
        for i in range(count):
            (deep / name / f"{i}.dcm").write_bytes(b"x")
    doc = run(plan([os.fsencode(root)], 4, 3, flat_files=30))
    assert doc["flat"] == [mark(b"a/b/c/d/imports").hex()]
    assert mark(b"a/b/c/d").hex() in doc["split"]
    parts = _sliced(root, [with_plan(Shard(k, 4), doc) for k in range(4)])
    _once(parts, root)
    assert sum(1 for p in parts if p) >= 2


def test_a_wide_folder_is_cut_from_a_look_into_a_few_of_its_folders(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder of 150,000 patients is not listed patient by patient to decide its cut: the
    planner looks into the first SAMPLE of its folders (here 2)."""
    monkeypatch.setattr(slicing, "SAMPLE", 2)
    root = _narrow(tmp_path / "pacs")
    doc = run(plan([os.fsencode(root)], 3, 3))
    assert mark(b"archive/fs1/data").hex() in doc["split"]
    parts = _sliced(root, [with_plan(Shard(k, 3), doc) for k in range(3)])
    _once(parts, root)
    assert sum(1 for p in parts if p) >= 2, [len(p) for p in parts]


def test_a_source_that_cannot_be_listed_is_not_planned_without(tmp_path: Path) -> None:
    """A plan made without a root would stand for good: refuse, in one line."""
    (tmp_path / "here").mkdir()
    with pytest.raises(SourceError, match="cannot list .*missing to plan the slicing"):
        run(plan([os.fsencode(tmp_path / "here"), os.fsencode(tmp_path / "missing")], 2, 3))


def test_the_walk_hands_every_subfolder_to_the_planner(tmp_path: Path) -> None:
    """The last piece of a folder's listing names all its folders, also those the prune
    kept the walk out of (the planner counts them; it used to catch them in the prune)."""
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    walker = Walker([os.fsencode(tmp_path)], prune=lambda directory, subdirs: [])
    try:
        got = walker.next_sync()
        assert got is not None and got.rest is None
        assert sorted(got.subdirs) == [os.fsencode(tmp_path / n) for n in ("a", "b", "c")]
        assert walker.next_sync() is None  # and entered none of them
    finally:
        walker.close()
