"""Storage classes by study age: the class each bundle is stored in (`--storage-class`,
`--tier-policy`), checked against what the store offers before anything is sent.

A bundle is one study, so a study's age (today minus its StudyDate) picks the class of the
whole object. A policy reads `0-180d=STANDARD,180d-5y=GLACIER_IR,5y-=DEEP_ARCHIVE`: ranges of
age (d days, m months of 30 days, y years of 365 days) from 0, contiguous, the last one open
or not; a study older than a closed last range, or without a readable StudyDate, gets
`--storage-class` (or the store's default class when that is not given either).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from .errors import ConfigError

S3_CLASSES = ("STANDARD", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR",
              "GLACIER", "DEEP_ARCHIVE")
AZURE_TIERS = ("Hot", "Cool", "Cold", "Archive")
CLASSES: Mapping[str, tuple[str, ...]] = {"s3": S3_CLASSES, "az": AZURE_TIERS}
CLASS_META = "pacsmigrate-class"  # object metadata naming the class; each store maps it
YEAR_META = "pacsmigrate-study-year"  # the study's year (from StudyDate), for lifecycle rules
# Metadata the stores also set as object tags (S3 object tags, Azure blob index tags), which
# lifecycle rules and inventories can filter on.
# The retention a study is kept for: a map's class ("inpatient") or "30y" (retention.py).
RETENTION_META = "pacsmigrate-retention"
TAGGED = (CLASS_META, YEAR_META, RETENTION_META)
KiB = 1024
# AWS bills an object in these classes as at least 128 KiB ...
MIN_BILLABLE = {"STANDARD_IA": 128 * KiB, "ONEZONE_IA": 128 * KiB, "GLACIER_IR": 128 * KiB}
# ... and one in these with 40 KiB more (32 KiB of index at its rate, 8 KiB of name at STANDARD).
OVERHEAD = {"GLACIER": 40 * KiB, "DEEP_ARCHIVE": 40 * KiB}


def billed_size(storage_class: str | None, size: int) -> int:
    """The bytes a store bills for an object of `size` bytes in this class (AWS's rules,
    documented on its S3 pricing page as of 2026; Azure's tiers have no minimum size)."""
    if storage_class is None:
        return size
    return max(size, MIN_BILLABLE.get(storage_class, 0)) + OVERHEAD.get(storage_class, 0)
_DAYS = {"d": 1, "m": 30, "y": 365}
_AGE = re.compile(r"^\s*(\d+)\s*([dmy]?)\s*$")
_RANGE = re.compile(r"^\s*([^-=]*)-([^-=]*)=\s*(\S+)\s*$")


def parse_age(text: str) -> int:
    """'180d', '6m', '5y', '0' -> days."""
    m = _AGE.match(text)
    if not m or (m.group(2) == "" and m.group(1) != "0"):
        raise ConfigError(f"not an age: {text!r} (examples: 0, 180d, 6m, 5y)")
    return int(m.group(1)) * _DAYS[m.group(2) or "d"]


@dataclass(frozen=True)
class Tier:
    start: int  # days, inclusive
    end: int | None  # days, exclusive; None: open
    storage_class: str


@dataclass(frozen=True)
class TierPolicy:
    """Which storage class a study of a given age goes to."""

    tiers: tuple[Tier, ...] = ()
    default: str | None = None
    text: str = ""  # as given, kept in the state for `policy lifecycle`

    @classmethod
    def parse(cls, text: str | None, *, default: str | None = None) -> TierPolicy:
        tiers: list[Tier] = []
        for part in (text or "").split(","):
            if not part.strip():
                continue
            m = _RANGE.match(part)
            if not m:
                raise ConfigError(f"not a tier: {part.strip()!r} (example: "
                                  "0-180d=STANDARD,180d-5y=GLACIER_IR,5y-=DEEP_ARCHIVE)")
            start = parse_age(m.group(1))
            end = parse_age(m.group(2)) if m.group(2).strip() else None
            tiers.append(Tier(start, end, m.group(3)))
        expected = 0
        for t in tiers:
            if t.start != expected or (t.end is not None and t.end <= t.start):
                raise ConfigError(f"--tier-policy ranges must run from 0 without gaps or "
                                  f"overlaps; {t.start} days is not where the last one ended "
                                  f"({expected} days)" if t.start != expected else
                                  f"--tier-policy range {t.start}-{t.end} days is empty")
            if t.end is None and t is not tiers[-1]:
                raise ConfigError("--tier-policy: only the last range may be open (5y-=...)")
            expected = t.end if t.end is not None else -1
        return cls(tuple(tiers), default, (text or "").strip())

    def __bool__(self) -> bool:
        return bool(self.tiers) or self.default is not None

    def classes(self) -> list[str]:
        return [t.storage_class for t in self.tiers] + ([self.default] if self.default else [])

    def check(self, scheme: str, *, provider: str | None = None) -> None:
        """Every class is one the store offers; a clear error before anything is sent."""
        if self:
            check_classes(self.classes(), scheme, provider=provider)

    def class_for(self, study_date: str, today: date) -> str | None:
        """The class for a study of this StudyDate (DICOM DA, YYYYMMDD or YYYY.MM.DD)."""
        day = study_day(study_date)
        if day is None:
            return self.default
        age = max(0, (today - day).days)  # a date in the future: a new study
        for t in self.tiers:
            if t.start <= age and (t.end is None or age < t.end):
                return t.storage_class
        return self.default


def check_classes(classes: list[str], scheme: str, *, provider: str | None = None) -> None:
    """Each class is one stores of this kind offer (the store itself may offer fewer:
    preflight.probe_classes asks it)."""
    if not classes:
        return
    if provider == "wasabi":
        raise ConfigError("Wasabi has no storage classes: drop --storage-class and "
                          "--tier-policy (every object is stored alike)")
    offered = CLASSES.get(scheme)
    if offered is None:
        raise ConfigError(f"{scheme}:// stores have no storage classes: drop "
                          "--storage-class and --tier-policy")
    for name in classes:
        if name not in offered:
            raise ConfigError(f"{name!r} is not a storage class of {scheme}:// stores "
                              f"(one of: {', '.join(offered)})")


def classes_used(meta: Mapping[str, Any] | None) -> list[str]:
    """Every class a migration's runs asked for, from its `tiers` meta (a run asking other
    classes than the one before adds them: objects of both are in the store)."""
    if not meta:
        return []
    if "classes" in meta:
        return list(meta["classes"])
    return TierPolicy.parse(meta.get("policy"), default=meta.get("default")).classes()


def tiers_meta(policy: TierPolicy, before: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `tiers` meta a run with `policy` leaves: its policy (what `policy lifecycle`
    writes rules for) and the classes of this run and the runs before it."""
    return {"policy": policy.text, "default": policy.default,
            "classes": sorted({*classes_used(before), *policy.classes()})}


def study_year(study_date: str) -> str | None:
    """The year of a StudyDate (DICOM DA), None when it has none."""
    day = study_day(study_date)
    return f"{day.year:04d}" if day else None


def tags(metadata: Mapping[str, str]) -> dict[str, str]:
    """The object tags an object's metadata asks for."""
    return {name: metadata[name] for name in TAGGED if metadata.get(name)}


def study_day(text: str) -> date | None:
    """The day of a StudyDate (DICOM DA: YYYYMMDD, or the old YYYY.MM.DD), if valid."""
    digits = text.strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None
