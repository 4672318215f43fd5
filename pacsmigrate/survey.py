"""What the store holds already, as a dry run reports it, and the requests a run makes
besides its objects' (so the dry run's request count is the real run's).

A dry run lists the destination's prefix (for at most SURVEY_SECONDS: a prefix of 100M
objects takes hours to list) and sorts what it finds: objects this state's index holds,
the migration's own records (its descriptor and `pacsmigrate-run/`), and the rest. A
migration's descriptor that this state knows nothing of is worth a warning: a run with
this --state would store every file again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .backends.base import Backend, PendingUploads
from .checkpoint import Checkpoint
from .config import Destination
from .keys import DESCRIPTOR, RUN_DIR, sources_key

SURVEY_SECONDS = 20.0
# Requests a run makes besides its objects': the pre-flight's probe (PUT, GET, HEAD,
# DELETE), and a PUT and a DELETE for each storage class it checks, and for `--checksum
# auto` (preflight.check_crc32); the key secret in the descriptor (HEAD, then GET if it is
# there or PUT); the sources record (HEAD, PUT once).
PROBE_REQUESTS = 4
PER_CLASS = 2
CRC32_PROBE = 2
SECRET_REQUESTS = 2


@dataclass
class Holdings:
    """The destination's prefix as listed: counts and bytes, sorted by whose they are."""

    objects: int = 0
    bytes: int = 0
    known: int = 0  # in this state's index
    records: int = 0  # the migration's own: descriptor, pacsmigrate-run/...
    descriptor: bool = False
    sources_recorded: bool = False
    pending_uploads: int | None = None  # None: the store has no multipart uploads to list
    complete: bool = True  # False: the listing stopped at the time limit

    @property
    def others(self) -> int:
        return self.objects - self.known - self.records

    def lines(self, dest: Destination) -> list[str]:
        listed = "" if self.complete else (
            f" (listed for {SURVEY_SECONDS:.0f} s only: at least)")
        if self.objects == 0:
            out = [f"store: {dest} holds nothing yet{listed}: the run stores every file"]
        else:
            out = [(f"store: {dest} holds {self.objects:,} objects ({self.bytes / 1e6:,.1f} MB)"
                   f"{listed}: {self.known:,} of this state's migration, {self.records:,} of "
                   f"the migration's own records, {self.others:,} others")]
        if self.descriptor and self.known == 0 and self.others > 0:
            out.append("WARNING: store: a pacsmigrate migration is stored there that this "
                       "--state does not know: a run with it would store every file again; "
                       "use that migration's --state, or rebuild it from the store (pacsmigrate "
                       "index rebuild)")
        elif self.others:
            out.append(f"store: the {self.others:,} others are not in this state's index "
                       "(another migration's or slice's objects, foreign files, or objects "
                       "an interrupted run stored, which the run adopts): the run never "
                       "overwrites them")
        if self.pending_uploads:
            out.append(f"store: {self.pending_uploads:,} unfinished multipart uploads under "
                       "the prefix (interrupted runs'; pacsmigrate cleanup aborts old ones)")
        return out

    def as_dict(self) -> dict[str, int | bool | None]:
        return {"objects": self.objects, "bytes": self.bytes, "known": self.known,
                "records": self.records, "others": self.others,
                "descriptor": self.descriptor, "sources_recorded": self.sources_recorded,
                "pending_uploads": self.pending_uploads, "complete": self.complete}


async def survey(backend: Backend, dest: Destination, cp: Checkpoint, sources: list[str], *,
                 seconds: float = SURVEY_SECONDS, every: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> Holdings:
    """What dest's prefix holds: the migration's records asked for by name and listed (a
    few objects, sorted after the data's hashed folders), then the rest listed for at most
    `seconds`."""
    h = Holdings()
    prefix = dest.key("")
    descriptor, records = dest.key(DESCRIPTOR), dest.key(RUN_DIR) + "/"
    found = await backend.stat(descriptor)
    if found is not None:
        h.descriptor = True
        h.records, h.objects, h.bytes = 1, 1, found.size
    h.sources_recorded = await backend.stat(sources_key(dest, sources)) is not None
    async for info in backend.list(records):
        h.records += 1
        h.objects += 1
        h.bytes += info.size
    until = clock() + seconds
    async for info in backend.list(f"{prefix}/" if prefix else ""):
        if info.key == descriptor or info.key.startswith(records):
            continue  # counted above
        h.objects += 1
        h.bytes += info.size
        if cp.has_object(info.key) or _sidecar_of_known(cp, info.key):
            h.known += 1
        if h.objects % every == 0 and clock() > until:
            h.complete = False
            break
    if isinstance(backend, PendingUploads):
        h.pending_uploads = 0
        async for _ in backend.pending_uploads(f"{prefix}/" if prefix else ""):
            h.pending_uploads += 1
            if clock() > until:
                break
    return h


def _sidecar_of_known(cp: Checkpoint, key: str) -> bool:
    """A manifest stored beside one of this state's raw-file objects (keys.sidecar_key)."""
    if not key.endswith(".json"):
        return False
    base = key[:-len(".json")]
    return any(cp.has_object(f"{base}.{ext}") for ext in ("dcm", "bin"))


def setup_requests(h: Holdings | None, *, classes: int, crc32_probe: bool) -> int:
    """The requests a run makes besides its objects' (see the module's head); without a
    survey (an offline plan) as a first run. `crc32_probe`: --checksum auto."""
    recorded = h is not None and h.sources_recorded
    return (PROBE_REQUESTS + PER_CLASS * classes + CRC32_PROBE * crc32_probe
            + SECRET_REQUESTS + (1 if recorded else 2))


__all__ = ["Holdings", "setup_requests", "survey"]
