"""The in-memory stores test_multipart.py runs the generic multipart logic on.

No server: PlainStore implements Primitives, ChunkedStore adds ChunkedWriter, in a few
dicts; either can be told to lose an answer after acting ("lost"), refuse before acting
("busy") or refuse for good ("denied"), request by request. Also: a RetryBackend around a
store (`backend`), and the parts of one multipart object.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from pacsmigrate.backends import wrap
from pacsmigrate.backends.base import ObjectInfo, Part, PendingUpload
from pacsmigrate.backends.body import Body, Checksum
from pacsmigrate.backends.policy import TRANSIENT, Cause, RequestPolicy, RetryConfig
from pacsmigrate.backends.retry import RetryBackend
from pacsmigrate.config import TransferConfig
from pacsmigrate.errors import (
    BackendError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentBackendError,
)

MiB = 1 << 20
PART = 5 * MiB
TRANSFER = TransferConfig(part_size=PART, multipart_threshold=PART, concurrency=3)


class Fault(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Upload:
    key: str
    initiated: float
    meta: dict[str, str]
    parts: dict[int, bytes] = field(default_factory=dict)


def md5hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class PlainStore:
    """Primitives only: objects in a dict, conditional put, faults on demand."""

    scheme = "fake"

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str, dict[str, str]]] = {}
        self.faults: dict[str, list[str]] = {}  # operation -> what its next calls do
        self.calls: list[str] = []

    def fault(self, op: str, *what: str) -> None:
        self.faults.setdefault(op, []).extend(what)

    def _enter(self, op: str) -> str | None:
        self.calls.append(op)
        todo = self.faults.get(op)
        what = todo.pop(0) if todo else None
        if what == "busy":
            raise Fault("busy")
        if what == "denied":
            raise Fault("denied")
        return what

    @staticmethod
    def _leave(what: str | None) -> None:
        if what == "lost":
            raise Fault("busy")  # it happened, but the client heard an error

    def part_size(self, size_hint: int) -> int:
        return PART

    def classify(self, exc: BaseException) -> Cause | None:
        return Cause(TRANSIENT, "busy") if isinstance(exc, Fault) and exc.code == "busy" else None

    def map_error(self, exc: BaseException, *, key: str | None) -> BackendError | None:
        if not isinstance(exc, Fault):
            return None
        return {"exists": ObjectExistsError, "NoSuchUpload": ObjectNotFoundError,
                "NoSuchKey": ObjectNotFoundError}.get(exc.code, PermanentBackendError)(
                    f"{exc.code}: {key}", key=key)

    async def put(self, key: str, body: Body, *, checksum: Checksum,
                  metadata: Mapping[str, str]) -> str:
        what = self._enter("put")
        data = b"".join(body.pieces())
        assert checksum == Checksum("md5", hashlib.md5(data).digest())
        if key in self.objects:
            raise Fault("exists")
        self.objects[key] = (data, md5hex(data), dict(metadata))
        self._leave(what)
        return md5hex(data)

    async def get(self, key: str, *, offset: int, length: int | None) -> bytes:
        self._enter("get")
        if key not in self.objects:
            raise Fault("NoSuchKey")
        data = self.objects[key][0]
        return data[offset:None if length is None else offset + length]

    async def head(self, key: str) -> ObjectInfo:
        self._enter("head")
        if key not in self.objects:
            raise Fault("NoSuchKey")
        data, etag, meta = self.objects[key]
        return ObjectInfo(key, len(data), etag, meta)

    async def list_page(self, prefix: str, token: str | None
                        ) -> tuple[list[ObjectInfo], str | None]:
        self._enter("list")
        keys = sorted(k for k in self.objects if k.startswith(prefix) and k > (token or ""))
        page = [ObjectInfo(k, len(self.objects[k][0]), self.objects[k][1]) for k in keys[:2]]
        return page, (keys[1] if len(keys) > 2 else None)

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    async def close(self) -> None:
        return None


class ChunkedStore(PlainStore):
    """PlainStore plus uploads in parts, with S3's composite ETag (or none, `md5_etags`)."""

    def __init__(self, *, md5_etags: bool = True, empty_complete_etag: bool = False) -> None:
        super().__init__()
        self.uploads: dict[str, Upload] = {}
        self.ids = itertools.count(1)
        self.clock = itertools.count(int(time.time()) - 1000)  # uploads initiated now
        self.md5_etags = md5_etags
        self.empty_complete_etag = empty_complete_etag
        self.in_flight = self.peak = 0

    async def create_upload(self, key: str, *, metadata: Mapping[str, str]) -> str:
        what = self._enter("create")
        upload_id = f"up{next(self.ids)}"
        self.uploads[upload_id] = Upload(key, float(next(self.clock)), dict(metadata))
        self._leave(what)
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, body: Body, *,
                          md5: bytes) -> str:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            what = self._enter("part")
            data = b"".join(body.pieces())
            assert hashlib.md5(data).digest() == md5
            if upload_id not in self.uploads:
                raise Fault("NoSuchUpload")
            self.uploads[upload_id].parts[number] = data
            self._leave(what)
            return md5hex(data)
        finally:
            self.in_flight -= 1

    async def complete_upload(self, key: str, upload_id: str,
                              parts: Sequence[tuple[int, str]], *,
                              metadata: Mapping[str, str] | None = None,
                              content_md5: bytes | None = None) -> str:
        what = self._enter("complete")
        up = self.uploads.get(upload_id)
        if up is None:
            raise Fault("NoSuchUpload")
        if key in self.objects:
            raise Fault("exists")
        assert [n for n, _ in parts] == sorted(up.parts)
        assert all(md5hex(up.parts[n]) == etag for n, etag in parts)
        data = b"".join(up.parts[n] for n, _ in parts)
        digests = [hashlib.md5(up.parts[n]).digest() for n, _ in parts]
        etag = self.expected_etag(digests) if self.md5_etags else f"opaque-{len(data)}"
        self.objects[key] = (data, etag, up.meta)
        del self.uploads[upload_id]
        self._leave(what)
        return "" if self.empty_complete_etag else etag

    async def abort(self, key: str, upload_id: str) -> None:
        self._enter("abort")
        self.uploads.pop(upload_id, None)

    async def list_uploads_page(self, prefix: str, marker: tuple[str, str] | None
                                ) -> tuple[list[PendingUpload], tuple[str, str] | None]:
        self._enter("list-uploads")
        ups = sorted((u.key, i) for i, u in self.uploads.items() if u.key.startswith(prefix))
        ups = [u for u in ups if marker is None or u > marker]
        page = [PendingUpload(k, i, self.uploads[i].initiated) for k, i in ups[:1]]
        return page, (ups[0] if len(ups) > 1 else None)

    async def list_parts_page(self, key: str, upload_id: str, marker: int | None
                              ) -> tuple[list[Part], int | None]:
        numbers = [n for n in sorted(self.uploads[upload_id].parts) if n > (marker or 0)]
        page = [Part(n, md5hex(self.uploads[upload_id].parts[n]),
                     len(self.uploads[upload_id].parts[n])) for n in numbers[:2]]
        return page, (numbers[1] if len(numbers) > 2 else None)

    def expected_etag(self, part_md5s: Sequence[bytes]) -> str:
        if not self.md5_etags:
            return ""
        return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


def backend(store: PlainStore) -> RetryBackend:
    policy = RequestPolicy(concurrency=TRANSFER.concurrency, retry=RetryConfig(base_delay=0.001))
    return wrap(store, TRANSFER, policy=policy)


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


PARTS = [payload(PART, 3), payload(PART, 5), payload(PART, 7), payload(1234, 11)]
WHOLE = b"".join(PARTS)


async def chunks(parts: Sequence[bytes | bytearray | memoryview]) -> AsyncIterator[
        bytes | bytearray | memoryview]:
    for p in parts:
        await asyncio.sleep(0)
        yield p
