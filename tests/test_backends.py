"""One conformance suite for every Backend: MemoryBackend, S3Backend on moto and on SeaweedFS,
LocalStore on a directory.

pytest-asyncio is not installed, so each test defines an `async def body(backend)` and hands
it to `run_on(store, body)`, which opens the backend inside a fresh event loop (aioboto3's
client must be opened and closed in the loop that uses it), runs the body and closes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from pacsmigrate.backends import (
    Backend,
    BackendStats,
    Measured,
    MemoryBackend,
    PendingUploads,
    one_chunk,
    open_backend,
)
from pacsmigrate.backends.base import PendingUpload
from pacsmigrate.backends.body import Checksum, checksum
from pacsmigrate.backends.limits import planned_requests
from pacsmigrate.backends.multipart import ChunkedBackend
from pacsmigrate.backends.retry import RetryBackend
from pacsmigrate.backends.s3 import LIMITS as S3_LIMITS
from pacsmigrate.backends.s3 import S3Backend
from pacsmigrate.config import Destination, MiB, TransferConfig
from pacsmigrate.errors import BackendError, ObjectExistsError, PermanentBackendError

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


# --- the protocol itself ---------------------------------------------------------------------

def test_implements_protocol(store: Store) -> None:
    async def body(b: Backend) -> None:
        assert isinstance(b, Backend)
        # Only stores with multipart uploads that can outlive a client offer abort_pending.
        assert isinstance(b, PendingUploads) == store.chunked
        assert b.scheme == SCHEMES[store.kind]

    run_on(store, body)


# --- small objects ---------------------------------------------------------------------------

def test_small_object_round_trip(store: Store) -> None:
    data = payload(100_000, seed=2)
    key = "pfx/study/1.tar"

    async def body(b: Backend) -> None:
        info = await b.save(key, one_chunk(data), metadata={"pacsmigrate-kind": "tar"})
        assert (info.key, info.size) == (key, len(data))
        if store.md5_etags:
            assert info.etag == hashlib.md5(data).hexdigest()

        assert await b.load(key) == data
        assert await b.load(key, offset=0, length=10) == data[:10]
        assert await b.load(key, offset=12345, length=54321) == data[12345:12345 + 54321]
        assert await b.load(key, offset=len(data) - 7, length=7) == data[-7:]
        assert await b.load(key, offset=99_000) == data[99_000:]  # tail: offset, no length
        assert await b.load(key, offset=500, length=0) == b""

        st = await b.stat(key)
        assert st is not None
        assert (st.key, st.size) == (key, len(data))
        assert dict(st.metadata) == {"pacsmigrate-kind": "tar"}
        if store.md5_etags:
            assert st.etag == info.etag

        assert await b.stat("pfx/study/missing.tar") is None
        assert await b.stat("pfx/study/1.ta") is None  # a prefix of a key is not that key

    run_on(store, body)
    if store.target is not None:
        assert store.target.get(key) == data  # really on the server, not just in a cache


def test_empty_object(store: Store) -> None:
    async def body(b: Backend) -> None:
        info = await b.save("pfx/empty", one_chunk(b""))
        assert info.size == 0
        st = await b.stat("pfx/empty")
        assert st is not None and st.size == 0
        assert await b.load("pfx/empty") == b""

    run_on(store, body)


def test_load_of_missing_key_is_a_backend_error(store: Store) -> None:
    """Errors leave a backend as the errors.py tree (Backend docstring), never KeyError etc."""
    async def body(b: Backend) -> None:
        with pytest.raises(BackendError) as caught:
            await b.load("pfx/missing")
        assert caught.value.key == "pfx/missing"
        with pytest.raises(BackendError):
            await b.load("pfx/missing", offset=10, length=5)

    run_on(store, body)


# --- multipart -------------------------------------------------------------------------------

def test_multipart_round_trip(store: Store) -> None:
    key = "pfx/big.tar"

    async def body(b: Backend) -> None:
        info = await b.save(key, chunks_of(BIG_PARTS), metadata={"pacsmigrate-kind": "file"})
        assert (info.key, info.size) == (key, len(BIG))
        if store.kind == "azurite":  # the blob's Content-MD5, set at the commit
            assert info.etag == hashlib.md5(BIG).hexdigest()
        elif store.md5_etags:
            assert info.etag == multipart_etag(BIG_PARTS)  # parts completed in order
        assert await b.load(key) == BIG
        # A range that straddles the part 1/part 2 boundary.
        assert await b.load(key, offset=PART - 100, length=300) == BIG[PART - 100:PART + 200]
        assert await b.load(key, offset=3 * PART) == BIG[3 * PART:]
        st = await b.stat(key)
        assert st is not None and st.size == len(BIG)
        assert dict(st.metadata) == {"pacsmigrate-kind": "file"}
        if store.md5_etags:
            assert st.etag == info.etag  # what verify compares with the committed ETag

    run_on(store, body)
    if store.is_s3:
        head = store.target.client.head_object(Bucket=store.target.bucket, Key=key)
        assert head["ETag"].strip('"').endswith("-4"), head["ETag"]
        assert head["ContentLength"] == len(BIG)
    if store.target is not None:
        assert store.target.get(key) == BIG
        assert store.target.pending_uploads() == []


# --- no overwrite ----------------------------------------------------------------------------

@pytest.mark.parametrize("second", ["single", "multipart"])
def test_save_never_overwrites(store: Store, second: str) -> None:
    key = "pfx/once.tar"
    original = payload(4096, seed=3)

    async def body(b: Backend) -> None:
        await b.save(key, one_chunk(original))
        again = one_chunk(b"replacement") if second == "single" else chunks_of(TWO_PARTS)
        with pytest.raises(ObjectExistsError) as caught:
            await b.save(key, again)
        assert caught.value.key == key
        assert await b.load(key) == original
        st = await b.stat(key)
        assert st is not None and st.size == len(original)

    run_on(store, body)
    if store.target is not None:
        assert store.target.get(key) == original
        assert store.target.pending_uploads() == []  # the refused multipart upload was aborted


def test_multipart_object_is_not_overwritten(store: Store) -> None:
    key = "pfx/big-once.tar"

    async def body(b: Backend) -> None:
        await b.save(key, chunks_of(BIG_PARTS))
        with pytest.raises(ObjectExistsError):
            await b.save(key, chunks_of(TWO_PARTS))
        with pytest.raises(ObjectExistsError):
            await b.save(key, one_chunk(b"small"))
        assert await b.load(key) == BIG

    run_on(store, body)
    if store.target is not None:
        assert store.target.pending_uploads() == []


# --- a source that fails mid-stream ----------------------------------------------------------

@pytest.mark.parametrize("good_parts", [1, 2])
def test_failing_source_leaves_nothing(store: Store, good_parts: int) -> None:
    key = "pfx/broken.tar"

    async def body(b: Backend) -> None:
        with pytest.raises(RuntimeError, match="mid-stream"):
            await b.save(key, failing_after(BIG_PARTS, good_parts))
        assert await b.stat(key) is None
        assert await keys_under(b, "pfx/") == []
        # The key is still free: a retry of the same save succeeds.
        await b.save(key, one_chunk(b"retried"))
        assert await b.load(key) == b"retried"

    run_on(store, body)
    if store.target is not None:
        assert store.target.pending_uploads() == []
        assert store.target.object_keys() == [key]


def test_cancelled_save_leaves_no_pending_upload(chunked: Store) -> None:
    key = "pfx/cancelled.tar"
    target = chunked.target
    assert target is not None

    async def stalls_after_two() -> AsyncIterator[bytes]:
        yield BIG_PARTS[0]
        yield BIG_PARTS[1]
        await asyncio.sleep(3600)
        yield BIG_PARTS[2]

    async def body(b: Backend) -> None:
        task = asyncio.create_task(b.save(key, stalls_after_two()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        # Wait until the multipart upload exists on the server, then cancel the save.
        started = getattr(target, "staged", target.pending_uploads)  # Azure: staged blocks
        while not await asyncio.to_thread(started):
            assert loop.time() < deadline, "multipart upload never started"
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await b.stat(key) is None

    run_on(chunked, body)
    assert target.pending_uploads() == []
    assert target.object_keys() == []


# --- abort_pending (stores with multipart uploads) -------------------------------------------

def test_abort_pending(abortable: Store) -> None:
    target = abortable.target
    key = "pfx/orphan.tar"

    async def body(b: Backend) -> None:
        assert isinstance(b, ChunkedBackend) and isinstance(b, PendingUploads)
        # An upload a killed client left behind, with one part; and one for a longer key
        # that merely starts with `key`, which abort_pending must leave alone.
        w = b.writer
        up = await w.create_upload(key, metadata={})
        await b.send(lambda body: w.upload_part(key, up, 1, body,
                                                md5=hashlib.md5(b"x" * 1000).digest()),
                     b"x" * 1000, key=key)
        other = await w.create_upload(key + ".sidecar", metadata={})
        assert len(await asyncio.to_thread(target.pending_uploads)) == 2
        assert await b.abort_pending(key) == 1
        assert await b.abort_pending(key) == 0
        assert await b.abort_pending("pfx/never-started") == 0
        left = [(u.key, u.upload_id) async for u in b.pending_uploads("pfx/")]
        assert left == [(key + ".sidecar", other)]
        await b.abort_upload(PendingUpload(key + ".sidecar", other, 0.0))

    run_on(abortable, body)
    assert target.pending_uploads() == []
    assert target.object_keys() == []


# --- list ------------------------------------------------------------------------------------

def test_list_prefix(store: Store) -> None:
    inside = {"pfx/a": b"1", "pfx/b/c": b"22", "pfx/b/d/e": b"333"}
    outside = {"pfx-other": b"4", "pf": b"5", "other/pfx/x": b"6", "PFX/a": b"7"}

    async def body(b: Backend) -> None:
        for k, v in {**inside, **outside}.items():
            await b.save(k, one_chunk(v))
        listed = [info async for info in b.list("pfx/")]
        assert sorted(i.key for i in listed) == sorted(inside)
        assert {i.key: i.size for i in listed} == {k: len(v) for k, v in inside.items()}
        assert sorted(await keys_under(b, "pfx/b/")) == ["pfx/b/c", "pfx/b/d/e"]
        assert sorted(await keys_under(b, "pfx")) == sorted([*inside, "pfx-other"])
        assert await keys_under(b, "nothing/") == []
        assert sorted(await keys_under(b, "")) == sorted({**inside, **outside})

    run_on(store, body)


def test_stat_and_list_give_the_stores_write_time(store: Store) -> None:
    """Each store dates what it wrote by its own clock (slices of a run on workers find what
    was stored after a point by it): here every clock is this machine's."""
    async def body(b: Backend) -> None:
        before = time.time()
        await b.save("t/one", one_chunk(b"x"))
        after = time.time()
        info = await b.stat("t/one")
        assert info is not None
        listed = [i async for i in b.list("t/")]
        # HTTP dates have whole seconds
        assert before - 2 <= info.modified <= after + 1
        assert [abs(i.modified - info.modified) < 1.5 for i in listed] == [True]

    run_on(store, body)


def test_list_follows_continuation_tokens(s3store: Store) -> None:
    """Every page is read: the client is made to return 2 keys a page (the server truncates
    and hands out continuation tokens exactly as it does past 1000 keys)."""
    keys = [f"pfx/k{i:02d}" for i in range(7)]
    calls: list[dict[str, Any]] = []

    async def body(b: Backend) -> None:
        for k in keys:
            await b.save(k, one_chunk(k.encode()))
        assert isinstance(b, RetryBackend) and isinstance(b.store, S3Backend)
        client = await b.store._cold()  # the aioboto3 client, made on first use
        real = client.list_objects_v2

        async def small_pages(**kwargs: Any) -> Any:
            calls.append(kwargs)
            return await real(MaxKeys=2, **kwargs)

        client.list_objects_v2 = small_pages
        assert await keys_under(b, "pfx/") == keys

    run_on(s3store, body)
    assert len(calls) == 4
    assert "ContinuationToken" not in calls[0]
    assert all(c.get("ContinuationToken") for c in calls[1:])


# --- remove ----------------------------------------------------------------------------------

def test_remove(store: Store) -> None:
    async def body(b: Backend) -> None:
        await b.save("pfx/gone", one_chunk(b"bye"))
        await b.save("pfx/kept", one_chunk(b"stay"))
        await b.remove("pfx/gone")
        assert await b.stat("pfx/gone") is None
        assert await keys_under(b, "pfx/") == ["pfx/kept"]
        assert await b.load("pfx/kept") == b"stay"
        await b.remove("pfx/gone")  # already absent: not an error
        await b.remove("pfx/never-existed")
        # Removing frees the key for a new save.
        await b.save("pfx/gone", one_chunk(b"again"))
        assert await b.load("pfx/gone") == b"again"

    run_on(store, body)


# --- part sizes ------------------------------------------------------------------------------

HINTS = [0, 1, 5 * MiB, 100 * MiB, 50 * 1024 * MiB, 1 * TiB, 5 * TiB]


def test_part_size_is_positive_and_monotonic(store: Store) -> None:
    async def body(b: Backend) -> None:
        sizes = [b.part_size(h) for h in HINTS]
        assert all(isinstance(s, int) and s > 0 for s in sizes)
        assert sizes == sorted(sizes)

    run_on(store, body)


def test_part_size_within_s3_limits(s3store: Store) -> None:
    async def body(b: Backend) -> None:
        assert b.part_size(0) == PART  # the configured part size when nothing forces more
        assert b.part_size(100 * MiB) == PART
        for hint in HINTS:
            size = b.part_size(hint)
            assert S3_MIN_PART <= size <= S3_MAX_PART, (hint, size)
            assert hint / size <= S3_MAX_PARTS, (hint, size)
        one_tib = b.part_size(1 * TiB)
        assert 1 * TiB / one_tib <= S3_MAX_PARTS
        assert one_tib < 2 * (1 * TiB / S3_MAX_PARTS) + PART  # grown only as far as needed

    run_on(s3store, body)


def test_part_size_respects_a_larger_configured_size() -> None:
    dest = Destination("s3", "bucket", "", "http://127.0.0.1:9")  # part_size needs no server
    b = S3Backend(dest, TransferConfig(part_size=64 * MiB, multipart_threshold=64 * MiB))
    assert b.part_size(1 * MiB) == 64 * MiB
    assert 1 * TiB / b.part_size(1 * TiB) <= S3_MAX_PARTS


# --- SeaweedFS only: it validates credentials and buckets ------------------------------------

@pytest.mark.seaweed
def test_wrong_credentials_are_permanent(weed: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")

    async def body(b: Backend) -> None:
        with pytest.raises(PermanentBackendError) as caught:
            await b.save("pfx/denied", one_chunk(b"data"))
        assert caught.value.key == "pfx/denied"
        with pytest.raises(PermanentBackendError):
            await b.save("pfx/denied-big", chunks_of(BIG_PARTS))
        with pytest.raises(PermanentBackendError):
            await b.stat("pfx/denied")  # a refusal is not "absent"
        with pytest.raises(PermanentBackendError):
            await keys_under(b, "pfx/")

    run_on(weed, body)
    assert weed.target is not None
    assert weed.target.object_keys() == []
    assert weed.target.pending_uploads() == []


def test_missing_bucket_reads_are_permanent(s3store: Store) -> None:
    async def body(b: Backend) -> None:
        with pytest.raises(PermanentBackendError, match="NoSuchBucket"):
            await b.load("pfx/x")
        with pytest.raises(PermanentBackendError, match="NoSuchBucket"):
            await keys_under(b, "pfx/")

    run_on(s3store, body, bucket=f"no-such-bucket-{os.getpid()}-reads")


def test_missing_bucket_save_is_permanent(s3store: Store) -> None:
    """A mistyped bucket must stop the run, not silently create a new bucket.

    Fails on the SeaweedFS tier: `weed mini` auto-creates a missing bucket on PutObject /
    CreateMultipartUpload for admin identities unless started with
    -s3.autoCreateBucket=false, which devstore.SeaweedFS does not pass.
    """
    target = s3store.target
    assert target is not None
    bucket = f"no-such-bucket-{os.getpid()}-save"

    async def body(b: Backend) -> None:
        for what, chunks in [("single", one_chunk(b"data")), ("multipart", chunks_of(BIG_PARTS))]:
            try:
                await b.save("pfx/x", chunks)
            except PermanentBackendError as exc:
                assert exc.key == "pfx/x"
            else:
                pytest.fail(f"{what} save to missing bucket {bucket!r} succeeded "
                            f"on {s3store.kind}: the store created the bucket on upload")

    run_on(s3store, body, bucket=bucket)
    names = [b["Name"] for b in target.client.list_buckets()["Buckets"]]
    assert bucket not in names


# --- buffers, keys, stats --------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["bytearray", "memoryview"])
def test_any_buffer_is_saved(store: Store, kind: str) -> None:
    """Chunks may be bytearray or memoryview (sent from the caller's memory, not copied)."""
    def as_kind(data: bytes) -> bytearray | memoryview:
        return bytearray(data) if kind == "bytearray" else memoryview(bytearray(data))

    small = payload(70_000, seed=8)

    async def body(b: Backend) -> None:
        info = await b.save("pfx/small", one_chunk(as_kind(small)))
        assert info.size == len(small)
        if store.md5_etags:
            assert info.etag == hashlib.md5(small).hexdigest()
        big = await b.save("pfx/big", chunks_of([as_kind(p) for p in TWO_PARTS]))
        assert big.size == sum(map(len, TWO_PARTS))
        assert await b.load("pfx/small") == small
        assert await b.load("pfx/big") == b"".join(TWO_PARTS)

    run_on(store, body)


ODD_KEYS = ["pfx/with space/ä ü €.tar", "pfx/plus+and%25percent%", "pfx/q?mark#hash",
            "pfx/tilde~semi;colon=eq&amp@at:colon,comma", "pfx/!$'()*[]"]


def test_keys_are_percent_encoded(store: Store) -> None:
    """Any key round-trips: RFC 3986 encoding on the lean path, the same key for botocore."""
    async def body(b: Backend) -> None:
        for i, key in enumerate(ODD_KEYS):
            await b.save(key, one_chunk(key.encode()))
            await b.save(key + ".big", chunks_of(TWO_PARTS))
            assert await b.load(key, offset=1, length=3) == key.encode()[1:4]
            st = await b.stat(key)
            assert st is not None and st.size == len(key.encode()), key
        assert sorted(await keys_under(b, "pfx/")) == sorted(
            [*ODD_KEYS, *(k + ".big" for k in ODD_KEYS)])

    run_on(store, body)
    if store.target is not None:
        assert store.target.get(ODD_KEYS[0]) == ODD_KEYS[0].encode()


def test_stats_are_one_snapshot(chunked: Store) -> None:
    async def body(b: Backend) -> None:
        assert isinstance(b, Measured)
        before = b.stats
        await b.save("pfx/s", one_chunk(b"data"))
        assert await b.stat("pfx/s") is not None
        after = b.stats
        assert isinstance(after, BackendStats)
        assert after.requests == before.requests + 2
        assert after.retries == {} and after.throttle_slowdowns == 0 and after.gave_up == 0
        assert after.lowest_concurrency == TRANSFER.concurrency and after.parts_reused == 0

    run_on(chunked, body)


@pytest.mark.seaweed
def test_the_store_checks_our_content_md5(weed: Store) -> None:
    """The lean path's Content-MD5 reaches the store, which refuses a body that differs."""
    async def body(b: Backend) -> None:
        assert isinstance(b, RetryBackend)
        wrong = hashlib.md5(b"other bytes").digest()
        with pytest.raises(PermanentBackendError, match="BadDigest") as caught:
            await b.send(lambda bd: b.store.put("pfx/md5", bd, checksum=Checksum("md5", wrong),
                                                metadata={}),
                         b"these bytes", key="pfx/md5")
        assert caught.value.key == "pfx/md5"
        assert await b.stat("pfx/md5") is None
        assert b.stats.requests == 2 and b.stats.retries == {}

    run_on(weed, body)


@pytest.mark.seaweed
def test_the_store_checks_our_crc32(weed: Store) -> None:
    """--checksum crc32: the body's CRC32 goes as x-amz-checksum-crc32, which the store
    checks: a wrong one is refused, the right one stores the object."""
    async def body(b: Backend) -> None:
        assert isinstance(b, RetryBackend)
        wrong = Checksum("crc32", zlib.crc32(b"other bytes").to_bytes(4, "big"))
        with pytest.raises(PermanentBackendError, match="BadDigest"):
            await b.send(lambda bd: b.store.put("pfx/crc", bd, checksum=wrong, metadata={}),
                         b"these bytes", key="pfx/crc")
        assert await b.stat("pfx/crc") is None
        right = await checksum(b"these bytes", "crc32")
        await b.send(lambda bd: b.store.put("pfx/crc", bd, checksum=right, metadata={}),
                     b"these bytes", key="pfx/crc")
        assert await b.load("pfx/crc") == b"these bytes"

    run_on(weed, body)


@pytest.mark.parametrize("size", [0, 11, 256 * 1024 + 1, 16 * MiB, 16 * MiB + 1])
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_crc32_is_zlibs(size: int, kind: Callable[[bytes], Any]) -> None:
    """--checksum crc32 is computed with ISA-L (isal): the same CRC32 as zlib's, inline
    and (above 16 MiB) in a thread, from any buffer the upload hands it."""
    data = random.Random(size).randbytes(size)
    got = asyncio.run(checksum(kind(data), "crc32"))
    assert got == Checksum("crc32", zlib.crc32(data).to_bytes(4, "big"))


def test_planned_requests_follow_each_stores_upload_model() -> None:
    """A dry run counts requests without the store: one PUT, or parts plus the extras (S3:
    create and complete, and the unfinished uploads listed before and after the create;
    Azure: the block-list commit, and the staged blocks listed before), parts within each
    store's range. A per-file copier's (the cost comparison) lists nothing."""
    assert planned_requests("s3", 100 * MiB, part_size=16 * MiB) == 7 + 2 + 2
    assert planned_requests("az", 100 * MiB, part_size=16 * MiB) == 7 + 1 + 1
    assert planned_requests("file", 100 * MiB, part_size=16 * MiB) == 7 + 2 + 2
    assert planned_requests("s3", 100 * MiB, part_size=16 * MiB, ours=False) == 7 + 2
    assert planned_requests("az", 100 * MiB, part_size=16 * MiB, ours=False) == 7 + 1
    assert planned_requests("s3", 16 * MiB, part_size=16 * MiB) == 1
    # S3 raises a 2 MiB part to its 5 MiB minimum; Azure takes it as it is.
    assert planned_requests("s3", 12 * MiB, part_size=2 * MiB) == 3 + 4
    assert planned_requests("az", 12 * MiB, part_size=2 * MiB) == 6 + 2


def test_an_object_larger_than_the_store_allows_is_refused_before_sending() -> None:
    from pacsmigrate.backends.limits import AZURE, S3, adjust_part_size

    with pytest.raises(PermanentBackendError, match="larger than this store allows"):
        adjust_part_size(S3.limits, 16 * MiB, 6 * TiB)
    assert adjust_part_size(AZURE.limits, 16 * MiB, 6 * TiB) * 50_000 >= 6 * TiB
