"""The Backend conformance suite's shared part (test_backends*.py run unchanged against
every store): the stores under test (MemoryBackend, S3Backend on moto and on SeaweedFS,
LocalStore on a directory, Azurite), one fixture per set of stores, `run_on`, and the
payloads.

pytest-asyncio is not installed, so each test defines an `async def body(backend)` and hands
it to `run_on(store, body)`, which opens the backend inside a fresh event loop (aioboto3's
client must be opened and closed in the loop that uses it), runs the body and closes it.

A test file takes the fixtures it uses by assignment (`store = backends_support.store`):
pytest finds them in that file's namespace, as if they were defined there.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pacsmigrate.backends import Backend, MemoryBackend, open_backend
from pacsmigrate.backends.s3 import LIMITS as S3_LIMITS
from pacsmigrate.config import Destination, MiB, TransferConfig

S3_MIN_PART, S3_MAX_PART, S3_MAX_PARTS = S3_LIMITS.min_part, S3_LIMITS.max_part, S3_LIMITS.max_parts
TiB = 1024 * 1024 * MiB
PART = 5 * MiB  # S3's minimum part size: every part but the last must be at least this
TRANSFER = TransferConfig(part_size=PART, multipart_threshold=PART, concurrency=4)

BACKENDS = ["memory", "moto", "local", "azurite",
            pytest.param("seaweed", marks=pytest.mark.seaweed)]
S3_BACKENDS = ["moto", pytest.param("seaweed", marks=pytest.mark.seaweed)]
# Stores that write in parts.
CHUNKED = ["moto", "local", "azurite", pytest.param("seaweed", marks=pytest.mark.seaweed)]
# ... whose unfinished uploads can be listed and aborted (Azure's blocks expire by themselves).
ABORTABLE = ["moto", "local", pytest.param("seaweed", marks=pytest.mark.seaweed)]
SCHEMES = {"memory": "memory", "local": "file", "moto": "s3", "seaweed": "s3", "azurite": "az"}


@dataclass
class Store:
    """One backend under test: its kind, and a target to inspect it from outside (for S3 a
    fresh bucket with a boto3 client, conftest.S3Target; for a directory a LocalTarget)."""

    kind: str
    target: Any = None

    @property
    def is_s3(self) -> bool:
        return self.kind in ("moto", "seaweed")

    @property
    def chunked(self) -> bool:
        return self.kind != "memory"

    @property
    def md5_etags(self) -> bool:
        """ETags are the body's MD5 (S3's rule; the local store keeps it too)."""
        return self.kind != "memory"

    async def open(self, *, bucket: str | None = None) -> Backend:
        if self.kind == "memory":
            return MemoryBackend(chunk=PART)
        if self.kind == "local":
            return await open_backend(Destination("file", str(self.target.root)), TRANSFER)
        if self.kind == "azurite":
            return await open_backend(Destination("az", bucket or self.target.bucket, "pfx"),
                                      TRANSFER)
        dest = Destination("s3", bucket or self.target.bucket, "pfx", self.target.info.endpoint_url)
        return await open_backend(dest, TRANSFER)


def _store(request: pytest.FixtureRequest) -> Store:
    kind = request.param
    if kind == "memory":
        return Store(kind)
    if kind in ("local", "azurite"):
        name = "local_store" if kind == "local" else "azure_store"
        return Store(kind, request.getfixturevalue(name))
    return Store(kind, request.getfixturevalue(f"{kind}_s3"))  # conftest's moto_s3/seaweed_s3


# One fixture per set of stores a test runs on (the same factory, other parameters).
store = pytest.fixture(params=BACKENDS, name="store")(_store)
s3store = pytest.fixture(params=S3_BACKENDS, name="s3store")(_store)
chunked = pytest.fixture(params=CHUNKED, name="chunked")(_store)
abortable = pytest.fixture(params=ABORTABLE, name="abortable")(_store)


@pytest.fixture
def weed(seaweed_s3: Any) -> Store:
    return Store("seaweed", seaweed_s3)


def run_on(store: Store, body: Callable[[Backend], Awaitable[None]], **open_kw: Any) -> None:
    async def main() -> None:
        backend = await store.open(**open_kw)
        try:
            await body(backend)
        finally:
            await backend.close()

    asyncio.run(main())


# --- helpers ---------------------------------------------------------------------------------

def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def split(data: bytes, part: int = PART) -> list[bytes]:
    return [data[i:i + part] for i in range(0, len(data), part)]


async def chunks_of(parts: list[bytes]) -> AsyncIterator[bytes]:
    for p in parts:
        await asyncio.sleep(0)  # a real producer yields to the loop between parts
        yield p


async def failing_after(parts: list[bytes], n: int) -> AsyncIterator[bytes]:
    for p in parts[:n]:
        await asyncio.sleep(0)
        yield p
    raise RuntimeError("source read failed mid-stream")


async def keys_under(backend: Backend, prefix: str) -> list[str]:
    return [info.key async for info in backend.list(prefix)]


def multipart_etag(parts: list[bytes]) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in parts)
    return f"{hashlib.md5(digests).hexdigest()}-{len(parts)}"


# A multipart object: three full 5 MiB parts and a short last one.
BIG = payload(3 * PART + 1234567, seed=1)
BIG_PARTS = split(BIG)
assert len(BIG_PARTS) == 4 and len(BIG_PARTS[-1]) == 1234567
# The smallest multipart object (one full part and a short one), where only the path matters.
TWO_PARTS = [payload(PART, seed=5), b"tail" * 100]
