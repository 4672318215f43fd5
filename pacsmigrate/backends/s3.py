"""S3 and S3-compatible stores (AWS, Wasabi, Ceph, SeaweedFS, MinIO): single-attempt requests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from ..config import Destination, S3Options, TransferConfig
from ..errors import BackendError, ConfigError
from ..retention import HOLD_META, MODE_META, UNTIL_META
from ..ssec import CustomerKey, customer_key
from ..tiers import CLASS_META, tags
from .base import (
    IN_PROGRESS,
    READY,
    REQUESTED,
    ObjectInfo,
    Part,
    PendingUpload,
    adjust_part_size,
    epoch,
)
from .body import Body, Checksum, multipart_etag
from .limits import S3
from .policy import Cause
from .s3_errors import Where, classify, code_of, map_error
from .s3_http import DataPath, bucket_url

CONDITIONAL = {"If-None-Match": "*"}  # create only: an existing key answers 412
LIMITS = S3.limits


class S3Backend:
    """PutObject, UploadPart and ranged GetObject on a lean signed aiohttp path (s3_http);
    the rarer requests on one aioboto3 client. Conditional writes, Content-MD5 on every body.

    No retries here: both clients send each request once (botocore's retries are off) and
    RetryBackend's policy decides. Implements Primitives and ChunkedWriter (base.py).
    """

    scheme = "s3"

    def __init__(self, dest: Destination, transfer: TransferConfig) -> None:
        self.dest = dest
        self.bucket = dest.bucket
        self.transfer = transfer
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._session: Any = None
        self._region = "us-east-1"
        self._verify: str | bool = True
        self._data: DataPath | None = None
        self._style: str | None = None
        self._ssec: CustomerKey | None = None  # SSE-C: sent with every write and read
        self.where = Where(bucket=dest.bucket, endpoint=dest.endpoint_url or "AWS S3")

    async def open(self) -> S3Backend:
        """The data path only: the aioboto3 client (slow to import and build) waits for the
        first request that needs it; a run of small bundles may never make one."""
        from aiobotocore.session import AioSession
        from botocore.exceptions import ProfileNotFound

        t, opts = self.transfer, self.dest.s3 or S3Options()
        if opts.sse_c_md5:
            self._ssec = customer_key(opts.sse_c_key_file, opts.sse_c_md5)
        self._session = session = AioSession(profile=opts.profile)
        try:
            self._region = (opts.region or session.get_config_variable("region")
                            or "us-east-1")
            credentials = await session.get_credentials()
        except ProfileNotFound:
            name = opts.profile or os.environ.get("AWS_PROFILE") or os.environ.get(
                "AWS_DEFAULT_PROFILE")
            raise ConfigError(f"AWS profile {name!r} is not in ~/.aws/config or "
                              "~/.aws/credentials (see `aws configure list-profiles`): "
                              "give another --profile or AWS_PROFILE") from None
        if credentials is None:
            raise ConfigError("no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, or give --profile (a profile of "
                              "~/.aws/credentials)")
        self.where = replace(self.where, endpoint=self.dest.endpoint_url or f"AWS S3 "
                             f"({self._region})", credentials=credentials_from(
                                 credentials, opts.profile))
        self._style = opts.addressing_style
        # TLS certificates are verified by default; a private CA is given, never skipped:
        # --ca-bundle, else AWS_CA_BUNDLE (as botocore resolves it), else certifi's.
        ca = t.ca_bundle or session.get_config_variable("ca_bundle")
        self._verify = str(ca) if ca else True
        self._data = DataPath(
            base=bucket_url(self.bucket, self.dest.endpoint_url, self._region, style=self._style),
            region=self._region, credentials=credentials,
            verify=self._verify, pool=t.concurrency,
            connect_timeout=t.connect_timeout, read_timeout=t.read_timeout,
            always=self._ssec.headers() if self._ssec else None)
        self._stack.push_async_callback(self._data.close)
        return self

    async def _cold(self) -> Any:
        """The aioboto3 client for the rarer requests, made on first use."""
        async with self._client_lock:
            if self._client is None:
                self._client = await self._stack.enter_async_context(self._new_client())
        return self._client

    def _new_client(self) -> Any:
        import ssl

        from aiobotocore.config import AioConfig
        from aiobotocore.httpsession import AIOHTTPSession

        class VerifyingSession(AIOHTTPSession):  # type: ignore[misc]
            """aiobotocore reuses urllib3's TLS context, which leaves host names unchecked
            (urllib3 checks them itself; aiohttp does not): a certificate must name the
            host we dialled."""

            def _get_ssl_context(self) -> ssl.SSLContext:
                context: ssl.SSLContext = super()._get_ssl_context()
                context.check_hostname = True
                return context

        t = self.transfer
        config = AioConfig(
            http_session_cls=VerifyingSession,
            s3={"addressing_style": self._style or (
                "path" if self.dest.endpoint_url else "virtual")},
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=max(10, t.concurrency * 2),
            connect_timeout=t.connect_timeout,
            read_timeout=t.read_timeout,
            # We send Content-MD5 ourselves; the aws-chunked trailer botocore would add
            # instead is rejected by some S3-compatible stores (Ceph over HTTPS).
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return self._session.create_client(
            "s3", endpoint_url=self.dest.endpoint_url, config=config,
            region_name=self._region, verify=self._verify)

    async def close(self) -> None:
        await self._stack.aclose()

    @property
    def data(self) -> DataPath:
        assert self._data is not None, "S3Backend.open() first"
        return self._data

    def part_size(self, size_hint: int) -> int:
        return adjust_part_size(LIMITS, self.transfer.part_size, size_hint)

    def classify(self, exc: BaseException) -> Cause | None:
        return classify(exc)

    def map_error(self, exc: BaseException, *, key: str | None) -> BackendError | None:
        return map_error(exc, key=key, where=self.where)

    # -- objects ---------------------------------------------------------------------
    async def put(self, key: str, body: Body, *, checksum: Checksum,
                  metadata: Mapping[str, str]) -> str:
        headers = dict(CONDITIONAL)
        if metadata.get(CLASS_META):
            headers["x-amz-storage-class"] = metadata[CLASS_META]
        if tags(metadata):
            headers["x-amz-tagging"] = urlencode(tags(metadata))
        headers.update(_lock_headers(metadata))
        headers.update(self._sse_headers())
        for name, value in metadata.items():
            if not (name + value).isascii():  # botocore refuses them too
                raise ValueError(f"S3 metadata must be ASCII: {name!r}")
            headers[f"x-amz-meta-{name}"] = value
        return await self.data.put(key, body, checksum=checksum, headers=headers)

    async def get(self, key: str, *, offset: int, length: int | None) -> bytes:
        return await self.data.get(key, offset=offset, length=length)

    async def head(self, key: str) -> ObjectInfo:
        size, etag, metadata, modified = await self.data.head(key)
        return ObjectInfo(key, size, etag, metadata, modified)

    async def list_page(self, prefix: str, token: str | None
                        ) -> tuple[list[ObjectInfo], str | None]:
        kwargs: dict[str, Any] = {"ContinuationToken": token} if token else {}
        resp = await (await self._cold()).list_objects_v2(Bucket=self.bucket, Prefix=prefix, **kwargs)
        page = [ObjectInfo(o["Key"], int(o["Size"]), str(o.get("ETag", "")).strip('"'),
                           modified=epoch(o.get("LastModified")))
                for o in resp.get("Contents", [])]
        return page, (resp.get("NextContinuationToken") if resp.get("IsTruncated") else None)

    def _sse_headers(self) -> dict[str, str]:
        """Server-side encryption asked for this destination (--sse, --sse-kms-key-id)."""
        opts, out = self.dest.s3 or S3Options(), {}
        if opts.sse:
            out["x-amz-server-side-encryption"] = opts.sse
        if opts.sse_kms_key_id:
            out["x-amz-server-side-encryption-aws-kms-key-id"] = opts.sse_kms_key_id
        return out

    async def object_lock_enabled(self) -> bool:
        """Whether the bucket takes retention locks (a capability asked before a run)."""
        from botocore.exceptions import ClientError

        try:
            resp = await (await self._cold()).get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as exc:  # ...NotFoundError: a bucket made without object lock
            if code_of(exc).startswith("ObjectLockConfigurationNotFound"):
                return False
            raise  # RetryBackend retries what is worth it, and maps the rest
        return bool(resp.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
                    == "Enabled")

    async def delete(self, key: str) -> None:
        await self.data.delete(key)

    async def request_restore(self, key: str, *, days: int, priority: str) -> str:
        """RestoreObject for an object in GLACIER or DEEP_ARCHIVE (Rehydrating)."""
        from botocore.exceptions import ClientError

        client = await self._cold()
        try:
            head = await client.head_object(Bucket=self.bucket, Key=key)
            restore = str(head.get("Restore", ""))
            if 'ongoing-request="true"' in restore:
                return IN_PROGRESS
            if 'ongoing-request="false"' in restore or head.get("StorageClass") not in (
                    "GLACIER", "DEEP_ARCHIVE"):
                return READY
            tier = {"High": "Expedited"}.get(priority, priority)
            await client.restore_object(Bucket=self.bucket, Key=key, RestoreRequest={
                "Days": days, "GlacierJobParameters": {"Tier": tier}})
        except ClientError as exc:
            if code_of(exc) == "RestoreAlreadyInProgress":
                return IN_PROGRESS
            raise
        return REQUESTED

    # -- multipart uploads (ChunkedWriter) -------------------------------------------
    async def create_upload(self, key: str, *, metadata: Mapping[str, str]) -> str:
        extra: dict[str, Any] = {}
        if metadata.get(CLASS_META):
            extra["StorageClass"] = metadata[CLASS_META]
        if tags(metadata):
            extra["Tagging"] = urlencode(tags(metadata))
        extra.update(_lock_params(metadata))
        opts = self.dest.s3 or S3Options()
        if opts.sse:
            extra["ServerSideEncryption"] = opts.sse
        if opts.sse_kms_key_id:
            extra["SSEKMSKeyId"] = opts.sse_kms_key_id
        if self._ssec:
            extra.update(self._ssec.params())
        resp = await (await self._cold()).create_multipart_upload(Bucket=self.bucket, Key=key,
                                                          Metadata=dict(metadata), **extra)
        return str(resp["UploadId"])

    async def upload_part(self, key: str, upload_id: str, number: int, body: Body, *,
                          md5: bytes) -> str:
        query = f"partNumber={number}&uploadId={quote(upload_id, safe='-_.~')}"
        return await self.data.put(key, body, checksum=Checksum("md5", md5), query=query,
                                   operation="UploadPart")

    async def complete_upload(self, key: str, upload_id: str,
                              parts: Sequence[tuple[int, str]], *,
                              metadata: Mapping[str, str] | None = None,
                              content_md5: bytes | None = None) -> str:
        resp = await (await self._cold()).complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, IfNoneMatch="*",
            MultipartUpload={"Parts": [{"ETag": etag, "PartNumber": n} for n, etag in parts]})
        return str(resp.get("ETag", "")).strip('"')

    async def abort(self, key: str, upload_id: str) -> None:
        await (await self._cold()).abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                  UploadId=upload_id)

    async def list_uploads_page(self, prefix: str, marker: tuple[str, str] | None
                                ) -> tuple[list[PendingUpload], tuple[str, str] | None]:
        kwargs: dict[str, Any] = {"Prefix": prefix}
        if marker is not None:
            kwargs["KeyMarker"], kwargs["UploadIdMarker"] = marker
        resp = await (await self._cold()).list_multipart_uploads(Bucket=self.bucket, **kwargs)
        page = [PendingUpload(u["Key"], u["UploadId"],
                              u["Initiated"].timestamp() if u.get("Initiated") else 0.0)
                for u in resp.get("Uploads", [])]
        if not resp.get("IsTruncated"):
            return page, None
        return page, (resp.get("NextKeyMarker", ""), resp.get("NextUploadIdMarker", ""))

    async def list_parts_page(self, key: str, upload_id: str, marker: int | None
                              ) -> tuple[list[Part], int | None]:
        resp = await (await self._cold()).list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                             PartNumberMarker=marker or 0)
        page = [Part(int(p["PartNumber"]), str(p["ETag"]).strip('"'), int(p["Size"]))
                for p in resp.get("Parts", [])]
        return page, (int(resp["NextPartNumberMarker"]) if resp.get("IsTruncated") else None)

    def expected_etag(self, part_md5s: Sequence[bytes]) -> str:
        # S3's multipart ETag: the MD5 of the parts' MD5s, then "-" and the part count.
        return multipart_etag(part_md5s)


def _lock_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    """S3 Object Lock headers for a PUT, from the retention the metadata carries."""
    out = {}
    if metadata.get(UNTIL_META):
        out["x-amz-object-lock-mode"] = metadata[MODE_META]
        out["x-amz-object-lock-retain-until-date"] = f"{metadata[UNTIL_META]}T00:00:00Z"
    if metadata.get(HOLD_META):
        out["x-amz-object-lock-legal-hold"] = "ON"
    return out


def _lock_params(metadata: Mapping[str, str]) -> dict[str, Any]:
    """The same for CreateMultipartUpload."""
    out: dict[str, Any] = {}
    if metadata.get(UNTIL_META):
        out["ObjectLockMode"] = metadata[MODE_META]
        out["ObjectLockRetainUntilDate"] = datetime.fromisoformat(metadata[UNTIL_META]).replace(
            tzinfo=UTC)
    if metadata.get(HOLD_META):
        out["ObjectLockLegalHoldStatus"] = "ON"
    return out


def credentials_from(credentials: Any, profile: str | None) -> str:
    """Where botocore found the keys, as an operator would look for them."""
    method = getattr(credentials, "method", "") or ""
    if method == "env":
        return "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    name = profile or os.environ.get("AWS_PROFILE") or "default"
    if method == "shared-credentials-file":
        return f"profile {name!r} of ~/.aws/credentials"
    if method == "config-file":
        return f"profile {name!r} of ~/.aws/config"
    return f"botocore's {method or 'credential chain'}"
