"""pacsmigrate: move PACS archives into object storage as per-study bundles, with an index."""

from __future__ import annotations

from .backends import Backend, MemoryBackend, ObjectInfo
from .config import Destination, MigrateConfig, TransferConfig, parse_size
from .errors import (
    BackendError,
    ConfigError,
    IntegrityError,
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
from .stats import Stats

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "ConfigError",
    "Destination",
    "IntegrityError",
    "MemoryBackend",
    "MigrateConfig",
    "Migration",
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
    "migrate",
    "parse_size",
]
