"""S3 and S3-compatible stores (AWS, Wasabi, Ceph, SeaweedFS, MinIO) through aioboto3."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Mapping
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from botocore.exceptions import BotoCoreError, ClientError

from .. import faults
from ..config import S3_MAX_PART, S3_MAX_PARTS, S3_MIN_PART, Destination, TransferConfig
from ..errors import BackendError, ObjectNotFoundError
from .base import ObjectInfo, PendingUpload
from .policy import RequestPolicy, RetryConfig
from .s3_errors import TruncatedBodyError, classify, map_error
from .watchdog import guarded

_INLINE_HASH = 256 * 1024
MIN_SEND_RATE = 256 * 1024  # bytes/s below which a send counts as stalled


async def _md5(data: bytes) -> Any:
    """MD5 for Content-MD5; large bodies in a thread (hashlib drops the GIL), so a 16 MiB
    part does not stall the event loop that drives every other request."""
    if len(data) <= _INLINE_HASH:
        return hashlib.md5(data)
    return await asyncio.to_thread(hashlib.md5, data)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class _VerifyingSession(AIOHTTPSession):  # type: ignore[misc]
    """aiobotocore reuses urllib3's TLS context, which leaves host names unchecked (urllib3
    checks them itself; aiohttp does not). A certificate must name the host we dialled."""

    def _get_ssl_context(self) -> ssl.SSLContext:
        context: ssl.SSLContext = super()._get_ssl_context()
        context.check_hostname = True
        return context


class S3Backend:
    """One aioboto3 client, conditional writes, Content-MD5 on every body it sends.

    Every request goes through a RequestPolicy (our single retry layer: botocore's own
    retries are off so attempts are counted by cause and 503s slow the whole client down).
    """

    scheme = "s3"

    def __init__(self, dest: Destination, transfer: TransferConfig,
                 policy: RequestPolicy | None = None) -> None:
        self.dest = dest
        self.bucket = dest.bucket
        self.transfer = transfer
        self.policy = policy or RequestPolicy(
            concurrency=transfer.concurrency,
            retry=RetryConfig(max_attempts=transfer.max_attempts,
                              base_delay=transfer.retry_base_delay),
            requests_per_second=transfer.max_requests_per_second,
            bytes_per_second=transfer.bwlimit)
        self.parts_reused = 0
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def open(self) -> S3Backend:
        config = AioConfig(
            http_session_cls=_VerifyingSession,
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=max(10, self.transfer.concurrency * 2),
            connect_timeout=self.transfer.connect_timeout,
            read_timeout=self.transfer.read_timeout,
            # We send Content-MD5 ourselves; the aws-chunked trailer botocore would add
            # instead is rejected by some S3-compatible stores (Ceph over HTTPS).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = aioboto3.Session()
        # TLS certificates are verified by default; a private CA is added, never skipped.
        verify: Any = str(self.transfer.ca_bundle) if self.transfer.ca_bundle else None
        self._client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=self.dest.endpoint_url, config=config,
                           region_name=session.region_name or "us-east-1", verify=verify)
        )
        return self

    async def close(self) -> None:
        await self._stack.aclose()

    def part_size(self, size_hint: int) -> int:
        # Keep within S3's part limits whatever the object size (s3transfer's adjuster).
        size = max(self.transfer.part_size, S3_MIN_PART)
        while size_hint / size > S3_MAX_PARTS:
            size *= 2
        return min(size, S3_MAX_PART)

    def _deadline(self, nbytes: int) -> float:
        """Longest one attempt may take. The socket read timeout does not cover a store that
        stops reading our body (or never says 100 Continue): the send then just waits. So
        every attempt also gets a budget: the timeout plus the body at a very slow rate."""
        t = self.transfer
        return t.connect_timeout + t.read_timeout + nbytes / MIN_SEND_RATE

    async def _call(self, op: str, *, key: str | None, nbytes: int = 0, **kwargs: Any) -> Any:
        method = getattr(self._client, op)
        budget = self._deadline(nbytes)
        data = kwargs.pop("Body", None)

        def attempt() -> Awaitable[Any]:
            if data is None:
                return asyncio.wait_for(method(Bucket=self.bucket, **kwargs), budget)
            # A fresh body per attempt, watched while it is being sent.
            return asyncio.wait_for(guarded(
                lambda body: method(Bucket=self.bucket, Body=body, **kwargs), data,
                idle=self.transfer.read_timeout), budget)

        try:
            return await self.policy.run(attempt, classify=classify, nbytes=nbytes)
        except (TimeoutError, ClientError, BotoCoreError, TruncatedBodyError, aiohttp.ClientError,
                ConnectionError) as exc:
            raise map_error(exc, key=key) from exc

    async def save(
        self, key: str, chunks: AsyncIterator[bytes], *, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        meta = dict(metadata or {})
        it = aiter(chunks)
        first = await anext(it, b"")
        second = await anext(it, None)
        if second is None:
            resp = await self._call("put_object", key=key, nbytes=len(first), Key=key,
                                    Body=first, ContentMD5=_b64((await _md5(first)).digest()),
                                    IfNoneMatch="*",
                                    Metadata=meta)
            return ObjectInfo(key, len(first), resp.get("ETag", "").strip('"'), meta)
        return await self._multipart(key, first, second, it, meta)

    async def _resume_or_create(self, key: str, meta: dict[str, str]
                                ) -> tuple[str, dict[int, tuple[str, int]]]:
        """An unfinished upload of this key left by a killed run (with its parts), or a new one.

        Keys are deterministic per plan, so the bytes of a re-run are the same: parts whose
        MD5 and size match are kept instead of being sent again.
        """
        uploads = [u for u in (await self._call("list_multipart_uploads", key=key,
                                                Prefix=key)).get("Uploads", [])
                   if u["Key"] == key]
        uploads.sort(key=lambda u: u.get("Initiated", ""))
        for stale in uploads[:-1]:
            await self._abort(key, stale["UploadId"])
        if not uploads:
            created = await self._call("create_multipart_upload", key=key, Key=key,
                                       Metadata=meta)
            # The listing above was empty: any other upload of this key now is the twin of
            # a create whose first answer was lost and that was retried.
            async for twin in self.pending_uploads(key):
                if twin.key == key and twin.upload_id != created["UploadId"]:
                    await self._abort(key, twin.upload_id)
            return created["UploadId"], {}
        upload_id = uploads[-1]["UploadId"]
        done: dict[int, tuple[str, int]] = {}
        marker = 0
        while True:
            resp = await self._call("list_parts", key=key, Key=key, UploadId=upload_id,
                                    PartNumberMarker=marker)
            for part in resp.get("Parts", []):
                done[int(part["PartNumber"])] = (str(part["ETag"]).strip('"'), int(part["Size"]))
            if not resp.get("IsTruncated"):
                return upload_id, done
            marker = int(resp["NextPartNumberMarker"])

    async def _multipart(self, key: str, first: bytes, second: bytes,
                         rest: AsyncIterator[bytes], meta: dict[str, str]) -> ObjectInfo:
        upload_id, done = await self._resume_or_create(key, meta)
        parts: dict[int, str] = {}
        total = 0
        # Bounded in-flight parts: the producer waits before reading more source bytes.
        slots = asyncio.Semaphore(self.transfer.concurrency)
        tasks: list[asyncio.Task[None]] = []

        async def send(number: int, body: bytes) -> None:
            try:
                md5 = await _md5(body)
                if done.get(number) == (md5.hexdigest(), len(body)):
                    parts[number] = done[number][0]
                    self.parts_reused += 1
                    return
                resp = await self._call(
                    "upload_part", key=key, nbytes=len(body), Key=key, UploadId=upload_id,
                    PartNumber=number, Body=body,
                    ContentMD5=_b64(md5.digest()))
                parts[number] = resp["ETag"]
                faults.point("part-uploaded")
            finally:
                slots.release()

        async def chunks() -> AsyncIterator[bytes]:
            yield first
            yield second
            async for c in rest:
                yield c

        try:
            number = 0
            async for body in chunks():
                await slots.acquire()
                for t in tasks:
                    if t.done() and t.exception() is not None:
                        raise t.exception()  # type: ignore[misc]
                number += 1
                total += len(body)
                tasks.append(asyncio.create_task(send(number, body)))
            await asyncio.gather(*tasks)
            etag = await self._complete(key, upload_id, parts, total)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Abort is the cleanup registered the moment the upload exists: a failure
            # never leaves orphaned parts behind (shielded so a cancel still runs it).
            # Only a kill skips it, and then the next run resumes the upload's parts.
            await asyncio.shield(self._abort(key, upload_id))
            raise
        return ObjectInfo(key, total, etag, meta)

    async def _complete(self, key: str, upload_id: str, parts: dict[int, str],
                        total: int) -> str:
        """Complete the upload; a retry after a lost success is recognised, not failed.

        If the store completed the upload but its answer was lost, the retry hears
        NoSuchUpload (or 412 from If-None-Match): the object is there with our size.
        """
        try:
            resp = await self._call(
                "complete_multipart_upload", key=key, Key=key, UploadId=upload_id,
                IfNoneMatch="*",
                MultipartUpload={"Parts": [{"ETag": parts[n], "PartNumber": n}
                                           for n in sorted(parts)]},
            )
        except ObjectNotFoundError:  # NoSuchUpload
            info = await self.stat(key)
            if info is None or info.size != total:
                raise
            return info.etag
        etag = str(resp.get("ETag", "")).strip('"')
        if not etag:  # Ceph answers CompleteMultipartUpload with an empty ETag; HEAD has it
            info = await self.stat(key)
            etag = info.etag if info is not None else ""
        return etag

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._call("abort_multipart_upload", key=key, Key=key, UploadId=upload_id)
        except BackendError:
            pass  # `pacsmigrate cleanup` finds what is left

    async def abort_upload(self, upload: PendingUpload) -> None:
        await self._call("abort_multipart_upload", key=upload.key, Key=upload.key,
                         UploadId=upload.upload_id)

    async def abort_pending(self, key: str) -> int:
        count = 0
        async for upload in self.pending_uploads(key):
            if upload.key == key:
                await self._abort(key, upload.upload_id)
                count += 1
        return count

    async def pending_uploads(self, prefix: str) -> AsyncIterator[PendingUpload]:
        """Unfinished multipart uploads under prefix (for `cleanup`)."""
        kwargs: dict[str, Any] = {"Prefix": prefix}
        while True:
            resp = await self._call("list_multipart_uploads", key=prefix, **kwargs)
            for up in resp.get("Uploads", []):
                initiated = up.get("Initiated")
                yield PendingUpload(up["Key"], up["UploadId"],
                                    initiated.timestamp() if initiated is not None else 0.0)
            if not resp.get("IsTruncated"):
                return
            kwargs["KeyMarker"] = resp.get("NextKeyMarker", "")
            kwargs["UploadIdMarker"] = resp.get("NextUploadIdMarker", "")

    async def load(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        kwargs: dict[str, Any] = {}
        if length == 0:
            return b""
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"

        async def get() -> bytes:
            # Request and body in one attempt: a body cut short is retried as a whole.
            resp = await self._client.get_object(Bucket=self.bucket, Key=key, **kwargs)
            async with resp["Body"] as body:
                data: bytes = await body.read()
            if len(data) != int(resp.get("ContentLength", len(data))):
                raise TruncatedBodyError(f"got {len(data)} of {resp['ContentLength']} bytes")
            return data

        budget = self._deadline(length or 0) if length is not None else None
        try:
            return await self.policy.run(lambda: asyncio.wait_for(get(), budget),
                                         classify=classify)
        except (TimeoutError, ClientError, BotoCoreError, TruncatedBodyError, aiohttp.ClientError, ConnectionError) as exc:
            raise map_error(exc, key=key) from exc

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            resp = await self._call("head_object", key=key, Key=key)
        except ObjectNotFoundError:
            return None
        return ObjectInfo(key, int(resp["ContentLength"]), str(resp.get("ETag", "")).strip('"'),
                          dict(resp.get("Metadata", {})))

    async def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            resp = await self._call("list_objects_v2", key=prefix, **kwargs)
            for obj in resp.get("Contents", []):
                yield ObjectInfo(obj["Key"], int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
            if not resp.get("IsTruncated"):
                return
            token = resp.get("NextContinuationToken")

    async def remove(self, key: str) -> None:
        await self._call("delete_object", key=key, Key=key)
