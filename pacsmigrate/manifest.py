"""The JSON manifest of a stored object, and the index rows derived from it."""

from __future__ import annotations

import json
import tarfile
from typing import Any

from .paths import from_fields, path_fields
from .records import BundlePlan, Catalogued, now_iso

FORMAT = "pacsmigrate.manifest/1"
MANIFEST_DIR = "pacsmigrate-manifests"

# Columns every index row carries, in export order.
ROW_FIELDS = ("source_path", "source_path_b64", "key", "offset", "length", "blake3",
              "study_uid", "series_uid", "sop_uid", "modality", "study_date",
              "transfer_syntax", "size", "mtime_ns", "status", "reason")


def member_entry(rec: Catalogued, *, name: str, offset: int, length: int,
                 digest: str) -> dict[str, Any]:
    """One member as the manifest records it: where its bytes are and what they are."""
    return {
        "name": name, **path_fields(rec.path), "offset": offset, "length": length,
        "blake3": digest, "size": rec.size, "mtime_ns": rec.mtime_ns,
        "study_uid": rec.study_uid, "series_uid": rec.series_uid, "sop_uid": rec.sop_uid,
        "modality": rec.modality, "study_date": rec.study_date,
        "transfer_syntax": rec.transfer_syntax, "status": rec.status, "reason": rec.reason,
    }


def manifest_name(bundle_id: str) -> str:
    return f"{MANIFEST_DIR}/{bundle_id}.json"


def build(plan: BundlePlan, members: list[dict[str, Any]]) -> bytes:
    doc = {
        "format": FORMAT, "key": plan.key, "kind": plan.kind, "group": plan.group,
        "bundle_id": plan.bundle_id,
        "created": now_iso(),
        "members": members,
    }
    return json.dumps(doc, ensure_ascii=True, indent=0, sort_keys=False).encode()


def parse(data: bytes) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(data)
    if doc.get("format") != FORMAT:
        raise ValueError(f"not a pacsmigrate manifest: format={doc.get('format')!r}")
    return doc


def rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Index rows (one per source file) of a manifest."""
    out = []
    for m in doc["members"]:
        row = {f: m.get(f, "") for f in ROW_FIELDS}
        row["key"] = doc["key"]
        row["path_hex"] = from_fields(m["source_path"], m["source_path_b64"]).hex()
        out.append(row)
    return out


def find_in_tar_tail(tail: bytes, bundle_id: str) -> bytes | None:
    """Find the manifest member in the last bytes of a bundle, walking back 512-byte blocks.

    Used after a crash between the bundle's upload and its sidecar's: tar headers carry
    their own checksum, so a block that parses as our manifest's header is one.
    """
    want = manifest_name(bundle_id)
    # A tar's length is a multiple of 512, so block boundaries sit at multiples of 512 from
    # the end, whatever offset the tail was read from.
    for pos in range(len(tail) - 512, -1, -512):
        block = tail[pos:pos + 512]
        if want.encode() not in block[:100]:
            continue
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            continue
        if info.name == want and pos + 512 + info.size <= len(tail):
            return tail[pos + 512: pos + 512 + info.size]
    return None
