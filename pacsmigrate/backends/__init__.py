"""Object-store backends, registered in one place and opened by destination scheme."""

from __future__ import annotations

from ..config import Destination, TransferConfig
from ..errors import ConfigError
from .base import Backend, ObjectInfo, PendingUploads, one_chunk
from .memory import MemoryBackend


async def open_backend(dest: Destination, transfer: TransferConfig) -> Backend:
    """Open the backend for dest's scheme; the caller closes it."""
    if dest.scheme == "s3":
        from .s3 import S3Backend

        return await S3Backend(dest, transfer).open()
    raise ConfigError(f"no backend for scheme {dest.scheme!r}")


__all__ = ["Backend", "MemoryBackend", "ObjectInfo", "PendingUploads", "one_chunk", "open_backend"]
