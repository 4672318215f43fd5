"""`migrate --pack SIZE`: small studies share objects.

An archive of many small studies (a few KiB to a few MiB each) stored one object per study
pays a request, a commit and the store's per-object cost for every study: on 9 KiB files
in studies of ~14, that per-object work was half of a run's CPU. With `--pack SIZE`, a
study's bundle smaller than SIZE is packed with others into one tar of up to SIZE; each
study's members stay together in it, and every member is still one range GET away (its
offset and length in the index and in the manifest, which names each member's study).

What one object holds must share how it is kept: studies are packed together only when
they get the same storage class (and study-year tag), the same retention lock and the same
retention-map verdict (`PlanPolicy.pack_class`). The trade-off, for the README: a study
that shares an object cannot be deleted or re-tiered alone.

Deterministic, like the grouping: which studies share a pack depends only on the order
their bundles close, never on time, so a dry run plans exactly the objects the run stores.
Bounded: at most `OPEN_PACKS` packs are filling at once (the least recently fed one is
stored when another class needs room), so packs hold at most OPEN_PACKS x SIZE bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from .records import TAR, TAR_OVERHEAD, BundlePlan

OPEN_PACKS = 4
# The SIZE a dry run without --pack counts packs for (its hint): one PUT each at the
# default part size.
HINT_SIZE = 8 << 20


class Packer:
    """Closed bundle plans in, plans to store out: small study bundles joined into packs."""

    def __init__(self, size: int, klass: Callable[[BundlePlan], Hashable]) -> None:
        self.size = size  # 0: no packing, every plan goes through as it is
        self.klass = klass
        self.open: OrderedDict[Hashable, BundlePlan] = OrderedDict()  # least recently fed first

    def takes(self, plan: BundlePlan) -> bool:
        """Whether `plan` goes into a pack (a study's tar smaller than SIZE)."""
        return bool(self.size and plan.kind == TAR and plan.bound < self.size and plan.members)

    def add(self, plan: BundlePlan) -> list[BundlePlan]:
        """The plans to store now: `plan` itself unless it is packed, and any pack it filled."""
        if not self.takes(plan):
            return [plan]
        out = []
        k = self.klass(plan)
        pack = self.open.get(k)
        # Sizes are what the tars grow to at most (BundlePlan.bound): an object of up to SIZE.
        if pack is not None and pack.bound + plan.bound - TAR_OVERHEAD > self.size:
            out.append(self.open.pop(k))
            pack = None
        if pack is None:
            if len(self.open) >= OPEN_PACKS:
                out.append(self.open.popitem(last=False)[1])
            # A pack is named after its first study: its key sits beside that study's.
            pack = self.open[k] = BundlePlan(plan.group, TAR)
        else:
            self.open.move_to_end(k)
        pack.extend(plan)
        return out

    def flush(self) -> list[BundlePlan]:
        """Every pack still filling, the least recently fed first."""
        out = list(self.open.values())
        self.open.clear()
        return out
