"""Retention locks: how long each study's objects cannot be deleted or overwritten (S3 Object
Lock), from its StudyDate: `--retain-years N` and/or a retention map from the RIS
(`--retention-map CSV`: StudyInstanceUID or AccessionNumber -> years or a class such as
inpatient=30), `--lock-mode GOVERNANCE|COMPLIANCE`, `--legal-hold`. Carried as object
metadata that the store maps to its own lock headers, and written into each manifest."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .tiers import RETENTION_META, study_day

UNTIL_META = "pacsmigrate-retain-until"  # ISO date; the store maps it to its lock
MODE_META = "pacsmigrate-lock-mode"
HOLD_META = "pacsmigrate-legal-hold"
MODES = ("GOVERNANCE", "COMPLIANCE")
DEFAULT_CLASSES = {"inpatient": 30, "outpatient": 15}
_UID_COLUMNS = ("StudyInstanceUID", "study_uid")
_ACCESSION_COLUMNS = ("AccessionNumber", "accession_number")
_VALUE_COLUMNS = ("years", "class", "retention")


def _years(value: int, what: str) -> int:
    if not 1 <= value <= 100:
        raise ConfigError(f"{what} must be 1 to 100 years, not {value}")
    return value


def parse_classes(items: tuple[str, ...] | list[str]) -> dict[str, int]:
    """`--retention-class NAME=YEARS` (repeatable) over the defaults inpatient=30,
    outpatient=15."""
    out = dict(DEFAULT_CLASSES)
    for item in items:
        name, sep, years = item.partition("=")
        if not sep or not name.strip() or not years.strip().isdigit():
            raise ConfigError(f"--retention-class must be NAME=YEARS, not {item!r}")
        out[name.strip()] = _years(int(years), f"--retention-class {name.strip()}")
    return out


@dataclass(frozen=True)
class RetentionMap:
    """The RIS's retention per study, from a CSV file with a header row: a column
    `StudyInstanceUID` (or `study_uid`) and/or `AccessionNumber` (or `accession_number`),
    and `years`, `class` or `retention` (a number of years, or a class name)."""

    path: Path
    classes: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CLASSES))

    def rows(self) -> Iterator[tuple[bytes, int, str]]:
        """(lookup key, years, label) per row, streamed; ConfigError naming the line for a
        bad one (quoting the class, never the UID or accession number)."""
        try:
            with open(self.path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                columns = reader.fieldnames or []
                uid_col = next((c for c in _UID_COLUMNS if c in columns), None)
                acc_col = next((c for c in _ACCESSION_COLUMNS if c in columns), None)
                val_col = next((c for c in _VALUE_COLUMNS if c in columns), None)
                if (uid_col is None and acc_col is None) or val_col is None:
                    raise ConfigError(
                        f"--retention-map {self.path}: the header row needs a StudyInstanceUID "
                        "or AccessionNumber column and a years, class or retention column")
                for row in reader:
                    line = reader.line_num
                    years, label = self._value((row.get(val_col) or "").strip(), line)
                    uid = (row.get(uid_col) or "").strip() if uid_col else ""
                    acc = (row.get(acc_col) or "").strip() if acc_col else ""
                    if not uid and not acc:
                        raise ConfigError(f"--retention-map {self.path}, line {line}: "
                                          "no StudyInstanceUID or AccessionNumber")
                    if uid:
                        yield b"u:" + uid.encode()[:500], years, label
                    if acc:
                        yield b"a:" + acc.encode()[:500], years, label
        except OSError as exc:
            raise ConfigError(f"cannot read --retention-map {self.path}: "
                              f"{exc.strerror or exc}") from exc
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"--retention-map {self.path} is not a UTF-8 CSV file: "
                              f"{type(exc).__name__}") from exc

    def _value(self, text: str, line: int) -> tuple[int, str]:
        if text.isdigit():
            return _years(int(text), f"--retention-map {self.path}, line {line}:"), f"{text}y"
        if text in self.classes:
            return self.classes[text], text
        known = ", ".join(f"{k}={v}" for k, v in self.classes.items())
        raise ConfigError(f"--retention-map {self.path}, line {line}: unknown retention class "
                          f"{text!r} (known: {known}; add --retention-class NAME=YEARS)")

    def check(self) -> int:
        """Read the whole map once (before the state is touched); the number of keys."""
        return sum(1 for _ in self.rows())


@dataclass(frozen=True)
class Retention:
    """Keep each study's objects locked until StudyDate + years (today + years without a
    StudyDate: never shorter than asked). `years` applies to studies the map does not
    name (None: those are stored without a lock, and counted)."""

    years: int | None
    mode: str = "GOVERNANCE"
    legal_hold: bool = False
    map: RetentionMap | None = None

    def __post_init__(self) -> None:
        if self.years is None and self.map is None and not self.legal_hold:
            raise ConfigError("give --retain-years, --retention-map or --legal-hold")
        if self.years is not None:
            _years(self.years, "--retain-years")
        if self.mode not in MODES:
            raise ConfigError(f"--lock-mode must be GOVERNANCE or COMPLIANCE, not {self.mode!r}")

    def until(self, study_date: str, today: date, years: int | None = None) -> date | None:
        """The day the lock ends; None when that day has passed (nothing left to keep)."""
        years = years or self.years
        if years is None:
            return None
        # A study dated after today (a placeholder such as 99991231, a wrong clock) counts
        # from today: its date cannot stretch a lock past today's term.
        start = min(study_day(study_date) or today, today)
        if start.year + years > date.max.year:
            return date.max
        try:
            end = start.replace(year=start.year + years)
        except ValueError:  # 29 February in a year that has none
            end = start.replace(year=start.year + years, day=28)
        return end if end > today else None

    def metadata(self, study_date: str, today: date, *, years: int | None = None,
                 label: str = "") -> dict[str, str]:
        """The lock of one study's objects; `years`, `label`: what the map says of it."""
        out = {HOLD_META: "ON"} if self.legal_hold else {}
        end = self.until(study_date, today, years)
        if end is not None:
            out.update({UNTIL_META: end.isoformat(), MODE_META: self.mode})
        if label or self.years:
            out[RETENTION_META] = label or f"{self.years}y"
        return out

    def check(self, scheme: str) -> None:
        if scheme not in ("s3", "az"):
            raise ConfigError(f"retention locks are for S3 (Object Lock) and Azure "
                              f"(version-level immutability) stores, not {scheme}://")


Lock = tuple[int, int]  # (retain-until as a date ordinal or 0, COMPLIANCE 1 | legal hold 2)


def lock_of(retention: Mapping[str, Any] | None) -> Lock:
    """An object's lock (as manifest_fields records it) in a form to compare."""
    if not retention:
        return 0, 0
    until = retention.get("retain_until") or ""
    flags = (1 if until and retention.get("mode") == "COMPLIANCE" else 0) | (
        2 if retention.get("legal_hold") else 0)
    return (date.fromisoformat(until).toordinal() if until else 0), flags


def covers(have: Lock, need: Lock) -> bool:
    """Bytes locked `have` may serve a file that must be kept `need`: as long, as strictly.

    Deduplication asks this: a copy in a 30-year study must not point at bytes that an
    outpatient study's 15-year lock lets go, nor at GOVERNANCE bytes when COMPLIANCE is due.
    """
    return have[0] >= need[0] and have[1] & need[1] == need[1]


def manifest_fields(metadata: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The retention an object's manifest records (None: no lock, no hold)."""
    if not metadata or not (metadata.get(UNTIL_META) or metadata.get(HOLD_META)):
        return None
    return {"retain_until": metadata.get(UNTIL_META, ""), "mode": metadata.get(MODE_META, ""),
            "legal_hold": bool(metadata.get(HOLD_META)),
            "retention": metadata.get(RETENTION_META, "")}
