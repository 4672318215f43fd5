"""The dry run's cost estimate: storage per month and one-off request cost per class, for the
bundles planned and for a per-file copier (one object per file), from a price table.

Default tables (USD, list prices; check them, they change — `--prices FILE` replaces them):

AWS S3, US East (N. Virginia):
- Storage per GB-month: STANDARD 0.023 (AWS's price cut of 2016-12-01, aws.amazon.com/blogs;
  the same in usage.ai's table of 2026-06-05); STANDARD_IA 0.0125, GLACIER_IR 0.004,
  GLACIER 0.0036, DEEP_ARCHIVE 0.00099 (usage.ai, "Glacier Deep Archive pricing", updated
  2026-06-05, "US East, May 2026"); INTELLIGENT_TIERING 0.023 for its frequent tier
  (awsnegotiations.com, "S3 storage", undated) plus monitoring 0.0025 per 1,000 objects of
  128 KiB or more a month (cloudfix.com, globalxperts; undated).
- PUT, COPY, POST, LIST per 1,000 requests: STANDARD 0.005, STANDARD_IA 0.01, GLACIER_IR
  0.02, GLACIER 0.03 (c3x.dev, "S3 request fees explained", undated); DEEP_ARCHIVE 0.05
  (a gist by regispires, undated; c3x.dev groups it with GLACIER at 0.03 — the higher is
  kept); INTELLIGENT_TIERING: no source found, STANDARD's 0.005 assumed.
- Minimum billable size 128 KB (STANDARD_IA, ONEZONE_IA, GLACIER_IR) and, per object in
  GLACIER and DEEP_ARCHIVE, 8 KB billed at STANDARD's rate plus 32 KB at the class's: the
  AWS S3 user guide (storage-class-intro, lifecycle-transition-general-considerations,
  2023). ONEZONE_IA has no default price (none found): give a table to estimate it.
Wasabi: 7.99 per TB-month (1 TB = 1,000 GB here), no request fees (api-evangelist's Wasabi
plans file: effective 2026-07-01, previously 6.99; wasabi.com's own FAQ page as stored here
still says 5.99: check yours). Wasabi also bills a 1 TB monthly minimum and 90 days minimum.
Azure, Ceph, MinIO, other S3 stores and directories: no default (prices depend on region,
redundancy and contract); give `--prices FILE`.

Minimum storage durations (30 days IA, 90 GLACIER_IR/GLACIER, 180 DEEP_ARCHIVE) and lifecycle
transition requests are not in the estimate: an archive is kept for years and moves once.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .backends.limits import planned_requests
from .errors import ConfigError

GiB = 1 << 30  # AWS's "GB" of a GB-month
KB = 1024


@dataclass(frozen=True)
class ClassPrice:
    storage_gb_month: float
    put_per_1000: float = 0.0
    min_object: int = 0  # bytes: a smaller object is billed as this size
    overhead_standard: int = 0  # bytes per object billed at the table's standard rate
    overhead_class: int = 0  # bytes per object billed at this class's rate
    monitoring_per_1000: float = 0.0  # a month, per 1,000 objects of 128 KiB or more


@dataclass(frozen=True)
class PriceTable:
    name: str
    currency: str
    classes: dict[str, ClassPrice]
    default_class: str  # the class of objects stored without one
    gb: int = GiB  # the bytes of the table's GB

    @classmethod
    def load(cls, path: Path) -> PriceTable:
        """A table from a JSON file; one clear line for anything wrong with it."""
        try:
            doc = json.loads(path.read_text())
            classes = {str(k): _class_price(c) for k, c in doc["classes"].items()}
            table = cls(str(doc.get("name", path.name)), str(doc.get("currency", "USD")),
                        classes, str(doc.get("default_class", next(iter(classes)))),
                        int(doc.get("gb_bytes", GiB)))
        except OSError as exc:
            raise ConfigError(f"cannot read --prices {path}: {exc.strerror}") from exc
        except (ValueError, KeyError, TypeError, StopIteration, AttributeError) as exc:
            raise ConfigError(f"--prices {path} is not a price table ({exc!s}); see "
                              "the README's 'Cost in the plan' for its form") from exc
        if table.gb <= 0:
            raise ConfigError(f"--prices {path}: gb_bytes must be a positive number of bytes "
                              f"(1000000000 or {GiB}), not {table.gb}")
        if table.default_class not in classes:
            raise ConfigError(f"--prices {path}: default_class {table.default_class!r} "
                              "has no prices")
        return table


_INT_FIELDS = frozenset({"min_object", "overhead_standard", "overhead_class"})


def _class_price(c: dict[str, Any]) -> ClassPrice:
    fields: dict[str, Any] = {f: (int(v) if f in _INT_FIELDS else float(v))
                              for f, v in c.items()}
    return ClassPrice(**fields)

AWS_US_EAST_1 = PriceTable("AWS S3 us-east-1 list prices (sources: pacsmigrate/costs.py)", "USD", {
    "STANDARD": ClassPrice(0.023, 0.005),
    "STANDARD_IA": ClassPrice(0.0125, 0.01, min_object=128 * KB),
    "INTELLIGENT_TIERING": ClassPrice(0.023, 0.005, monitoring_per_1000=0.0025),
    "GLACIER_IR": ClassPrice(0.004, 0.02, min_object=128 * KB),
    "GLACIER": ClassPrice(0.0036, 0.03, overhead_standard=8 * KB, overhead_class=32 * KB),
    "DEEP_ARCHIVE": ClassPrice(0.00099, 0.05, overhead_standard=8 * KB, overhead_class=32 * KB),
}, "STANDARD")
WASABI = PriceTable("Wasabi list price (source: pacsmigrate/costs.py)", "USD",
                    {"STANDARD": ClassPrice(0.00799)}, "STANDARD", gb=10**9)


def default_table(scheme: str, provider: str | None, endpoint_url: str | None
                  ) -> PriceTable | None:
    if scheme == "s3" and (provider == "aws" or (provider is None and not endpoint_url)):
        return AWS_US_EAST_1
    if scheme == "s3" and provider == "wasabi":
        return WASABI
    return None


@dataclass
class Tally:
    """What the estimate needs, per class: counted as the dry run plans each object."""

    objects: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    multipart: Counter[str] = field(default_factory=Counter)  # objects sent in parts
    billed: Counter[str] = field(default_factory=Counter)  # sizes raised to the minimum
    monitored: Counter[str] = field(default_factory=Counter)
    # The same files stored one object per file (s5cmd, rclone, aws s3 sync).
    files: Counter[str] = field(default_factory=Counter)
    file_requests: Counter[str] = field(default_factory=Counter)
    file_multipart: Counter[str] = field(default_factory=Counter)
    file_billed: Counter[str] = field(default_factory=Counter)
    file_monitored: Counter[str] = field(default_factory=Counter)

    def add(self, table: PriceTable, storage_class: str | None, size: int,
            member_sizes: list[int], *, requests: int, scheme: str, part_size: int) -> None:
        name = storage_class or table.default_class
        price = table.classes.get(name)
        low = price.min_object if price else 0
        self.objects[name] += 1
        self.requests[name] += requests
        self.multipart[name] += planned_requests(scheme, size, part_size=part_size) > 1
        self.billed[name] += max(size, low)
        self.monitored[name] += size >= 128 * KB
        self.files[name] += len(member_sizes)
        for s in member_sizes:
            n = planned_requests(scheme, s, part_size=part_size, ours=False)
            self.file_requests[name] += n
            self.file_multipart[name] += n > 1
            self.file_billed[name] += max(s, low)
            self.file_monitored[name] += s >= 128 * KB

    def scaled(self, factor: float) -> Tally:
        """Every count times `factor` (a sample's tally as the whole tree's)."""
        out = Tally()
        for name, counter in vars(self).items():
            getattr(out, name).update({k: round(v * factor) for k, v in counter.items()})
        return out


@dataclass(frozen=True)
class Line:
    storage_class: str
    objects: int
    requests: int  # PUT-class: single PUTs, and multipart uploads' create, parts, complete
    multipart: int  # objects sent in parts (the rest: one PUT each, plus a raw file's sidecar)
    gb_billed: float
    monthly: float | None  # None: the table has no price for this class
    one_off: float | None


def _line(table: PriceTable, name: str, objects: int, requests: int, multipart: int,
          billed: int, monitored: int) -> Line:
    price = table.classes.get(name)
    standard = table.classes[table.default_class]
    extra = objects * (price.overhead_class if price else 0)
    gb = (billed + extra) / table.gb
    if price is None:
        return Line(name, objects, requests, multipart, gb, None, None)
    monthly = (gb * price.storage_gb_month
               + objects * price.overhead_standard / table.gb * standard.storage_gb_month
               + monitored / 1000 * price.monitoring_per_1000)
    return Line(name, objects, requests, multipart, gb, monthly,
                requests / 1000 * price.put_per_1000)


def estimate(table: PriceTable, t: Tally) -> dict[str, list[Line]]:
    """Per class: the bundles planned, and a per-file copier's objects for the same files."""
    names = sorted(t.objects)
    return {"bundles": [_line(table, n, t.objects[n], t.requests[n], t.multipart[n],
                              t.billed[n], t.monitored[n]) for n in names],
            "per_file": [_line(table, n, t.files[n], t.file_requests[n], t.file_multipart[n],
                               t.file_billed[n], t.file_monitored[n]) for n in names]}


def _money(x: float | None, cur: str) -> str:
    if x is None:
        return "no price"
    return f"{x:,.2f} {cur}" if x >= 10 or x == 0 else f"{x:.4g} {cur}"


def describe(table: PriceTable, lines: dict[str, list[Line]]) -> list[str]:
    """The estimate as the dry run prints it."""
    out = [f"cost estimate ({table.name}; --prices FILE for yours):"]
    for what, title in (("bundles", "bundles"), ("per_file", "one object per file")):
        rows = lines[what]
        for ln in rows:
            out.append(f"  {title}, {ln.storage_class}: {ln.objects:,} objects "
                       f"({ln.multipart:,} in parts), {ln.requests:,} PUT-class requests "
                       f"({_money(ln.one_off, table.currency)} once), "
                       f"{ln.gb_billed:,.2f} GB billed, "
                       f"{_money(ln.monthly, table.currency)} a month")
        if all(ln.monthly is not None for ln in rows) and len(rows) > 1:
            out.append(f"  {title}, all classes: "
                       f"{_money(sum(ln.one_off or 0 for ln in rows), table.currency)} once, "
                       f"{_money(sum(ln.monthly or 0 for ln in rows), table.currency)} a month")
    return out


NO_PRICES = ("cost estimate: no default prices for this store (Azure, Ceph, MinIO, other S3 "
             "stores and directories depend on region and contract): give --prices FILE")


def as_json(table: PriceTable, lines: dict[str, list[Line]]) -> dict[str, Any]:
    return {"prices": table.name, "currency": table.currency,
            **{what: [asdict(ln) for ln in rows] for what, rows in lines.items()}}
