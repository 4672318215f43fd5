"""`migrate --dry-run --sample PCT`: the whole tree estimated from a part of it.

The tree is listed whole (names only, no file opened: `find`'s cost), which counts its
files. One slice of it (shard.py's units: a study's or a day's folder, so studies stay
whole) is read, hashed and planned as a dry run does, and timed. Scaled by the files
counted over the files read, the slice gives the tree's bytes, objects, requests and cost;
its read time gives the tree's. The upload rate is measured with a few probe objects of
the plan's size, written at the run's concurrency and deleted at once (with --offline:
not measured). A run reads and uploads side by side, so it takes about the slower of the
two.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from .backends.base import Backend, one_chunk
from .config import Destination
from .costs import PriceTable, Tally, as_json, describe, estimate
from .errors import BackendError, ConfigError
from .keys import probe_key
from .shard import Shard
from .stats import Stats

_PCT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")
MIN_PCT, MAX_PCT = 0.01, 50.0
PROBE_SECONDS = 3.0  # timing the store: large objects for about this long
PROBE_ROUNDS = 4
SMALL = 4096
SMALL_SECONDS = 1.0
PROBE_MAX = 8 << 20  # the largest probe object
ROUND_MAX = 64 << 20  # bytes of probe objects sent at once (PROBE_ROUNDS rounds at most)
MIN_FOLDERS = 30  # folders a sample should read for its estimate to mean much


def parse(text: str) -> int:
    """`--sample 10%` (or 10, 0.5%): the number of slices, of which one is read."""
    m = _PCT.match(text)
    pct = float(m.group(1)) if m else 0.0
    if not MIN_PCT <= pct <= MAX_PCT:
        raise ConfigError(f"--sample {text!r}: give a percentage from {MIN_PCT:g}% to "
                          f"{MAX_PCT:g}%, e.g. --sample 5%")
    return max(2, round(100 / pct))


def slice_of(slices: int) -> Shard:
    """The slice a sample reads: the first of `slices` (the same every time)."""
    return Shard(0, slices)


@dataclass
class Rates:
    """The store's upload rates at the run's concurrency, from probe objects: the time each
    request costs (from small ones) and the bandwidth (from large ones, less that time)."""

    bytes_per_second: float
    requests_per_second: float
    probe_size: int
    undeleted: int = 0  # probe objects the store kept (a WORM bucket): named in the summary

    def seconds(self, requests: int, nbytes: int) -> float:
        return requests / self.requests_per_second + nbytes / self.bytes_per_second


async def measure_upload(backend: Backend, dest: Destination, *, concurrency: int,
                         size: int) -> Rates:
    """A round of small probe objects to warm up (connections, a new bucket's volumes),
    then timed rounds of `concurrency` small ones and of `size` bytes (at most ROUND_MAX
    bytes a round): the rates. Every probe is deleted after; a store that refuses writes
    (list-only credentials) raises its error."""
    size = max(4 * SMALL, min(size, PROBE_MAX, ROUND_MAX // concurrency))
    keys: list[str] = []
    body = secrets.token_bytes(size)

    async def put(n: int) -> None:
        key = probe_key(dest, secrets.token_hex(8))
        keys.append(key)
        await backend.save(key, one_chunk(body[:n]), metadata={"pacsmigrate-probe": "1"})

    async def rounds(n: int, seconds: float, most: int) -> float:
        """Seconds per object, at `concurrency` objects at once."""
        started, done = time.monotonic(), 0
        for _ in range(most):
            await asyncio.gather(*(put(n) for _ in range(concurrency)))
            done += concurrency
            if time.monotonic() - started >= seconds:
                break
        return (time.monotonic() - started) / done

    undeleted = 0
    try:
        await rounds(SMALL, 0.0, 1)
        per_request = await rounds(SMALL, SMALL_SECONDS, 4 * PROBE_ROUNDS)
        per_large = await rounds(size, PROBE_SECONDS, PROBE_ROUNDS)
    finally:
        for key in keys:
            try:
                await backend.remove(key)
            except BackendError:
                undeleted += 1  # a WORM bucket keeps them: said in the summary
    sending = max(per_large - per_request, per_large / 10)
    return Rates(size / sending, 1 / per_request, size, undeleted)


@dataclass
class Estimate:
    """The whole tree, from the sample."""

    percent: float  # files read of files counted
    files: int  # counted by the listing
    sampled_files: int
    bytes: int
    objects: int
    requests: int
    read_seconds: float
    upload_seconds: float | None  # None: not measured (offline, or the store refused)
    rates: Rates | None
    folders: int = 0  # folders read
    unmeasured: str = "--offline"  # why the upload rate was not measured
    bytes_error: float | None = None  # relative standard error of `bytes` (None: 1 folder)

    @property
    def seconds(self) -> float:
        return max(self.read_seconds, self.upload_seconds or 0.0)

    def lines(self) -> list[str]:
        out = [(f"sample: {self.sampled_files:,} of {self.files:,} files read "
               f"({self.percent:.1f}%; every file counted by a listing)"),
               (f"estimate for the whole tree: {self.files:,} files, ~{self.bytes / 1e9:,.2f} GB"
               f"{self._error()}, ~{self.objects:,} objects, ~{self.requests:,} requests "
               "(objects and requests run high where a study's files lie in folders of "
               "several slices)")]
        if self.folders < MIN_FOLDERS:
            out.append(f"WARNING: the sample read files in {self.folders:,} folders only: a "
                       "rough estimate; give a larger --sample")
        read = f"reading ~{_duration(self.read_seconds)}"
        if self.upload_seconds is None or self.rates is None:
            out.append(f"estimate of time: {read}; uploading not measured ({self.unmeasured})"
                       ": a run takes at least that")
        else:
            r = self.rates
            out.append(f"estimate of time: {read}, uploading ~{_duration(self.upload_seconds)} "
                       f"(probe objects: {r.bytes_per_second / 1e6:,.1f} MB/s in "
                       f"{r.probe_size / 1e6:,.1f} MB objects, {r.requests_per_second:,.0f} "
                       f"small requests/s); about {_duration(self.seconds)} in all, as a "
                       "run reads and uploads side by side")
            if r.undeleted:
                out.append(f"WARNING: the store kept {r.undeleted:,} probe objects (under "
                           "pacsmigrate-run/preflight-*): it refused to delete them")
        return out

    def _error(self) -> str:
        if self.bytes_error is None:
            return ""
        return (f" (±{100 * self.bytes_error:.0f}%: one standard error, from how the folders "
                "read differ)")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = self.seconds
        return out


def scale(stats: Stats, *, total_files: int, read_seconds: float, setup: int,
          rates: Rates | None, tally: Tally | None, prices: PriceTable | None,
          unmeasured: str = "--offline") -> Estimate:
    """The sample's counts in `stats` scaled to the `total_files` the listing counted;
    the cost lines in stats replaced by the whole tree's."""
    seen = stats.files_seen
    if not seen:
        if not total_files:
            raise ConfigError("--sample: the sources hold no files to estimate")
        raise ConfigError(f"--sample: the part of the tree read holds none of its "
                          f"{total_files:,} files (too few folders to cut it this finely): "
                          "give a larger --sample, or run the dry run without it")
    factor = total_files / seen
    objects = round(stats.planned_objects * factor)
    requests = round(stats.planned_requests * factor) + setup
    nbytes = round(stats.bytes_seen * factor)
    planned = round(stats.planned_bytes * factor)
    upload = None
    if rates is not None:
        upload = rates.seconds(requests, planned)
    if tally is not None and prices is not None:
        lines = estimate(prices, tally.scaled(factor))
        stats.cost = as_json(prices, lines)
        stats.cost_lines = [line.replace("cost estimate (", "cost estimate for the whole "
                                         "tree (", 1) for line in describe(prices, lines)]
    return Estimate(100.0 * seen / total_files if total_files else 0.0, total_files, seen,
                    nbytes, objects, requests, read_seconds * factor, upload, rates,
                    stats.folders_read, unmeasured, bytes_error(stats.folder_moments))


def bytes_error(m: dict[str, float]) -> float | None:
    """The relative standard error of bytes per file over the folders read (a ratio
    estimator over folders, the sample's units): None below two folders or no bytes."""
    n = m.get("n", 0.0)
    f, b = m.get("f", 0.0), m.get("b", 0.0)
    if n < 2 or not f or not b:
        return None
    r = b / f
    spread = (m["bb"] - 2 * r * m["fb"] + r * r * m["ff"]) / (n - 1)
    return float(max(spread, 0.0) ** 0.5 / (f / n) / n ** 0.5 / r)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:,.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 86400:,.1f} days"


__all__ = ["Estimate", "Rates", "measure_upload", "parse", "scale", "slice_of"]
