"""An in-memory backend for unit tests where a real server adds nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping

from ..config import MiB
from ..errors import ObjectExistsError, ObjectNotFoundError
from .base import ObjectInfo
from .body import Buffer


class MemoryBackend:
    """Objects in a dict; honours the same no-overwrite rule as the real stores."""

    scheme = "memory"

    def __init__(self, *, chunk: int = 8 * MiB) -> None:
        self.objects: dict[str, bytes] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self.modified: dict[str, float] = {}
        self.saves = 0
        self._chunk = chunk

    def part_size(self, size_hint: int) -> int:
        return self._chunk

    async def save(
        self, key: str, chunks: AsyncIterator[Buffer], *, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        data = b"".join([c async for c in chunks])
        if key in self.objects:
            raise ObjectExistsError(f"object exists: {key}", key=key)
        self.objects[key] = data
        self.metadata[key] = dict(metadata or {})
        self.modified[key] = time.time()
        self.saves += 1
        return self._info(key)

    async def load(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        if key not in self.objects:
            raise ObjectNotFoundError(f"no such object: {key}", key=key)
        data = self.objects[key]
        end = len(data) if length is None else offset + length
        return data[offset:end]

    async def stat(self, key: str) -> ObjectInfo | None:
        if key not in self.objects:
            return None
        return self._info(key)

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        for key in sorted(self.objects):
            if key.startswith(prefix):
                yield self._info(key)

    def _info(self, key: str) -> ObjectInfo:
        return ObjectInfo(key, len(self.objects[key]), metadata=self.metadata[key],
                          modified=self.modified.get(key, 0.0))

    async def remove(self, key: str) -> None:
        self.objects.pop(key, None)
        self.metadata.pop(key, None)
        self.modified.pop(key, None)

    async def close(self) -> None:
        return None
