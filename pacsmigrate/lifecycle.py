"""`policy lifecycle`: the bucket rules that move a migration's objects on as their studies age.

Objects were stored in the class their study's age called for on the day they were stored,
and tagged with their study's year. Stores move objects by the object's own age or by date,
not by a study's, so one rule per study year moves that year's objects on the day its
youngest study crosses each boundary of the policy: never early, at most a year late (a
study's day is not in the tag, only its year).

S3: a lifecycle configuration (`aws s3api put-bucket-lifecycle-configuration --bucket B
--lifecycle-configuration file://rules.json`), one rule per study year with Date
transitions. Azure: a management policy (`az storage account management-policy create
--policy @policy.json`), one rule per study year filtered by blob index tag; Azure counts
days after creation, so the days run from the migration's first day (objects stored later
move later, never earlier).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from typing import Any

from .checkpoint import Checkpoint
from .config import Destination
from .errors import ConfigError
from .tiers import YEAR_META, TierPolicy, study_year

# S3 allows 1,000 rules per bucket.
MAX_RULES = 1000


def policy_of(cp: Checkpoint) -> TierPolicy:
    """The tier policy the migration in cp was run with."""
    meta = cp.get_meta("tiers")
    if not meta or not meta.get("policy"):
        raise ConfigError(f"the migration in {cp.state_dir} was run without --tier-policy: "
                          "its objects stay in the class they were stored in")
    return TierPolicy.parse(meta["policy"], default=meta.get("default"))


def study_years(cp: Checkpoint) -> list[int]:
    """Every study year in the index (one pass over it)."""
    years = {study_year(row.get("study_date", "")) for _, row in cp.iter_db("index")}
    return sorted(int(y) for y in years if y)


def _moves(policy: TierPolicy, years: Iterable[int]
           ) -> Iterator[tuple[str, str, list[tuple[date, str]]]]:
    """Per study year: the rule's name, the year, and the (day, class) each boundary of the
    policy is crossed by that year's youngest study."""
    count = 0
    for year in years:
        youngest = date(year, 12, 31)
        # (a study year near 9999, a placeholder date, crosses no boundary before date.max)
        moves = [(youngest + timedelta(days=t.start), t.storage_class) for t in policy.tiers
                 if 0 < t.start <= (date.max - youngest).days]
        if moves:
            count += 1
            if count > MAX_RULES:
                raise ConfigError("the study years need more lifecycle rules than a bucket "
                                  f"holds ({MAX_RULES})")
            yield f"pacsmigrate-study-year-{year:04d}", f"{year:04d}", moves


def s3_rules(policy: TierPolicy, years: Iterable[int], dest: Destination) -> dict[str, Any]:
    prefix = dest.key("")
    return {"Rules": [{
        "ID": name, "Status": "Enabled",
        "Filter": {"And": {"Prefix": f"{prefix}/" if prefix else "",
                           "Tags": [{"Key": YEAR_META, "Value": year}]}},
        "Transitions": [{"Date": f"{day.isoformat()}T00:00:00Z", "StorageClass": cls}
                        for day, cls in moves],
    } for name, year, moves in _moves(policy, years)]}


def azure_policy(policy: TierPolicy, years: Iterable[int], dest: Destination,
                 first_day: date) -> dict[str, Any]:
    actions = {"Cool": "tierToCool", "Cold": "tierToCold", "Archive": "tierToArchive",
               "Hot": "tierToHot"}
    prefix = dest.key("")
    return {"rules": [{
        "enabled": True, "name": name, "type": "Lifecycle",
        "definition": {
            "filters": {
                "blobTypes": ["blockBlob"],
                "prefixMatch": [f"{dest.bucket}/{prefix}/" if prefix else f"{dest.bucket}/"],
                "blobIndexMatch": [{"name": YEAR_META, "op": "==", "value": year}],
            },
            "actions": {"baseBlob": {
                actions[cls]: {"daysAfterCreationGreaterThan": max(0, (day - first_day).days)}
                for day, cls in moves if cls in actions}},
        },
    } for name, year, moves in _moves(policy, years)]}


def lifecycle(cp: Checkpoint, dest: Destination) -> dict[str, Any]:
    """The rules for the migration in cp, in its store's own format."""
    policy = policy_of(cp)
    years = study_years(cp)
    if dest.scheme == "s3":
        return s3_rules(policy, years, dest)
    if dest.scheme == "az":
        config = cp.get_meta("config") or {}
        created = str(config.get("created", ""))[:10]
        first = datetime.strptime(created, "%Y-%m-%d").date() if created else date.today()
        return azure_policy(policy, years, dest, first)
    raise ConfigError(f"{dest.scheme}:// stores have no lifecycle rules")
