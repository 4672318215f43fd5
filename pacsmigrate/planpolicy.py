"""Where each plan's object goes and how long it is kept: its storage class by its study's
age, and its retention lock (a --retention-map's years for its study, or --retain-years)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import date

from .checkpoint import Checkpoint
from .config import MigrateConfig
from .records import DICOM, BundlePlan
from .sink import Classes, Locks
from .stats import Stats
from .tiers import study_year


@dataclass(frozen=True)
class PlanPolicy:
    """The run's storage-class and retention policy, from its config and its day."""

    cfg: MigrateConfig
    today: date  # study ages and locks count from the run's day, fixed once

    def classes(self) -> Classes | None:
        """Each plan's storage class by its study's age today (None: no policy given)."""
        tiers, today = self.cfg.tiers, self.today
        if not tiers:
            return None
        return lambda plan: tiers.class_for(plan.study_date, today)

    def locks(self, cp: Checkpoint, stats: Stats) -> Locks | None:
        """Each plan's retention lock (see lock_of), counting in `stats` the studies a
        retention map does not name; None: no retention asked for."""
        retention = self.cfg.retention
        if retention is None:
            return None

        def lock(plan: BundlePlan) -> dict[str, str]:
            meta, unnamed = self.lock_of(cp, plan)
            if unnamed:  # counted by study: a pack holds several (pack.py)
                studies = len({m.about.group for m in plan.members})
                if retention.years:
                    stats.retention_defaulted += studies
                else:
                    stats.retention_unlocked += studies
            return meta
        return lock

    def pack_class(self, cp: Checkpoint, plan: BundlePlan) -> Hashable:
        """What studies sharing one object (pack.py) must have in common: how it is kept
        (storage class and the study-year tag that goes with it, retention lock) and the
        retention map's verdict, which the run counts by study."""
        tiers, day = self.cfg.tiers, plan.study_date
        kept = (tiers.class_for(day, self.today), study_year(day)) if tiers else None
        meta, unnamed = self.lock_of(cp, plan)
        return kept, tuple(sorted(meta.items())), unnamed

    def lock_of(self, cp: Checkpoint, plan: BundlePlan) -> tuple[dict[str, str], bool]:
        """A plan's lock metadata: the years the map gives its study (by UID, else
        AccessionNumber) or --retain-years, from its StudyDate; and whether it is a study
        the map does not name."""
        retention, about = self.cfg.retention, plan.members[0].about
        if retention is None:
            return {}, False
        found = None
        if retention.map is not None:
            found = cp.retention_for(about.study_uid, about.accession)
        years, label = found or (None, "")
        meta = retention.metadata(plan.study_date, self.today, years=years, label=label)
        return meta, retention.map is not None and found is None and about.status == DICOM
