"""`migrate --pack SIZE`: small studies share objects, and every promise still holds (each
file once, range GETs, the store describes itself, dry run = run, kill and resume, nothing
packed across storage classes or retention locks)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import S3Target, run_cli
from helpers import TEST_FILES, assert_complete, bundle_manifest, config, index_rows

from pacsmigrate import group
from pacsmigrate.backends import MemoryBackend
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.config import Destination, MigrateConfig, TransferConfig
from pacsmigrate.errors import ConfigError
from pacsmigrate.pack import OPEN_PACKS, Packer
from pacsmigrate.pipeline import Migration
from pacsmigrate.planpolicy import PlanPolicy
from pacsmigrate.records import FILE, TAR, BundlePlan, Described, Member
from pacsmigrate.retention import Retention
from pacsmigrate.stream import SourceStream
from pacsmigrate.synth import make_tree
from pacsmigrate.tiers import TierPolicy

MiB = 1 << 20


def _plan(study: str, sizes: list[int], *, kind: str = TAR, date_: str = "20200101"
          ) -> BundlePlan:
    about = Described(study, "dicom", "", f"1.2.{study}", "1.3", "1.4", "CT", date_, "1.2.840")
    plan = BundlePlan(study, kind)
    for i, size in enumerate(sizes):
        plan.add(Member(f"/p/{study}/{i}".encode(), size, 0, about))
    return plan


def _studies(plan: BundlePlan) -> list[str]:
    return list(dict.fromkeys(m.group for m in plan.members))


def test_small_bundles_are_joined_up_to_the_size_and_large_ones_pass() -> None:
    packer = Packer(100 * MiB, lambda plan: "one class")
    out = []
    for plan in [_plan("a", [30 * MiB]), _plan("b", [20 * MiB, 20 * MiB]), _plan("c", [40 * MiB]),
                 _plan("d", [100 * MiB]), _plan("e", [5], kind=FILE), _plan("f", [10 * MiB])]:
        out += packer.add(plan)
    # a+b fill 70 MiB; c would make 110: the pack of a and b goes; d (not below 100 MiB)
    # and the file pass through as they are.
    assert [_studies(p) for p in out] == [["a", "b"], ["d"], ["e"]]
    assert out[0].group == "a" and out[0].size == 70 * MiB and out[0].kind == TAR
    assert [_studies(p) for p in packer.flush()] == [["c", "f"]]
    assert packer.flush() == []
    # Off: every plan goes through untouched.
    off = Packer(0, lambda plan: "one class")
    plan = _plan("a", [30])
    assert off.add(plan) == [plan]


def test_a_pack_s_tar_is_never_larger_than_the_size() -> None:
    """SIZE bounds the object, not only its files' bytes: headers, padding and manifest
    lines make a tar of 1.2 KiB files twice their size (--pack 8MiB made objects of 18
    MiB, each a multipart upload where one PUT was meant)."""
    size = 64 << 10
    packer = Packer(size, lambda plan: "one class")
    out = []
    for i in range(200):
        out += packer.add(_plan(f"s{i:03}", [1229] * 3))
    out += packer.flush()
    assert [m.group for p in out for m in p.members] == [f"s{i // 3:03}" for i in range(600)]
    assert all(p.bound <= size for p in out)
    assert all(p.size < size // 2 for p in out)  # overhead takes over half of these
    assert sum(p.bound for p in out) > (len(out) - 1) * size * 0.9  # and they are full


def test_classes_never_share_a_pack_and_few_packs_fill_at_once() -> None:
    packer = Packer(MiB, lambda plan: plan.members[0].about.study_date)
    days = [f"2020010{i}" for i in range(1, OPEN_PACKS + 2)]
    out = []
    for day in days:
        out += packer.add(_plan(f"s{day}", [10], date_=day))
    # One class more than may fill at once: the least recently fed pack is stored.
    assert [_studies(p) for p in out] == [[f"s{days[0]}"]]
    out = packer.add(_plan("again", [10], date_=days[1]))
    assert out == []
    left = packer.flush()
    assert len(left) == OPEN_PACKS
    for pack in left:
        assert len({m.about.study_date for m in pack.members}) == 1
    assert _studies(left[-1]) == [f"s{days[1]}", "again"]  # the most recently fed last


def test_the_pack_class_keeps_apart_what_is_kept_differently(tmp_path: Path) -> None:
    today = date(2026, 12, 2)
    cfg = MigrateConfig(sources=(tmp_path,), dest=Destination.parse("s3://b/p"),
                        state_dir=tmp_path / "s", tiers=TierPolicy.parse(
                            "0-180d=STANDARD,180d-=GLACIER_IR"), pack=MiB)
    policy = PlanPolicy(cfg, today)
    klass = lambda day: policy.pack_class(None, _plan("x", [1], date_=day))  # type: ignore[arg-type]
    assert klass("20261101") == klass("20261120")  # both STANDARD, the same study year
    assert klass("20261101") != klass("20250101")  # another class
    assert klass("20230101") != klass("20220101")  # one class, another study-year tag
    locked = PlanPolicy(MigrateConfig(sources=(tmp_path,), dest=Destination.parse("s3://b/p"),
                                      state_dir=tmp_path / "s", retention=Retention(10),
                                      pack=MiB), today)
    lock = lambda day: locked.pack_class(None, _plan("x", [1], date_=day))  # type: ignore[arg-type]
    assert lock("20200101") == lock("20200101")
    assert lock("20200101") != lock("20200102")  # locked until another day


@pytest.mark.parametrize(("options", "words"), [
    ({"pack": 512 << 10}, "between 1MiB and --bundle-size"),
    ({"pack": 8 * MiB, "bundle_size": 4 * MiB, "large_file": MiB},
     "between 1MiB and --bundle-size"),
    ({"pack": 64 * MiB, "memory": 512 * MiB}, "a 16th of --memory"),
])
def test_bad_pack_sizes_are_one_clear_error(tmp_path: Path, options: dict[str, int],
                                            words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        MigrateConfig(sources=(tmp_path,), dest=Destination.parse("s3://b/p"),
                      state_dir=tmp_path / "s", **options)  # type: ignore[arg-type]
    proc = run_cli("migrate", str(tmp_path), "s3://b/p", "--dry-run", "--offline", "--state",
                   str(tmp_path / "s"), "--pack", "100KiB")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--pack" in proc.stderr


@pytest.fixture(scope="module")
def small_studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Many small studies over three layouts (a date layout scatters some series over days,
    so some of its files are spilled and packed after the walk)."""
    root = tmp_path_factory.mktemp("pack") / "pacs"
    make_tree(root / "date", studies=30, seed=5, layout="date", scale=0.02)
    make_tree(root / "patient", studies=20, seed=6, layout="patient", scale=0.02)
    make_tree(root / "hashed", studies=10, seed=7, layout="hashed", scale=0.02)
    return root


def _migrate(tree: Path, s3: S3Target, state: Path, *extra: str) -> list[str]:
    return ["migrate", str(tree), s3.url, "--endpoint-url", s3.info.endpoint_url, "--state",
            str(state), "--pack", "1MiB", "--no-progress", *extra]


def _objects(rows: list[dict[str, str]]) -> dict[str, set[str]]:
    """Studies by object key."""
    held: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        held[r["key"]].add(r["study_uid"])
    return held


@pytest.mark.parametrize("s3", ["moto", "seaweed"], indirect=True)
def test_packed_run_keeps_every_promise(s3: S3Target, small_studies: Path,
                                        tmp_path: Path) -> None:
    # The dry run plans the objects the run stores (the same state: the same study names,
    # so the same order of studies into packs).
    dry = tmp_path / "dry.json"
    state = tmp_path / "state"
    run_cli(*_migrate(small_studies, s3, state, "--dry-run", "--report", str(dry)),
            env=s3.env(), check=True)
    report = tmp_path / "run.json"
    run_cli(*_migrate(small_studies, s3, state, "--report", str(report)), env=s3.env(),
            check=True)
    rows = assert_complete(s3, state, small_studies)
    held = _objects(rows)
    studies = {r["study_uid"] for r in rows}
    assert len(held) < len(studies) / 4, (len(held), len(studies))
    assert max(len(s) for s in held.values()) > 1
    planned = json.loads(dry.read_text())["run"]["planned_objects"]
    assert planned == json.loads(report.read_text())["run"]["objects_uploaded"] == len(held)
    # An object that packs several studies is at most --pack's 1 MiB, tar and all.
    sizes = {o["Key"]: o["Size"] for o in
             s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    packs = [sizes[key] for key, held_studies in held.items() if len(held_studies) > 1]
    assert packs and max(packs) <= MiB, sorted(packs)[-3:]
    # Each study's files lie in one object, but for the series the date layout scattered.
    spread = [len({r["key"] for r in rows if r["study_uid"] == s}) for s in studies]
    assert sum(spread) / len(spread) < 1.5
    # Each member's manifest line names its study, so the store alone gives the same index.
    for key in held:
        doc = bundle_manifest(s3.get(key))
        assert {m["study_uid"] for m in doc["members"]} == held[key]
    rebuilt = tmp_path / "rebuilt"
    run_cli("index", "rebuild", s3.url, "--endpoint-url", s3.info.endpoint_url, "--state",
            str(rebuilt), env=s3.env(), check=True)
    assert sorted(index_rows(rebuilt), key=_path) == sorted(rows, key=_path)
    assert json.loads(report.read_text())["run"]["studies"] == len(studies)
    cp = Checkpoint(rebuilt, readonly=True)
    try:
        assert cp.group_entries() == len(studies)  # every study counted, not one per object
    finally:
        cp.close()
    verify = run_cli("verify", "--state", str(state), "--deep", "--source", env=s3.env())
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_spill_is_packed_beside_the_walks_last_uploads(small_studies: Path,
                                                          tmp_path: Path) -> None:
    """The first pass over the spill starts when the walk ends, while the walk's last
    objects upload; it does not wait for them (on 100k files that wait left the CPUs
    half idle for a second). Here the walk's objects are held until that pass begins:
    waiting for them first would hang the run."""
    spilling = asyncio.Event()

    class Held(MemoryBackend):
        async def save(self, key: str, chunks: Any, *, metadata: Any = None) -> Any:
            if key.endswith(".tar") and not spilling.is_set():
                await asyncio.wait_for(spilling.wait(), 20)
            return await super().save(key, chunks, metadata=metadata)

    class Watched(SourceStream):
        async def pack_spill(self) -> int:
            spilling.set()
            return await super().pack_spill()

    backend = Held()
    cfg = config([small_studies], "s3://bucket/pfx", tmp_path / "state", None, pack=MiB,
                 transfer=TransferConfig(concurrency=64))
    stats = asyncio.run(Migration(cfg, backend=backend, stream=Watched).run())
    files = sum(1 for p in small_studies.rglob("*") if p.is_file())
    assert stats.spilled > 0 and stats.files_migrated == files
    assert sum(k.endswith(".tar") for k in backend.objects) == stats.objects_uploaded


def _path(row: dict[str, str]) -> str:
    return row["source_path"] + row["source_path_b64"]


@pytest.mark.parametrize("point", ["after-intent:2", "after-upload:2", "after-commit:1"])
def test_a_packed_run_killed_resumes_with_nothing_lost_or_doubled(
        point: str, moto_s3: S3Target, small_studies: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    killed = run_cli(*_migrate(small_studies, moto_s3, state),
                     env={**moto_s3.env(), "PACSMIGRATE_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = run_cli(*_migrate(small_studies, moto_s3, state), env=moto_s3.env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert_complete(moto_s3, state, small_studies)
    if point.startswith("after-upload"):
        adopted = re.search(r"adopted \(stored by an interrupted attempt\): (\d+)", done.stdout)
        assert adopted and int(adopted.group(1)) >= 1, done.stdout


def _dated_tree(root: Path) -> dict[str, str]:
    """Two one-image studies in each of three age bands: StudyInstanceUID -> StudyDate."""
    today = datetime.now(UTC).date()
    studies = {}
    for i, days in enumerate([10, 20, 400, 410, 3000, 3010]):
        ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
        ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.{700 + i}"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{750 + i}"
        ds.StudyDate = f"{today - timedelta(days=days):%Y%m%d}"
        (root / f"s{i}").mkdir(parents=True)
        ds.save_as(root / f"s{i}" / "img.dcm")
        studies[ds.StudyInstanceUID] = ds.StudyDate
    return studies


@pytest.mark.seaweed
def test_packs_never_mix_storage_classes(seaweed_s3: S3Target, tmp_path: Path) -> None:
    studies = _dated_tree(tmp_path / "pacs")
    state = tmp_path / "state"
    policy = "0-180d=STANDARD,180d-5y=STANDARD_IA,5y-=GLACIER_IR"
    run_cli("migrate", str(tmp_path / "pacs"), seaweed_s3.url, "--endpoint-url",
            seaweed_s3.info.endpoint_url, "--state", str(state), "--tier-policy", policy,
            "--pack", "1MiB", "--no-progress", env=seaweed_s3.env(), check=True)
    rows = index_rows(state)
    tiers, today = TierPolicy.parse(policy), datetime.now(UTC).date()
    held = _objects(rows)
    assert sorted(len(s) for s in held.values()) == [2, 2, 2]  # one pack per class and year
    for key, uids in held.items():
        want = {tiers.class_for(studies[u], today) for u in uids}
        assert len(want) == 1
        head = seaweed_s3.client.head_object(Bucket=seaweed_s3.bucket, Key=key)
        assert head.get("StorageClass", "STANDARD") == want.pop(), key


def test_past_the_warmup_only_a_scattering_layout_spills(small_studies: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """With no warm-up the walk's signs decide from the first small early close: fewer
    files spill (whole small studies alone in their folders are stored at once; this
    tree is too small for its hashed part to show signs first: test_group has those),
    every file is migrated, and the dry run plans exactly the objects the run stores."""
    files = sum(1 for p in small_studies.rglob("*") if p.is_file())

    def migrate(name: str, **kw: Any) -> Any:
        cfg = config([small_studies], "s3://bucket/pfx", tmp_path / name, None, **kw)
        return asyncio.run(Migration(cfg, backend=MemoryBackend()).run())
    before = migrate("warm")
    monkeypatch.setattr(group, "SPILL_WARMUP", 0)
    dry = migrate("signs", dry_run=True)
    after = migrate("signs")
    assert after.spilled < before.spilled
    assert before.files_migrated == after.files_migrated == files
    assert dry.planned_objects == after.objects_uploaded
