"""`migrate --workers N` / `--scheduler ADDRESS`: one migration on Dask distributed.

The run is cut into S slices (`--shard K/S`, shard.py), S fixed by the first run (four
per task its cluster ran at once) and recorded in the run's state. Each slice is one Dask task
(slicetask.py) that runs the normal pipeline in a worker process with a state of its own.
Dask places the tasks and, when a worker dies, runs its slice again on another, which
resumes it there: intents settled, acknowledged objects adopted, the rest uploaded, so
nothing is lost or stored twice. When every slice is done, their states are merged
(statemerge.py) into STATE itself, which verify, get, locate, restore and the exports
then read as the state of any run.

Where the slices' states live (`--slice-states`, fixed by the first run):
- `shared` (the default with --workers): under STATE/slices, a path every worker reaches
  (one machine, or an NFS --state). A slice resumes from its state wherever it runs.
- `store` (the default with --scheduler): in each worker's own directory, copied to the
  store when the slice is done and read back by the coordinator (slicestore.py). A slice
  re-run on another machine starts from its last copy and adopts what the store holds
  since: the store describes itself. Nothing needs a shared path but the sources.

Rate caps (--max-requests-per-second, --bwlimit) and --memory are for the whole run: each
of the slices running at once gets an equal share.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from . import faults
from .backends import Backend, opened
from .backends.body import sent
from .checkpoint import Checkpoint
from .cleanup import stale_uploads
from .config import MigrateConfig
from .errors import ConfigError, StateError
from .lmdbfile import data_file, env_dir
from .preflight import decided, preflight
from .progress import Bar
from .records import now_iso
from .report import outcome_of, run_record, write_report
from .shard import CUT, Shard
from .slicestore import MARGIN, fetch, held_copy, mark_start, marker_key, newest_copy
from .slicetask import SHARED, SLICES, STORE, SliceJob, plan_slicing, run_slice, slice_state
from .slicing import with_plan
from .statemerge import merge_into
from .staterepair import REPAIR_FILE, Damaged, done_with_list, take_list, write_list
from .stats import Stats
from .tables import RUNNING

T = TypeVar("T")
log = logging.getLogger("pacsmigrate.workers")

MERGING = "merging.tmp"
MIN_MEMORY = 64 << 20
WAIT_FOR_WORKERS = 300  # seconds a run on a cluster waits for its first worker
# Slices per task a cluster runs at once: when one slice is larger than the others, Dask
# gives the rest to the workers that are free, so the run does not wait on one worker.
SLICES_PER_SLOT = 4


def _share(cfg: MigrateConfig, running: int) -> MigrateConfig:
    """The config each slice runs with: caps and memory split between slices at once."""
    t = cfg.transfer
    transfer = replace(
        t, max_requests_per_second=t.max_requests_per_second / running
        if t.max_requests_per_second else None,
        bwlimit=t.bwlimit / running if t.bwlimit else None)
    # Short of memory, a slice closes its bundles sooner (group.py), as one process would.
    # The coordinator ran the pre-flight: slices do not each write a probe.
    # The workers are the run's processes: a read process each (auto) would double them.
    return replace(cfg, transfer=transfer, memory=max(MIN_MEMORY, cfg.memory // running),
                   preflight=False,
                   read_process="off" if cfg.read_process == "auto" else cfg.read_process)


@contextmanager
def _client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler)
        except (OSError, ValueError, TypeError) as exc:  # unreachable, or not an address
            raise ConfigError(f"cannot reach the Dask scheduler {scheduler!r}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__} "
                              "(give its address as tcp://HOST:PORT)") from None
        with client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def _dashboard(client: Any) -> str:
    """Where Dask's dashboard is, or how to get it (it needs bokeh)."""
    import importlib.util

    if importlib.util.find_spec("bokeh") is None:
        return "Dask's dashboard: pip install 'pacsmigrate[dashboard]'"
    return f"Dask's dashboard: {getattr(client, 'dashboard_link', '') or 'not served'}"


def _plan(run: Checkpoint, cfg: MigrateConfig, workers: int, states: str | None,
          scheduler: str | None) -> dict[str, Any]:
    """The run's slices (how many, where their states live, its id): recorded by its first
    run, which also refuses a state that holds a migration of one process."""
    known = run.get_meta("workers")
    if known is None:
        if run.get_meta("config") is not None:
            raise ConfigError(f"{cfg.state_dir} holds a migration run in one process: run it "
                              "without --workers, or give a new --state")
        known = {"slices": workers, "dest": str(cfg.dest),
                 "states": states or (STORE if scheduler else SHARED),
                 "run_id": uuid.uuid4().hex[:16], "cut": CUT, "slicing": None}
        run.put_meta("workers", known)
        return known
    if known["dest"] != str(cfg.dest):
        raise ConfigError(f"state directory {cfg.state_dir} belongs to a migration to "
                          f"{known['dest']}, not {cfg.dest}; use another --state")
    known.setdefault("states", SHARED)  # runs from before --slice-states
    known.setdefault("run_id", "")
    known.setdefault("cut", None)  # and from before the cut (shard.py)
    known.setdefault("slicing", {})  # and from before slicing plans: nothing split
    if states is not None and states != known["states"]:
        raise ConfigError(f"this run keeps its slices' states in the {known['states']!r} "
                          f"way (--slice-states {known['states']}), fixed by its first run")
    return dict(known)


def migrate_on_dask(cfg: MigrateConfig, *, workers: int | None = None,
                    scheduler: str | None = None, states: str | None = None,
                    echo: Callable[[str], None] = print,
                    log_file: Path | None = None, verbose: int = 0) -> Stats:
    """Run the migration as slices on Dask; returns the totals of every slice.
    `log_file`, `verbose`: the command's --log-file and -v, which the slices log by as well
    (to a log file a worker can write)."""
    if cfg.dry_run:
        raise ConfigError("--dry-run runs in one process: drop --workers / --scheduler")
    if cfg.shard is not None:
        raise ConfigError("--shard is for one slice run by itself; --workers cuts the run "
                          "into slices of its own: give one or the other")
    # Workers resolve paths in their own working directory: give them absolute ones.
    cfg = replace(cfg, state_dir=cfg.state_dir.resolve(),
                  sources=tuple(p.resolve() for p in cfg.sources))
    started, started_at = time.monotonic(), now_iso()
    if cfg.preflight:  # here, before the state exists
        report = asyncio.run(preflight(cfg))
        report.raise_if_failed()
        cfg = decided(cfg, report)  # every slice sends the checksum it chose
    run = Checkpoint(cfg.state_dir)  # one coordinator per run
    stats = Stats()
    stats.checksum = sent(cfg.transfer.checksum)
    planned = recorded = False  # a state _plan refuses is another run's: nothing recorded
    try:
        with _client(workers, scheduler) as client:
            if scheduler is not None:  # an autoscaling cluster may start with none
                client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
            seen = client.scheduler_info()["workers"].values()
            found = len(seen) or (workers or 1)
            slots = sum(int(w.get("nthreads", 1)) for w in seen) or found  # tasks at once
            plan = _plan(run, cfg, SLICES_PER_SLOT * slots, states, scheduler)
            planned = True
            # Recorded as it starts (replaced at its end), as a run in one process is: one
            # killed with the coordinator leaves a trace, marked KILLED by the next.
            run.start_run({**run_record(cfg, stats, started=started_at, outcome=RUNNING),
                           "ended": None})
            count = plan["slices"]
            if plan["slicing"] is None:  # its first start: cut too large units finer
                echo("planning the slices: listing the folders above the cut "
                     f"({CUT} deep)")
                plan["slicing"] = doc = client.submit(
                    plan_slicing, cfg, count, plan["cut"], pure=False,
                    key=f"pacsmigrate-plan-{uuid.uuid4().hex}").result()
                run.put_meta("workers", plan)
                echo(f"slicing: {len(doc.get('flat', [])):,} flat folder(s) spread file by "
                     f"file, {len(doc.get('split', [])):,} folder(s) cut deeper")
            if plan["states"] == STORE:
                asyncio.run(_in_store(lambda b: mark_start(b, cfg.dest, plan["run_id"]), cfg))
            echo(f"{count} slices on {found} Dask workers, states kept "
                 f"{'in the store' if plan['states'] == STORE else 'under --state'} "
                 f"({_dashboard(client)})")
            shared, queue = _share(cfg, min(slots, count)), f"pacsmigrate-{uuid.uuid4().hex}"
            shards = [with_plan(Shard(k, count, plan["cut"]), plan["slicing"])
                      for k in range(count)]
            damaged = take_list(cfg.state_dir)
            repairs = _cut_repair(damaged or [], shards, cfg, echo)
            jobs = [SliceJob(shared, shard, plan["states"], plan["run_id"], queue,
                             repairs.get(shard.index, ()),
                             str(log_file.resolve()) if log_file else None, verbose)
                    for shard in shards]
            copies = _run_slices(client, jobs, echo, cfg.progress, stats)
        if plan["states"] == STORE:
            left = asyncio.run(_in_store(
                lambda b: _fetch_all(b, cfg, plan["run_id"], copies), cfg))
            if left:  # a lost worker's, whose bundle no slice planned again (or not ours)
                echo(f"WARNING: {left} multipart upload(s) under {cfg.dest} begun during this "
                     "run are still open; once nothing else writes there, `pacsmigrate "
                     "cleanup` aborts them")
        faults.point("before-merge")  # the slices done, the coordinator's state not yet
        merged = _merge(run, cfg, plan)
        stats.seconds = round(time.monotonic() - started, 3)
        stats.studies = merged.counts()["groups"]
        stats.pending_after = merged.counts()["spill"]
        if damaged is not None:
            done_with_list(cfg.state_dir)
        merged.record_run(run_record(cfg, stats, started=started_at, outcome="completed"))
        recorded = True
        if cfg.report_path is not None:
            write_report(cfg.report_path, run, stats, cfg)
    except BaseException as stop:
        # Recorded as a run in one process records it; a failure to record must not hide
        # the error that stopped the run.
        try:
            if planned and not recorded:
                stats.seconds = round(time.monotonic() - started, 3)
                run.record_run(run_record(cfg, stats, started=started_at,
                                          outcome=outcome_of(stop)))
                if cfg.report_path is not None:
                    write_report(cfg.report_path, run, stats, cfg)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not record the run after the error: %s", exc)
        raise
    finally:
        run.close()
    return stats


def _cut_repair(damaged: list[Damaged], shards: list[Shard], cfg: MigrateConfig,
                echo: Callable[[str], None]) -> dict[int, tuple[Damaged, ...]]:
    """The repair list cut by slice: each slice's run stores its own damaged files again."""
    roots = [os.fsencode(p) for p in cfg.sources]
    out: dict[int, list[Damaged]] = {}
    unheld: list[Damaged] = []
    for d in damaged:
        shard = next((s for s in shards if s.holds(roots, d.path)), None)
        if shard is None:
            unheld.append(d)
        else:
            out.setdefault(shard.index, []).append(d)
    if damaged:
        echo(f"repair: {len(damaged) - len(unheld):,} files a verify found damaged handed "
             f"to the slices that hold them ({len(out):,} slices)")
    if unheld:  # outside this run's sources: left listed for a run that has them
        write_list(cfg.state_dir, unheld)
        echo(f"WARNING: repair: {len(unheld):,} damaged files lie outside this run's sources: "
             f"left in {REPAIR_FILE} for a run with the sources that hold them")
    return {k: tuple(v) for k, v in out.items()}


async def _in_store(body: Callable[[Backend], Awaitable[T]], cfg: MigrateConfig) -> T:
    async with opened(cfg.dest, cfg.transfer) as backend:
        return await body(backend)


async def _fetch_all(backend: Backend, cfg: MigrateConfig, run_id: str,
                     copies: dict[int, str]) -> int:
    """Read each slice's copy into STATE/slices (unless the one there is it). Returns how
    many multipart uploads under the prefix begun since the run started are still open."""
    count = len(copies)
    for k, key in sorted(copies.items()):
        target = slice_state(cfg.state_dir, Shard(k, count))
        info = await backend.stat(key)
        if info is None:  # the slice ran again since (a newer copy replaced this one)
            info = await newest_copy(backend, cfg.dest, run_id, Shard(k, count))
            if info is None:
                raise StateError(f"no copy of slice {k} is left in the store; run again")
        if held_copy(target) == info.key:
            continue
        await fetch(backend, info, data_file(target))
    marker = await backend.stat(marker_key(cfg.dest, run_id))
    since = marker.modified - MARGIN if marker and marker.modified else time.time()
    return len([u async for u in stale_uploads(backend, cfg.dest, older_than=0)
                if u.initiated >= since])


def _run_slices(client: Any, jobs: list[SliceJob], echo: Callable[[str], None],
                progress: bool, total: Stats) -> dict[int, str]:
    """Submit every slice; wait for them, the bar fed by the counts the slices send, their
    totals added to `total` as each ends. Returns, by slice, the key of each state's copy
    in the store."""
    from distributed import Queue

    queue = Queue(jobs[0].queue, client=client)
    futures = {client.submit(run_slice, job, key=f"{job.queue}-slice-{job.shard.index}",
                             pure=False, retries=0): job.shard for job in jobs}
    bar = Bar("store", total_bytes=None, total_files=None, enabled=progress)
    copies = {}
    counts: dict[int, dict[str, int]] = {}
    shown = {"files": 0, "bytes": 0}
    try:
        left = dict(futures)
        while left:
            for fut in [f for f in left if f.done()]:
                shard = left.pop(fut)
                got = fut.result()
                if "error" in got:  # a slice's error stops the run, one line as in one process
                    raise got["error"]
                # Let go of it: Dask would run it again to keep a result that a lost worker
                # held, and a slice done twice replaces the copy of its state read below.
                del futures[fut]
                fut.release()
                total.add(got["stats"])
                if got["copy"]:
                    copies[shard.index] = got["copy"]
                echo(f"slice {shard} done: {got['stats']['files_migrated']:,} files migrated, "
                     f"{got['stats']['not_migrated']:,} still to do (it started from "
                     f"{got['from']})")
            for item in queue.get(batch=True):  # what is there now, without waiting
                counts[int(item.pop("slice"))] = item
            _show(bar, list(counts.values()), shown)
            if left:
                time.sleep(0.5)
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        bar.close()
        queue.close()
    return copies


def _show(bar: Bar, now: list[dict[str, int]], shown: dict[str, int]) -> None:
    """Move the bar to the slices' totals (files stored or found stored, bytes read)."""
    done = sum(p.get("files_migrated", 0) + p.get("already_migrated", 0) for p in now)
    nbytes = sum(p.get("bytes_seen", 0) for p in now)
    bar.update(files=max(0, done - shown["files"]), nbytes=max(0, nbytes - shown["bytes"]))
    shown["files"], shown["bytes"] = max(done, shown["files"]), max(nbytes, shown["bytes"])


def _merge(run: Checkpoint, cfg: MigrateConfig, plan: dict[str, Any]) -> Checkpoint:
    """Merge the slices into a new state, then put it in place of the run's (a rename)."""
    count = plan["slices"]
    slices = [slice_state(cfg.state_dir, Shard(k, count)) for k in range(count)]
    lost = [s for s in slices if not env_dir(s).is_dir()]
    if lost:
        raise StateError(f"no state for slice(s) {', '.join(s.name for s in lost)} under "
                         f"{cfg.state_dir / SLICES}: the workers must write to this --state "
                         "(a path they all reach), or run with --slice-states store")
    tmp = cfg.state_dir / MERGING
    shutil.rmtree(tmp, ignore_errors=True)
    history = run.runs()  # the runs before this one: the merged state is made anew
    out = Checkpoint(tmp)
    try:
        merge_into(out, slices)
        out.put_meta("workers", plan)
        out.put_meta("runs", history)
    finally:
        out.close()
    run.adopt(data_file(tmp))
    shutil.rmtree(tmp, ignore_errors=True)
    return run


__all__ = ["migrate_on_dask"]
