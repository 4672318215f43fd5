"""S3 and S3-compatible stores (AWS, Wasabi, Ceph, SeaweedFS, MinIO) through aioboto3."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..config import S3_MAX_PART, S3_MAX_PARTS, S3_MIN_PART, Destination, TransferConfig
from ..errors import (
    BackendError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentBackendError,
)
from .base import ObjectInfo

# Error codes that no retry can fix: stop the run and tell the operator.
PERMANENT_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
    "BadDigest", "InvalidDigest", "AllAccessDisabled", "AccountProblem", "InvalidBucketName",
    "403",
})


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode("ascii")


def map_error(exc: Exception, *, key: str | None) -> BackendError:
    """Translate botocore's errors into the errors.py tree at this boundary."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("PreconditionFailed", "412"):
            return ObjectExistsError(f"object exists: {key}", key=key)
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjectNotFoundError(f"no such object: {key}", key=key)
        if code in PERMANENT_CODES:
            return PermanentBackendError(f"store refused ({code}): {exc}", key=key)
        return BackendError(f"store error ({code}): {exc}", key=key)
    return BackendError(f"store request failed: {exc}", key=key)


class S3Backend:
    """One aioboto3 client, conditional writes, Content-MD5 on every body it sends."""

    scheme = "s3"

    def __init__(self, dest: Destination, transfer: TransferConfig) -> None:
        self.dest = dest
        self.bucket = dest.bucket
        self.transfer = transfer
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._requests = asyncio.Semaphore(transfer.concurrency)

    async def open(self) -> S3Backend:
        config = Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "total_max_attempts": self.transfer.max_attempts},
            max_pool_connections=max(10, self.transfer.concurrency * 2),
            connect_timeout=self.transfer.connect_timeout,
            read_timeout=self.transfer.read_timeout,
            # We send Content-MD5 ourselves; the aws-chunked trailer botocore would add
            # instead is rejected by some S3-compatible stores (Ceph over HTTPS).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = aioboto3.Session()
        self._client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=self.dest.endpoint_url, config=config,
                           region_name=session.region_name or "us-east-1")
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

    async def _call(self, op: str, *, key: str | None, **kwargs: Any) -> Any:
        async with self._requests:
            try:
                return await getattr(self._client, op)(Bucket=self.bucket, **kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise map_error(exc, key=key) from exc

    async def save(
        self, key: str, chunks: AsyncIterator[bytes], *, metadata: Mapping[str, str] | None = None
    ) -> ObjectInfo:
        meta = dict(metadata or {})
        it = aiter(chunks)
        first = await anext(it, b"")
        second = await anext(it, None)
        if second is None:
            resp = await self._call("put_object", key=key, Key=key, Body=first,
                                    ContentMD5=_md5_b64(first), IfNoneMatch="*", Metadata=meta)
            return ObjectInfo(key, len(first), resp.get("ETag", "").strip('"'), meta)
        return await self._multipart(key, first, second, it, meta)

    async def _multipart(self, key: str, first: bytes, second: bytes,
                         rest: AsyncIterator[bytes], meta: dict[str, str]) -> ObjectInfo:
        created = await self._call("create_multipart_upload", key=key, Key=key, Metadata=meta)
        upload_id = created["UploadId"]
        parts: dict[int, str] = {}
        total = 0
        # Bounded in-flight parts: the producer waits before reading more source bytes.
        slots = asyncio.Semaphore(self.transfer.concurrency)
        tasks: list[asyncio.Task[None]] = []

        async def send(number: int, body: bytes) -> None:
            try:
                resp = await self._call("upload_part", key=key, Key=key, UploadId=upload_id,
                                        PartNumber=number, Body=body, ContentMD5=_md5_b64(body))
                parts[number] = resp["ETag"]
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
            resp = await self._call(
                "complete_multipart_upload", key=key, Key=key, UploadId=upload_id,
                IfNoneMatch="*",
                MultipartUpload={"Parts": [{"ETag": parts[n], "PartNumber": n}
                                           for n in sorted(parts)]},
            )
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Abort is the cleanup registered the moment the upload exists: a failure
            # never leaves orphaned parts behind (shielded so a cancel still runs it).
            await asyncio.shield(self._abort(key, upload_id))
            raise
        return ObjectInfo(key, total, str(resp.get("ETag", "")).strip('"'), meta)

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._call("abort_multipart_upload", key=key, Key=key, UploadId=upload_id)
        except BackendError:
            pass  # the `pending uploads` sweep at the next start catches what is left

    async def abort_pending(self, key: str) -> int:
        resp = await self._call("list_multipart_uploads", key=key, Prefix=key)
        count = 0
        for up in resp.get("Uploads", []):
            if up["Key"] == key:
                await self._abort(key, up["UploadId"])
                count += 1
        return count

    async def load(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        kwargs: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            if length == 0:
                return b""
            kwargs["Range"] = f"bytes={offset}-{end}"
        async with self._requests:
            try:
                resp = await self._client.get_object(Bucket=self.bucket, Key=key, **kwargs)
                async with resp["Body"] as body:
                    data: bytes = await body.read()
            except (ClientError, BotoCoreError) as exc:
                raise map_error(exc, key=key) from exc
        return data

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
