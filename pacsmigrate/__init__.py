"""pacsmigrate: move PACS archives into object storage as per-study bundles, with an index.

The public names load on first use, so `python -m pacsmigrate.walk` or one CLI command
imports only what it needs (the S3 client and pydicom are not free to import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Backend": "backends", "MemoryBackend": "backends", "ObjectInfo": "backends",
    "Destination": "config", "MigrateConfig": "config", "TransferConfig": "config",
    "parse_size": "config",
    "BackendError": "errors", "ConfigError": "errors", "IntegrityError": "errors",
    "NotInIndexError": "errors", "ObjectExistsError": "errors",
    "ObjectNotFoundError": "errors", "PacsMigrateError": "errors",
    "PermanentBackendError": "errors", "SourceChangedError": "errors",
    "SourceError": "errors", "StateError": "errors", "StateLockedError": "errors",
    "Migration": "pipeline", "migrate": "pipeline",
    "Archive": "retrieve", "open_archive": "retrieve", "open": "retrieve",
    "Stats": "stats",
    "VerifyConfig": "verify", "VerifyResult": "verify", "verify": "verify",
}

if TYPE_CHECKING:
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
    from .retrieve import open_archive as open
    from .stats import Stats
    from .verify import VerifyConfig, VerifyResult, verify


def __getattr__(name: str) -> Any:
    """`pacsmigrate.open(state_dir)` is open_archive: `async with pacsmigrate.open(d) as a`."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pacsmigrate' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__),
                    "open_archive" if name == "open" else name)
    globals()[name] = value
    return value


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
