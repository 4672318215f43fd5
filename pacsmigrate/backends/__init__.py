"""Object-store backends, registered in one place and opened by destination scheme."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from ..config import Destination, TransferConfig
from ..errors import ConfigError
from .base import (
    Backend,
    BackendStats,
    ChunkedWriter,
    Limits,
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


async def _open_s3(dest: Destination, transfer: TransferConfig) -> Primitives:
    from .s3 import S3Backend

    return await S3Backend(dest, transfer).open()


async def _open_local(dest: Destination, transfer: TransferConfig) -> Primitives:
    from .local import LocalStore

    return await LocalStore(Path(dest.bucket), part_size=transfer.part_size).open()


async def _open_azure(dest: Destination, transfer: TransferConfig) -> Primitives:
    from .azure import AzureStore

    return await AzureStore(dest, transfer).open()


# Destination scheme -> how to open its store (config.Destination parses the URLs).
OPENERS: dict[str, Callable[[Destination, TransferConfig], Awaitable[Primitives]]] = {
    "s3": _open_s3,
    "file": _open_local,
    "az": _open_azure,
}


async def open_backend(dest: Destination, transfer: TransferConfig) -> RetryBackend:
    """Open the backend for dest's scheme; the caller closes it. Its `stats` (BackendStats)
    say what its requests went through."""
    opener = OPENERS.get(dest.scheme)
    if opener is None:
        raise ConfigError(f"no backend for {dest.scheme}:// destinations in this version "
                          f"(available: {', '.join(sorted(OPENERS))})")
    return wrap(await opener(dest, transfer), transfer)


@asynccontextmanager
async def opened(dest: Destination, transfer: TransferConfig) -> AsyncIterator[RetryBackend]:
    """open_backend for the length of an `async with`, closed after."""
    backend = await open_backend(dest, transfer)
    try:
        yield backend
    finally:
        await backend.close()


__all__ = ["Backend", "BackendStats", "Limits", "Measured", "MemoryBackend", "ObjectInfo", "PendingUploads",
           "one_chunk", "open_backend", "opened", "wrap"]
