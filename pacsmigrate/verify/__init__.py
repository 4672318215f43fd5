"""Verify a migration: the store still holds what was committed, and the sources still match."""

from __future__ import annotations

from .config import VerifyConfig
from .findings import MANIFEST_MISSING as MANIFEST_MISSING
from .findings import MEMBER_ALTERED as MEMBER_ALTERED
from .findings import MEMBER_UNREADABLE as MEMBER_UNREADABLE
from .findings import OBJECT_CHECKSUM as OBJECT_CHECKSUM
from .findings import OBJECT_MISSING as OBJECT_MISSING
from .findings import OBJECT_SIZE as OBJECT_SIZE
from .findings import SOURCE_CHANGED as SOURCE_CHANGED
from .findings import SOURCE_GONE as SOURCE_GONE
from .findings import SOURCE_NOT_INDEXED as SOURCE_NOT_INDEXED
from .findings import SOURCE_TOUCHED as SOURCE_TOUCHED
from .findings import SOURCE_UNREADABLE as SOURCE_UNREADABLE
from .findings import UNCOMMITTED_OBJECT as UNCOMMITTED_OBJECT
from .findings import WARNINGS, Finding
from .result import Counts, VerifyResult
from .run import verify

__all__ = ["WARNINGS", "Counts", "Finding", "VerifyConfig", "VerifyResult", "verify"]
