"""Group catalogued files per study into bundle plans, streaming from the checkpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator

from .checkpoint import Checkpoint
from .config import Destination
from .keys import assign_key
from .records import BundlePlan

BATCH = 1000


async def plans(cp: Checkpoint, dest: Destination, *, bundle_size: int,
                large_file: int) -> AsyncIterator[BundlePlan]:
    """Yield plans in catalogue order: one study's files together, split at bundle_size.

    Reads the catalogue in short batches, so only the plan being built is in memory however
    scattered a study's files were in the tree.
    """
    after = b""
    current: BundlePlan | None = None
    while batch := await cp.call(cp.catalogue_after, after, BATCH):
        for _, rec in batch:
            if rec.size > large_file:
                single = BundlePlan(rec.group, "file", [rec])
                assign_key(dest, single)
                yield single
                continue
            if current is not None and (current.group != rec.group
                                        or current.size + rec.size > bundle_size):
                assign_key(dest, current)
                yield current
                current = None
            if current is None:
                current = BundlePlan(rec.group, "tar")
            current.members.append(rec)
        after = batch[-1][0]
    if current is not None:
        assign_key(dest, current)
        yield current


def requests_for(plan: BundlePlan, *, threshold: int, part_size: int) -> int:
    """Store requests one plan costs: PUT, or create + parts + complete; plus its sidecar."""
    size = plan.size
    if size <= threshold:
        return 2
    return 2 + -(-size // part_size) + 1
