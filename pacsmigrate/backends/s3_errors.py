"""How S3 failures are judged: retry (throttle or transient) or stop, and in which words."""

from __future__ import annotations

import asyncio
import re

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)

from ..errors import (
    BackendError,
    ObjectArchivedError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentBackendError,
)
from .policy import THROTTLE, TRANSIENT, Cause

# Error codes that no retry can fix: stop the run and tell the operator.
PERMANENT_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
    "BadDigest", "InvalidDigest", "AllAccessDisabled", "AccountProblem", "InvalidBucketName",
    "403",
})


THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
                            "RequestLimitExceeded", "ServiceUnavailable", "503", "429"})
TRANSIENT_CODES = frozenset({"InternalError", "RequestTimeout", "RequestTimeTooSkewed",
                             "500", "502", "504", "BadGateway", "GatewayTimeout"})


class TruncatedBodyError(Exception):
    """A response body ended before its declared length (retried like a reset)."""


def classify(exc: BaseException) -> Cause | None:
    """Which failures are worth another attempt, and under which label the report counts them."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in THROTTLE_CODES or status in ("503", "429"):
            return Cause(THROTTLE, f"{status or code} {code}".strip())
        if code in TRANSIENT_CODES or status in ("500", "502", "504"):
            return Cause(TRANSIENT, f"{status or code} {code}".strip())
        return None
    if isinstance(exc, (ReadTimeoutError, ConnectTimeoutError, asyncio.TimeoutError)):
        return Cause(TRANSIENT, "timeout")
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError)):
        return Cause(TRANSIENT, "connection failed")
    if isinstance(exc, (TruncatedBodyError, IncompleteReadError, ResponseStreamingError,
                        aiohttp.ClientPayloadError)):
        return Cause(TRANSIENT, "truncated response")
    if isinstance(exc, aiohttp.ClientSSLError):
        return None  # an untrusted certificate stays untrusted
    if isinstance(exc, (aiohttp.ClientError, ConnectionError)):
        return Cause(TRANSIENT, "connection reset")
    return None


_BOTO_RETRY_NOTE = re.compile(r" \(reached max retries: \d+\)")


STORE_ERRORS = (TimeoutError, ClientError, BotoCoreError, TruncatedBodyError, aiohttp.ClientError,
                ConnectionError)


def map_error(exc: BaseException, *, key: str | None) -> BackendError | None:
    """Translate botocore's and aiohttp's errors into the errors.py tree at this boundary
    (None for anything else: a bug is not a store error).

    botocore's own "(reached max retries: 0)" is dropped: its retries are off, ours counted.
    """
    if not isinstance(exc, STORE_ERRORS):
        return None
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        text = _BOTO_RETRY_NOTE.sub("", str(exc))
        if code in ("PreconditionFailed", "412"):
            return ObjectExistsError(f"object exists: {key}", key=key)
        if code == "NoSuchUpload":
            return ObjectNotFoundError(f"no such multipart upload for {key} (aborted?)",
                                       key=key)
        if code == "InvalidObjectState":  # a GET of an object in Glacier / Deep Archive
            return ObjectArchivedError(
                f"{key} is in a Glacier storage class: restore it first (get or restore "
                "--request-restore, or aws s3api restore-object), then run the command again",
                key=key)
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjectNotFoundError(f"no such object: {key}", key=key)
        if code in PERMANENT_CODES:
            return PermanentBackendError(f"store refused ({code}): {text}", key=key)
        return BackendError(f"store error ({code}): {text}", key=key)
    if (isinstance(exc, (SSLError, aiohttp.ClientSSLError))
            or "CERTIFICATE_VERIFY_FAILED" in str(exc)):
        return PermanentBackendError(
            f"TLS certificate not trusted ({exc}); give --ca-bundle for a private CA", key=key)
    return BackendError(f"store request failed: {exc}", key=key)
