"""verify(): run the store, --deep and --source passes in order, then write the report."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..access import Opened
from ..checkpoint import Checkpoint
from ..errors import ConfigError
from ..paths import path_fields
from ..records import now_iso
from ..report import outcome_of, record_verify, verify_record
from ..slicing import recorded_slice
from ..staterepair import Damaged, write_list
from .common import Job
from .config import VerifyConfig
from .deep import check_members
from .findings import Findings, open_spool, write_report
from .result import VerifyResult
from .source import check_sources, walk_sources
from .store import check_store
from .workspace import ByObject

log = logging.getLogger("pacsmigrate.verify")


async def _repair_list(job: Job) -> list[Damaged]:
    """The files behind damage found in the store, left in the state for the next migrate
    (staterepair.py); an earlier list stays until a migrate applied it."""
    f = job.findings
    if not (f.damaged_objects or f.damaged_members):
        return []
    cp = job.cp
    damaged = await cp.call(cp.damaged_rows, sorted(f.damaged_objects), f.damaged_members)
    if damaged:
        await asyncio.to_thread(write_list, cp.state_dir, damaged)
    return damaged


def _recorded_sources(cp: Checkpoint) -> Any:
    """The source roots `migrate` recorded in the state, as given on its command line."""
    return (cp.get_meta("config") or {}).get("sources", [])


async def verify(opened: Opened, *, deep: bool = False, sample: float | None = None,
                 seed: int = 0, source: bool = False, progress: bool = False,
                 report: Path | None = None, config: VerifyConfig | None = None
                 ) -> VerifyResult:
    """Check a migration without downloading whole objects; return what was found.

    Always: every committed object exists in the store with the size and ETag recorded at
    commit, and has its sidecar manifest (one LIST per hashed prefix, HEAD only as a
    fallback). deep: read index rows back by range and compare blake3 (members of one
    object are coalesced into ranges of at most config.chunk bytes). source: re-stat and
    re-hash indexed source files, and walk the source roots for files not in the index.
    sample (percent, with seed) limits both deep and source to the same random rows.
    report: write a JSON report there (totals, then every finding).
    """
    cfg = config or VerifyConfig()
    if sample is not None and not 0 < sample <= 100:
        raise ConfigError(f"--sample must be a percent in (0, 100], not {sample}")
    if sample is not None and not (deep or source):
        raise ConfigError("--sample applies to --deep and --source; give one of them")
    options = {"deep": deep, "sample": sample, "seed": seed, "source": source}
    started_at = now_iso()
    try:
        result = await _verify(opened, deep=deep, sample=sample, seed=seed, source=source,
                               progress=progress, report=report, cfg=cfg)
    except BaseException as stop:
        with contextlib.suppress(OSError):  # the error that stopped it is what matters
            record_verify(opened.cp.state_dir, verify_record(
                str(opened.dest), options, started=started_at, outcome=outcome_of(stop),
                totals=None, damaged=0))
        raise
    try:
        record_verify(opened.cp.state_dir, verify_record(
            str(opened.dest), options, started=started_at,
            outcome="passed" if result.ok else f"failed: {result.errors:,} findings",
            totals=result.totals(), damaged=len(result.damaged)))
    except OSError as exc:  # a read-only or full state directory: the check itself stands
        log.warning("could not record this verify in %s: %s", opened.cp.state_dir,
                    exc.strerror or exc)
    return result


async def _verify(opened: Opened, *, deep: bool, sample: float | None, seed: int,
                  source: bool, progress: bool, report: Path | None, cfg: VerifyConfig
                  ) -> VerifyResult:
    started = time.monotonic()
    spool_path = report.with_name(report.name + ".findings.tmp") if report else None
    spool = open_spool(spool_path) if spool_path else None
    try:
        findings = Findings(keep=cfg.keep_findings, spool=spool)
        job = Job(opened, cfg, findings, progress=progress)
        job.n["rows"] = (await opened.cp.call(opened.cp.counts))["index"]
        if deep:
            job.by_object = ByObject(cfg.work_dir or opened.cp.state_dir)
        try:
            await check_store(job)
            if deep:
                await check_members(job, sample, seed)
        finally:
            if job.by_object is not None:
                job.by_object.close()
        if source:
            await check_sources(job, sample, seed)
            shard = recorded_slice(opened.cp.get_meta("config") or {})
            await walk_sources(job, list(_recorded_sources(opened.cp)), shard)
        damaged = await _repair_list(job)
        result = VerifyResult(job.counts(), findings.errors, findings.warnings,
                              MappingProxyType(dict(findings.by_kind)), tuple(findings.kept),
                              round(time.monotonic() - started, 3),
                              tuple(d.path for d in damaged))
        if report is not None and spool is not None:
            head = {"tool": "pacsmigrate", "format": "pacsmigrate.verify/1",
                    "written": now_iso(), "destination": str(opened.dest),
                    "sources": _recorded_sources(opened.cp),
                    "options": {"deep": deep, "sample": sample, "seed": seed,
                                "source": source},
                    "ok": result.ok, "totals": result.totals(),
                    # The files behind the findings, which the next migrate stores again.
                    "damaged_files": [path_fields(p) for p in result.damaged]}
            await asyncio.to_thread(write_report, report, head, spool)
        return result
    finally:
        if spool is not None:
            spool.close()
        if spool_path is not None:
            spool_path.unlink(missing_ok=True)
