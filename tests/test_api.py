"""The public library API is pinned: changing it is a decision, not an accident."""

from __future__ import annotations

import pacsmigrate
from pacsmigrate.errors import PacsMigrateError

PUBLIC = {
    "Archive", "Backend", "BackendError", "ConfigError", "Destination", "IntegrityError",
    "MemoryBackend", "MigrateConfig", "Migration", "NotInIndexError", "ObjectExistsError",
    "ObjectInfo", "ObjectNotFoundError", "PacsMigrateError", "PermanentBackendError",
    "SourceChangedError", "SourceError", "StateError", "StateLockedError", "Stats",
    "TransferConfig", "VerifyConfig", "VerifyResult", "migrate", "open", "open_archive",
    "parse_size", "verify",
}


def test_all_is_pinned_and_resolves() -> None:
    assert set(pacsmigrate.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(pacsmigrate, name) is not None


def test_every_public_error_is_in_the_tree() -> None:
    errors = [getattr(pacsmigrate, n) for n in PUBLIC if n.endswith("Error")]
    assert errors and all(issubclass(e, PacsMigrateError) for e in errors)
    doc = pacsmigrate.errors.__doc__ or ""
    for e in errors:
        assert e.__name__ in doc, f"{e.__name__} missing from the tree in errors.py"
