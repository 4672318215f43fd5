"""One conformance suite for every Backend: MemoryBackend, S3Backend on moto and on SeaweedFS,
LocalStore on a directory, Azurite (the stores, fixtures and `run_on` are in
backends_support.py).

This file: the protocol itself, and writing: small and multipart objects, saves that never
overwrite, a source that fails mid-stream or a cancelled save (nothing left behind),
abort_pending. Listing and removing are in test_backends_listing.py; part sizes, permanent
errors and checksums in test_backends_limits.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import backends_support
import pytest
from backends_support import (
    BIG,
    BIG_PARTS,
    PART,
    SCHEMES,
    TWO_PARTS,
    Store,
    chunks_of,
    failing_after,
    keys_under,
    multipart_etag,
    payload,
    run_on,
)

from pacsmigrate.backends import Backend, PendingUploads, one_chunk
from pacsmigrate.backends.base import PendingUpload
from pacsmigrate.backends.multipart import ChunkedBackend
from pacsmigrate.errors import BackendError, ObjectExistsError

# The suite's fixtures (defined once, in backends_support).
store = backends_support.store
chunked = backends_support.chunked
abortable = backends_support.abortable


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
