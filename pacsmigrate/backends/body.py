"""Request bodies: any buffer, hashed once (MD5), sent from the caller's memory in slices."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from isal import isal_zlib

# What `save` accepts as a chunk. The buffer is sent (and re-sent on a retry) from the
# caller's memory, never copied, so it must not change until `save` returns.
Buffer = bytes | bytearray | memoryview

INLINE_HASH = 256 * 1024  # larger bodies are MD5-hashed in a thread
# ISA-L's CRC32 runs at ~50 GB/s here (zlib's at ~4): a 16 MiB part costs ~0.3 ms, less
# than a trip to a thread and back; larger bodies still go to one.
INLINE_CRC32 = 16 * 1024 * 1024
SLICE = 256 * 1024  # bytes handed to the transport at a time


def view(data: Buffer) -> memoryview:
    """A flat byte view of data (no copy); a non-contiguous view is refused, not copied."""
    mv = data if isinstance(data, memoryview) else memoryview(data)
    if not mv.c_contiguous:
        raise TypeError("a chunk must be one contiguous buffer")
    return mv if mv.ndim == 1 and mv.itemsize == 1 else mv.cast("B")


async def md5(data: Buffer) -> Any:
    """MD5 of data for Content-MD5 (and part matching on resume), computed once per body.

    Large bodies in a thread: hashlib releases the GIL, so a 16 MiB part does not stall the
    event loop that drives every other request.
    """
    mv = view(data)
    if mv.nbytes <= INLINE_HASH:
        return hashlib.md5(mv)
    return await asyncio.to_thread(hashlib.md5, mv)


def multipart_etag(part_md5s: Sequence[bytes]) -> str:
    """S3's ETag of an object completed from parts: the MD5 of the parts' MD5 digests, then
    "-" and the part count (the local and Azure stores report the same rule)."""
    return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"


CHECKSUMS = ("md5", "crc32")
# `--checksum auto`: CRC32 where the pre-flight saw the store refuse a body whose CRC32 was
# wrong, else MD5 (preflight.check_crc32); until it has decided, MD5.
AUTO = "auto"
# Store error codes that say a body's checksum did not match (S3 and SeaweedFS; MinIO).
MISMATCH_CODES = frozenset({"BadDigest", "XAmzContentChecksumMismatch"})


def sent(algorithm: str) -> str:
    """The checksum a body goes with: `auto` not decided yet is MD5."""
    return "md5" if algorithm == AUTO else algorithm


@dataclass(frozen=True, slots=True)
class Checksum:
    """The integrity checksum a store verifies on a body before it keeps it.

    `md5` (Content-MD5): every S3-compatible store checks it. `crc32`
    (x-amz-checksum-crc32): AWS, MinIO, SeaweedFS and recent Ceph check it; computed with
    ISA-L (isal), about seventy times cheaper than MD5 and ten times cheaper than zlib.
    """

    algorithm: str
    digest: bytes


async def checksum(data: Buffer, algorithm: str) -> Checksum:
    """The body's checksum, computed once (retries resend the same digest); `auto` not
    decided yet is MD5, which every store checks."""
    if algorithm == "crc32":
        mv = view(data)
        # Very large bodies in a thread, as for MD5: isal releases the GIL.
        crc = isal_zlib.crc32(mv) if mv.nbytes <= INLINE_CRC32 else \
            await asyncio.to_thread(isal_zlib.crc32, mv)
        return Checksum("crc32", crc.to_bytes(4, "big"))
    return Checksum("md5", (await md5(data)).digest())


class Body:
    """One attempt's body: the caller's buffer, and when a slice of it last went out.

    The transport takes it slice by slice (`pieces`) as the socket drains. A store that stops
    reading, or never answers `Expect: 100-continue`, stops the slices: the watchdog sees
    `touched` grow old while the body is not yet `sent`.
    """

    __slots__ = ("sent", "size", "touched", "view")

    def __init__(self, data: Buffer) -> None:
        self.view = view(data)
        self.size = self.view.nbytes
        self.touched = time.monotonic()
        self.sent = self.size == 0

    def pieces(self, size: int = SLICE) -> Iterator[memoryview]:
        """The body from its start (a transport may send it again), marking progress."""
        mv = self.view
        for start in range(0, self.size, size):
            self.touched = time.monotonic()
            yield mv[start:start + size]
        self.touched = time.monotonic()
        self.sent = True
