"""What `replicate` checks before it copies anything: the second store is another store,
reached at the migration's keys, outside its sources, and takes the classes and locks the
migration's objects carry; each refusal is one line, with nothing copied."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path

from .backends import Backend, one_chunk
from .backends.base import LockCapable
from .checkpoint import Checkpoint
from .config import Destination, overlap
from .errors import BackendError, ConfigError, ObjectExistsError
from .keys import probe_key
from .preflight import FAIL, probe_classes
from .tiers import TierPolicy, check_classes, classes_used

log = logging.getLogger(__name__)

DEFAULT_CLASS = "default"  # replicate --storage-class default: no class asked of the store


def check_destinations(source: Destination, replica: Destination) -> None:
    """A replica keeps the source's keys: another store, the same prefix (a directory holds
    the prefix as its first folders)."""
    same = str(source) == str(replica) and source.endpoint_url == replica.endpoint_url
    if source.scheme == replica.scheme == "file":
        same = os.path.realpath(source.bucket) == os.path.realpath(replica.bucket)
    if same:
        raise ConfigError(f"{replica} is the migration's own destination: give another store")
    if replica.scheme != "file" and replica.prefix != source.prefix:
        raise ConfigError(f"a replica keeps the same keys: give {replica.scheme}://"
                          f"{replica.bucket}/{source.prefix} (the source's prefix "
                          f"{source.prefix!r}), not {replica}")


def outside_sources(cp: Checkpoint, dest: Destination, replica_state: Path) -> None:
    """Nothing of a replica lands in the migration's source trees (never written to): the
    state's first roots and those of every run since (a merged state has only the runs')."""
    roots = list((cp.get_meta("config") or {}).get("sources") or [])
    roots += [root for run in cp.runs() for root in run.get("sources") or []]
    for root in dict.fromkeys(roots):
        for what, path in (("the replica's --to-state", replica_state),
                           ("the replica", Path(dest.bucket) if dest.scheme == "file" else None)):
            if path is not None and Path(root).is_dir() and overlap(Path(root), path):
                raise ConfigError(f"{what} {path} and the migration's source {root} overlap: "
                                  "the source is never written to, give a directory outside it")


def classes_offered(cp: Checkpoint, dest: Destination, storage_class: str | None
                     ) -> list[str]:
    """The classes the copies are stored in are the second store's: the one asked for, or
    those the migration's objects carry (its tier policy), refused before anything is sent
    when that store's kind does not offer them (an S3 class in Azure, say). Returns them,
    for a probe of the store itself."""
    provider = dest.s3.provider if dest.s3 else None
    if storage_class == DEFAULT_CLASS:
        return []
    if storage_class is not None:
        TierPolicy(default=storage_class).check(dest.scheme, provider=provider)
        return [storage_class]
    tiers = cp.get_meta("tiers")
    if not tiers or dest.scheme == "file":  # a directory keeps the class as metadata only
        return []
    classes = classes_used(tiers)  # every run's: a re-run may have asked others
    try:
        check_classes(classes, dest.scheme, provider=provider)
    except ConfigError as exc:
        raise ConfigError(f"the migration's objects are in storage classes the replica's "
                          f"store does not offer ({exc}): give replicate --storage-class "
                          f"CLASS for every copy, or --storage-class {DEFAULT_CLASS} (the "
                          "store's own)") from None
    return classes


async def takes_locks(cp: Checkpoint, dst: Backend, dest: Destination) -> None:
    """A migration with locked objects is copied only into a bucket that takes locks (it
    failed mid-way, after the records, with the store's words). A directory keeps a lock
    as metadata only, as it keeps a class."""
    if dest.scheme == "file" or not any(
            (rec or {}).get("retention") for _, rec in cp.iter_db("objects")):
        return
    if not isinstance(dst, LockCapable) or not await dst.object_lock_enabled():
        what = ("has no version-level immutability (enable it on the container)"
                if dest.scheme == "az" else "has no object lock (create the bucket with "
                "object lock enabled)")
        raise ConfigError(f"the migration's objects are locked (retention) and {dest} {what}:"
                          " a replica keeps their locks")


async def another_store(src: Backend, dst: Backend, origin: Destination,
                         dest: Destination) -> None:
    """The second store is not the first reached another way (another spelling of its
    endpoint, the Azure https form): an object written there must not show in the first."""
    key = probe_key(origin, "replica-" + secrets.token_hex(8))
    with contextlib.suppress(ObjectExistsError):  # a lost answer to our own write
        await dst.save(key, one_chunk(b"pacsmigrate replica probe\n"), metadata=None)
    seen = await src.stat(key)
    try:
        await dst.remove(key)
    except BackendError as exc:  # a store that refuses deletes (WORM): not a reason to stop
        log.warning("could not delete the replica probe %s (%s); left in place", key,
                    type(exc).__name__)
    if seen is not None:
        raise ConfigError(f"{dest} is the migration's own store, reached another way: give "
                          "another store for the replica")


async def check_stores(cp: Checkpoint, src: Backend, dst: Backend, origin: Destination,
                       dest: Destination, classes: list[str]) -> None:
    """The checks that ask the stores: another store, locks taken, each class taken (what
    the scheme offers, the store may not: MinIO has no GLACIER)."""
    await another_store(src, dst, origin, dest)
    await takes_locks(cp, dst, dest)
    if classes:
        probed = await probe_classes(dst, dest, classes, hint=(
            f"replicate --storage-class CLASS, or {DEFAULT_CLASS}: the store's own"))
        if probed.verdict == FAIL:
            raise ConfigError(probed.line)
