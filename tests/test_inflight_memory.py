"""The sink budgets what storing a plan really holds: its members' bytes, the part they are
copied into, and what each member costs beside its bytes (a --pack run kept twice the
budget resident when only the members counted)."""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import plain_manifests

from pacsmigrate.backends.base import ObjectInfo
from pacsmigrate.backends.body import Buffer
from pacsmigrate.bundle import Built, tar_parts
from pacsmigrate.config import Destination, MiB
from pacsmigrate.keys import assign_key, new_secret
from pacsmigrate.records import DICOM, TAR, BundlePlan, Described, Member, StoredObject
from pacsmigrate.sink import held_in_flight
from pacsmigrate.upload import store

SECRET = new_secret()
UID = "1.2.826.0.1.3680043.8.498." + "1" * 38  # 64 characters, the longest a UID may be


def small_files_plan(n: int, size: int, path_len: int) -> BundlePlan:
    """One pack of n small files already read (as the walk hands them over), with paths of
    path_len bytes and UIDs of the longest kind: the manifest's lines are at their largest."""
    about = Described("ab" * 16, DICOM, "", UID, UID, UID, "CT", "20240101",
                      "1.2.840.10008.1.2.1")
    plan = BundlePlan(about.group, TAR)
    for i in range(n):
        path = (b"/archive/" + b"x" * path_len)[:path_len - 8] + b"%08d" % i
        plan.add(Member(path, size, 1_700_000_000_000_000_000, about, data=os.urandom(size)))
    assign_key(Destination.parse("s3://bucket/archive"), plan)
    return plan


def test_the_bound_is_at_least_the_tar_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound holds the tar whatever its manifest compresses to (it counts the lines as
    they are), and is not much more than that."""
    for n, size, path_len in [(1, 1, 20), (300, 9144, 60), (40, 512, 400), (200, 100, 4000),
                              (10, 513, 20), (10, 1023, 101), (5, 513, 1)]:
        plan = small_files_plan(n, size, path_len)
        built = sum(len(p) for p in tar_parts(plan, Built(), part_size=64 * MiB,
                                                secret=SECRET))
        with monkeypatch.context() as plain:  # the manifest as it is, not compressed
            plain_manifests(plain)
            for m in plan.members:
                m.data = os.urandom(size)
            uncompressed = sum(len(p) for p in tar_parts(
                plan, Built(), part_size=64 * MiB, secret=SECRET))
        slack = n * (3 * 512 + 2 * path_len) + 8 * 512
        assert built <= uncompressed <= plan.bound <= uncompressed + slack, (n, size, path_len)


class _Keeping:
    """A store that keeps every part it is given until the object is complete, as a
    multipart upload whose parts are all in flight at once: the most an upload holds."""

    def __init__(self, part: int) -> None:
        self.part = part
        self.size = 0

    def part_size(self, size_hint: int) -> int:
        return self.part

    async def save(self, key: str, chunks: AsyncIterator[Buffer], *,
                   metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        kept = [c async for c in chunks]
        self.size = sum(len(c) for c in kept)
        return ObjectInfo(key, self.size, "etag")


@pytest.mark.parametrize(("n", "size"), [(800, 9144), (6600, 1208)])
def test_budget_covers_what_packing_and_sending_a_plan_holds(n: int, size: int) -> None:
    """Traced from when the walk handed the plan over: the parts the members are copied
    into, the manifest, the entries and whatever else packing allocates. ~7 MiB of 9 KiB
    files, one part of the default 16 MiB; and ~8 MiB of 1.2 KiB files in two parts, where
    what a member costs beside its bytes (MEMBER_COST) is a third of the budget."""
    plan = small_files_plan(n, size, 70)
    members_bytes = plan.size
    budget = held_in_flight(plan, part=16 * MiB, concurrency=16)
    store_ = _Keeping(16 * MiB)

    async def traced(pool: ThreadPoolExecutor) -> tuple[StoredObject | None, int]:
        tracemalloc.start()  # the loop's own start and teardown are not the plan's
        try:
            stored, _ = await store(plan, store_, pool, secret=SECRET)  # type: ignore[arg-type]
            return stored, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    with ThreadPoolExecutor(2) as pool:
        stored, peak = asyncio.run(traced(pool))
    assert stored is not None and len(stored.entries) == n
    # Counted: the members (in memory before tracing began; they go as they are copied)
    # and everything packing them allocates.
    assert members_bytes + store_.size <= budget
    assert members_bytes + peak <= budget, (members_bytes, peak, budget)
    # ...and not wasteful either.
    assert budget <= 1.5 * (members_bytes + peak), (members_bytes, peak, budget)
