"""QIDO-RS (PS3.18 10.6): search the catalogue for studies, series and instances.

Matching keys, by keyword or tag: the UIDs (single or a comma-separated list), StudyDate
(a date, or a range A-B, -B, A-; YYYYMMDD or ISO), Modality and ModalitiesInStudy (with *
and ? wildcards). `limit` and `offset` page the results. A key this server cannot match on
is ignored and named in a `Warning: 299` header, as PS3.18 asks; a malformed value is a
400 with the reason. Answers hold the attributes the catalogue holds (no patient data is
kept), with counts, and each result's RetrieveURL.
"""

from __future__ import annotations

import datetime
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .catalog import Catalog

MAX_LIMIT = 10_000  # at most this many results per answer; page with offset for more
MAX_COUNT = 2**63 - 1  # a limit or offset past it is no number SQLite holds

# keyword -> tag, for the keys we match on and the attributes we answer with
TAGS = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E",
        "SOPInstanceUID": "00080018", "StudyDate": "00080020", "Modality": "00080060",
        "ModalitiesInStudy": "00080061"}
KEYWORDS = {tag: kw for kw, tag in TAGS.items()}
# Query parameters that are not matching keys.
CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_DAY = r"(\d{8}|\d{4}-\d{2}-\d{2})"
_RANGE = re.compile(rf"^{_DAY}?-{_DAY}?$")


class BadQuery(ValueError):
    """A malformed query parameter: the reason goes back with a 400."""


@dataclass
class Query:
    """A parsed search: SQL conditions, paging, keys ignored."""

    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    limit: int = MAX_LIMIT
    offset: int = 0
    ignored: list[str] = field(default_factory=list)

    def sql(self, select: str, order: str) -> tuple[str, list[Any]]:
        """The statement: a stable order, so that pages (offset) neither skip nor repeat."""
        cond = f" WHERE {' AND '.join(self.where)}" if self.where else ""
        return (f"{select}{cond} ORDER BY {order} LIMIT ? OFFSET ?",
                [*self.params, self.limit, self.offset])


def _count(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadQuery(f"{name} must be a whole number, not {text!r}") from None
    if value < 0:
        raise BadQuery(f"{name} must not be negative")
    if value > MAX_COUNT:  # SQLite's integers are 64-bit
        raise BadQuery(f"{name} must be at most {MAX_COUNT}")
    return value


def is_uid(text: str) -> bool:
    """Digits and dots, at most 64 characters (PS3.5 9.1)."""
    return len(text) <= 64 and bool(_UID.match(text))


def _uids(name: str, text: str) -> list[str]:
    uids = [u.strip() for u in re.split(r"[,\\]", text) if u.strip()]
    if not uids or not all(map(is_uid, uids)):
        raise BadQuery(f"{name} must be one or more UIDs (digits and dots), not {text!r}")
    return uids


def _date(name: str, text: str) -> str:
    m = _DATE.match(text)
    try:  # a day of the calendar, not any eight digits (20051301 matches nothing: a typo)
        day = datetime.date(*map(int, m.groups())) if m else None
    except ValueError:
        day = None
    if day is None:
        raise BadQuery(f"{name} must be a date YYYYMMDD (or YYYY-MM-DD), not {text!r}")
    return day.strftime("%Y%m%d")


def _dates(name: str, column: str, text: str) -> tuple[str, list[str]]:
    """A condition on the study date: one day, or a range with either end open."""
    if _DATE.match(text):
        return f"{column} = ?", [_date(name, text)]
    m = _RANGE.match(text)
    if not m or not (m.group(1) or m.group(2)):
        raise BadQuery(f"{name} must be a date or a range of dates (A-B, -B or A-; "
                       f"YYYYMMDD or YYYY-MM-DD), not {text!r}")
    conds, params = [f"{column} <> ''"], []  # a study without a date is in no range
    if m.group(1):
        conds.append(f"{column} >= ?")
        params.append(_date(name, m.group(1)))
    if m.group(2):
        conds.append(f"{column} <= ?")
        params.append(_date(name, m.group(2)))
    return " AND ".join(conds), params


def _glob(text: str) -> str:
    """DICOM wildcards (* and ?) as an SQLite GLOB pattern, the rest taken literally."""
    return "".join(f"[{c}]" if c in "[]" else c for c in text)


# The catalogue's column for each matchable attribute, by level (the table aliases of the
# queries below).
COLUMNS = {
    "study": {"StudyInstanceUID": "t.study", "StudyDate": "t.study_date"},
    "series": {"StudyInstanceUID": "s.study", "SeriesInstanceUID": "s.series",
               "StudyDate": "t.study_date", "Modality": "s.modality"},
    "instance": {"StudyInstanceUID": "i.study", "SeriesInstanceUID": "i.series",
                 "SOPInstanceUID": "i.sop", "StudyDate": "i.study_date",
                 "Modality": "i.modality"},
}


def parse(params: list[tuple[str, str]], level: str, fixed: dict[str, str]) -> Query:
    """The conditions of a search at `level` ("study", "series", "instance"); `fixed`: the
    UIDs given in the path (/studies/{study}/series)."""
    q = Query()
    columns = COLUMNS[level]
    for kw, uid in fixed.items():
        q.where.append(f"{columns[kw]} = ?")
        q.params.append(uid)
    for name, value in params:
        key = KEYWORDS.get(name.upper(), name)
        if name in ("limit", "offset"):
            setattr(q, name, _count(name, value))
        elif name in CONTROL or not value:
            # includefield, an empty key: the attribute asked back; all we hold comes back.
            continue
        elif key.endswith("InstanceUID") and key in columns:
            uids = _uids(key, value)
            q.where.append(f"{columns[key]} IN ({', '.join('?' * len(uids))})")
            q.params.extend(uids)
        elif key == "StudyDate":
            cond, values = _dates(key, columns[key], value)
            q.where.append(cond)
            q.params.extend(values)
        elif key == "Modality" and key in columns:
            q.where.append(f"{columns[key]} GLOB ?")
            q.params.append(_glob(value))
        elif key == "ModalitiesInStudy" and level == "study":
            # Any of the study's modalities matches.
            q.where.append("EXISTS (SELECT 1 FROM series s WHERE s.study = t.study "
                           "AND s.modality GLOB ?)")
            q.params.append(_glob(value))
        else:
            q.ignored.append(name)
    q.limit = min(q.limit, MAX_LIMIT)
    return q


def _el(vr: str, *values: Any) -> dict[str, Any]:
    vals = [v for v in values if v not in ("", None)]
    return {"vr": vr, "Value": vals} if vals else {"vr": vr}


def _col(name: str) -> Callable[[sqlite3.Row], list[Any]]:
    return lambda r: [r[name]]


def _url(*names: str) -> Callable[[sqlite3.Row], list[Any]]:
    levels = {"study": "studies", "series": "series", "sop": "instances"}
    return lambda r: ["/".join(f"{levels[n]}/{r[n]}" for n in names)]


# Per level: the statement, its order (stable, so pages neither skip nor repeat), and the
# attributes answered: tag, VR, value(s) from the row (the RetrieveURL's path after base).
LEVELS: dict[str, tuple[str, str, list[tuple[str, str, Callable[[sqlite3.Row], list[Any]]]]]] = {
    "study": (("SELECT t.study, t.study_date, t.modalities, t.series, t.instances "
              "FROM studies t"), "t.study", [
                  ("00080020", "DA", _col("study_date")),
                  ("00080061", "CS", lambda r: (r["modalities"] or "").split("\\")),
                  ("00081190", "UR", _url("study")),
                  ("0020000D", "UI", _col("study")),
                  ("00201206", "IS", _col("series")),
                  ("00201208", "IS", _col("instances"))]),
    "series": (("SELECT s.study, s.series, s.modality, s.instances, t.study_date FROM series s "
               "JOIN studies t ON t.study = s.study"), "s.study, s.series", [
                   ("00080020", "DA", _col("study_date")),
                   ("00080060", "CS", _col("modality")),
                   ("00081190", "UR", _url("study", "series")),
                   ("0020000D", "UI", _col("study")),
                   ("0020000E", "UI", _col("series")),
                   ("00201209", "IS", _col("instances"))]),
    "instance": (("SELECT i.study, i.series, i.sop, i.modality, i.study_date, "
                 "i.transfer_syntax FROM instances i"), "i.study, i.series, i.sop", [
                     ("00080018", "UI", _col("sop")),
                     ("00080020", "DA", _col("study_date")),
                     ("00080060", "CS", _col("modality")),
                     ("00081190", "UR", _url("study", "series", "sop")),
                     ("00083002", "UI", _col("transfer_syntax")),
                     ("0020000D", "UI", _col("study")),
                     ("0020000E", "UI", _col("series"))]),
}


def search(cat: Catalog, q: Query, level: str, base: str) -> list[dict[str, Any]]:
    """The results of a search at `level` as DICOM JSON; RetrieveURLs under `base`."""
    select, order, attributes = LEVELS[level]
    sql, params = q.sql(select, order)
    out = []
    for r in cat.query(sql, params):
        doc = {}
        for tag, vr, value in attributes:
            values = value(r)
            doc[tag] = _el(vr, *([f"{base}/{values[0]}"] if vr == "UR" else values))
        out.append(doc)
    return out


__all__ = ["BadQuery", "Query", "parse", "search"]
