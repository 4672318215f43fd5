"""`migrate --workers N` / `--scheduler ADDRESS`: one migration on Dask distributed.

The run is cut into S slices (`--shard K/S`, shard.py), S fixed by the first run (the
number of workers then) and recorded in the run's state. Each slice is one Dask task that
runs the normal pipeline (pipeline.migrate) in a worker process, with a state of its own
under `STATE/slices/`. Dask places the tasks and, when a worker dies, runs its slice again
on another: the slice's state resumes it there (intents settled, acknowledged objects
adopted, the rest uploaded), so nothing is lost or stored twice. When every slice is done,
their states are merged (statemerge.py) into STATE itself, which verify, get, locate,
restore and the exports then read as the state of any run.

The slices' states live under STATE, so they must be on a path every worker reaches: on
one machine (`--workers`) they are; with `--scheduler` give a shared --state (NFS). Why
not rebuild a lost slice's state from the store instead: rebuilding reads every manifest
of the whole store, far more than re-listing one slice's tree with its state at hand.

Rate caps (--max-requests-per-second, --bwlimit) and --memory are for the whole run: each
of the slices running at once gets an equal share.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint
from .config import MigrateConfig
from .errors import ConfigError, StateError
from .progress import Bar, read_progress
from .report import write_report
from .shard import Shard
from .statemerge import merge_into
from .stats import Stats

SLICES = "slices"
MERGING = "merging.tmp"
MIN_MEMORY = 64 << 20
WAIT_FOR_WORKERS = 300  # seconds a run on a cluster waits for its first worker


def slice_state(state_dir: Path, shard: Shard) -> Path:
    return state_dir / SLICES / f"{shard.index}-of-{shard.count}"


def progress_file(state_dir: Path, shard: Shard) -> Path:
    """Where a slice's counts are for the coordinator's bar (beside the slice's state)."""
    state = slice_state(state_dir, shard)
    return state.with_name(f"{state.name}.progress.json")


def run_slice(cfg: MigrateConfig, shard: Shard) -> dict[str, Any]:
    """A Dask task: migrate one slice in this worker process; its totals as a dict."""
    from .pipeline import migrate

    mine = replace(cfg, shard=shard, state_dir=slice_state(cfg.state_dir, shard),
                   progress=False, report_path=None,
                   progress_file=progress_file(cfg.state_dir, shard))
    return asyncio.run(migrate(mine)).as_dict()


def _share(cfg: MigrateConfig, running: int) -> MigrateConfig:
    """The config each slice runs with: caps and memory split between slices at once."""
    t = cfg.transfer
    transfer = replace(
        t, max_requests_per_second=t.max_requests_per_second / running
        if t.max_requests_per_second else None,
        bwlimit=t.bwlimit / running if t.bwlimit else None)
    # Short of memory, a slice closes its bundles sooner (group.py), as one process would.
    return replace(cfg, transfer=transfer, memory=max(MIN_MEMORY, cfg.memory // running))


@contextmanager
def _client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    if scheduler is not None:
        with Client(scheduler) as client:
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


def _slices(run: Checkpoint, cfg: MigrateConfig, workers: int) -> int:
    """How many slices this run has: recorded by its first run (refusing a state that
    holds a migration of one process)."""
    known = run.get_meta("workers")
    if known is None:
        if run.get_meta("config") is not None:
            raise ConfigError(f"{cfg.state_dir} holds a migration run in one process: run it "
                              "without --workers, or give a new --state")
        run.put_meta("workers", {"slices": workers, "dest": str(cfg.dest)})
        return workers
    if known["dest"] != str(cfg.dest):
        raise ConfigError(f"state directory {cfg.state_dir} belongs to a migration to "
                          f"{known['dest']}, not {cfg.dest}; use another --state")
    return int(known["slices"])


def migrate_on_dask(cfg: MigrateConfig, *, workers: int | None = None,
                    scheduler: str | None = None,
                    echo: Callable[[str], None] = print) -> Stats:
    """Run the migration as slices on Dask; returns the totals of every slice."""
    if cfg.dry_run:
        raise ConfigError("--dry-run runs in one process: drop --workers / --scheduler")
    if cfg.shard is not None:
        raise ConfigError("--shard is for one slice run by itself; --workers cuts the run "
                          "into slices of its own: give one or the other")
    # Workers resolve paths in their own working directory: give them absolute ones.
    cfg = replace(cfg, state_dir=cfg.state_dir.resolve(),
                  sources=tuple(p.resolve() for p in cfg.sources))
    started = time.monotonic()
    run = Checkpoint(cfg.state_dir)  # one coordinator per run
    try:
        with _client(workers, scheduler) as client:
            if scheduler is not None:  # an autoscaling cluster may start with none
                client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS)
            found = len(client.scheduler_info()["workers"]) or (workers or 1)
            count = _slices(run, cfg, found)
            shared = _share(cfg, min(found, count))
            echo(f"{count} slices on {found} Dask workers ({_dashboard(client)})")
            stats = _run_slices(client, shared, count, echo)
        merged = _merge(run, cfg, count)
        stats.seconds = round(time.monotonic() - started, 3)
        stats.studies = merged.counts()["groups"]
        stats.pending_after = merged.counts()["spill"]
        if cfg.report_path is not None:
            write_report(cfg.report_path, run, stats, cfg)
    finally:
        run.close()
    return stats


def _run_slices(client: Any, cfg: MigrateConfig, count: int,
                echo: Callable[[str], None]) -> Stats:
    """Submit every slice; wait for them, the bar fed by the slices' progress files."""
    shards = {f"pacsmigrate-slice-{k}-of-{count}-{time.time_ns()}": Shard(k, count)
              for k in range(count)}
    futures = {client.submit(run_slice, cfg, shard, key=key, pure=False, retries=0): shard
               for key, shard in shards.items()}
    files = [progress_file(cfg.state_dir, s) for s in shards.values()]
    for f in files:  # a previous run's counts must not start this run's bar
        f.unlink(missing_ok=True)
    bar = Bar("store", total_bytes=None, total_files=None, enabled=cfg.progress)
    total, shown = Stats(), {"files": 0, "bytes": 0}
    try:
        left = dict(futures)
        while left:
            for fut in [f for f in left if f.done()]:
                shard = left.pop(fut)
                got = fut.result()  # a slice's error stops the run, one line as in one process
                total.add(got)
                echo(f"slice {shard} done: {got['files_migrated']:,} files migrated, "
                     f"{got['not_migrated']:,} still to do")
            _show(bar, files, shown)
            if left:
                time.sleep(0.5)
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        bar.close()
    return total


def _show(bar: Bar, files: list[Path], shown: dict[str, int]) -> None:
    """Move the bar to the slices' totals (files stored or found stored, bytes read)."""
    now = [read_progress(f) for f in files]
    done = sum(p.get("files_migrated", 0) + p.get("already_migrated", 0) for p in now)
    nbytes = sum(p.get("bytes_seen", 0) for p in now)
    bar.update(files=max(0, done - shown["files"]), nbytes=max(0, nbytes - shown["bytes"]))
    shown["files"], shown["bytes"] = max(done, shown["files"]), max(nbytes, shown["bytes"])


def _merge(run: Checkpoint, cfg: MigrateConfig, count: int) -> Checkpoint:
    """Merge the slices into a new state, then put it in place of the run's (a rename)."""
    slices = [slice_state(cfg.state_dir, Shard(k, count)) for k in range(count)]
    lost = [s for s in slices if not (s / "checkpoint.lmdb").is_dir()]
    if lost:
        raise StateError(f"no state for slice(s) {', '.join(s.name for s in lost)} under "
                         f"{cfg.state_dir / SLICES}: the workers must write to this --state "
                         "(a path they all reach)")
    tmp = cfg.state_dir / MERGING
    shutil.rmtree(tmp, ignore_errors=True)
    out = Checkpoint(tmp)
    try:
        merge_into(out, slices)
        out.put_meta("workers", {"slices": count, "dest": str(cfg.dest)})
    finally:
        out.close()
    run.adopt(tmp / "checkpoint.lmdb" / "data.mdb")
    shutil.rmtree(tmp, ignore_errors=True)
    return run


__all__ = ["migrate_on_dask", "run_slice", "slice_state"]
