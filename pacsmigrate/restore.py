"""Restore a study, a path prefix or everything to a directory, verified and resumable."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .access import Opened
from .backends.base import Backend, Rehydrating
from .errors import ConfigError, IntegrityError, ObjectArchivedError, ObjectNotFoundError
from .fanout import workers
from .paths import from_fields, member_name, shown
from .progress import Bar
from .retrieve import save_verified
from .source import hash_file


@dataclass(frozen=True)
class Selection:
    """Which index rows to restore: one study, a source-path prefix, or all."""

    study_uid: str | None = None
    path_prefix: bytes | None = None
    everything: bool = False

    def __post_init__(self) -> None:
        chosen = sum((self.study_uid is not None, self.path_prefix is not None, self.everything))
        if chosen != 1:
            raise ConfigError("choose exactly one of --study, --path-prefix, --all")

    def matches(self, row: dict[str, Any], path: bytes) -> bool:
        if self.everything:
            return True
        if self.study_uid is not None:
            return bool(row["study_uid"] == self.study_uid)
        assert self.path_prefix is not None
        return path.startswith(self.path_prefix)


@dataclass(frozen=True)
class RestoreRequest:
    """Ask the store to restore archived objects (S3 Glacier, Azure Archive) when a read
    finds them there; the next run reads them once they are ready."""

    days: int = 7  # S3: how long the restored copy stays readable
    priority: str = "Standard"  # Bulk, Standard or High (S3 Expedited)


@dataclass
class RestoreResult:
    restored: int = 0
    already_present: int = 0
    replaced: int = 0  # of those restored: a file of other bytes was at the target
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    archived: Counter[str] = field(default_factory=Counter)  # object key -> files in it
    requests: Counter[str] = field(default_factory=Counter)  # request status -> objects

    @property
    def selected(self) -> int:
        return (self.restored + self.already_present + len(self.failed)
                + sum(self.archived.values()))


def _rows(opened: Opened, sel: Selection) -> Iterator[tuple[bytes, dict[str, Any]]]:
    for _, row in opened.cp.iter_db("index"):
        path = from_fields(row["source_path"], row["source_path_b64"])
        if sel.matches(row, path):
            yield path, row


def target_for(to: Path, path: bytes, strip: bytes = b"") -> Path:
    """The original path recreated under `to` (as tar extracts it), never outside `to`;
    with `strip`, that leading part of the path left out (/mnt/pacs/2015/a.dcm with strip
    /mnt/pacs: TO/2015/a.dcm)."""
    target = to / member_name(path[len(strip):] if strip else path)
    if not target.resolve().is_relative_to(to.resolve()):
        raise ConfigError(f"refusing to restore outside {to}: {shown(path)}")
    return target


def _present(target: Path, row: dict[str, Any]) -> bool | None:
    """True: already restored by an earlier run, same size and same blake3 (resume skips
    it); False: nothing there; None: a file of other bytes is there (replaced, and said)."""
    try:
        if target.stat().st_size != int(row["size"]):  # the file's (a zstd frame's differs)
            return None
        with open(target, "rb") as f:
            digest, _ = hash_file(f)
    except FileNotFoundError:
        return False
    return True if digest == row["blake3"] else None


async def request_restores(backend: Backend, keys: Iterable[str], request: RestoreRequest
                           ) -> Counter[str]:
    """Ask the store to restore each archived object; how many objects got each answer."""
    if not isinstance(backend, Rehydrating):
        raise ConfigError("this store cannot restore archived objects")
    out: Counter[str] = Counter()
    for key in keys:
        out[await backend.request_restore(key, days=request.days,
                                          priority=request.priority)] += 1
    return out


async def restore(opened: Opened, sel: Selection, to: Path, *, concurrency: int = 8,
                  progress: bool = False, request: RestoreRequest | None = None,
                  strip_prefix: bytes = b"") -> RestoreResult:
    """Recreate the selected files byte-identical under `to` (their paths without
    `strip_prefix`, which every selected file must start with); re-running resumes. Files
    in archived objects are counted (and, with `request`, their restore is asked for)."""
    strip = strip_prefix.rstrip(b"/") + b"/" if strip_prefix else b""
    total_files = total_bytes = outside = 0
    for path, row in _rows(opened, sel):
        total_files += 1
        total_bytes += int(row["length"])
        outside += bool(strip) and not path.startswith(strip)
    if outside:
        raise ConfigError(f"{outside:,} of the {total_files:,} selected files do not lie "
                          f"under --strip-prefix {shown(strip_prefix)}: narrow the "
                          f"selection (--path-prefix {shown(strip)}) or shorten the prefix")
    result = RestoreResult()
    bar = Bar("restore", total_bytes=total_bytes, total_files=total_files, enabled=progress)

    async def one(item: tuple[bytes, dict[str, Any]]) -> None:
        path, row = item
        try:
            target = target_for(to, path, strip)
            there = await asyncio.to_thread(_present, target, row)
            if there:
                result.already_present += 1
            else:
                saved = await save_verified(opened.backend, row, target)
                result.bytes += saved  # (not `+= await`: that reads the total before it)
                result.restored += 1
                result.replaced += there is None
        except ObjectArchivedError:
            result.archived[row["key"]] += 1
        except (IntegrityError, ObjectNotFoundError, ConfigError, OSError) as exc:
            # This file is lost or damaged in the store: say so, restore the rest. Any
            # other store error (access denied, ...) stops the drill.
            result.failed.append((shown(path), str(exc)))
        finally:
            bar.update(files=1, nbytes=int(row["length"]))

    try:
        await workers(_rows(opened, sel), one, concurrency)
    finally:
        bar.close()
    if request is not None and result.archived:
        result.requests = await request_restores(opened.backend, sorted(result.archived),
                                                 request)
    return result
