"""S3's hot requests (PutObject, UploadPart, ranged GetObject) as signed aiohttp requests."""

from __future__ import annotations

import base64
import http.client
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ClientError, NoCredentialsError
from botocore.httpsession import ProxyConfiguration, create_urllib3_context, get_cert_path
from yarl import URL

from ..errors import ConfigError
from .base import epoch
from .body import Body, Checksum
from .s3_errors import TruncatedBodyError

EXPECT_CONTINUE = 1024 * 1024  # as botocore: larger bodies wait for `100 Continue`
MAX_ERROR_BODY = 64 * 1024


def tls_context(verify: str | bool) -> ssl.SSLContext:
    """The TLS context aiobotocore builds for `verify` (one CA file: --ca-bundle, else
    AWS_CA_BUNDLE or REQUESTS_CA_BUNDLE, else certifi's), with host names checked."""
    context: ssl.SSLContext = create_urllib3_context()
    context.check_hostname = True
    cafile = get_cert_path(verify)
    try:
        context.load_verify_locations(cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA certificates in {cafile}: {exc}") from exc
    return context


def bucket_url(bucket: str, endpoint_url: str | None, region: str, *,
               style: str | None = None) -> str:
    """Where the bucket's objects are. Path style (`ENDPOINT/BUCKET`) or virtual-hosted
    (`BUCKET.HOST`); by default path style under a custom endpoint (the only style local and
    private stores reliably resolve), virtual-hosted on AWS's regional endpoint.

    Not covered: AWS's FIPS / dual-stack / accelerate endpoints, the China partition
    (amazonaws.com.cn), access points and S3 Express buckets, and a bucket in another region
    than the client's (AWS answers 301 / AuthorizationHeaderMalformed: the run stops).
    """
    endpoint = (endpoint_url or f"https://s3.{region}.amazonaws.com").rstrip("/")
    if style is None:
        style = "path" if endpoint_url else "virtual"
    if style == "path" or "." in bucket:  # a dotted name breaks a wildcard certificate
        return f"{endpoint}/{quote(bucket, safe='')}"
    parts = urlsplit(endpoint)
    return urlunsplit((parts.scheme, f"{bucket}.{parts.netloc}", parts.path, "", ""))


class _UnsignedPayload(S3SigV4Auth):  # type: ignore[misc]
    """botocore's S3 SigV4 signer with `UNSIGNED-PAYLOAD` on every request.

    The body is protected by Content-MD5, which the store verifies and which is itself
    signed (a changed body would need the same MD5): a SHA-256 of it would hash every body
    a second time, which botocore does over plain http.
    """

    def _should_sha256_sign_payload(self, request: Any) -> bool:
        return False


class _Signer:
    """Credentials resolved once from the session, refreshed when they are refreshable."""

    def __init__(self, credentials: Any, region: str) -> None:
        self._credentials = credentials
        self._region = region
        self._refreshable = isinstance(credentials, RefreshableCredentials)
        self._frozen: Any = None
        self._auth: _UnsignedPayload | None = None

    async def auth(self) -> _UnsignedPayload:
        if self._credentials is None:
            raise NoCredentialsError()
        if self._auth is None or self._refreshable:
            frozen = await self._credentials.get_frozen_credentials()
            if frozen is not self._frozen:
                self._frozen = frozen
                self._auth = _UnsignedPayload(frozen, "s3", self._region)
        assert self._auth is not None
        return self._auth


class _BodyPayload(Payload):
    """aiohttp payload sending a Body slice by slice from the caller's buffer (no copy of
    the whole, no 16 MiB joined to the headers), marking progress for the watchdog."""

    def __init__(self, body: Body) -> None:
        super().__init__(body)
        self._size = body.size
        self._body = body

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a request body is bytes")

    async def write(self, writer: AbstractStreamWriter) -> None:
        for piece in self._body.pieces():
            await writer.write(piece)

    async def write_with_length(self, writer: AbstractStreamWriter,
                                content_length: int | None) -> None:
        await self.write(writer)


def client_error(status: int, body: bytes, operation: str) -> ClientError:
    """An S3 error answer as botocore's ClientError, so one judgement (s3_errors) and one
    wording serve both paths: `<Error><Code>` and `<Message>`, else the bare status."""
    code, message = str(status), http.client.responses.get(status, "")
    try:
        root = ET.fromstring(body) if body.strip() else None
    except ET.ParseError:
        root = None
    if root is not None and root.tag == "Error":
        code = (root.findtext("Code") or code).strip()
        message = (root.findtext("Message") or message).strip()
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


async def _read_into(content: aiohttp.StreamReader, declared: int) -> bytes:
    """A body of `declared` bytes read into one buffer made for it: aiohttp's read() holds
    its blocks and their join at once (twice the body: what a server of many range reads
    at once pays in memory). A body shorter or longer than declared is a truncation."""
    buf = bytearray(declared)
    view, got = memoryview(buf), 0
    async for block in content.iter_any():
        end = got + len(block)
        if end > declared:
            raise TruncatedBodyError(f"got more than the {declared} bytes declared")
        view[got:end] = block
        got = end
    if got != declared:
        raise TruncatedBodyError(f"got {got} of {declared} bytes")
    return buf  # type: ignore[return-value]  # bytes-like; copying it would undo the saving


async def _error_body(resp: aiohttp.ClientResponse) -> bytes:
    data = b""
    while len(data) < MAX_ERROR_BODY and (chunk := await resp.content.read(MAX_ERROR_BODY)):
        data += chunk
    return data[:MAX_ERROR_BODY]


class DataPath:
    """One shared aiohttp session to the bucket; requests signed with botocore's signer.

    Used for the few requests the migration sends by the thousand; everything else stays
    on aioboto3. No retries here (RetryBackend's policy is the only retry layer).
    """

    def __init__(self, *, base: str, region: str, credentials: Any, verify: str | bool,
                 pool: int, connect_timeout: float, read_timeout: float,
                 always: Mapping[str, str] | None = None) -> None:
        self.base = base.rstrip("/")
        self._always = dict(always or {})  # on every request: SSE-C's key headers
        self.host = urlsplit(self.base).netloc  # signed and sent as the Host header
        self._signer = _Signer(credentials, region)
        self._proxy = ProxyConfiguration().proxy_url_for(self.base)  # HTTP(S)_PROXY, as botocore
        # Plain http (a store on loopback or a private net) needs no TLS context: building
        # one loads a CA bundle, which costs as much as thousands of requests.
        tls: ssl.SSLContext | bool = (tls_context(verify) if self.base.startswith("https:")
                                      else False)
        connector = aiohttp.TCPConnector(limit=pool, ssl=tls)
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
            headers={"User-Agent": "pacsmigrate", "Accept-Encoding": "identity"},
            skip_auto_headers=("Content-Type",),  # as botocore: the store's default type
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                          sock_read=read_timeout))
        # aiohttp resends a PUT once on a dropped keep-alive connection, unseen; off, so
        # every attempt is counted and paced by the policy.
        self._session._retry_connection = False

    async def close(self) -> None:
        await self._session.close()

    def url(self, key: str, query: str = "") -> str:
        # RFC 3986 percent-encoding, "/" kept; S3 signs the path exactly as sent.
        return f"{self.base}/{quote(key, safe='/~')}{'?' if query else ''}{query}"

    async def _headers(self, method: str, url: str, headers: dict[str, str], *,
                       always: bool = True) -> dict[str, str]:
        if always:  # SSE-C's key: for writes and reads, not for a DELETE
            headers.update(self._always)
        headers["Host"] = self.host
        request = AWSRequest(method=method, url=url, headers=headers)
        (await self._signer.auth()).add_auth(request)
        return dict(request.headers.items())

    async def put(self, key: str, body: Body, *, checksum: Checksum, query: str = "",
                  headers: Mapping[str, str] | None = None, operation: str = "PutObject") -> str:
        """PUT body with its checksum for the store to check; the ETag of what it kept."""
        url = self.url(key, query)
        name = "Content-MD5" if checksum.algorithm == "md5" else "x-amz-checksum-crc32"
        signed = await self._headers("PUT", url, {
            name: base64.b64encode(checksum.digest).decode("ascii"), **(headers or {})})
        async with self._session.put(URL(url, encoded=True), data=_BodyPayload(body),
                                     headers=signed, proxy=self._proxy, allow_redirects=False,
                                     expect100=body.size > EXPECT_CONTINUE) as resp:
            if resp.status >= 300:
                raise client_error(resp.status, await _error_body(resp), operation)
            return resp.headers.get("ETag", "").strip('"')

    async def head(self, key: str) -> tuple[int, str, dict[str, str], float]:
        """(size, ETag, user metadata, Last-Modified as epoch seconds) of an object; a
        missing one is a 404 ClientError."""
        url = self.url(key)
        signed = await self._headers("HEAD", url, {})
        async with self._session.head(URL(url, encoded=True), headers=signed,
                                      proxy=self._proxy, allow_redirects=False) as resp:
            if resp.status >= 300:
                raise client_error(resp.status, b"", "HeadObject")
            meta = {k[11:].lower(): v for k, v in resp.headers.items()
                    if k.lower().startswith("x-amz-meta-")}
            return (int(resp.headers.get("Content-Length", 0)),
                    resp.headers.get("ETag", "").strip('"'), meta,
                    epoch(resp.headers.get("Last-Modified")))

    async def delete(self, key: str) -> None:
        """Delete the object (S3 answers 204 whether it existed or not)."""
        url = self.url(key)
        signed = await self._headers("DELETE", url, {}, always=False)
        async with self._session.delete(URL(url, encoded=True), headers=signed,
                                        proxy=self._proxy, allow_redirects=False) as resp:
            if resp.status >= 300 and resp.status != 404:
                raise client_error(resp.status, await _error_body(resp), "DeleteObject")

    async def get(self, key: str, *, offset: int, length: int | None) -> bytes:
        """The object's bytes, or length bytes from offset (one ranged GET)."""
        url = self.url(key)
        headers: dict[str, str] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        signed = await self._headers("GET", url, headers)
        # A redirect (AWS: the bucket is in another region) is an answer, not followed:
        # the signature is for this host, and the error names the problem.
        async with self._session.get(URL(url, encoded=True), headers=signed,
                                     proxy=self._proxy, allow_redirects=False) as resp:
            if resp.status >= 300:
                raise client_error(resp.status, await _error_body(resp), "GetObject")
            declared = resp.content_length
            if declared is None:
                return await resp.read()
            return await _read_into(resp.content, declared)
