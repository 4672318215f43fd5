"""pacsmigrate: move PACS archives into object storage as per-study bundles, with an index."""

from __future__ import annotations

from .backends import Backend, MemoryBackend, ObjectInfo
from .config import Destination, MigrateConfig, TransferConfig, parse_size
from .errors import (
    BackendError,
    ConfigError,
    IntegrityError,
    NotInIndexError,
    ObjectExistsError,
    ObjectNotFoundError,
    PacsMigrateError,
    PermanentBackendError,
    SourceChangedError,
    SourceError,
    StateError,
    StateLockedError,
)
from .pipeline import Migration, migrate
from .retrieve import Archive, open_archive
from .stats import Stats
from .verify import VerifyConfig, VerifyResult, verify

__version__ = "0.1.0"

#: `async with pacsmigrate.open(state_dir) as archive: await archive.read(path)`
open = open_archive  # the documented name; shadows the builtin in this module only

__all__ = [
    "Archive",
    "Backend",
    "BackendError",
    "ConfigError",
    "Destination",
    "IntegrityError",
    "MemoryBackend",
    "MigrateConfig",
    "Migration",
    "NotInIndexError",
    "ObjectExistsError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "PacsMigrateError",
    "PermanentBackendError",
    "SourceChangedError",
    "SourceError",
    "StateError",
    "StateLockedError",
    "Stats",
    "TransferConfig",
    "VerifyConfig",
    "VerifyResult",
    "migrate",
    "open",
    "open_archive",
    "parse_size",
    "verify",
]
