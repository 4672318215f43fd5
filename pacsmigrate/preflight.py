"""The pre-flight: everything a run needs, checked in seconds before anything is written.

`pacsmigrate check SOURCE... DEST` runs it alone; `migrate` runs it first, before its state
directory is created or bound to the destination (a run that cannot reach its store leaves
nothing behind). Each check ends in one line: what was found, or what to do about it.

- sources: each is a directory this user can list;
- state: `--state` can be created and written, lies outside every source (the source is
  never written to), and its file system has room;
- store: the credentials and the bucket (a listing), then, for a real run, a probe object
  written (conditional, as every object), read back, compared and deleted under
  `PREFIX/pacsmigrate-run/`; the store's clock against this machine's (from the probe's
  Last-Modified); object lock when a retention is asked for.

Store requests here are retried a few times with short deadlines (not a run's ten attempts
of two minutes), so a dead or silent endpoint is reported within about half a minute: the
probe's first request gives up after PROBE_ATTEMPTS of PROBE_CONNECT + PROBE_READ seconds,
and a probe that was not written is not deleted (a silent store would make that wait again).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from isal import isal_zlib

from .backends import Measured, open_backend, wrap
from .backends.base import Backend, one_chunk
from .backends.body import AUTO, MISMATCH_CODES, Checksum
from .checkpoint import Checkpoint
from .config import Destination, MigrateConfig, TransferConfig, dest_in_source, overlap
from .errors import (
    BackendError,
    ConfigError,
    ObjectExistsError,
    PacsMigrateError,
    StateError,
)
from .fanout import cancelled
from .keys import RUN_DIR, probe_key
from .lmdbfile import env_dir
from .tiers import CLASS_META

log = logging.getLogger("pacsmigrate.preflight")

OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_SPACE = 256 << 10  # below this the state cannot even be made
SPACE_WARN = 2 << 30  # below this say how far the room goes
STATE_BYTES_PER_FILE = 600  # about what the state keeps per migrated file (bench: ~470)
SKEW_WARN = 60.0  # seconds between this machine's clock and the store's worth a warning
SKEW_FAIL = 15 * 60.0  # S3 refuses requests signed further off than this
PROBE_ATTEMPTS = 3
WAIT_NOTE = 3.0  # seconds without an answer before saying what is awaited
# An attempt's deadline is connect + read: 3 attempts of 9 s and their backoffs, under 30 s.
PROBE_CONNECT = 3.0  # seconds
PROBE_READ = 6.0
PROBE_BODY = b"pacsmigrate pre-flight probe: safe to delete\n"
CHECKSUM = "checksum"


@dataclass(frozen=True)
class Check:
    """One finding: its subject ("sources", "state", "store", "clock", ...), how it went,
    and one line saying what was found or what to do."""

    subject: str
    verdict: str
    line: str
    error: PacsMigrateError | None = field(default=None, compare=False)  # what a run raises
    value: str = ""  # what a run takes from it (the "checksum" check: crc32 or md5)

    def __str__(self) -> str:
        return f"{self.verdict:<4}  {self.subject}: {self.line}"


@dataclass
class Report:
    checks: list[Check]
    requests: int = 0  # sent to the store on the pre-flight's own policy (not the run's)

    @property
    def checksum(self) -> str:
        """What `--checksum auto` became (check_crc32), or "" if it was not decided."""
        return next((c.value for c in self.checks if c.subject == CHECKSUM), "")

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == FAIL]

    def raise_if_failed(self) -> None:
        """The first failure as the run's one-line error."""
        if self.failed:
            c = self.failed[0]
            if c.error is not None:  # the store's own error, as a run would have met it
                raise c.error
            raise ConfigError(f"pre-flight: {c.subject}: {c.line}")


def check_sources(sources: tuple[Path, ...]) -> list[Check]:
    out: list[Check] = []
    for source in sources:
        path = os.path.abspath(source)
        try:
            if not os.path.isdir(path):
                what = "does not exist" if not os.path.lexists(path) else "is not a directory"
                out.append(Check("source", FAIL, f"{path} {what}: give the directory that "
                                 "holds the archive"))
                continue
            with os.scandir(path) as entries:
                next(entries, None)
        except OSError as exc:
            out.append(Check("source", FAIL, f"cannot list {path} ({exc.strerror}): run as a "
                             "user that may read the archive, or mount it readable"))
            continue
        out.append(Check("source", OK, f"{path} readable"))
    return out


def check_state(state_dir: Path, sources: tuple[Path, ...],
                dest: Destination | None = None) -> list[Check]:
    state = os.path.realpath(state_dir)
    for source in sources:
        src = os.path.realpath(source)
        if state == src or state.startswith(src.rstrip("/") + "/"):
            return [Check("state", FAIL, f"{state_dir} lies inside the source {source}, which "
                          "is never written to: give --state outside every source")]
    if dest is not None and dest.scheme == "file":
        # `check` writes a probe there: refused as migrate refuses it.
        if (why := dest_in_source(dest, tuple(Path(s) for s in sources))) is not None:
            return [Check("destination", FAIL, why)]
        if overlap(Path(state), Path(dest.bucket)):
            return [Check("state", FAIL, f"{state_dir} and the destination directory "
                          f"{dest.bucket} overlap (the state's files would be taken for "
                          "objects): give --state outside it")]
    if env_dir(Path(state)).exists():  # a state already: one this version reads
        try:
            Checkpoint(Path(state), readonly=True).close()
        except StateError as exc:
            return [Check("state", FAIL, str(exc))]
    existing = Path(state)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return [Check("state", FAIL, f"cannot create or write {state_dir} ({existing} is not a "
                      "writable directory): give --state a writable place")]
    free = shutil.disk_usage(existing).free
    files = free // STATE_BYTES_PER_FILE
    if free < MIN_SPACE:
        return [Check("state", FAIL, f"only {free / 1e3:,.0f} kB free under {existing}: free "
                      "some space or give --state on another file system")]
    room = (f"{free / 1e9:,.1f} GB free under {existing}, room for the state of about "
            f"{files:,} files")
    return [Check("state", WARN if free < SPACE_WARN else OK, room)]


def _short(transfer: TransferConfig) -> TransferConfig:
    return replace(transfer, max_attempts=min(transfer.max_attempts, PROBE_ATTEMPTS),
                   connect_timeout=min(transfer.connect_timeout, PROBE_CONNECT),
                   read_timeout=min(transfer.read_timeout, PROBE_READ))


async def check_store(backend: Backend, dest: Destination, *, write: bool,
                      retention: bool = False, classes: Sequence[str] = (),
                      crc32: bool = False, clock: Callable[[], float] = time.time
                      ) -> list[Check]:
    """Credentials, bucket, a probe written, read back and deleted (`write`), the clocks,
    whether the store checks CRC32 (`crc32`), object lock (`retention`). Stops at the first
    failure: the rest would fail alike."""
    if not write:  # a listing: the credentials and the bucket, nothing written
        try:
            async for _ in backend.list(dest.key(RUN_DIR) + "/"):
                break
        except BackendError as exc:
            return [Check("store", FAIL, str(exc), exc)]
        return [Check("store", OK, f"{dest} listed (credentials and bucket accepted; a dry "
                      "run writes nothing, so writing was not tried)")]
    key = probe_key(dest, secrets.token_hex(8))
    body = PROBE_BODY
    checks: list[Check] = []
    before = clock()
    try:
        await backend.save(key, one_chunk(body), metadata={"pacsmigrate-probe": "1"})
    except ObjectExistsError:
        pass  # an attempt whose answer was lost wrote it: this random key is ours
    except BackendError as exc:
        # Not deleted: nothing is known to be there (at most a probe an unanswered attempt
        # wrote, which says it is safe to delete), and a silent store would make the delete
        # wait as long again.
        return [Check("store", FAIL, f"{exc} (while writing a probe object)", exc)]
    try:
        got = await backend.load(key)
        info = await backend.stat(key)
        after = clock()
    except BackendError as exc:
        await _remove_probe(backend, key, checks)
        return [Check("store", FAIL, f"{exc} (while reading back a probe object)", exc),
                *checks]
    await _remove_probe(backend, key, checks)
    if got != body:
        return [Check("store", FAIL, f"a probe object written to {dest} read back different "
                      f"({len(got)} bytes, not {len(body)}): the store or a proxy alters "
                      "objects; do not migrate to it")]
    checks.append(Check("store", OK, f"{dest}: a probe object written, read back and "
                        "deleted"))
    if info is not None and info.modified:
        # Last-Modified has whole seconds: the store's time lies within [before-1, after].
        # skew > 0: this machine's clock is ahead of the store's.
        skew = 0.0 if before - 1 <= info.modified <= after else (
            after - info.modified if info.modified > after else before - 1 - info.modified)
        if abs(skew) >= SKEW_FAIL:
            checks.append(Check("clock", FAIL, f"this machine's clock is {skew:+,.0f} s from "
                                "the store's: set the time (timedatectl set-ntp true)"))
        elif abs(skew) >= SKEW_WARN:
            checks.append(Check("clock", WARN, f"this machine's clock is {skew:+,.0f} s from "
                                "the store's (S3 refuses beyond 15 minutes): check NTP"))
        else:
            checks.append(Check("clock", OK, "within a minute of the store's"))
    if crc32:
        checks.append(await check_crc32(backend, dest))
    if classes:
        checks.append(await probe_classes(backend, dest, classes))
    if retention:
        from .setup import check_object_lock
        try:
            await check_object_lock(backend, dest)
            checks.append(Check("object lock", OK, f"{dest} takes retention locks"))
        except PacsMigrateError as exc:
            checks.append(Check("object lock", FAIL, str(exc), exc))
    return checks


async def check_crc32(backend: Backend, dest: Destination) -> Check:
    """`--checksum auto`: a probe sent with a wrong x-amz-checksum-crc32. A store that
    refuses it checks CRC32, and bundles carry CRC32 (ISA-L: ~70x cheaper than MD5); one
    that takes it (Ceph RGW before Quincy, a store that ignores the header) gets Content-MD5,
    which every store checks. Two requests whatever the answer (the PUT, then a DELETE of
    what it may have stored), so a dry run counts them exactly."""
    send, store = getattr(backend, "send", None), getattr(backend, "store", None)
    if send is None or store is None:  # not a store behind the retry wrapper (a test's)
        return Check(CHECKSUM, OK, "Content-MD5 (this store cannot be probed)", value="md5")
    key = probe_key(dest, secrets.token_hex(8))
    wrong = Checksum("crc32", (isal_zlib.crc32(PROBE_BODY) ^ 0xFFFFFFFF).to_bytes(4, "big"))
    refused: BackendError | None = None
    try:
        await send(lambda body: store.put(key, body, checksum=wrong,
                                          metadata={"pacsmigrate-probe": "1"}),
                   PROBE_BODY, key=key)
    except BackendError as exc:
        refused = exc
    try:
        await backend.remove(key)
    except BackendError:
        pass  # said by the first probe's check already, if deletes are refused
    if refused is not None and refused.code in MISMATCH_CODES:
        return Check(CHECKSUM, OK, "the store refused a body whose CRC32 was wrong: bundles "
                     "carry CRC32 (x-amz-checksum-crc32)", value="crc32")
    if refused is not None:
        return Check(CHECKSUM, OK, f"Content-MD5: a probe with a wrong CRC32 failed otherwise "
                     f"({refused})", value="md5")
    return Check(CHECKSUM, OK, "Content-MD5: the store took a body whose CRC32 was wrong, so "
                 "it does not check CRC32", value="md5")


async def probe_classes(backend: Backend, dest: Destination, classes: Sequence[str], *,
                        hint: str = "--storage-class, --tier-policy") -> Check:
    """A probe written in each storage class the run will use, then deleted (not read: an
    archive class cannot be read back at once). A store without the class refuses it."""
    for name in dict.fromkeys(classes):
        key = probe_key(dest, secrets.token_hex(8))
        try:
            await backend.save(key, one_chunk(b"pacsmigrate pre-flight probe\n"),
                               metadata={CLASS_META: name, "pacsmigrate-probe": "1"})
        except BackendError as exc:
            return Check("storage class", FAIL, f"{dest} does not take storage class {name} "
                         f"({exc}): choose classes this store offers ({hint})", exc)
        try:
            await backend.remove(key)
        except BackendError:
            pass  # said by the first probe's check already, if deletes are refused
    return Check("storage class", OK, f"{', '.join(dict.fromkeys(classes))} accepted")


async def _remove_probe(backend: Backend, key: str, checks: list[Check]) -> None:
    """Delete the probe; a store that refuses deletes (a WORM bucket policy) is not a
    reason to stop a run, which never deletes: said, with the key left behind."""
    try:
        await backend.remove(key)
    except BackendError as exc:
        checks.append(Check("probe", WARN, f"could not delete the probe object {key} ({exc}); "
                            "a migration never deletes, so this does not stop it"))


async def preflight(cfg: MigrateConfig, *, offline: bool = False,
                    backend: Backend | None = None) -> Report:
    """Every check of a run of `cfg` (`offline`: the store is not contacted; a dry run only
    lists it). With `backend`, its store is probed (with short deadlines)."""
    return await run_checks(cfg.sources, cfg.state_dir, cfg.dest, cfg.transfer,
                            store=not offline, write=not cfg.dry_run,
                            retention=cfg.retention is not None, backend=backend,
                            classes=cfg.tiers.classes() if cfg.tiers else ())


def decided(cfg: MigrateConfig, report: Report) -> MigrateConfig:
    """`cfg` with the checksum the pre-flight chose for `--checksum auto`."""
    if cfg.transfer.checksum != AUTO or not report.checksum:
        return cfg
    return replace(cfg, transfer=replace(cfg.transfer, checksum=report.checksum))


async def run_checks(sources: tuple[Path, ...], state_dir: Path, dest: Destination,
                     transfer: TransferConfig, *, store: bool = True, write: bool = True,
                     retention: bool = False, backend: Backend | None = None,
                     report_all: bool = False, classes: Sequence[str] = ()) -> Report:
    """The checks one by one; `report_all` (`pacsmigrate check`): the store's too after a
    local check failed."""
    checks = check_sources(sources) + check_state(state_dir, sources, dest)
    overlaps = any(c.subject == "destination" and c.verdict == FAIL for c in checks)
    if not store or overlaps or (not report_all and any(c.verdict == FAIL for c in checks)):
        return Report(checks)  # a run stops here: nothing is written to the store
    short = _short(transfer)
    opened: Backend
    requests = 0
    try:
        if backend is None:
            opened = await open_backend(dest, short)
        else:
            inner = getattr(backend, "store", None)
            opened = wrap(inner, short) if inner is not None else backend
        try:
            task = asyncio.ensure_future(check_store(
                opened, dest, write=write, retention=retention, classes=classes,
                crc32=transfer.checksum == AUTO))
            try:
                done, _ = await asyncio.wait({task}, timeout=WAIT_NOTE)
                if not done:
                    log.warning("pre-flight: waiting for the store %s to answer (giving up "
                                "after about %.0f s)", dest,
                                short.max_attempts * (short.connect_timeout
                                                      + short.read_timeout))
                checks += await task
            finally:
                if not task.done():  # interrupted: no probe left running on a closing store
                    await cancelled(task)
                if opened is not backend and isinstance(opened, Measured):
                    requests = opened.stats.requests
        finally:
            if backend is None:
                await opened.close()
    except (ConfigError, BackendError) as exc:
        checks.append(Check("store", FAIL, str(exc), exc))
    return Report(checks, requests)


__all__ = ["Check", "Report", "check_crc32", "check_sources", "check_state", "check_store",
           "decided", "preflight", "run_checks"]
