"""The narrow interface every object store implements, plus optional capabilities."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    """What a store says about one stored object."""

    key: str
    size: int
    etag: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """save / load / stat / list / remove, after restic's backend interface.

    `save` never overwrites: a key that already exists raises ObjectExistsError, so a
    re-run can never rewrite what an earlier run stored. Errors are mapped to the tree in
    errors.py; transient ones are retried inside the backend, so whatever escapes is final.
    """

    scheme: str

    def part_size(self, size_hint: int) -> int:
        """The chunk size `save` wants for an object of about size_hint bytes."""
        ...

    async def save(
        self, key: str, chunks: AsyncIterator[bytes], *, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        """Store the concatenation of chunks (each part_size() long but the last) under key."""
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


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    """Adapt a bytes object to the chunk iterator `save` takes."""
    yield data
