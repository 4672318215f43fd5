"""How Azure Blob failures are judged: retry (throttle or transient) or stop, and in which
words. azure-core's exceptions are imported lazily: the package loads without the SDK."""

from __future__ import annotations

from ..errors import (
    BackendError,
    ObjectArchivedError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentBackendError,
)
from .policy import THROTTLE, TRANSIENT, UNREACHED, Cause

PERMANENT_CODES = frozenset({
    "AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch",
    "InsufficientAccountPermissions", "AccountIsDisabled", "ContainerNotFound",
    "ContainerBeingDeleted", "ContainerDisabled", "Md5Mismatch", "InvalidMd5",
    "InvalidAuthenticationInfo"})
THROTTLE_CODES = frozenset({"ServerBusy", "OperationTimedOut", "IngressOverAccountLimit",
                            "EgressOverAccountLimit", "TpsOverAccountLimit"})


def code_of(exc: BaseException) -> str:
    """The storage error code (set by azure-storage on the errors it raises)."""
    code = getattr(exc, "error_code", None) or ""
    return str(getattr(code, "value", code))  # a StorageErrorCode enum, or a plain string


def _first_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return str(message).strip().splitlines()[0] if str(message).strip() else ""


def classify(exc: BaseException) -> Cause | None:
    """Which failures are worth another attempt, and under which label they are counted."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        DecodeError,
        HttpResponseError,
        IncompleteReadError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, ClientAuthenticationError):  # refused, or (no status) a key that
        return None  # cannot sign a request: never worth another attempt
    if isinstance(exc, (IncompleteReadError, DecodeError)) or (
            isinstance(exc, HttpResponseError) and exc.status_code is None):
        return Cause(TRANSIENT, "truncated response")  # a body cut short: read it again
    if isinstance(exc, HttpResponseError):
        status, code = exc.status_code or 0, code_of(exc)
        if code in PERMANENT_CODES:
            return None
        if code in THROTTLE_CODES or status in (429, 503):
            return Cause(THROTTLE, f"{status} {code}".strip())
        if status >= 500 or status == 408:
            return Cause(TRANSIENT, f"{status} {code}".strip())
        return None
    if isinstance(exc, ServiceRequestError):  # not sent: refused, no route, no such name
        return Cause(UNREACHED, "connection failed")
    if isinstance(exc, (ServiceResponseError, ConnectionError, TimeoutError)):
        return Cause(TRANSIENT, "connection failed")
    return None


def map_error(exc: BaseException, *, key: str | None, container: str) -> BackendError | None:
    """Translate azure-core's errors into the errors.py tree at this boundary (None for
    anything else: a bug is not a store error)."""
    from azure.core.exceptions import (
        AzureError,
        ClientAuthenticationError,
        HttpResponseError,
        ResourceExistsError,
        ResourceModifiedError,
        ResourceNotFoundError,
    )

    if not isinstance(exc, (AzureError, ConnectionError, TimeoutError)):
        return None
    code = code_of(exc)
    where = f"container {container!r}"
    if code == "ContainerNotFound":
        return PermanentBackendError(f"{where} does not exist: create it first", key=key)
    if code == "BlobArchived":
        return ObjectArchivedError(
            f"{key} is in the Archive tier: rehydrate it first (get or restore "
            "--request-restore, or az storage blob set-tier --tier Cool --rehydrate-priority "
            "Standard), then run the command again",
            key=key)
    if code in ("BlobAlreadyExists", "ConditionNotMet") or (
            isinstance(exc, (ResourceExistsError, ResourceModifiedError))
            and code not in PERMANENT_CODES and code != "ResourceTypeMismatch"):
        return ObjectExistsError(f"object exists: {key}", key=key)
    if isinstance(exc, ResourceNotFoundError):
        return ObjectNotFoundError(f"no such object: {key}", key=key)
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", 0) is None:
        return PermanentBackendError(  # the SDK's AzureSigningError: nothing was sent
            f"the Azure credentials cannot sign a request ({_first_line(exc) or 'no reason'})"
            ": check the account key (AccountKey, AZURE_STORAGE_KEY: base64 from the "
            "portal's Access keys)", key=key)
    if isinstance(exc, ClientAuthenticationError) or code in PERMANENT_CODES:
        hint = " (check the account key, SAS token or identity)" if (
            isinstance(exc, ClientAuthenticationError) or code.startswith("Auth")) else ""
        return PermanentBackendError(f"Azure refused ({code or 'denied'}) on {where}{hint}",
                                     key=key)
    if isinstance(exc, HttpResponseError) and exc.status_code:
        status, said = exc.status_code, _first_line(exc)
        if 400 <= status < 500 and status not in (408, 429):  # no retry fixes a refusal
            return PermanentBackendError(f"Azure refused ({status} {code}: {said}) on "
                                         f"{where}", key=key)
        return BackendError(f"Azure error ({status} {code}: {said}) on {where}", key=key)
    return BackendError(f"Azure request failed: {exc.__class__.__name__}: "
                        f"{_first_line(exc)}", key=key)
