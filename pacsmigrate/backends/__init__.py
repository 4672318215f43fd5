"""Object-store backends, registered in one place and opened by destination scheme."""

from __future__ import annotations

from ..config import Destination, TransferConfig
from ..errors import ConfigError
from .base import (
    Backend,
    BackendStats,
    ChunkedWriter,
    Measured,
    ObjectInfo,
    PendingUploads,
    Primitives,
    one_chunk,
)
from .memory import MemoryBackend
from .multipart import ChunkedBackend
from .policy import RequestPolicy
from .retry import RetryBackend


def wrap(store: Primitives, transfer: TransferConfig, *,
         policy: RequestPolicy | None = None) -> RetryBackend:
    """A store's single-attempt requests as a Backend: retried, paced and counted; saved in
    parts when the store can write in parts (the capability is asked for, not the store)."""
    if isinstance(store, ChunkedWriter):
        return ChunkedBackend(store, store, transfer, policy=policy)
    return RetryBackend(store, transfer, policy=policy)


async def open_backend(dest: Destination, transfer: TransferConfig) -> RetryBackend:
    """Open the backend for dest's scheme; the caller closes it. Its `stats` (BackendStats)
    say what its requests went through."""
    if dest.scheme == "s3":
        from .s3 import S3Backend

        return wrap(await S3Backend(dest, transfer).open(), transfer)
    raise ConfigError(f"no backend for scheme {dest.scheme!r}")


__all__ = ["Backend", "BackendStats", "Measured", "MemoryBackend", "ObjectInfo", "PendingUploads",
           "one_chunk", "open_backend", "wrap"]
