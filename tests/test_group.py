"""The grouper: bundles close when full, when their study is left long enough, or for
memory; small early closes spill; the same input always gives the same plans."""

from __future__ import annotations

import random

import pytest

from pacsmigrate import group
from pacsmigrate.group import MEMBER_HELD, SPILL_FILES, Closed, Grouper
from pacsmigrate.records import FILE, TAR, Described, Member

MiB = 1 << 20


def m(directory: str, name: str, study: str, size: int = 1000, *, held: bool = True) -> Member:
    path = f"{directory}/{name}".encode()
    return Member(path, size, 1, Described(study * 32), "", b"x" if held else None)


def feed(g: Grouper, files: list[Member], *, spilled: frozenset[str] = frozenset()) -> Closed:
    """Files in walk order, each entering its directory; then the end of the walk."""
    out = Closed()
    for f in files:
        g.enter(f.path.rpartition(b"/")[0], out)
        g.add(f, out)
    g.finish(out, spilled=spilled.__contains__)
    return out


def grouper(**kw: int) -> Grouper:
    args = {"bundle_size": 64 * MiB, "large_file": 16 * MiB, "memory": 256 * MiB,
            "patience": 2, **kw}
    return Grouper(**args)


def names(plan_members: list[Member]) -> list[str]:
    return [p.path.decode().rsplit("/", 1)[1] for p in plan_members]


def test_a_study_split_over_folders_and_days_stays_one_bundle() -> None:
    # dcm4chee-style: study a's second series arrives two days later, with one other
    # study in between (fewer than `patience` new studies): still one bundle.
    files = [m("/2015/01/01/A/s1", f"a{i}", "a") for i in range(10)]
    files += [m("/2015/01/02/B/s1", f"b{i}", "b") for i in range(10)]
    files += [m("/2015/01/03/A/s2", f"a{i}", "a") for i in range(10, 20)]
    out = feed(grouper(), files)
    assert out.spill == []
    assert sorted((p.group[0], len(p.members)) for p in out.plans) == [("a", 20), ("b", 10)]


def test_a_left_study_closes_once_enough_others_started() -> None:
    files = [m("/p/1/A", f"a{i}", "a") for i in range(10)]
    for s in "bcd":  # three more studies: a is closed as soon as the third one starts
        files += [m(f"/p/2/{s}", f"{s}{i}", s) for i in range(10)]
    g = grouper(patience=3)
    out = Closed()
    for f in files:
        g.enter(f.path.rpartition(b"/")[0], out)
        g.add(f, out)
        if f.path.endswith(b"/d0"):
            assert [p.group[0] for p in out.plans] == ["a"]  # streamed before the end
    g.finish(out, spilled=lambda _: False)
    assert [p.group[0] for p in out.plans] == ["a", "b", "c", "d"]
    # ...but not while the walk is still inside its folder, however many studies pass.
    flat = [m("/flat", f"a{i}", "a") for i in range(9)] + [
        m("/flat", f"x{i}", chr(ord("e") + i)) for i in range(6)] + [m("/flat", "a9", "a")]
    out = feed(grouper(patience=1), flat)
    assert [len(p.members) for p in out.plans if p.group[0] == "a"] == [10]


def test_full_bundles_split_and_large_files_stand_alone() -> None:
    files = [m("/s", f"f{i}", "a", 3 * MiB, held=False) for i in range(7)]
    files.insert(3, m("/s", "huge", "a", 20 * MiB, held=False))
    out = feed(grouper(bundle_size=10 * MiB), files)
    kinds = [(p.kind, names(p.members)) for p in out.plans]
    assert kinds == [(FILE, ["huge"]), (TAR, ["f0", "f1", "f2"]), (TAR, ["f3", "f4", "f5"]),
                     (TAR, ["f6"])]


def test_scattered_small_pieces_spill_and_whole_studies_do_not() -> None:
    # Orthanc-style hashed folders: each study's files are everywhere.
    files = []
    for i in range(30):
        s = "abc"[i % 3]
        files.append(m(f"/{i % 7:02x}/{i:02x}", f"{s}{i}", s))
    out = feed(grouper(patience=1), files)
    spilled = {f.path for f in out.spill}
    planned = {f.path for p in out.plans for f in p.members}
    assert spilled and spilled | planned == {f.path for f in files}
    assert not spilled & planned
    # Closing at the end: a study that spilled before spills its last bundle too.
    out = feed(grouper(patience=1), files, spilled=frozenset({"a" * 32}))
    assert all(p.group != "a" * 32 for p in out.plans)
    # A bundle closed early with enough members is stored, not spilled.
    big = [m("/x/A", f"a{i}", "a") for i in range(SPILL_FILES)] + [
        m(f"/y/{s}", s, s) for s in "bcdef"]
    out = feed(grouper(patience=2), big)
    assert out.plans[0].group == "a" * 32 and len(out.plans[0].members) == SPILL_FILES
    assert all(f.group != "a" * 32 for f in out.spill)


def test_memory_pressure_closes_the_least_recently_fed_first() -> None:
    files = [m(f"/d/{s}", f"{s}{i}", s, MiB) for s in "abcd" for i in range(3)]
    out = feed(grouper(memory=5 * MiB, patience=100), files)
    # Each new study pushed the least recently fed one out (small: spilled); the last
    # stayed open until the end of the walk.
    assert [f.path.decode()[-2] for f in out.spill] == list("aaabbbccc")
    assert [p.group[0] for p in out.plans] == ["d"]


def test_same_input_same_plans() -> None:
    files = [m(f"/{i % 5}/{i % 3}", f"f{i}", "abcd"[i % 4], 1000 + i) for i in range(200)]
    runs = [feed(grouper(patience=2, memory=50_000), files) for _ in range(2)]
    assert [[f.path for f in p.members] for p in runs[0].plans] == [
        [f.path for f in p.members] for p in runs[1].plans]
    assert [f.path for f in runs[0].spill] == [f.path for f in runs[1].spill]


def test_memory_counts_what_a_member_costs_beside_its_bytes() -> None:
    """Tiny files: 5 + 20 files of 100 bytes are 2,500 bytes of data but hold ~34 KiB; a
    20,000-byte budget closes study a (early and small: spilled) while b comes in."""
    files = [m("/d/a", f"a{i}", "a", 100) for i in range(5)]
    files += [m("/d/b", f"b{i}", "b", 100) for i in range(20)]
    assert sum(f.size for f in files) < 20_000 < len(files) * MEMBER_HELD
    out = feed(grouper(memory=20_000, patience=100), files)
    assert names(out.spill) == [f"a{i}" for i in range(5)]
    assert [(p.group[0], len(p.members)) for p in out.plans] == [("b", 20)]
    # Files read later (no bytes held) still cost their records.
    for f in files:
        f.data = None
    out = feed(grouper(memory=30_000, patience=100), files)
    assert names(out.spill) == [f"a{i}" for i in range(5)]


def study(i: int) -> str:
    return f"{i:032x}"


def member(directory: str, name: str, i: int) -> Member:
    return Member(f"{directory}/{name}".encode(), 1000, 1, Described(study(i)), "", b"x")


def test_whole_small_studies_alone_in_their_folders_stop_spilling() -> None:
    """Small early closes of studies that never come back, each alone in its folder: the
    first SPILL_WARMUP spill (the layout has not shown itself yet), the rest are stored
    at once, so their files are read once."""
    n = group.SPILL_WARMUP + 300
    files = [member(f"/2015/01/{i:05d}/s", f"f{j}", i) for i in range(n) for j in range(3)]
    out = feed(grouper(patience=2), files)
    spilled = {f.group for f in out.spill}
    assert spilled == {study(i) for i in range(group.SPILL_WARMUP)}
    assert len(out.plans) == n - group.SPILL_WARMUP
    assert all(len(p.members) == 3 for p in out.plans)


def test_a_shared_folder_spills_after_the_warmup_too() -> None:
    """Flat or hashed folders hold several studies' files: their small early closes spill
    whether or not studies were seen coming back."""
    n = group.SPILL_WARMUP + 300
    # Two studies a folder, each folder left for good.
    files = [member(f"/h/{i // 2:05d}", f"f{j}", i) for i in range(n) for j in range(2)]
    files.sort(key=lambda f: f.path)
    out = feed(grouper(patience=2), files)
    # (The last folder's two studies are still open when the walk ends: stored then.)
    assert [len(p.members) for p in out.plans] == [2, 2]
    assert len(out.spill) == len(files) - 4


def test_studies_that_come_back_keep_the_spill_on() -> None:
    """A small hashed archive, a file a folder: no folder is shared, but most small early
    closes are of a study closed so before: they keep spilling past the warm-up (and the
    study is packed whole after the walk)."""
    studies, per = 40, 30
    rng = __import__("random").Random(4)
    order = [(i, j) for i in range(studies) for j in range(per)]
    rng.shuffle(order)  # Orthanc: a SOP's folder is a hash of its UID
    files = [member(f"/{k:04x}", f"f{j}", i) for k, (i, j) in enumerate(order)]
    out = feed(grouper(patience=2), files)
    assert len(order) > group.SPILL_WARMUP + 400
    # Only the very first closes of each study came before the signs: few plans.
    assert len(out.plans) < studies // 4 and len(out.spill) > 0.95 * len(files)


def test_the_signs_are_counted_over_a_window_that_forgets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The signs and the studies remembered are bounded (memory stays flat); when studies
    stop coming back, spilling stops once the window has moved on."""
    monkeypatch.setattr(group, "SPILL_WARMUP", 8)
    monkeypatch.setattr(group, "SPILL_WINDOW", 8)
    monkeypatch.setattr(group, "SPILL_REMEMBER", 16)
    g = grouper(patience=1)
    out = Closed()
    for k in range(40):  # four studies in turn, a file a folder: they keep coming back
        f = member(f"/a/{k:03d}", "f", k % 4)
        g.enter(f.path.rpartition(b"/")[0], out)
        g.add(f, out)
    assert not out.plans and out.spill
    for k in range(40):  # then new studies only, each once
        f = member(f"/b/{k:03d}", "f", 100 + k)
        g.enter(f.path.rpartition(b"/")[0], out)
        g.add(f, out)
    stored = [int(p.group, 16) for p in out.plans]
    # Within a few closes the window has forgotten the returns: the rest are stored.
    assert stored == list(range(stored[0], 100 + 39)) and 100 <= stored[0] <= 108
    assert len(g.closed_small) == 16 and len(g.signs) == 8


class _NoShortcut(Grouper):
    """A grouper that never takes add's fast path (the file before's bundle, remembered)."""

    @property  # type: ignore[override]
    def last(self) -> None:
        return None

    @last.setter
    def last(self, value: object) -> None:
        pass


@pytest.mark.parametrize("seed", range(40))
def test_the_fast_path_for_the_group_before_changes_no_plan(seed: int) -> None:
    # Random walks (studies spread over folders, folders shared, files large and small,
    # some not held) under budgets that close bundles when full and for memory: the same
    # plans and spills, member for member, with and without add's fast path.
    rng = random.Random(seed)
    files, studies = [], "abcdefghij"[:rng.randint(2, 10)]
    study = studies[0]
    for d in range(rng.randint(5, 40)):
        folder = f"/t/{d // 5}/{d}"
        for i in range(rng.randint(1, 30)):
            if rng.random() < 0.3 or i == 0:  # mostly runs of one study, as in a series
                study = rng.choice(studies)
            size = rng.choice([1000, 5000, 200_000, 3 * MiB])
            files.append(m(folder, f"f{d}-{i}", study, size, held=rng.random() < 0.8))
    kw = {"bundle_size": rng.choice([64 * MiB, 1 * MiB, 300_000]),
          "memory": rng.choice([256 * MiB, 2 * MiB, 200_000]),
          "patience": rng.randint(1, 4), "large_file": 2 * MiB}
    fast, full = feed(grouper(**kw), files), feed(_NoShortcut(**kw), files)
    assert [(p.group, p.kind, [x.path for x in p.members], p.size, p.bound)
            for p in fast.plans] == [(p.group, p.kind, [x.path for x in p.members], p.size,
                                      p.bound) for p in full.plans]
    assert [x.path for x in fast.spill] == [x.path for x in full.spill]
    assert len(fast.plans) > 1
