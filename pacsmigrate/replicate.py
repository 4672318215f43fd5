"""`replicate`: copy a migration to a second store for disaster recovery: same keys, every
object checked against the source's hash where the two can be compared, its own index.

The replica's state directory is a copy of the source's (the same index rows and keys), bound
to the second destination and recording the ETags the second store gave. It serves `verify`,
`get`, `restore` and `locate` like any state; `verify --deep` on it reads every instance back
from the second store against its blake3. A re-run copies only what the second store lacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import keys
from .access import destination_of
from .backends import Backend, one_chunk, open_backend
from .backends.body import Buffer
from .checkpoint import Checkpoint
from .config import Destination, TransferConfig
from .errors import ConfigError, IntegrityError, ObjectExistsError, StateError
from .records import FILE, now_iso
from .verify.common import db_batches, workers

_MD5_HEX = 32
_FLUSH = 1000  # ETags written to the replica's state in batches of this many


@dataclass
class Replicated:
    """What one replicate run did."""

    objects: int = 0  # objects of the source migration (sidecars and descriptor included)
    copied: int = 0
    present: int = 0  # already in the second store, same size (and hash where comparable)
    bytes_copied: int = 0
    unchecked: int = 0  # copied, but the two stores' ETag rules could not be compared
    etags: dict[str, str] = field(default_factory=dict)  # not yet written to the replica state


def check_destinations(source: Destination, replica: Destination) -> None:
    """A replica keeps the source's keys: another store, the same prefix (a directory holds
    the prefix as its first folders)."""
    if str(source) == str(replica) and source.endpoint_url == replica.endpoint_url:
        raise ConfigError(f"{replica} is the migration's own destination: give another store")
    if replica.scheme != "file" and replica.prefix != source.prefix:
        raise ConfigError(f"a replica keeps the same keys: give {replica.scheme}://"
                          f"{replica.bucket}/{source.prefix} (the source's prefix "
                          f"{source.prefix!r}), not {replica}")


def prepare_state(source: Checkpoint, replica_state: Path, dest: Destination) -> None:
    """Make (or refresh) the replica's state: the source's tables, bound to `dest`."""
    origin = destination_of(source)
    if (replica_state / "checkpoint.lmdb").exists():
        old = Checkpoint(replica_state, readonly=True)
        try:
            known = old.get_meta("config") or {}
        finally:
            old.close()
        if known.get("replica_of") != str(origin) or known.get("dest") != str(dest):
            raise ConfigError(f"{replica_state} is not a replica of {origin} to {dest}: "
                              "give another --to-state")
    copy = replica_state / "checkpoint.copy"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    source.env.copy(str(copy), compact=True)  # one read transaction: a consistent snapshot
    (replica_state / "checkpoint.lmdb").mkdir(exist_ok=True)
    os.replace(copy / "data.mdb", replica_state / "checkpoint.lmdb" / "data.mdb")
    shutil.rmtree(copy, ignore_errors=True)
    cp = Checkpoint(replica_state)  # takes the replica's lock
    try:
        config = dict(source.get_meta("config"))
        s3 = dest.s3.as_meta() if dest.s3 else {}
        config.update({"dest": str(dest), "endpoint_url": dest.endpoint_url,
                       "provider": None, "region": None, "profile": None,
                       "addressing_style": None, **s3, "replica_of": str(origin),
                       "replicated": now_iso()})
        cp.put_meta("config", config)
    finally:
        cp.close()


def _comparable(etag: str) -> bool:
    return len(etag) == _MD5_HEX and all(c in "0123456789abcdef" for c in etag)


async def copy_object(src: Backend, dst: Backend, key: str, size: int, etag: str,
                      done: Replicated) -> None:
    """Copy one object unless the second store has it; check it against the source's ETag
    (the body's MD5, or S3's rule over parts when the part counts match)."""
    have = await dst.stat(key)
    if have is not None and have.size == size:
        if _comparable(etag) and _comparable(have.etag) and have.etag != etag:
            raise IntegrityError(f"the replica holds another object at {key} (MD5 {have.etag}, "
                                 f"source {etag})")
        done.present += 1
        done.etags[key] = have.etag
        return
    part = dst.part_size(size)
    whole, digests = hashlib.md5(), []

    async def chunks() -> AsyncIterator[Buffer]:
        for offset in range(0, max(size, 1), part):
            data = await src.load(key, offset=offset, length=min(part, size - offset))
            whole.update(data)
            digests.append(hashlib.md5(data).digest())
            yield data

    try:
        info = await dst.save(key, chunks() if size > part else one_chunk(
            await _read_all(src, key, size, whole, digests)))
    except ObjectExistsError:
        raise IntegrityError(f"the replica holds another object at {key} (size differs)") from None
    rule = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
    if _comparable(etag):
        if whole.hexdigest() != etag:
            raise IntegrityError(f"{key}: bytes read from the source do not match its MD5")
    elif etag != rule:
        done.unchecked += 1  # written in other parts than ours: the deep verify checks it
    done.copied += 1
    done.bytes_copied += size
    done.etags[key] = info.etag


async def _read_all(src: Backend, key: str, size: int, whole: Any, digests: list[bytes]
                    ) -> bytes:
    data = await src.load(key) if size else b""
    whole.update(data)
    digests.append(hashlib.md5(data).digest())
    return data


async def replicate(source_state: Path, dest: Destination, replica_state: Path, *,
                    transfer: TransferConfig | None = None) -> Replicated:
    """Copy the migration in source_state to dest; the replica's state goes to replica_state."""
    transfer = transfer or TransferConfig()
    cp = Checkpoint(source_state, readonly=True)
    try:
        origin = destination_of(cp)
        check_destinations(origin, dest)
        ca = cp.get_meta("ca_bundle")
        src_transfer = replace(transfer, ca_bundle=Path(ca)) if ca else transfer
        prepare_state(cp, replica_state, dest)
        replica = Checkpoint(replica_state)
        try:
            done = Replicated()
            src = await open_backend(origin, src_transfer)
            try:
                dst = await open_backend(dest, transfer)
                try:
                    await _copy_all(cp, replica, src, dst, origin, done, transfer.concurrency)
                finally:
                    await dst.close()
            finally:
                await src.close()
            await _flush(replica, done)
        finally:
            replica.close()
    finally:
        cp.close()
    return done


async def _flush(replica: Checkpoint, done: Replicated) -> None:
    etags, done.etags = done.etags, {}
    if etags:
        await replica.call(replica.set_etags, etags)


async def _copy_all(cp: Checkpoint, replica: Checkpoint, src: Backend, dst: Backend,
                    origin: Destination, done: Replicated, concurrency: int) -> None:
    descriptor = origin.key(keys.DESCRIPTOR)
    info = await src.stat(descriptor)
    if info is None:
        raise StateError(f"the source store has no {descriptor}: not a pacsmigrate store")
    await copy_object(src, dst, descriptor, info.size, info.etag, done)

    async def items() -> AsyncIterator[dict[str, Any]]:
        async for batch in db_batches(cp, "objects"):
            for _, rec in batch:
                yield rec

    # Objects in parts hold several parts each in flight: two such copies at a time.
    large = asyncio.Semaphore(2)

    async def one(rec: dict[str, Any]) -> None:
        done.objects += 1
        size = int(rec["size"])
        if size > dst.part_size(size):
            async with large:
                await copy_object(src, dst, rec["key"], size, str(rec.get("etag", "")), done)
        else:
            await copy_object(src, dst, rec["key"], size, str(rec.get("etag", "")), done)
        if rec.get("kind") == FILE or "id" not in rec:  # its manifest lies beside it
            side = keys.sidecar_key(rec["key"])
            meta = await src.stat(side)
            if meta is not None:
                await copy_object(src, dst, side, meta.size, meta.etag, done)
        if len(done.etags) >= _FLUSH:
            await _flush(replica, done)

    await workers(items(), one, concurrency)
