"""Azure Blob pieces the store uses: credentials from a connection string, what a write
sets beside the bytes (tier, tags, immutability), metadata names, block IDs, and the body
as the file-like object the SDK reads."""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..errors import ConfigError
from ..retention import HOLD_META, MODE_META, UNTIL_META
from ..tiers import CLASS_META, tags
from .body import Body

ETAG_META = "pacsmigrate_etag"


def conn_credential(conn: str) -> Any:
    """The account key or SAS of a connection string, for a client given its own endpoint."""
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential

    parts = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
    if parts.get("AccountName") and parts.get("AccountKey"):
        return AzureNamedKeyCredential(parts["AccountName"], parts["AccountKey"])
    if parts.get("SharedAccessSignature"):
        return AzureSasCredential(parts["SharedAccessSignature"].lstrip("?"))
    raise ConfigError("AZURE_STORAGE_CONNECTION_STRING holds neither AccountName with "
                      "AccountKey nor SharedAccessSignature")


def tier(metadata: Mapping[str, str]) -> Any:
    """The access tier (Hot, Cool, Cold, Archive) the object's class names, if any."""
    from azure.storage.blob import StandardBlobTier

    name = metadata.get(CLASS_META)
    return StandardBlobTier(name) if name else None


def write_args(metadata: Mapping[str, str]) -> dict[str, Any]:
    """What a blob's writing request sets beside its bytes: access tier, index tags, and the
    retention the metadata asks for (version-level immutability: GOVERNANCE is an unlocked
    policy, which an authorised user may shorten; COMPLIANCE a locked one)."""
    out: dict[str, Any] = {"standard_blob_tier": tier(metadata),
                           "tags": tags(metadata) or None}
    if metadata.get(UNTIL_META):
        from azure.storage.blob import ImmutabilityPolicy

        until = datetime.fromisoformat(metadata[UNTIL_META]).replace(tzinfo=UTC)
        out["immutability_policy"] = ImmutabilityPolicy(
            expiry_time=until,
            policy_mode="Locked" if metadata.get(MODE_META) == "COMPLIANCE" else "Unlocked")
    if metadata.get(HOLD_META):
        out["legal_hold"] = True
    return out


def meta_out(metadata: Mapping[str, str]) -> dict[str, str]:
    # Azure metadata names are C# identifiers: ours use '-', stored as '_'.
    return {k.replace("-", "_"): v for k, v in metadata.items()}


def meta_in(metadata: Mapping[str, str] | None) -> dict[str, str]:
    return {k.replace("_", "-"): v for k, v in (metadata or {}).items()
            if k != ETAG_META}


def blob_etag(props: Any) -> str:
    """The content hash a blob carries: its Content-MD5, or the block rule in its metadata."""
    md5 = props.content_settings.content_md5 if props.content_settings else None
    if md5:
        return bytes(md5).hex()
    return str((props.metadata or {}).get(ETAG_META, ""))


def block_id(upload_id: str, number: int, md5_hex: str) -> str:
    # Every block ID of a blob has the same length (55 of the 64 allowed; the SDK encodes
    # it in base64); the part's MD5 rides in it, so the blocks a killed run staged can be
    # checked and kept (Azure lists block IDs and sizes only).
    return f"{upload_id}.{number:05d}.{md5_hex}"


def parse_block_id(block_id: str) -> tuple[str, int, str] | None:
    try:
        upload_id, number, md5 = block_id.split(".")
        return upload_id, int(number), md5
    except ValueError:
        return None  # staged by another tool


class Stream(io.RawIOBase):
    """A body as the file-like object the SDK and aiohttp read in slices, marking progress
    for the stall watchdog. A retry of the whole request builds a fresh one from the Body."""

    def __init__(self, body: Body) -> None:
        super().__init__()
        self._body = body
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        body, start = self._body, self._pos
        end = body.size if size is None or size < 0 else min(body.size, start + size)
        self._pos = end
        body.touched = time.monotonic()
        if end >= body.size:
            body.sent = True
        return bytes(body.view[start:end])
