"""Azure Blob Storage (and Azurite): block blobs through azure-storage-blob's aio client.

Single attempts only (the SDK's retries are off; RetryBackend decides). A small object is one
Put Blob with Content-MD5, which Azure checks; a large one is staged as blocks in parallel,
each with its Content-MD5, then committed as a block list that sets the blob's Content-MD5
to the whole object's. Writes never overwrite (If-None-Match: *). Azure ETags are not
content hashes, so the ETag this store reports is the blob's Content-MD5 (or, for a blob
committed without one, S3's rule over its blocks' MD5s, kept in its metadata).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..config import AzureOptions, Destination, MiB, TransferConfig
from ..errors import (
    BackendError,
    ConfigError,
)
from ..ssec import customer_key
from .azure_blob import (
    ETAG_META,
    Stream,
    blob_etag,
    block_id,
    conn_credential,
    meta_in,
    meta_out,
    parse_block_id,
    write_args,
)
from .azure_errors import classify, code_of, map_error
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
from .limits import AZURE
from .policy import Cause

LIMITS = AZURE.limits



class AzureStore:
    """Primitives and ChunkedWriter (base.py) for one container.

    Credentials, in order: AZURE_STORAGE_CONNECTION_STRING; AZURE_STORAGE_ACCOUNT with
    AZURE_STORAGE_KEY (account key) or AZURE_STORAGE_SAS_TOKEN; else azure-identity's
    DefaultAzureCredential (managed identity, az login, environment) when installed.
    Unfinished block lists need no cleanup: Azure drops uncommitted blocks after 7 days,
    and a commit keeps only the blocks it names.
    """

    scheme = "az"
    uploads_expire = True  # nothing for `cleanup` to do: the store drops them itself
    wants_content_md5 = True  # a blob committed from blocks gets the whole object's MD5

    def __init__(self, dest: Destination, transfer: TransferConfig) -> None:
        self.dest = dest
        self.transfer = transfer
        self._service: Any = None
        self._container: Any = None
        self._credential: Any = None
        self._read: dict[str, Any] = {}  # a customer-provided key, on every request
        self._write: dict[str, Any] = {}  # ... and the encryption scope, on writes

    async def open(self) -> AzureStore:
        from azure.storage.blob.aio import BlobServiceClient

        t = self.transfer
        options: dict[str, Any] = {
            "retry_total": 0, "connection_timeout": t.connect_timeout,
            "read_timeout": t.read_timeout, "max_single_put_size": 4000 * MiB,
            "max_block_size": 4000 * MiB}
        ca = t.ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE")
        if ca:
            options["connection_verify"] = str(ca)
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if conn and self.dest.endpoint_url:
            # The https://ACCOUNT.blob.core.windows.net form (or --endpoint-url) names the
            # endpoint; the connection string then only lends its credentials.
            self._service = BlobServiceClient(self.dest.endpoint_url,
                                              credential=conn_credential(conn), **options)
        elif conn:
            try:
                self._service = BlobServiceClient.from_connection_string(conn, **options)
            except ValueError as exc:  # the SDK's words, which never quote the secret
                raise ConfigError(f"AZURE_STORAGE_CONNECTION_STRING: {exc} (expected "
                                  "DefaultEndpointsProtocol=https;AccountName=...;"
                                  "AccountKey=...)") from None
        else:
            self._service = BlobServiceClient(self._account_url(), credential=self._credentials(),
                                              **options)
        self._container = self._service.get_container_client(self.dest.bucket)
        self._encryption(self.dest.azure or AzureOptions(), self._service.url)
        return self

    def _encryption(self, opts: AzureOptions, url: str) -> None:
        """The keyword arguments that encrypt (and read) blobs as `opts` asks."""
        if opts.cpk_md5:
            from azure.storage.blob import CustomerProvidedEncryptionKey

            if not url.startswith("https:"):
                raise ConfigError("a customer-provided key (--sse-c-key-file) goes over HTTPS "
                                  f"only, and {self.dest} is reached over plain HTTP")
            key = customer_key(opts.cpk_key_file, opts.cpk_md5)
            self._read["cpk"] = CustomerProvidedEncryptionKey(
                base64.b64encode(key.key).decode(), key.sha256)
        self._write = dict(self._read)
        if opts.encryption_scope:
            self._write["encryption_scope"] = opts.encryption_scope

    def _account_url(self) -> str:
        if self.dest.endpoint_url:
            return self.dest.endpoint_url
        account = os.environ.get("AZURE_STORAGE_ACCOUNT")
        if not account:
            raise ConfigError(
                f"which storage account holds container {self.dest.bucket!r}? Give "
                "https://ACCOUNT.blob.core.windows.net/CONTAINER as DEST, or set "
                "AZURE_STORAGE_ACCOUNT, or AZURE_STORAGE_CONNECTION_STRING")
        return f"https://{account}.blob.core.windows.net"

    def _credentials(self) -> Any:
        account = os.environ.get("AZURE_STORAGE_ACCOUNT", "")
        key, sas = os.environ.get("AZURE_STORAGE_KEY"), os.environ.get("AZURE_STORAGE_SAS_TOKEN")
        if key:
            from azure.core.credentials import AzureNamedKeyCredential

            if not account:
                raise ConfigError("AZURE_STORAGE_KEY needs AZURE_STORAGE_ACCOUNT (its name)")
            return AzureNamedKeyCredential(account, key)
        if sas:
            from azure.core.credentials import AzureSasCredential

            return AzureSasCredential(sas.lstrip("?"))
        try:
            from azure.identity.aio import DefaultAzureCredential
        except ImportError:
            raise ConfigError(
                "no Azure credentials: set AZURE_STORAGE_CONNECTION_STRING, or "
                "AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, or "
                "`pip install azure-identity` for a managed identity") from None
        self._credential = DefaultAzureCredential()
        return self._credential

    async def close(self) -> None:
        if self._service is not None:
            await self._service.close()
        if self._credential is not None:
            await self._credential.close()

    def part_size(self, size_hint: int) -> int:
        return adjust_part_size(LIMITS, self.transfer.part_size, size_hint)

    def classify(self, exc: BaseException) -> Cause | None:
        return classify(exc)

    def map_error(self, exc: BaseException, *, key: str | None) -> BackendError | None:
        return map_error(exc, key=key, container=self.dest.bucket)

    def _blob(self, key: str) -> Any:
        return self._container.get_blob_client(key)

    # -- objects ---------------------------------------------------------------------
    async def put(self, key: str, body: Body, *, checksum: Checksum,
                  metadata: Mapping[str, str]) -> str:
        from azure.storage.blob import ContentSettings

        # Azure checks Content-MD5 (not CRC32): a body sent with another checksum gets one.
        md5 = checksum.digest if checksum.algorithm == "md5" else hashlib.md5(body.view).digest()
        await self._blob(key).upload_blob(
            Stream(body), length=body.size, overwrite=False, metadata=meta_out(metadata),
            **write_args(metadata),
            content_settings=ContentSettings(content_md5=bytearray(md5)),
            headers={"Content-MD5": base64.b64encode(md5).decode()}, **self._write)
        return md5.hex()

    async def get(self, key: str, *, offset: int, length: int | None) -> bytes:
        # A read of the whole blob asks for no range (an empty blob has none to give).
        whole = offset == 0 and length is None
        stream = await self._blob(key).download_blob(offset=None if whole else offset,
                                                     length=length, **self._read)
        data: bytes = await stream.readall()
        return data

    async def head(self, key: str) -> ObjectInfo:
        props = await self._blob(key).get_blob_properties(**self._read)
        return ObjectInfo(key, int(props.size), blob_etag(props), meta_in(props.metadata),
                          epoch(props.last_modified))

    async def request_restore(self, key: str, *, days: int, priority: str) -> str:
        """Rehydrate an Archive-tier blob to Cool (Rehydrating): cheaper to keep than Hot
        for a study read again once; the tier policy's lifecycle rule moves it back."""
        props = await self._blob(key).get_blob_properties(**self._read)
        if props.archive_status:  # rehydrate-pending-to-cool / -to-hot
            return IN_PROGRESS
        if str(props.blob_tier) != "Archive":
            return READY
        await self._blob(key).set_standard_blob_tier(
            "Cool", rehydrate_priority="High" if priority == "High" else "Standard")
        return REQUESTED

    async def list_page(self, prefix: str, token: str | None
                        ) -> tuple[list[ObjectInfo], str | None]:
        pages = self._container.list_blobs(name_starts_with=prefix or None,
                                           include=["metadata"]).by_page(continuation_token=token)
        page = await anext(pages, None)
        if page is None:
            return [], None
        items = [ObjectInfo(b.name, int(b.size), blob_etag(b), meta_in(b.metadata),
                            epoch(b.last_modified)) async for b in page]
        return items, (pages.continuation_token or None)

    async def delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            await self._blob(key).delete_blob()
        except ResourceNotFoundError as exc:
            if code_of(exc) == "ContainerNotFound":
                raise
            # Absent already: not an error (as S3's DeleteObject)

    # -- block blobs (ChunkedWriter) -------------------------------------------------
    creates_nothing = True  # create_upload sends no request (multipart.py does not count it)

    async def create_upload(self, key: str, *, metadata: Mapping[str, str]) -> str:
        return os.urandom(8).hex()  # nothing to create: blocks are staged against the key

    async def upload_part(self, key: str, upload_id: str, number: int, body: Body, *,
                          md5: bytes) -> str:
        await self._blob(key).stage_block(
            block_id(upload_id, number, md5.hex()), Stream(body), length=body.size,
            headers={"Content-MD5": base64.b64encode(md5).decode()}, **self._write)
        return md5.hex()

    async def complete_upload(self, key: str, upload_id: str,
                              parts: Sequence[tuple[int, str]], *,
                              metadata: Mapping[str, str] | None = None,
                              content_md5: bytes | None = None) -> str:
        from azure.core import MatchConditions
        from azure.storage.blob import BlobBlock, ContentSettings

        blocks = [BlobBlock(block_id(upload_id, n, e)) for n, e in parts]
        meta, written = meta_out(metadata or {}), write_args(metadata or {})
        if content_md5 is not None:  # the blob's MD5, as a single Put Blob would have it
            await self._blob(key).commit_block_list(
                blocks, metadata=meta, match_condition=MatchConditions.IfMissing,
                content_settings=ContentSettings(content_md5=bytearray(content_md5)),
                **written, **self._write)
            return content_md5.hex()
        etag = multipart_etag([bytes.fromhex(e) for _, e in parts])
        await self._blob(key).commit_block_list(blocks, metadata={**meta, ETAG_META: etag},
                                                match_condition=MatchConditions.IfMissing,
                                                **written, **self._write)
        return etag

    async def object_lock_enabled(self) -> bool:
        """Whether the container takes retention (version-level immutability support)."""
        props = await self._container.get_container_properties()
        return bool(getattr(props, "immutable_storage_with_versioning_enabled", False))

    async def abort(self, key: str, upload_id: str) -> None:
        return None  # uncommitted blocks are dropped by Azure (7 days) or by the next commit

    async def list_uploads_page(self, prefix: str, marker: tuple[str, str] | None
                                ) -> tuple[list[PendingUpload], tuple[str, str] | None]:
        """The block lists staged against exactly `prefix` as a key (resume asks per key).

        Azure keeps no start time for them: `initiated` is the number of blocks staged, so
        the upload that got furthest sorts last, and is the one resumed.
        """
        staged = Counter(upload_id for upload_id, *_ in await self._uncommitted(prefix))
        return [PendingUpload(prefix, u, float(n)) for u, n in sorted(staged.items())], None

    async def _uncommitted(self, key: str) -> list[tuple[str, int, str, int]]:
        from azure.core.exceptions import ResourceNotFoundError

        if not key:
            return []
        try:
            _, uncommitted = await self._blob(key).get_block_list("uncommitted")
        except ResourceNotFoundError as exc:
            if code_of(exc) == "ContainerNotFound":
                raise
            return []
        out = []
        for block in uncommitted:
            parsed = parse_block_id(block.id)
            if parsed is not None:
                out.append((*parsed, int(block.size)))
        return out

    async def list_parts_page(self, key: str, upload_id: str, marker: int | None
                              ) -> tuple[list[Part], int | None]:
        parts = [Part(n, md5, size) for u, n, md5, size in await self._uncommitted(key)
                 if u == upload_id]
        return sorted(parts, key=lambda p: p.number), None

    def expected_etag(self, part_md5s: Sequence[bytes]) -> str:
        return multipart_etag(part_md5s)
