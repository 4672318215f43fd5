"""What a Dask worker runs for one slice of a run on workers (workers.py coordinates).

The task runs the normal pipeline (pipeline.migrate) for its slice, with a state that is
either under the run's --state (`shared`: a path every worker reaches) or in the worker's
own directory, copied to and from the store (`store`, slicestore.py). Beside it a thread
sends the slice's counts to the coordinator's bar (a Dask queue) and stops the slice when
Dask cancels the task: a coordinator that died or was stopped leaves no slice running on
after it, uploading what the next run's slices would upload again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from .backends import opened
from .config import MigrateConfig
from .errors import PacsMigrateError, StateLockedError
from .progress import read_progress
from .shard import Shard
from .staterepair import Damaged, write_list

log = logging.getLogger("pacsmigrate.workers")
T = TypeVar("T")

SHARED, STORE = "shared", "store"
SLICES = "slices"
# Beside a worker's own directory, which Dask puts on the worker's sys.path: a folder there
# named like the package ("pacsmigrate") shadowed it, as an empty namespace package, for an
# installed copy found after the path finder (pip install -e): every later run on that
# machine failed to import. The hyphen keeps this name out of any import.
LOCAL_STATES = "pacsmigrate-slices"
LOCK_WAIT = 120.0  # seconds a slice waits for a stopping task of an earlier run to let go
EVERY = 1.0  # seconds between counts sent to the coordinator


@dataclass(frozen=True)
class SliceJob:
    """One slice of a run: what the task needs besides the run's config."""

    cfg: MigrateConfig  # the run's, caps and memory already shared out (workers._share)
    shard: Shard
    states: str  # SHARED or STORE
    run_id: str
    queue: str  # the Dask queue the coordinator reads counts from
    # The files of this slice a verify found damaged (STATE/repair.jsonl, cut by slice):
    # left in the slice's state, whose run stores them again (staterepair.py).
    repair: tuple[Damaged, ...] = ()
    log_file: str | None = None  # the command's --log-file: the slice logs there too
    verbose: int = 0  # and its -v


def slice_state(state_dir: Path, shard: Shard) -> Path:
    """Where a slice's state is under the run's state (shared) or a worker's directory."""
    return state_dir / SLICES / f"{shard.index}-of-{shard.count}"


def local_states(local_directory: str, run_id: str) -> Path:
    """Where a run's slice states are on a worker (`--slice-states store`)."""
    return Path(local_directory).parent / LOCAL_STATES / run_id


def run_slice(job: SliceJob) -> dict[str, Any]:
    """The Dask task: migrate one slice in this worker process. Returns its totals and,
    with states kept in the store, the key of its state's copy there."""
    from distributed import Queue, get_worker

    worker = get_worker()
    _log_to(job.log_file, job.verbose)
    # A worker's own directory is dask-scratch-space/worker-XXXX, made afresh by each
    # worker process: the states go beside it, where a worker restarted here finds them.
    base = job.cfg.state_dir if job.states == SHARED else \
        local_states(worker.local_directory, job.run_id)
    if job.states == STORE:  # source paths and UIDs: the worker's user alone reads them
        base.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        base.parent.chmod(0o700)
    state = slice_state(base, job.shard)
    cfg = replace(job.cfg, shard=job.shard, state_dir=state, progress=False,
                  report_path=None, progress_file=state.with_name(state.name + ".progress"))
    assert cfg.progress_file is not None
    cfg.progress_file.unlink(missing_ok=True)  # an earlier run's counts must not be sent
    queue = Queue(job.queue)  # type: ignore[no-untyped-call]
    watch = _Watch(worker, worker.get_current_task(), queue, job.shard,
                   cfg.progress_file)
    try:
        return asyncio.run(_run(job, cfg, watch))
    except PacsMigrateError as exc:
        # Handed back as the result: the coordinator says it in one line. Raised, Dask's
        # worker would also log it as a failed task, with a traceback, on the terminal.
        return {"error": exc}


def plan_slicing(cfg: MigrateConfig, slices: int, cut: int | None) -> dict[str, Any]:
    """The Dask task that makes (or reads) the migration's slicing plan: on a worker, which
    sees the sources (the coordinator may not)."""
    from .setup import agreed_plan

    async def agree() -> dict[str, Any]:
        async with opened(cfg.dest, cfg.transfer) as backend:
            return await agreed_plan(backend, cfg, slices, cut)
    return asyncio.run(agree())


async def _run(job: SliceJob, cfg: MigrateConfig, watch: _Watch) -> dict[str, Any]:
    from .pipeline import migrate
    from .slicestore import seed, ship, take_found

    watch.start(asyncio.get_running_loop(), asyncio.current_task())
    copy, how, found = None, "its state under --state", 0
    try:
        if job.states == STORE:
            async with opened(cfg.dest, cfg.transfer) as backend:
                how = await _when_free(lambda: seed(cfg, backend, job.run_id))
            found = await asyncio.to_thread(take_found, cfg.state_dir)
        if job.repair:  # forgetting twice changes nothing: a re-run may hand it on again
            cfg.state_dir.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(write_list, cfg.state_dir, list(job.repair))
        stats = await _when_free(lambda: migrate(cfg))
        if found:  # stored by this run's lost attempt: migrated now, not before
            stats.files_migrated += found
            stats.files_adopted += found
            stats.already_migrated -= min(found, stats.already_migrated)
        if job.states == STORE:
            async with opened(cfg.dest, cfg.transfer) as backend:
                copy = await ship(cfg, backend, job.run_id)
    finally:
        watch.stop()
    if job.states == STORE:  # its copy is in the store: none is left on the worker's disk
        await asyncio.to_thread(_remove_local, cfg)
    return {"stats": stats.as_dict(), "copy": copy, "from": how}


_LOGGING: set[tuple[str | None, int]] = set()  # how this worker process logs already


def _log_to(log_file: str | None, verbose: int) -> None:
    """The slice's log lines as the command's: into its --log-file, on stderr with -v (a
    worker process is set up once; a path a worker cannot write, on another machine, is
    left: the coordinator logs)."""
    if (log_file is None and not verbose) or (log_file, verbose) in _LOGGING:
        return
    from .cli.logs import configure

    _LOGGING.add((log_file, verbose))
    try:
        configure(verbose, Path(log_file) if log_file else None)
    except Exception as exc:  # noqa: BLE001 - click's BadParameter: not writable here
        log.warning("slice logs not written to --log-file on this worker: %s", exc)


def _remove_local(cfg: MigrateConfig) -> None:
    shutil.rmtree(cfg.state_dir, ignore_errors=True)
    if cfg.progress_file is not None:
        cfg.progress_file.unlink(missing_ok=True)
    for folder in (cfg.state_dir.parent, cfg.state_dir.parent.parent):  # the run's, if empty
        with contextlib.suppress(OSError):
            folder.rmdir()


async def _when_free(start: Callable[[], Awaitable[T]]) -> T:
    """Run start(); while the slice's state is locked by a task of an earlier run that is
    still stopping (cancelled by Dask), wait for it, up to LOCK_WAIT."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            return await start()
        except StateLockedError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)


class _Watch:
    """A thread beside the slice: its counts to the coordinator, and a stop when Dask no
    longer wants the task (its key released or cancelled: the coordinator went away)."""

    def __init__(self, worker: Any, key: Any, queue: Any, shard: Shard, counts: Path | None
                 ) -> None:
        self.worker, self.key, self.queue, self.shard, self.counts = (
            worker, key, queue, shard, counts)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> None:
        self._thread = threading.Thread(target=self._run, args=(loop, task), daemon=True,
                                        name="pacsmigrate-watch")
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self._send()

    def wanted(self) -> bool:
        ts = self.worker.state.tasks.get(self.key)
        return ts is not None and ts.state != "cancelled"

    def _run(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> None:
        while not self._done.wait(EVERY):
            if not self.wanted():
                log.warning("slice %s: the run's coordinator is gone; stopping", self.shard)
                if task is not None:
                    loop.call_soon_threadsafe(task.cancel)
                return
            self._send()

    def _send(self) -> None:
        got = read_progress(self.counts) if self.counts is not None else {}
        if not got:
            return
        try:
            self.queue.put({"slice": self.shard.index, **got}, timeout=10)
        except Exception as exc:  # noqa: BLE001 - the bar is not worth stopping a slice for
            log.debug("slice %s: counts not sent: %s", self.shard, exc)


__all__ = ["SHARED", "STORE", "SliceJob", "run_slice", "slice_state"]
