"""Which files a run takes: path globs, study dates, file ages (`migrate --include ...`).

A file a filter leaves out is counted by reason (the summary and the report say how many),
never recorded as migrated or as a problem: a later run without the filter takes it. Checks
run where they cost least: the path before the file is opened, the age on the open file's
stat, the study date on the parsed header. A dry run filters as its run will.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import date
from fnmatch import fnmatchcase

from .errors import ConfigError
from .tiers import parse_age, study_day

EXCLUDED = "excluded by --exclude"
NOT_INCLUDED = "not matched by --include"
TOO_YOUNG = "younger than --min-age"
TOO_OLD = "older than --max-age"
NO_STUDY_DATE = "no StudyDate (--study-date-from/--to)"
BEFORE = "StudyDate before --study-date-from"
AFTER = "StudyDate after --study-date-to"
DAY = 86_400


def parse_day(text: str, option: str) -> date:
    """A day as DICOM writes it (YYYYMMDD) or in ISO (YYYY-MM-DD)."""
    day = study_day(text.replace("-", "")) if len(text) in (8, 10) else None
    if day is None:
        raise ConfigError(f"{option} {text!r} is not a date: give YYYYMMDD or YYYY-MM-DD")
    return day


@dataclass(frozen=True)
class Filters:
    """What a run takes; the default takes everything."""

    include: tuple[str, ...] = ()  # fnmatch globs on the whole path (* also crosses /)
    exclude: tuple[str, ...] = ()
    study_from: date | None = None  # inclusive
    study_to: date | None = None  # inclusive
    min_age: int | None = None  # days since the file's mtime
    max_age: int | None = None
    now: float = 0.0  # the run's start (epoch seconds): ages count from it, fixed once

    @classmethod
    def parse(cls, *, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
              study_from: str | None = None, study_to: str | None = None,
              min_age: str | None = None, max_age: str | None = None) -> Filters:
        f = cls(include=include, exclude=exclude,
                study_from=parse_day(study_from, "--study-date-from") if study_from else None,
                study_to=parse_day(study_to, "--study-date-to") if study_to else None,
                min_age=parse_age(min_age) if min_age else None,
                max_age=parse_age(max_age) if max_age else None, now=time.time())
        if f.study_from and f.study_to and f.study_from > f.study_to:
            raise ConfigError(f"--study-date-from {study_from} is after --study-date-to "
                              f"{study_to}: nothing would be migrated")
        if f.min_age is not None and f.max_age is not None and f.min_age > f.max_age:
            raise ConfigError(f"--min-age {min_age} is above --max-age {max_age}: nothing "
                              "would be migrated")
        return f

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude or self.by_date or self.by_age)

    @property
    def by_date(self) -> bool:
        return self.study_from is not None or self.study_to is not None

    @property
    def by_age(self) -> bool:
        return self.min_age is not None or self.max_age is not None

    def path(self, path: bytes) -> str | None:
        """Why the path is left out, or None."""
        if not (self.include or self.exclude):
            return None
        text = os.fsdecode(path)
        if self.include and not any(fnmatchcase(text, g) for g in self.include):
            return NOT_INCLUDED
        if any(fnmatchcase(text, g) for g in self.exclude):
            return EXCLUDED
        return None

    def age(self, mtime_ns: int) -> str | None:
        """Why a file last modified at mtime_ns is left out, or None."""
        days = (self.now - mtime_ns / 1e9) / DAY
        if self.min_age is not None and days < self.min_age:
            return TOO_YOUNG
        if self.max_age is not None and days > self.max_age:
            return TOO_OLD
        return None

    def study(self, study_date: str) -> str | None:
        """Why a file of a study of this StudyDate is left out, or None."""
        day = study_day(study_date) if study_date else None
        if day is None:
            return NO_STUDY_DATE
        if self.study_from is not None and day < self.study_from:
            return BEFORE
        if self.study_to is not None and day > self.study_to:
            return AFTER
        return None


EVERYTHING = Filters()
