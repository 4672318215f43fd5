"""Exceptions raised by pacsmigrate, one tree rooted at PacsMigrateError.

    PacsMigrateError
    ├── ConfigError            bad command-line or config value (the user can fix it)
    ├── StateError             the state directory is unusable
    │   └── StateLockedError   another run holds the state directory
    ├── IntegrityError         bytes read back differ from the index's blake3
    ├── NotInIndexError        no index row for that path or SOPInstanceUID
    ├── SourceError            a source file could not be read as planned (carries .path)
    │   └── SourceChangedError the file changed while it was being read
    ├── ReadProcessError       the read process (--read-process) failed or died
    └── BackendError           the store refused or failed a request (carries .key)
        ├── PermanentBackendError  retrying cannot help (403, NoSuchBucket, bad digest)
        │   ├── ObjectNotFoundError    the key does not exist
        │   └── ObjectArchivedError    the object is in a cold tier: restore it first
        └── ObjectExistsError      a conditional write found the key already present

Lower-layer errors (OSError, botocore's ClientError, lmdb.Error) are mapped to these at the
module boundary that sees them, so callers never import a third-party exception type.
"""

from __future__ import annotations


class PacsMigrateError(Exception):
    """Base of every error pacsmigrate raises on purpose."""


class ConfigError(PacsMigrateError):
    """A command-line or configuration value is invalid."""


class StateError(PacsMigrateError):
    """The state directory cannot be opened or is inconsistent."""


class StateLockedError(StateError):
    """Another pacsmigrate process holds the lock on the state directory."""


class NoRoomToCompactError(StateError):
    """The state's file system has no room for its compacted copy: left as it was."""


class IntegrityError(PacsMigrateError):
    """Bytes read back from the store do not match the blake3 the index recorded."""


class NotInIndexError(PacsMigrateError):
    """The index has no row for the path or SOPInstanceUID asked for."""


class SourceError(PacsMigrateError):
    """A source file could not be read as planned."""

    def __init__(self, message: str, *, path: bytes = b"") -> None:
        super().__init__(message)  # path has a default so the error pickles (Dask workers)
        self.path = path


class SourceChangedError(SourceError):
    """The source file's size or mtime changed while it was being read."""


class ReadProcessError(PacsMigrateError):
    """The read process (`--read-process`) failed or stopped before the walk was done."""


class BackendError(PacsMigrateError):
    """The object store failed a request."""

    def __init__(self, message: str, *, key: str | None = None, code: str = "") -> None:
        super().__init__(message)
        self.key = key
        self.code = code  # the store's error code (AccessDenied, NoSuchBucket, ...), if any


class PermanentBackendError(BackendError):
    """The store refused a request in a way retrying cannot fix."""


class ObjectNotFoundError(PermanentBackendError):
    """The object asked for does not exist."""


class ObjectArchivedError(PermanentBackendError):
    """The object lies in a cold tier (S3 Glacier / Deep Archive, Azure Archive) and must be
    restored (rehydrated) before it can be read."""


class ObjectExistsError(BackendError):
    """A write that must not overwrite found the key already present."""


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a task group: our own errors first, then any other leaf.

    Task groups wrap failures in ExceptionGroup; callers of the library get the plain error.
    """
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    ours = [e for e in leaves if isinstance(e, PacsMigrateError)]
    return (ours or leaves)[0]
