"""The generic multipart logic (backends/multipart.py) on an in-memory chunked store with faults.

No server: the store below implements Primitives and ChunkedWriter in a few dicts, and can
be told to lose an answer after acting ("lost"), refuse before acting ("busy") or refuse
for good ("denied"), request by request. What S3 adds is covered in test_backends.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from conftest import run

from pacsmigrate.backends import PendingUploads, one_chunk, wrap
from pacsmigrate.backends.base import ObjectInfo, Part, PendingUpload
from pacsmigrate.backends.body import Body, Checksum
from pacsmigrate.backends.multipart import RESUME_MAX_AGE, ChunkedBackend
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


def test_the_capability_is_asked_for() -> None:
    plain, chunked = backend(PlainStore()), backend(ChunkedStore())
    assert isinstance(chunked, ChunkedBackend) and isinstance(chunked, PendingUploads)
    assert not isinstance(plain, ChunkedBackend) and not isinstance(plain, PendingUploads)
    # Without parts, several chunks are one request.
    store = plain.store
    assert isinstance(store, PlainStore)
    info = run(plain.save("k", chunks(PARTS)))
    assert info.size == len(WHOLE) and store.objects["k"][0] == WHOLE
    assert store.calls == ["put"]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_multipart_from_any_buffer(kind: type) -> None:
    store = ChunkedStore()
    b = backend(store)
    bufs = [kind(p) if kind is not memoryview else memoryview(bytearray(p)) for p in PARTS]

    async def go() -> None:
        info = await b.save("big", chunks(bufs), metadata={"m": "1"})
        assert info.etag == store.objects["big"][1] and info.etag.endswith("-4")
        assert await b.load("big", offset=PART - 2, length=4) == WHOLE[PART - 2:PART + 2]

    run(go())
    assert store.objects["big"][0] == WHOLE
    assert store.uploads == {} and store.peak <= TRANSFER.concurrency


def test_resume_keeps_parts_that_match_and_aborts_older_uploads() -> None:
    store = ChunkedStore()
    run(store.create_upload("big", metadata={}))  # older: aborted
    up = run(store.create_upload("big", metadata={}))
    store.uploads[up].parts = {1: PARTS[0], 2: PARTS[1], 3: b"torn part"}
    store.calls.clear()
    b = backend(store)
    run(b.save("big", chunks(PARTS)))
    assert store.objects["big"][0] == WHOLE
    assert (b.stats.uploads_resumed, b.stats.parts_reused) == (1, 2)
    assert store.calls.count("part") == 2 and "create" not in store.calls
    assert store.uploads == {}


def test_an_upload_older_than_a_cleanup_leaves_alone_is_started_anew() -> None:
    """`cleanup` aborts uploads by age: one a killed run left long ago (its parts would
    count their age from then) is aborted and the object sent in a new upload."""
    store = ChunkedStore()
    up = run(store.create_upload("big", metadata={}))
    store.uploads[up].parts = {1: PARTS[0], 2: PARTS[1]}
    store.uploads[up].initiated = time.time() - RESUME_MAX_AGE - 60
    b = backend(store)
    run(b.save("big", chunks(PARTS)))
    assert store.objects["big"][0] == WHOLE
    assert (b.stats.uploads_resumed, b.stats.parts_reused) == (0, 0)
    assert store.calls.count("create") == 2 and store.calls.count("abort") == 1
    assert store.uploads == {}


def test_an_upload_whose_start_the_store_does_not_say_is_resumed() -> None:
    """Some stores leave out an upload's Initiated (0 here): its age cannot be told, so it
    is resumed as before, not thrown away."""
    store = ChunkedStore()
    up = run(store.create_upload("big", metadata={}))
    store.uploads[up].parts = {1: PARTS[0], 2: PARTS[1]}
    store.uploads[up].initiated = 0.0
    b = backend(store)
    run(b.save("big", chunks(PARTS)))
    assert store.objects["big"][0] == WHOLE
    assert (b.stats.uploads_resumed, b.stats.parts_reused) == (1, 2)


def test_a_lost_create_leaves_no_twin() -> None:
    store = ChunkedStore()
    store.fault("create", "lost")
    b = backend(store)
    run(b.save("big", chunks(PARTS)))
    assert store.calls.count("create") == 2 and store.calls.count("abort") == 1
    assert store.uploads == {} and store.objects["big"][0] == WHOLE
    assert b.stats.retries == {"busy": 1}


@pytest.mark.parametrize("md5_etags", [True, False])
def test_a_lost_complete_is_recognised_on_no_such_upload(md5_etags: bool) -> None:
    store = ChunkedStore(md5_etags=md5_etags)
    store.fault("complete", "lost")
    info = run(backend(store).save("big", chunks(PARTS)))
    assert info.etag == store.objects["big"][1] and info.size == len(WHOLE)
    assert store.uploads == {}


def test_a_412_after_a_lost_complete_is_ours_when_the_etag_proves_it() -> None:
    store = ChunkedStore()
    real = store.complete_upload

    async def complete_then_412(key: str, upload_id: str, parts: Sequence[tuple[int, str]],
                                *, metadata: Mapping[str, str] | None = None,
                                content_md5: bytes | None = None) -> str:
        if key in store.objects:
            raise Fault("exists")  # SeaweedFS: the retried complete meets If-None-Match
        up = store.uploads[upload_id]
        await real(key, upload_id, parts, metadata=metadata)
        store.uploads[upload_id] = up  # the upload lingers, so no NoSuchUpload
        raise Fault("busy")

    store.complete_upload = complete_then_412  # type: ignore[method-assign]
    info = run(backend(store).save("big", chunks(PARTS)))
    assert info.etag == store.objects["big"][1]
    assert store.uploads == {}  # the lingering upload was aborted


@pytest.mark.parametrize("same_size", [True, False])
def test_an_object_that_was_there_before_is_not_adopted(same_size: bool) -> None:
    store = ChunkedStore(md5_etags=same_size)  # with opaque ETags only the size could match
    store.objects["big"] = (payload(len(WHOLE) if same_size else 10, 1), "theirs", {})
    with pytest.raises(ObjectExistsError):
        run(backend(store).save("big", chunks(PARTS)))
    assert store.objects["big"][1] == "theirs" and store.uploads == {}


def test_an_empty_complete_etag_is_read_back() -> None:
    store = ChunkedStore(empty_complete_etag=True)  # Ceph RGW
    info = run(backend(store).save("big", chunks(PARTS)))
    assert info.etag == store.objects["big"][1] and info.etag.endswith("-4")
    assert store.calls[-1] == "head"


def test_a_refused_part_aborts_the_upload() -> None:
    store = ChunkedStore()
    store.fault("part", "busy", "denied")
    with pytest.raises(PermanentBackendError, match="denied"):
        run(backend(store).save("big", chunks(PARTS)))
    assert store.uploads == {} and "big" not in store.objects


def test_a_failing_source_aborts_the_upload() -> None:
    store = ChunkedStore()

    async def broken() -> AsyncIterator[bytes]:
        yield PARTS[0]
        yield PARTS[1]
        raise OSError("source gone")

    with pytest.raises(OSError, match="source gone"):
        run(backend(store).save("big", broken()))
    assert store.uploads == {} and store.objects == {}


def test_a_cancelled_save_aborts_the_upload() -> None:
    store = ChunkedStore()

    async def stalls() -> AsyncIterator[bytes]:
        yield PARTS[0]
        yield PARTS[1]
        await asyncio.sleep(3600)

    async def go() -> None:
        task = asyncio.create_task(backend(store).save("big", stalls()))
        while store.calls.count("part") < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(go())
    assert store.uploads == {}


def test_a_failure_right_after_create_aborts_the_upload() -> None:
    store = ChunkedStore()
    store.fault("list-uploads", "", "denied")  # the listing after the create is refused
    with pytest.raises(PermanentBackendError):
        run(backend(store).save("big", chunks(PARTS)))
    assert store.calls[:3] == ["list-uploads", "create", "list-uploads"]
    assert store.uploads == {}


def test_pending_uploads_pages_and_aborts() -> None:
    store = ChunkedStore()
    for key in ("a/1", "a/1", "a/10", "b/2"):
        run(store.create_upload(key, metadata={}))
    b = backend(store)
    assert isinstance(b, ChunkedBackend)

    async def go() -> None:
        assert [u.key async for u in b.pending_uploads("a/")] == ["a/1", "a/1", "a/10"]
        assert await b.abort_pending("a/1") == 2
        assert [u.key async for u in b.pending_uploads("")] == ["a/10", "b/2"]

    run(go())


def test_single_puts_list_pages_and_stats() -> None:
    store = ChunkedStore()
    b = backend(store)

    async def go() -> None:
        for i in range(5):
            await b.save(f"k{i}", one_chunk(bytearray(b"x" * i)))
        with pytest.raises(ObjectExistsError):
            await b.save("k1", one_chunk(b"again"))
        assert [i.key async for i in b.list("k")] == [f"k{i}" for i in range(5)]
        assert await b.stat("nope") is None

    run(go())
    stats = b.stats
    assert stats.requests == len(store.calls) == 5 + 1 + 3 + 1  # puts, refused, pages, head
    assert stats.retries == {} and stats.gave_up == 0 and stats.throttle_slowdowns == 0
    assert stats.lowest_concurrency == TRANSFER.concurrency
