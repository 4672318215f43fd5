"""The Backend conformance suite (see backends_support.py), reading what was written:
listing by prefix (the store's write time; S3's continuation tokens), removing, any buffer
saved, odd keys percent-encoded, and stats as one snapshot."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import backends_support
import pytest
from backends_support import TRANSFER, TWO_PARTS, Store, chunks_of, keys_under, payload, run_on

from pacsmigrate.backends import Backend, BackendStats, Measured, one_chunk
from pacsmigrate.backends.retry import RetryBackend
from pacsmigrate.backends.s3 import S3Backend

# The suite's fixtures (defined once, in backends_support).
store = backends_support.store
s3store = backends_support.s3store
chunked = backends_support.chunked


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
