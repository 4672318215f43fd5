"""Retention locks: how long each study's objects cannot be deleted or overwritten (S3 Object
Lock), from its StudyDate: `--retain-years N`, `--lock-mode GOVERNANCE|COMPLIANCE`,
`--legal-hold`. Carried as object metadata that the store maps to its own lock headers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from .errors import ConfigError
from .tiers import study_day

UNTIL_META = "pacsmigrate-retain-until"  # ISO date; the store maps it to its lock
MODE_META = "pacsmigrate-lock-mode"
HOLD_META = "pacsmigrate-legal-hold"
MODES = ("GOVERNANCE", "COMPLIANCE")


@dataclass(frozen=True)
class Retention:
    """Keep each study's objects locked until StudyDate + years (today + years without a
    StudyDate: never shorter than asked)."""

    years: int
    mode: str = "GOVERNANCE"
    legal_hold: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.years <= 100:
            raise ConfigError(f"--retain-years must be 1 to 100, not {self.years}")
        if self.mode not in MODES:
            raise ConfigError(f"--lock-mode must be GOVERNANCE or COMPLIANCE, not {self.mode!r}")

    def until(self, study_date: str, today: date) -> date | None:
        """The day the lock ends; None when that day has passed (nothing left to keep)."""
        start = study_day(study_date) or today
        try:
            end = start.replace(year=start.year + self.years)
        except ValueError:  # 29 February in a year that has none
            end = start.replace(year=start.year + self.years, day=28)
        return end if end > today else None

    def metadata(self, study_date: str, today: date) -> dict[str, str]:
        out = {HOLD_META: "ON"} if self.legal_hold else {}
        end = self.until(study_date, today)
        if end is not None:
            out.update({UNTIL_META: end.isoformat(), MODE_META: self.mode})
        return out

    def check(self, scheme: str) -> None:
        if scheme != "s3":
            raise ConfigError(f"retention locks are for S3 stores (Object Lock) in this "
                              f"version, not {scheme}://")
