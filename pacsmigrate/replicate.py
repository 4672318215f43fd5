"""`replicate`: copy a migration to a second store for disaster recovery: same keys, every
object checked against the source's hash where the two can be compared, its own index.

The replica's state directory is a copy of the source's (the same index rows and keys), bound
to the second destination and recording the ETags the second store gave. It serves `verify`,
`get`, `restore` and `locate` like any state; `verify --deep` on it reads every instance back
from the second store against its blake3. A re-run copies only what the second store lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from . import keys
from .access import destination_of, remembered_ca, with_customer_key
from .backends import Backend, one_chunk, open_backend
from .backends.body import Buffer, multipart_etag
from .checkpoint import Checkpoint
from .config import Destination, TransferConfig
from .errors import ConfigError, IntegrityError, ObjectExistsError, StateError
from .fanout import workers
from .lmdbfile import data_file, env_dir
from .records import FILE, now_iso
from .replicacheck import (
    DEFAULT_CLASS,
    check_destinations,
    check_stores,
    classes_offered,
    outside_sources,
)
from .retention import MODE_META, UNTIL_META
from .staterepair import done_with_list, take_list
from .tiers import CLASS_META
from .verify.common import db_batches

log = logging.getLogger(__name__)

_MD5_HEX = 32
_FLUSH = 1000  # ETags written to the replica's state in batches of this many


@dataclass
class Replicated:
    """What one replicate run did."""

    objects: int = 0  # objects of the source migration (bundles and large files)
    copied: int = 0  # of them
    present: int = 0  # of them already in the second store, same size (and hash)
    beside: int = 0  # the store's descriptor, run records and sidecar manifests
    bytes_copied: int = 0
    repaired: int = 0  # damaged objects (a verify of the replica listed them) copied anew
    unchecked: int = 0  # copied, but the two stores' ETag rules could not be compared
    etags: dict[str, str] = field(default_factory=dict)  # not yet written to the replica state


def prepare_state(source: Checkpoint, replica_state: Path, dest: Destination,
                  transfer: TransferConfig) -> Checkpoint:
    """The replica's state, open and locked: the source's tables, bound to `dest`.

    The copy is bound to `dest` before it replaces the replica's file, under the replica's
    lock: a kill or a second run never leaves a state that points at the primary store.
    """
    origin = destination_of(source)
    replica = Checkpoint(replica_state)  # takes the replica's lock (a new one is empty)
    try:
        known = replica.get_meta("config")
        if known is not None and (known.get("replica_of") != str(origin)
                                  or known.get("dest") != str(dest)):
            raise ConfigError(f"{replica_state} is not a replica of {origin} to {dest}: "
                              "give another --to-state")
        staging = replica_state / "checkpoint.copy"
        shutil.rmtree(staging, ignore_errors=True)
        env_dir(staging).mkdir(parents=True)
        # One read transaction: a consistent snapshot even while the source migration runs.
        source.env.copy(str(env_dir(staging)), compact=True)
        copy = Checkpoint(staging)
        try:
            config = dict(source.get_meta("config"))
            s3 = dest.s3.as_meta() if dest.s3 else {}
            config.update({"dest": str(dest), "endpoint_url": dest.endpoint_url,
                           "provider": None, "region": None, "profile": None,
                           "addressing_style": None, **s3, "replica_of": str(origin),
                           "replicated": now_iso(), "replica_complete": None})
            copy.put_meta("config", config)
            ca = transfer.ca_bundle  # the CA the replica's store is reached with
            copy.put_meta("ca_bundle", str(Path(ca).resolve()) if ca else None)
        finally:
            copy.close()
        replica.adopt(data_file(staging))
        shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        replica.close()
        raise
    return replica


def _comparable(etag: str) -> bool:
    return len(etag) == _MD5_HEX and all(c in "0123456789abcdef" for c in etag)


class _Check:
    """The source's hash of one object, checked as its bytes pass, before the copy is
    completed: its MD5, or S3's rule over parts of the size we copy with."""

    def __init__(self, key: str, etag: str) -> None:
        self.key, self.etag = key, etag
        self.whole = hashlib.md5()
        self.parts: list[bytes] = []

    def add(self, data: bytes) -> None:
        self.whole.update(data)
        self.parts.append(hashlib.md5(data).digest())

    @property
    def rule(self) -> str:
        return multipart_etag(self.parts)

    def ours(self, etag: str) -> bool:
        """An ETag the second store would give these bytes."""
        return etag in (self.whole.hexdigest(), self.rule)

    def verdict(self) -> bool | None:
        """True: the bytes are the source's; None: the ETags cannot tell. Raises if they
        differ: nothing of them is completed in the second store."""
        if _comparable(self.etag):
            ok = self.whole.hexdigest() == self.etag
        elif self.etag.endswith(f"-{len(self.parts)}"):
            ok = self.rule == self.etag
            if not ok:
                return None  # written in parts of another size than ours: cannot tell
        else:
            return None
        if not ok:
            raise IntegrityError(f"{self.key}: bytes read from the source do not match its "
                                 f"ETag {self.etag}")
        return True


async def _carried(src: Backend, key: str) -> dict[str, str] | None:
    """The source object's metadata, which the replica's copy is stored with: its storage
    class, lock and tags are made from it (backends/s3.py, azure_blob.py), as they were
    for the source. A lock whose day has passed is not asked for (a store refuses it)."""
    info = await src.stat(key)
    meta = dict(info.metadata or {}) if info is not None else {}
    until = meta.get(UNTIL_META)
    if until and until <= date.today().isoformat():
        meta.pop(UNTIL_META, None)
        meta.pop(MODE_META, None)
    return meta or None


async def copy_object(src: Backend, dst: Backend, key: str, size: int, etag: str,
                      done: Replicated, *, target: str | None = None,
                      storage_class: str | None = None) -> bool:
    """Copy one object (to `target`, by default the same key) unless the second store has
    it, checked against the source's ETag before the copy is completed. Whether it was
    copied (False: it was there)."""
    source_key, key = key, target or key
    have = await dst.stat(key)
    if have is not None and have.size == size:
        if _comparable(etag) and _comparable(have.etag) and have.etag != etag:
            raise IntegrityError(f"the replica holds another object at {key} (MD5 {have.etag}, "
                                 f"source {etag})")
        done.etags[key] = have.etag
        return False
    part = dst.part_size(size)
    check = _Check(key, etag)
    checked: list[bool | None] = []
    meta = await _carried(src, source_key)
    if storage_class == DEFAULT_CLASS:  # the replica store's default class
        meta = {k: v for k, v in (meta or {}).items() if k != CLASS_META} or None
    elif storage_class is not None:
        meta = {**(meta or {}), CLASS_META: storage_class}

    async def chunks() -> AsyncIterator[Buffer]:
        for offset in range(0, size, part):
            data = await src.load(source_key, offset=offset, length=min(part, size - offset))
            check.add(data)
            if offset + part >= size:
                checked.append(check.verdict())  # raises before the last part is sent
            yield data

    try:
        if size > part:
            info = await dst.save(key, chunks(), metadata=meta)
        else:
            data = await src.load(source_key) if size else b""
            check.add(data)
            checked.append(check.verdict())
            info = await dst.save(key, one_chunk(data), metadata=meta)
    except ObjectExistsError:
        # A lost answer to our own write, or someone else's object at the key.
        info = await dst.stat(key)  # type: ignore[assignment]
        if info is None or info.size != size or (info.etag and not check.ours(info.etag)):
            raise IntegrityError(f"the replica holds another object at {key}") from None
    if not checked or checked[0] is None:
        done.unchecked += 1  # the deep verify of the replica settles it
    done.bytes_copied += size
    done.etags[key] = info.etag
    return True


async def replicate(source_state: Path, dest: Destination, replica_state: Path, *,
                    transfer: TransferConfig | None = None,
                    storage_class: str | None = None,
                    source_key_file: str | None = None) -> Replicated:
    """Copy the migration in source_state to dest; the replica's state goes to replica_state.
    `storage_class`: every object's class in the second store (else the source object's);
    `source_key_file`: the customer key (SSE-C) the migration's objects are read with."""
    transfer = transfer or TransferConfig()
    if os.path.realpath(source_state) == os.path.realpath(replica_state):
        raise ConfigError(f"--to-state {replica_state} is the migration's own state: give "
                          "the replica a state directory of its own")
    async with contextlib.AsyncExitStack() as stack:
        cp = Checkpoint(source_state, readonly=True)
        stack.callback(cp.close)
        origin = with_customer_key(destination_of(cp), source_key_file)
        check_destinations(origin, dest)
        outside_sources(cp, dest, replica_state)
        classes = classes_offered(cp, dest, storage_class)
        # The source store's CA is the one its migration remembers (or the environment's),
        # never the replica's --ca-bundle.
        src_transfer = replace(transfer, ca_bundle=remembered_ca(cp, origin))
        src = await open_backend(origin, src_transfer)
        stack.push_async_callback(src.close)
        dst = await open_backend(dest, transfer)
        stack.push_async_callback(dst.close)
        await check_stores(cp, src, dst, origin, dest, classes)
        replica = prepare_state(cp, replica_state, dest, transfer)
        stack.callback(replica.close)
        done = Replicated()
        # What a verify of the replica found damaged: removed here, so copied anew.
        damaged = sorted({d.key for d in take_list(replica_state) or []})
        for key in damaged:
            if await dst.stat(key) is not None:
                await dst.remove(key)
        done.repaired = len(damaged)
        await _copy_all(cp, replica, src, dst, origin, done, transfer.concurrency,
                        storage_class)
        await _flush(replica, done)
        # Until then a status of the replica says its copy did not finish.
        config = {**replica.get_meta("config"), "replica_complete": now_iso()}
        await replica.call(replica.put_meta, "config", config)
        if damaged:
            done_with_list(replica_state)
    return done


async def _flush(replica: Checkpoint, done: Replicated) -> None:
    etags, done.etags = done.etags, {}
    if etags:
        await replica.call(replica.set_etags, etags)


async def _copy_all(cp: Checkpoint, replica: Checkpoint, src: Backend, dst: Backend,
                    origin: Destination, done: Replicated, concurrency: int,
                    storage_class: str | None) -> None:
    descriptor = origin.key(keys.DESCRIPTOR)
    info = await src.stat(descriptor)
    if info is None:
        raise StateError(f"the source store has no {descriptor}: not a pacsmigrate store")
    await copy_object(src, dst, descriptor, info.size, info.etag, done)
    done.beside += 1
    if dst.scheme == "file" and origin.prefix:
        # The directory holds the prefix as folders: a descriptor at its root too, so
        # `index rebuild DIR` finds the store and keeps the keys as they are.
        await copy_object(src, dst, descriptor, info.size, info.etag, done,
                          target=keys.DESCRIPTOR)
    # The runs' source roots, for `index rebuild` of the replica (likewise at its root).
    records = origin.key(keys.RUN_DIR, "sources") + "/"
    async for rec in src.list(records):
        await copy_object(src, dst, rec.key, rec.size, rec.etag, done)
        done.beside += 1
        if dst.scheme == "file" and origin.prefix:
            await copy_object(src, dst, rec.key, rec.size, rec.etag, done,
                              target=rec.key[len(origin.key("")) + 1:])

    async def items() -> AsyncIterator[dict[str, Any]]:
        async for batch in db_batches(cp, "objects"):
            for _, rec in batch:
                yield rec

    # Objects in parts hold several parts each in flight: two such copies at a time.
    large = asyncio.Semaphore(2)

    async def one(rec: dict[str, Any]) -> None:
        done.objects += 1
        size = int(rec["size"])
        etag = str(rec.get("etag", ""))
        if size > dst.part_size(size):
            async with large:
                copied = await copy_object(src, dst, rec["key"], size, etag, done,
                                           storage_class=storage_class)
        else:
            copied = await copy_object(src, dst, rec["key"], size, etag, done,
                                       storage_class=storage_class)
        if copied:
            done.copied += 1
        else:
            done.present += 1
        if rec.get("kind") == FILE or "id" not in rec:  # its manifest lies beside it
            side = keys.sidecar_key(rec["key"])
            meta = await src.stat(side)
            if meta is not None:
                await copy_object(src, dst, side, meta.size, meta.etag, done)
                done.beside += 1
        if len(done.etags) >= _FLUSH:
            await _flush(replica, done)

    await workers(items(), one, concurrency)
