"""How S3 failures are judged: retry (throttle or transient) or stop, and in which words."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

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
from .policy import THROTTLE, TRANSIENT, UNREACHED, Cause

# Error codes that no retry can fix: stop the run and tell the operator.
PERMANENT_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket",
    "BadDigest", "XAmzContentChecksumMismatch", "InvalidDigest", "AllAccessDisabled",
    "AccountProblem", "InvalidBucketName", "403",
})


THROTTLE_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests",
                            "RequestLimitExceeded", "ServiceUnavailable", "503", "429"})
TRANSIENT_CODES = frozenset({"InternalError", "RequestTimeout", "RequestTimeTooSkewed",
                             "500", "502", "504", "BadGateway", "GatewayTimeout"})


class TruncatedBodyError(Exception):
    """A response body ended before its declared length (retried like a reset)."""


def code_of(exc: ClientError) -> str:
    """The S3 error code of an answer ("" if it had none)."""
    return str(exc.response.get("Error", {}).get("Code", "") or "")


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
    if isinstance(exc, ConnectionClosedError):
        return Cause(TRANSIENT, "connection failed")
    if isinstance(exc, EndpointConnectionError):
        return Cause(UNREACHED, "connection failed")
    if isinstance(exc, (TruncatedBodyError, IncompleteReadError, ResponseStreamingError,
                        aiohttp.ClientPayloadError)):
        return Cause(TRANSIENT, "truncated response")
    if isinstance(exc, aiohttp.ClientSSLError):
        return None  # an untrusted certificate stays untrusted
    if isinstance(exc, aiohttp.ClientConnectorError):  # the lean data path's refused connect
        return Cause(UNREACHED, "connection failed")
    if isinstance(exc, (aiohttp.ClientError, ConnectionError)):
        return Cause(TRANSIENT, "connection reset")
    return None


_BOTO_RETRY_NOTE = re.compile(r" \(reached max retries: \d+\)")


@dataclass(frozen=True)
class Where:
    """What an error message names: the bucket, the endpoint's URL, where the keys came from."""

    bucket: str = ""
    endpoint: str = ""
    credentials: str = "the credentials"


# What to do about each refusal that no retry fixes, in the operator's words.
_FIXES = {
    "AccessDenied": "the credentials from {credentials} may not do this on bucket {bucket!r}: "
                    "they need s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject "
                    "on it (and no bucket policy denying them); use credentials that may, or "
                    "another --profile",
    "InvalidAccessKeyId": "{endpoint} does not know the access key ID from {credentials}: "
                          "check it, or give another --profile",
    "SignatureDoesNotMatch": "the secret key from {credentials} does not belong to its access "
                             "key ID (or --region does not match {endpoint}): check both",
    "NoSuchBucket": "bucket {bucket!r} does not exist at {endpoint}: create it (aws s3 mb "
                    "s3://{bucket}) or correct the name in DEST",
    "InvalidBucketName": "{bucket!r} is not a valid bucket name: correct DEST",
    "RequestTimeTooSkewed": "this machine's clock is more than 15 minutes away from the "
                            "store's: set the time (timedatectl set-ntp true), then run the "
                            "command again",
}
_FIXES["403"] = _FIXES["AllAccessDisabled"] = _FIXES["AccessDenied"]


STORE_ERRORS = (TimeoutError, ClientError, BotoCoreError, TruncatedBodyError, aiohttp.ClientError,
                ConnectionError)


def _told(exc: ClientError) -> str:
    """The Message of an S3 error answer, if it said one beyond its code."""
    message = str(exc.response.get("Error", {}).get("Message", "") or "")
    return message if message and message not in ("Access Denied", "Forbidden") else ""


def map_error(exc: BaseException, *, key: str | None,
              where: Where | None = None) -> BackendError | None:
    """Translate botocore's and aiohttp's errors into the errors.py tree at this boundary
    (None for anything else: a bug is not a store error). Refusals that no retry fixes and
    failures to reach the store say what to do about them, naming `where`.

    botocore's own "(reached max retries: 0)" is dropped: its retries are off, ours counted.
    """
    if not isinstance(exc, STORE_ERRORS):
        return None
    where = where or Where()
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        text = _BOTO_RETRY_NOTE.sub("", str(exc))
        fix = _FIXES.get(code)
        if fix is not None:
            said = fix.format(bucket=where.bucket, endpoint=where.endpoint or "the store",
                              credentials=where.credentials)
            kind = PermanentBackendError if code in PERMANENT_CODES else BackendError
            told = _told(exc)  # the store's own words (KMS, a bucket policy, object lock)
            return kind(f"store refused ({code}): {said}" + (f" [the store said: {told}]"
                                                            if told else ""),
                        key=key, code=code)
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
            return PermanentBackendError(f"store refused ({code}): {text}", key=key, code=code)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        said = f"{status} {code}" if status and str(status) != code else code
        if code in ("400", "BadRequest") and exc.operation_name in ("HeadObject", "GetObject"):
            # A HEAD's answer has no body to say why: what it most often means for us.
            return PermanentBackendError(
                f"store error ({said}) reading {key}: an object encrypted with your own key "
                "(SSE-C) answers so to a read without it (give --sse-c-key-file FILE), and so "
                "does a request signed for another region (check --region)", key=key, code=code)
        return BackendError(f"store error ({said}): {text}", key=key, code=code)
    if (isinstance(exc, (SSLError, aiohttp.ClientSSLError))
            or "CERTIFICATE_VERIFY_FAILED" in str(exc)):
        return PermanentBackendError(
            f"TLS certificate not trusted ({exc}); give --ca-bundle (or AWS_CA_BUNDLE) for a "
            "private CA", key=key)
    if isinstance(exc, (EndpointConnectionError, aiohttp.ClientConnectorError)):
        return BackendError(
            f"cannot connect to {where.endpoint or 'the store'} ({exc}): check --endpoint-url, "
            "that the store is running, and that this machine may reach it", key=key,
            code="connect")
    if isinstance(exc, (TimeoutError, ReadTimeoutError, ConnectTimeoutError)):
        return BackendError(
            f"{where.endpoint or 'the store'} did not answer in time: check the store and the "
            "network (--timeout sets how long one request may take)", key=key,
            code="timeout")
    return BackendError(f"store request failed: {exc}", key=key)
