"""Deterministic UIDs: namespaced 2.25 UIDs derived from text or integers."""

from __future__ import annotations

import hashlib
import uuid

from pydicom.uid import UID

# Namespaces every derived seed and UID so other generators never collide with ours.
_NS = "pacsmigrate.synth.v1"


def _uid_from_int(value: int) -> UID:
    # 2.25 UIDs are defined as the integer form of a UUID, so stamp v4 bits on.
    return UID(f"2.25.{uuid.UUID(int=value, version=4).int}")


def _derived_uid(text: str) -> UID:
    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
    return _uid_from_int(int.from_bytes(digest, "big"))


# Our own identity keeps output bytes stable across pydicom upgrades.
_IMPLEMENTATION_UID = _derived_uid(f"{_NS}:implementation")
_IMPLEMENTATION_VERSION = "PACSMIG_SYNTH_1"


def _instance_uid(series_uid: str, number: int) -> UID:
    return _derived_uid(f"{series_uid}:instance:{number}")
