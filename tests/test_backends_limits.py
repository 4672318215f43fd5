"""The Backend conformance suite (see backends_support.py), at the stores' limits: part
sizes within S3's limits, errors that are permanent (wrong credentials, a missing bucket),
the checksums the store checks (Content-MD5, CRC32), and the requests an upload plans."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import zlib
from collections.abc import Callable
from typing import Any

import backends_support
import pytest
from backends_support import (
    BIG_PARTS,
    PART,
    S3_MAX_PART,
    S3_MAX_PARTS,
    S3_MIN_PART,
    Store,
    TiB,
    chunks_of,
    keys_under,
    run_on,
)

from pacsmigrate.backends import Backend, one_chunk
from pacsmigrate.backends.body import Checksum, checksum
from pacsmigrate.backends.limits import planned_requests
from pacsmigrate.backends.retry import RetryBackend
from pacsmigrate.backends.s3 import S3Backend
from pacsmigrate.config import Destination, MiB, TransferConfig
from pacsmigrate.errors import PermanentBackendError

# The suite's fixtures (defined once, in backends_support).
store = backends_support.store
s3store = backends_support.s3store
weed = backends_support.weed


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
