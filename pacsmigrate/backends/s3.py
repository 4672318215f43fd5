"""S3 and S3-compatible stores (AWS, Wasabi, Ceph, SeaweedFS, MinIO): single-attempt requests."""

from __future__ import annotations

import base64
import hashlib
import io
import ssl
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession

from ..config import S3_MAX_PART, S3_MAX_PARTS, S3_MIN_PART, Destination, TransferConfig
from ..errors import BackendError
from .base import ObjectInfo, Part, PendingUpload
from .body import Body
from .policy import Cause
from .s3_errors import TruncatedBodyError, classify, map_error


class _VerifyingSession(AIOHTTPSession):  # type: ignore[misc]
    """aiobotocore reuses urllib3's TLS context, which leaves host names unchecked (urllib3
    checks them itself; aiohttp does not). A certificate must name the host we dialled."""

    def _get_ssl_context(self) -> ssl.SSLContext:
        context: ssl.SSLContext = super()._get_ssl_context()
        context.check_hostname = True
        return context


class _BodyFile(io.BytesIO):
    """A Body as the file botocore reads while the socket drains, marking its progress."""

    def __init__(self, body: Body) -> None:
        super().__init__(body.view)
        self.body = body

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.body.touched = time.monotonic()
        self.body.sent = self.tell() >= self.body.size
        return data

    def seek(self, pos: int, whence: int = 0, /) -> int:
        # botocore reads the body to sign it, then rewinds it for sending
        at = super().seek(pos, whence)
        self.body.touched = time.monotonic()
        self.body.sent = at >= self.body.size
        return at


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class S3Backend:
    """One aioboto3 client, conditional writes, Content-MD5 on every body it sends.

    No retries here: each request is sent once (botocore's retries are off) and
    RetryBackend's policy decides. Implements Primitives and ChunkedWriter (base.py).
    """

    scheme = "s3"

    def __init__(self, dest: Destination, transfer: TransferConfig) -> None:
        self.dest = dest
        self.bucket = dest.bucket
        self.transfer = transfer
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def open(self) -> S3Backend:
        t = self.transfer
        config = AioConfig(
            http_session_cls=_VerifyingSession,
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=max(10, t.concurrency * 2),
            connect_timeout=t.connect_timeout,
            read_timeout=t.read_timeout,
            # We send Content-MD5 ourselves; the aws-chunked trailer botocore would add
            # instead is rejected by some S3-compatible stores (Ceph over HTTPS).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = aioboto3.Session()
        # TLS certificates are verified by default; a private CA is added, never skipped.
        verify: Any = str(t.ca_bundle) if t.ca_bundle else None
        self._client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=self.dest.endpoint_url, config=config,
                           region_name=session.region_name or "us-east-1", verify=verify))
        return self

    async def close(self) -> None:
        await self._stack.aclose()

    def part_size(self, size_hint: int) -> int:
        # Keep within S3's part limits whatever the object size (s3transfer's adjuster).
        size = max(self.transfer.part_size, S3_MIN_PART)
        while size_hint / size > S3_MAX_PARTS:
            size *= 2
        return min(size, S3_MAX_PART)

    def classify(self, exc: BaseException) -> Cause | None:
        return classify(exc)

    def map_error(self, exc: BaseException, *, key: str | None) -> BackendError | None:
        return map_error(exc, key=key)

    # -- objects ---------------------------------------------------------------------
    async def put(self, key: str, body: Body, *, md5: bytes,
                  metadata: Mapping[str, str]) -> str:
        resp = await self._client.put_object(
            Bucket=self.bucket, Key=key, Body=_BodyFile(body), ContentMD5=_b64(md5),
            IfNoneMatch="*", Metadata=dict(metadata))
        return str(resp.get("ETag", "")).strip('"')

    async def get(self, key: str, *, offset: int, length: int | None) -> bytes:
        kwargs: dict[str, Any] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        resp = await self._client.get_object(Bucket=self.bucket, Key=key, **kwargs)
        async with resp["Body"] as stream:
            data: bytes = await stream.read()
        if len(data) != int(resp.get("ContentLength", len(data))):
            raise TruncatedBodyError(f"got {len(data)} of {resp['ContentLength']} bytes")
        return data

    async def head(self, key: str) -> ObjectInfo:
        resp = await self._client.head_object(Bucket=self.bucket, Key=key)
        return ObjectInfo(key, int(resp["ContentLength"]), str(resp.get("ETag", "")).strip('"'),
                          dict(resp.get("Metadata", {})))

    async def list_page(self, prefix: str, token: str | None
                        ) -> tuple[list[ObjectInfo], str | None]:
        kwargs: dict[str, Any] = {"ContinuationToken": token} if token else {}
        resp = await self._client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **kwargs)
        page = [ObjectInfo(o["Key"], int(o["Size"]), str(o.get("ETag", "")).strip('"'))
                for o in resp.get("Contents", [])]
        return page, (resp.get("NextContinuationToken") if resp.get("IsTruncated") else None)

    async def delete(self, key: str) -> None:
        await self._client.delete_object(Bucket=self.bucket, Key=key)

    # -- multipart uploads (ChunkedWriter) -------------------------------------------
    async def create_upload(self, key: str, *, metadata: Mapping[str, str]) -> str:
        resp = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                          Metadata=dict(metadata))
        return str(resp["UploadId"])

    async def upload_part(self, key: str, upload_id: str, number: int, body: Body, *,
                          md5: bytes) -> str:
        resp = await self._client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
            Body=_BodyFile(body), ContentMD5=_b64(md5))
        return str(resp["ETag"]).strip('"')

    async def complete_upload(self, key: str, upload_id: str,
                              parts: Sequence[tuple[int, str]]) -> str:
        resp = await self._client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, IfNoneMatch="*",
            MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": n} for n, etag in parts]})
        return str(resp.get("ETag", "")).strip('"')

    async def abort(self, key: str, upload_id: str) -> None:
        await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                  UploadId=upload_id)

    async def list_uploads_page(self, prefix: str, marker: tuple[str, str] | None
                                ) -> tuple[list[PendingUpload], tuple[str, str] | None]:
        kwargs: dict[str, Any] = {"Prefix": prefix}
        if marker is not None:
            kwargs["KeyMarker"], kwargs["UploadIdMarker"] = marker
        resp = await self._client.list_multipart_uploads(Bucket=self.bucket, **kwargs)
        page = [PendingUpload(u["Key"], u["UploadId"],
                              u["Initiated"].timestamp() if u.get("Initiated") else 0.0)
                for u in resp.get("Uploads", [])]
        if not resp.get("IsTruncated"):
            return page, None
        return page, (resp.get("NextKeyMarker", ""), resp.get("NextUploadIdMarker", ""))

    async def list_parts_page(self, key: str, upload_id: str, marker: int | None
                              ) -> tuple[list[Part], int | None]:
        resp = await self._client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                             PartNumberMarker=marker or 0)
        page = [Part(int(p["PartNumber"]), str(p["ETag"]).strip('"'), int(p["Size"]))
                for p in resp.get("Parts", [])]
        return page, (int(resp["NextPartNumberMarker"]) if resp.get("IsTruncated") else None)

    def expected_etag(self, part_md5s: Sequence[bytes]) -> str:
        # S3's multipart ETag: the MD5 of the parts' MD5s, then "-" and the part count.
        return f"{hashlib.md5(b''.join(part_md5s)).hexdigest()}-{len(part_md5s)}"
