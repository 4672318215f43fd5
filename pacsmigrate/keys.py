"""Object keys: keyed hashes of study UIDs spread over hashed prefixes, never patient data."""

from __future__ import annotations

import functools
import os

import blake3

from .config import Destination
from .records import BundlePlan

DESCRIPTOR = "pacsmigrate.json"
# The migration's own records beside its objects (never bundles): the source roots of its
# runs (RUN_DIR/sources/), the states of slices run on workers (RUN_DIR/slices/).
RUN_DIR = "pacsmigrate-run"
SECRET_BYTES = 32


def new_secret() -> bytes:
    return os.urandom(SECRET_BYTES)


@functools.lru_cache(maxsize=1024)  # a study's files come together: hashed once, one str
def study_group(secret: bytes, study_uid: str) -> str:
    """Group of a study: a keyed hash, so a key reveals nothing about the UID."""
    return blake3.blake3(b"study\0" + study_uid.encode(), key=secret).hexdigest()[:32]


def unsorted_group(secret: bytes, directory: bytes) -> str:
    """Group of the files in one directory that could not be placed in a study."""
    return blake3.blake3(b"unsorted\0" + directory, key=secret).hexdigest()[:32]


def bundle_id(plan: BundlePlan, salt: str = "") -> str:
    """Deterministic id from the planned members: a re-run of the same plan hits the same key.
    `salt` (a state's, once a repair needed one) keeps new ids off damaged objects' keys.

    The plan's policy (class, lock) is part of it: a store sets them when an object or a
    multipart upload is created, so a killed run's unfinished upload is resumed (or its
    object adopted as this plan's) only by a run that asks the same of the store."""
    h = blake3.blake3(plan.group.encode() + b"\0" + plan.kind.encode()
                      + (b"\0" + salt.encode() if salt else b""))
    if plan.policy:  # none given: the ids of runs without a policy, as before
        # The retain-until day too: an upload resumed on a later day keeps the lock it was
        # created with, so a study without a date (its lock counted from today) gets a new
        # key each day, and a killed upload of it is sent anew (the old one aborted).
        h.update(b"".join(b"\1%s=%s" % (k.encode(), v.encode())
                          for k, v in sorted(plan.policy.items())))
    # One update for all members (the same digest as one a member, a C call less each).
    h.update(b"".join([b"\0%s\0%d\0%d" % (m.path, m.size, m.mtime_ns) for m in plan.members]))
    return h.hexdigest()[:24]


def object_key(dest: Destination, group: str, ident: str, ext: str) -> str:
    """`prefix/ab/cd/<group>/<id>.<ext>`: two hashed levels let S3 partition the load."""
    return dest.key(group[:2], group[2:4], group, f"{ident}.{ext}")


def slicing_key(dest: Destination) -> str:
    """Where a migration cut into slices records its slicing plan (slicing.py)."""
    return dest.key(RUN_DIR, "slicing.json")


def probe_key(dest: Destination, token: str) -> str:
    """A pre-flight's probe object (written, read back, deleted at once)."""
    return dest.key(RUN_DIR, f"preflight-{token}")


def sources_key(dest: Destination, sources: list[str]) -> str:
    """Where a run records its source roots (`index rebuild` gives them back): one object
    per set of roots, named by its hash, so every run of the same set writes it once."""
    name = blake3.blake3("\0".join(sorted(sources)).encode()).hexdigest()[:32]
    return dest.key(RUN_DIR, "sources", f"{name}.json")


def sidecar_key(key: str) -> str:
    """The manifest object stored beside a data object."""
    return key.rsplit(".", 1)[0] + ".json"


def assign_key(dest: Destination, plan: BundlePlan, salt: str = "") -> None:
    plan.bundle_id = bundle_id(plan, salt)
    if plan.kind == "tar":
        ext = "tar"
    else:
        ext = "dcm" if plan.members[0].about.status == "dicom" else "bin"
    plan.key = object_key(dest, plan.group, plan.bundle_id, ext)
