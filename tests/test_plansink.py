"""A dry run records its plan a batch of encoded rows at a time: each waits for an fsync."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.progress import Bar
from pacsmigrate.records import DICOM, TAR, BundlePlan, Described, Entry, Member
from pacsmigrate.sink import PLAN_BATCH, PlanSink
from pacsmigrate.stats import Stats
from pacsmigrate.tables import PlanRow

GROUP = "7f" * 16


def member(i: int) -> Member:
    return Member(b"/p/%07d" % i, 100, 1000, Described(
        GROUP, DICOM, "", "1.2.3", "1.2.3.4", f"1.2.3.4.{i}", "CT", "20240101",
        "1.2.840.10008.1.2.1"))


def test_the_plan_is_written_a_batch_at_a_time_and_all_of_it_by_drain(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "state")
    transactions: list[int] = []
    real = cp.record_plan_rows

    def counted(planned: list[PlanRow], run: bytes = b"") -> int:
        transactions.append(len(planned))
        return real(planned, run)
    cp.record_plan_rows = counted  # type: ignore[method-assign]
    sink = PlanSink(cp, Stats(), Bar("plan", total_bytes=None, total_files=None,
                                     enabled=False), scheme="s3", part_size=8 << 20)
    per_plan = PLAN_BATCH // 8
    plans = PLAN_BATCH // per_plan + 2

    async def go() -> None:
        for p in range(plans):
            plan = BundlePlan(GROUP, TAR)
            for i in range(p * per_plan, (p + 1) * per_plan):
                plan.add(member(i))
            await sink.put(plan)
        assert transactions == [PLAN_BATCH]  # the rest waits for a full batch or drain
        assert cp.counts()["plan"] == PLAN_BATCH
        await sink.drain()
    try:
        asyncio.run(go())
        assert transactions == [PLAN_BATCH, 2 * per_plan]
        assert cp.counts()["plan"] == plans * per_plan
        assert sink.stats.planned_files == plans * per_plan
        # The rows are those record_plan writes for the same files.
        with cp.env.begin(db=cp.db["plan"]) as txn:
            got = dict(txn.cursor())
        other = Checkpoint(tmp_path / "other")
        try:
            other.record_plan([Entry(m.path, 0, m.size, "", m.size, m.mtime_ns, m.about)
                               for m in (member(i) for i in range(plans * per_plan))])
            with other.env.begin(db=other.db["plan"]) as txn:
                assert dict(txn.cursor()) == got
            assert other.counts()["groups"] == cp.counts()["groups"] == 1
        finally:
            other.close()
    finally:
        cp.close()
