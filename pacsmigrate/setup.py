"""Before a run: the state directory belongs to this destination, and the key secret."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import keys
from .backends import Backend
from .backends.base import LockCapable, one_chunk
from .checkpoint import FORMAT, Checkpoint
from .config import Destination, MigrateConfig
from .errors import ConfigError, ObjectExistsError, StateError
from .lmdbfile import env_dir
from .records import now_iso
from .slicing import as_doc, plan, with_plan
from .tiers import tiers_meta

SOURCES_FORMAT = "pacsmigrate.sources/1"
log = logging.getLogger(__name__)


def recorded_encryption(cfg: MigrateConfig) -> MigrateConfig:
    """A run on a state whose migration asked --sse (or --sse-kms-key-id) encrypts alike
    when it does not say otherwise: read from the state before the store is opened."""
    s3 = cfg.dest.s3
    if s3 is None or s3.sse or s3.sse_kms_key_id or not env_dir(cfg.state_dir).is_dir():
        return cfg
    cp = Checkpoint(cfg.state_dir, readonly=True)
    try:
        known = cp.get_meta("config") or {}
    finally:
        cp.close()
    if not known.get("sse") or known.get("dest") != str(cfg.dest):
        return cfg
    log.info("encrypted at rest as this migration's first run asked (--sse %s)", known["sse"])
    return replace(cfg, dest=replace(cfg.dest, s3=replace(
        s3, sse=known["sse"], sse_kms_key_id=known.get("sse_kms_key_id"))))


def check_state(cp: Checkpoint, cfg: MigrateConfig) -> MigrateConfig:
    """Bind a new state directory to this destination; refuse one bound to another.
    Returns the config to run with: a slice's cut as its state recorded it."""
    dest = str(cfg.dest)
    known = cp.get_meta("config")
    if cp.get_meta("workers") is not None:  # even before its first merge wrote a config
        raise ConfigError(f"state directory {cfg.state_dir} holds a migration run on Dask "
                          "workers: re-run it with --workers (or --scheduler)")
    if known is None:
        cp.put_meta("config", {"dest": dest, "endpoint_url": cfg.dest.endpoint_url,
                               **cfg.dest.options_meta(),
                               "sources": [os.path.abspath(s) for s in cfg.sources],
                               "shard": str(cfg.shard) if cfg.shard else None,
                               "shard_cut": cfg.shard.cut if cfg.shard else None,
                               "shard_plan": None,
                               "created": now_iso()})
    elif known["dest"] != dest:
        raise ConfigError(f"state directory {cfg.state_dir} belongs to a migration "
                          f"to {known['dest']}, not {dest}; use another --state")
    else:
        _same_customer_key(known.get("sse_c_md5"), cfg.dest.customer_key_md5)
        _same_shard(known.get("shard"), cfg)
        if cfg.shard is not None:  # a state made before the cut keeps its rule (None)
            cfg = replace(cfg, shard=with_plan(replace(cfg.shard, cut=known.get("shard_cut")),
                                               known.get("shard_plan")))
    cp.put_meta("format", FORMAT)
    if cfg.tiers:  # `policy lifecycle` writes the rules that keep objects moving as they age
        cp.put_meta("tiers", tiers_meta(cfg.tiers, cp.get_meta("tiers")))
    # Read-side commands (verify, get, restore) reach the store the way this run did.
    ca = cfg.transfer.ca_bundle
    if ca is not None:  # a run given the CA only through AWS_CA_BUNDLE keeps the one known
        cp.put_meta("ca_bundle", str(Path(ca).resolve()))
    return cfg


def _same_shard(stored: str | None, cfg: MigrateConfig) -> None:
    """A state holds one slice of the sources (or all of them): another slice in it would
    look like files deleted from the first."""
    given = str(cfg.shard) if cfg.shard else None
    if stored == given:
        return
    held = f"slice {stored} (--shard)" if stored else "a whole migration (no --shard)"
    raise ConfigError(f"state directory {cfg.state_dir} holds {held}; this run asks for "
                      + (f"--shard {given}" if given else "no --shard")
                      + ": give each slice its own --state")


def _same_customer_key(stored: str | None, given: str | None) -> None:
    """One migration, one SSE-C key (or none): objects under two keys could not all be read
    with the one key every later command is given."""
    if (stored or None) == (given or None):
        return
    if not stored:
        raise ConfigError("this migration stores objects without SSE-C: drop --sse-c-key-file "
                          "(or use another --state)")
    raise ConfigError("this migration's objects are encrypted with your own key (SSE-C): "
                      + ("the key given is another one" if given else
                         "give the same --sse-c-key-file"))


async def key_secret(cp: Checkpoint, backend: Backend | None, dest: Destination, *,
                     write: bool = True) -> bytes:
    """The key secret: the store's descriptor wins, the state remembers it.

    Kept in the store so any machine (and `index rebuild`) derives the same keys. A dry run
    (`write` False) reads the store's, so it names studies, and so orders and packs them,
    as the run will; without one in the store (or offline) the state's own secret is used,
    made on first use, which the state's first run then writes to the store.
    """
    mine = cp.get_meta("key_secret")
    name = dest.key(keys.DESCRIPTOR)
    if backend is None or (not write and await backend.stat(name) is None):
        if mine is None:
            mine = keys.new_secret().hex()
            cp.put_meta("key_secret", mine)
        return bytes.fromhex(mine)
    known = (cp.get_meta("config") or {}).get("endpoint_url")
    if write and mine is not None and known != dest.endpoint_url and \
            cp.counts()["objects"] and await backend.stat(name) is None:
        # This state has stored objects, and the store at another endpoint than its first
        # run's has no record of the migration: another store (another --endpoint-url, or
        # one left in the environment), where the index would never find them. (The same
        # store moved keeps its record; one that lost it is verify's and repair's to say.)
        raise StateError(
            f"{dest} at {dest.endpoint_url or 'the default endpoint'} holds no record of "
            f"this migration, whose objects are in the store at "
            f"{known or 'the default endpoint'}: give that endpoint (check --endpoint-url "
            "and PACSMIGRATE_MIGRATE_ENDPOINT_URL), or another --state for another store")
    secret = mine or keys.new_secret().hex()
    doc = {"format": "pacsmigrate.store/1", "key_secret": secret, "created": now_iso()}
    theirs = secret if write and await write_once(backend, name, doc) else \
        str(json.loads(await backend.load(name))["key_secret"])
    if mine != theirs:
        if cp.counts()["objects"]:
            raise StateError("the store's key secret differs from this state's; the "
                             "state directory belongs to another store")
        # Planned with another secret (a dry run): its study groups have other names now.
        await cp.call(cp.clear, "groups")
        cp.put_meta("key_secret", theirs)
    return bytes.fromhex(theirs)


async def write_once(backend: Backend, key: str, doc: dict[str, Any]) -> bool:
    """Store doc (JSON) at key unless an object is there already (another run or slice
    wrote it first: theirs stands, never overwritten). True when this call wrote it."""
    if await backend.stat(key) is not None:
        return False
    try:
        await backend.save(key, one_chunk(json.dumps(doc).encode()))
    except ObjectExistsError:
        return False
    return True


async def record_sources(backend: Backend, dest: Destination, sources: list[str]) -> None:
    """Leave the run's source roots in the store, where `index rebuild` finds them again
    (one small object per set of roots, written by the first run that uses it)."""
    await write_once(backend, keys.sources_key(dest, sources),
                     {"format": SOURCES_FORMAT, "sources": sorted(sources),
                      "created": now_iso()})


async def agreed_slicing(cp: Checkpoint, backend: Backend | None,
                         cfg: MigrateConfig) -> MigrateConfig:
    """A slice cuts the tree as the migration's other slices do, wherever they run: the
    first plans the slicing (slicing.py) and records it in the store, a new slice state
    takes the recorded plan. A state that holds files keeps its own (index merge refuses
    states cut two ways). Without a backend (a dry run) the state keeps the plan it made,
    which its first real run records unless another slice's is there first."""
    if cfg.shard is None:
        return cfg
    key = keys.slicing_key(cfg.dest)
    known = cp.get_meta("config") or {}
    if cp.counts()["index"]:  # made with this plan (or adopted files with it)
        if known.get("shard_plan") is None:
            cp.put_meta("config", {**known, "shard_plan": as_doc(cfg.shard)})
        if backend is not None and not await write_once(backend, key, as_doc(cfg.shard)):
            theirs = await slicing_of(backend, cfg.dest)
            if as_doc(with_plan(cfg.shard, theirs)) != as_doc(cfg.shard):
                raise StateError(f"state directory {cfg.state_dir} holds slice {cfg.shard} "
                                 f"cut another way than the migration's recorded plan ({key}):"
                                 " index merge could not join it to the other slices; migrate "
                                 "this slice into a new --state")
        return cfg
    doc = await agreed_plan(backend, cfg, cfg.shard.count, cfg.shard.cut,
                            known.get("shard_plan"))
    shard = with_plan(cfg.shard, doc)
    cp.put_meta("config", {**known, "shard_cut": shard.cut, "shard_plan": as_doc(shard)})
    return replace(cfg, shard=shard)


async def agreed_plan(backend: Backend | None, cfg: MigrateConfig, slices: int,
                      cut: int | None, mine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The migration's slicing plan: the store's if recorded; else `mine` (a dry run's) or
    a new one, recorded unless another run's got there first (then theirs)."""
    doc = await slicing_of(backend, cfg.dest) if backend is not None else None
    if doc is not None:
        return doc
    doc = mine or await plan([os.fsencode(os.path.abspath(s)) for s in cfg.sources],
                             slices, cut)
    if backend is not None and not await write_once(
            backend, keys.slicing_key(cfg.dest), doc):
        theirs = await slicing_of(backend, cfg.dest)
        if theirs is None:
            raise StateError("the migration's slicing plan in the store was there and is "
                             "gone: run again")
        return theirs
    return doc


async def slicing_of(backend: Backend, dest: Destination) -> dict[str, Any] | None:
    """The migration's slicing plan in the store, if one is recorded."""
    key = keys.slicing_key(dest)
    if await backend.stat(key) is None:
        return None
    doc: dict[str, Any] = json.loads(await backend.load(key))
    return doc


async def check_object_lock(backend: Backend, dest: Destination) -> None:
    """Before anything is stored with a retention lock: the bucket must take one."""
    if not isinstance(backend, LockCapable) or not await backend.object_lock_enabled():
        if dest.scheme == "az":
            raise ConfigError(f"{dest} has no version-level immutability: enable it on the "
                              "container (Azure portal, or az storage container-rm create "
                              "--enable-vlw), or drop --retain-years, --retention-map and "
                              "--legal-hold")
        raise ConfigError(f"{dest} has no object lock: create the bucket with object lock "
                          "enabled (aws s3api create-bucket --object-lock-enabled-for-bucket), "
                          "or drop --retain-years and --legal-hold")
