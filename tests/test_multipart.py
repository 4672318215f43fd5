"""The generic multipart logic (backends/multipart.py) on an in-memory chunked store with faults.

No server: the stores in multipart_support.py implement Primitives and ChunkedWriter in a
few dicts, and can be told to lose an answer after acting ("lost"), refuse before acting
("busy") or refuse for good ("denied"), request by request. What S3 adds is covered in
test_backends*.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest
from conftest import run
from multipart_support import (
    PART,
    PARTS,
    TRANSFER,
    WHOLE,
    ChunkedStore,
    Fault,
    PlainStore,
    backend,
    chunks,
    payload,
)

from pacsmigrate.backends import PendingUploads, one_chunk
from pacsmigrate.backends.multipart import RESUME_MAX_AGE, ChunkedBackend
from pacsmigrate.errors import ObjectExistsError, PermanentBackendError


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
