"""The narrow interface every object store implements, plus optional capabilities."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Protocol, runtime_checkable

from ..errors import BackendError
from .body import Body, Buffer, Checksum
from .limits import Limits, adjust_part_size
from .policy import Cause


@dataclass(frozen=True)
class ObjectInfo:
    """What a store says about one stored object."""

    key: str
    size: int
    etag: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    # When the store last wrote it, by the store's own clock (epoch seconds; 0.0 unknown).
    # S3 gives a multipart object the time its upload was started.
    modified: float = 0.0


@runtime_checkable
class Backend(Protocol):
    """save / load / stat / list / remove, after restic's backend interface.

    `save` never overwrites: a key that already exists raises ObjectExistsError, so a
    re-run can never rewrite what an earlier run stored. Errors are mapped to the tree in
    errors.py; transient ones are retried inside the backend, so whatever escapes is final.
    What `open_backend` returns also has `stats` (see Measured).
    """

    scheme: str

    def part_size(self, size_hint: int) -> int:
        """The chunk size `save` wants for an object of about size_hint bytes."""
        ...

    async def save(
        self, key: str, chunks: AsyncIterator[Buffer], *, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Store the concatenation of chunks (each part_size() long but the last) under key.

        Chunks are bytes, bytearray or memoryview, sent from the caller's memory: a chunk
        must not change after it is yielded (a retry sends it again).
        """
        ...

    async def load(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        """Return length bytes of the object from offset (one ranged request)."""
        ...

    async def stat(self, key: str) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""
        ...

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with prefix."""
        ...

    async def remove(self, key: str) -> None:
        """Delete the object (no error if it is absent)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True)
class PendingUpload:
    """An unfinished multipart upload: its key, id and start time (epoch seconds)."""

    key: str
    upload_id: str
    initiated: float


@runtime_checkable
class PendingUploads(Protocol):
    """Optional: a store with multipart uploads that can outlive a killed client."""

    async def abort_pending(self, key: str) -> int:
        """Abort unfinished uploads of exactly this key; return how many were aborted."""
        ...

    def pending_uploads(self, prefix: str) -> AsyncIterator[PendingUpload]:
        """Every unfinished upload whose key starts with prefix."""
        ...

    async def abort_upload(self, upload: PendingUpload) -> None:
        """Abort one unfinished upload (its parts are deleted)."""
        ...


@dataclass(frozen=True)
class BackendStats:
    """What a backend's requests went through this run; `open_backend(...).stats`.

    requests: attempts sent (each retry counts); retries: retried failures by cause
    ("503 SlowDown", "500 InternalError", "timeout", "connection reset", ...); gave_up:
    requests still failing after the last allowed attempt; throttle_slowdowns: times the
    store's throttling halved the requests in flight; lowest_concurrency: the lowest that
    limit went (the configured concurrency if never throttled); uploads_resumed: unfinished
    multipart uploads an interrupted run left, taken up again; parts_reused: their parts
    found intact and kept instead of sent again; uploads_restarted: such uploads too old to
    take up (multipart.RESUME_MAX_AGE), aborted and sent anew.
    """

    requests: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    gave_up: int = 0
    throttle_slowdowns: int = 0
    lowest_concurrency: int = 0
    uploads_resumed: int = 0
    parts_reused: int = 0
    uploads_restarted: int = 0


@runtime_checkable
class Measured(Protocol):
    """Has run statistics: a snapshot, taken when read."""

    @property
    def stats(self) -> BackendStats:
        ...


# --- what a store implements: single attempts, wrapped into a Backend by RetryBackend --------

@runtime_checkable
class Primitives(Protocol):
    """One store's requests, each a single attempt (restic's backend under its RetryBackend).

    A request may fail with the store's own exceptions; `classify` says which are worth
    another attempt, `map_error` translates them into errors.py's tree (None: not a store
    error, let it through). Pacing, retries, deadlines and stats are RetryBackend's job.
    Bodies arrive as Body (sent slice by slice, progress marked) with their checksum.
    """

    scheme: str

    def part_size(self, size_hint: int) -> int: ...

    def classify(self, exc: BaseException) -> Cause | None: ...

    def map_error(self, exc: BaseException, *, key: str | None) -> BackendError | None: ...

    async def put(self, key: str, body: Body, *, checksum: Checksum,
                  metadata: Mapping[str, str]) -> str:
        """Create key with body unless it exists (conditional); return its ETag. The store
        refuses the body if it does not match `checksum`."""
        ...

    async def get(self, key: str, *, offset: int, length: int | None) -> bytes: ...

    async def head(self, key: str) -> ObjectInfo:
        """The object's info; a missing key fails (mapped to ObjectNotFoundError)."""
        ...

    async def list_page(self, prefix: str, token: str | None
                        ) -> tuple[list[ObjectInfo], str | None]:
        """One page of keys under prefix, and the token of the next page (None: last)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...


# What a restore request for an archived object found or did.
REQUESTED, IN_PROGRESS, READY = "requested", "in progress", "ready"
PRIORITIES = ("Bulk", "Standard", "High")


@runtime_checkable
class Rehydrating(Protocol):
    """Optional: a store with archive tiers whose objects must be restored before they can
    be read (S3 GLACIER and DEEP_ARCHIVE: RestoreObject; Azure Archive: rehydration)."""

    async def request_restore(self, key: str, *, days: int, priority: str) -> str:
        """Ask for an archived object back (`priority` one of PRIORITIES; `days`: how long
        S3 keeps the restored copy). Returns REQUESTED, IN_PROGRESS (asked already) or
        READY (readable now). One attempt, the store's own errors let through (RetryBackend
        retries, counts and maps them)."""
        ...


@runtime_checkable
class LockCapable(Protocol):
    """Optional: a store whose buckets may take retention locks (S3 object lock, Azure
    version-level immutability)."""

    async def object_lock_enabled(self) -> bool:
        """Whether the bucket takes them. One attempt, like Rehydrating's."""
        ...


@dataclass(frozen=True)
class Part:
    """A part an unfinished upload holds: its number, ETag (the part's MD5 in hex) and size."""

    number: int
    etag: str
    size: int


@runtime_checkable
class ChunkedWriter(Protocol):
    """Optional: objects written as numbered parts, then completed (S3 multipart uploads;
    Azure block blobs). Unfinished uploads outlive the client until completed or aborted.
    Every method is a single attempt, like Primitives'."""

    async def create_upload(self, key: str, *, metadata: Mapping[str, str]) -> str:
        """Start an upload; return its id."""
        ...

    async def upload_part(self, key: str, upload_id: str, number: int, body: Body, *,
                          md5: bytes) -> str:
        """Send part `number` (from 1); return its ETag."""
        ...

    async def complete_upload(self, key: str, upload_id: str,
                              parts: Sequence[tuple[int, str]], *,
                              metadata: Mapping[str, str] | None = None,
                              content_md5: bytes | None = None) -> str:
        """Join the parts (number, ETag) into the object unless key exists (conditional);
        return its ETag, or "" when the store's answer does not say it. `metadata` is the
        object's again, for a store that sets it at completion (Azure's block list);
        `content_md5` the whole object's MD5, given to a writer that has
        `wants_content_md5 = True` (Azure keeps it as the blob's Content-MD5)."""
        ...

    async def abort(self, key: str, upload_id: str) -> None: ...

    async def list_uploads_page(self, prefix: str, marker: tuple[str, str] | None
                                ) -> tuple[list[PendingUpload], tuple[str, str] | None]:
        """One page of unfinished uploads under prefix, and where the next page starts."""
        ...

    async def list_parts_page(self, key: str, upload_id: str, marker: int | None
                              ) -> tuple[list[Part], int | None]:
        """One page of an unfinished upload's parts, after part number `marker`."""
        ...

    def expected_etag(self, part_md5s: Sequence[bytes]) -> str:
        """The ETag the completed object will carry, from its parts' MD5 digests ("" if the
        store has no such rule): proof that an object found at the key is this upload's."""
        ...


def epoch(when: datetime | str | None) -> float:
    """A store's timestamp (a datetime from an SDK, or an HTTP date) as epoch seconds;
    0.0 when it gave none or one that does not parse."""
    if isinstance(when, str):
        try:
            when = parsedate_to_datetime(when)
        except (TypeError, ValueError):
            return 0.0
    return when.timestamp() if when is not None else 0.0


async def one_chunk(data: Buffer) -> AsyncIterator[Buffer]:
    """Adapt one buffer to the chunk iterator `save` takes."""
    yield data


__all__ = ["Backend", "BackendStats", "ChunkedWriter", "Limits", "Measured", "ObjectInfo", "Part",
           "PendingUpload", "PendingUploads", "Primitives", "adjust_part_size", "one_chunk"]
