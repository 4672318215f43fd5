"""The sink budgets what storing a plan really holds: its members' bytes and the part joined
from them (a --pack run kept twice the budget resident when only the members counted)."""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

from pacsmigrate.backends.memory import MemoryBackend
from pacsmigrate.bundle import Built, tar_parts, tar_size
from pacsmigrate.config import Destination, MiB
from pacsmigrate.keys import assign_key, new_secret
from pacsmigrate.records import DICOM, TAR, BundlePlan, Described, Member
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


def test_tar_size_is_at_least_the_tar_built() -> None:
    for n, size, path_len in [(1, 1, 20), (300, 9144, 60), (40, 512, 400), (200, 100, 4000),
                              (10, 513, 20), (10, 1023, 101), (5, 513, 1)]:
        plan = small_files_plan(n, size, path_len)
        built = sum(len(p) for p in tar_parts(plan, Built(), part_size=64 * MiB,
                                                secret=SECRET))
        slack = n * (3 * 512 + 2 * path_len) + 8 * 512
        assert built <= tar_size(plan) <= built + slack, (n, size, path_len)


def test_budget_covers_what_packing_and_sending_a_plan_holds() -> None:
    """Traced from when the walk handed the plan over: the part built from the members (the
    store keeps it, as an upload in flight holds it) and whatever packing allocates."""
    plan = small_files_plan(800, 9144, 70)  # ~7 MiB: one part of the default 16 MiB
    members_bytes = plan.size
    budget = held_in_flight(plan, part=16 * MiB, concurrency=16)
    backend = MemoryBackend(chunk=16 * MiB)
    with ThreadPoolExecutor(2) as pool:
        tracemalloc.start()
        try:
            stored, _ = asyncio.run(store(plan, backend, pool, secret=SECRET))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert stored is not None and len(stored.entries) == 800
    # Counted: the members (in memory before tracing began) and the part joined from them.
    assert members_bytes + len(backend.objects[plan.key]) <= budget
    # Not counted: packing's transient tar headers and manifest copies, small beside them.
    assert members_bytes + peak <= 1.25 * budget, (members_bytes, peak, budget)
    # ...and not wasteful either: about twice the data, no more.
    assert budget <= 2.5 * members_bytes
