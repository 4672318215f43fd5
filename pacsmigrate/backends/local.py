"""A directory as an object store (NAS to NAS, air-gapped sites): single-attempt requests.

Keys are relative paths under the root. Every write is atomic and never overwrites: the
bytes go to a temporary file under the root, are fsynced, then hard-linked into place (a
link fails if the name exists, so two writers cannot both win) and the directory is fsynced.
Metadata and the ETag live in extended attributes (`user.pacsmigrate.*`); on a filesystem
without them the objects are still whole, only `stat` reports no metadata or ETag.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path

from aiofiles.os import wrap
from isal import isal_zlib

from ..errors import (
    BackendError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentBackendError,
)
from ..sqlitefile import alive
from .base import ObjectInfo, adjust_part_size
from .body import Body, Checksum
from .limits import LOCAL
from .local_parts import UPLOADS_DIR, BodyMismatchError, LocalParts
from .policy import TRANSIENT, Cause

# Reserved names at the root; listings skip them.
TMP_DIR = ".pacsmigrate-tmp"
RESERVED = (TMP_DIR, UPLOADS_DIR)
XATTR = "user.pacsmigrate."
PAGE = 1000
HOST = socket.gethostname().replace(".", "_") or "host"
STALE_TMP = 24 * 3600
LIMITS = LOCAL.limits
# NFS and SMB mounts report these for trouble that may pass (server restart, failover).
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ETIMEDOUT, errno.ESTALE, errno.EAGAIN,
                              errno.EINTR, errno.ECONNRESET, errno.EHOSTDOWN})
NO_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK})


def _digest(data: memoryview, algorithm: str) -> bytes:
    if algorithm == "crc32":
        return isal_zlib.crc32(data).to_bytes(4, "big")
    return hashlib.md5(data).digest()



def _make_dirs(path: Path) -> None:
    """mkdir -p, each new directory made durable in its parent."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:
            pass  # made by a concurrent write meanwhile
        _fsync_dir(new.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(LocalParts):
    """Objects as files under `root`; implements Primitives and ChunkedWriter (base.py).

    Requests run in threads through aiofiles (one thread hop per request, not per call).
    Parts of an unfinished upload are files under `.pacsmigrate-uploads/ID/`, named by
    number and MD5, so a killed run's parts are found and kept like a store's.
    """

    scheme = "file"

    def __init__(self, root: Path, *, part_size: int) -> None:
        self.root = root
        self._part_size = part_size
        self._unwritable = ""  # why the directory cannot be written, if it cannot

    async def open(self) -> LocalStore:
        await wrap(self._open)()
        return self

    def _open(self) -> None:
        if not self.root.is_dir():
            raise PermanentBackendError(
                f"destination directory {self.root} does not exist: create it first (a typo "
                "must not start a new archive)")
        try:
            for name in RESERVED:
                (self.root / name).mkdir(exist_ok=True)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            # A directory we may not write (an archive mounted read-only, say): what reads
            # it works; the first write says why it cannot (_tmp).
            self._unwritable = exc.strerror or str(exc)
            return
        self._sweep()

    def _tmp(self) -> Path:
        """A temporary file's name says who writes it, so a sweep knows when it is dead."""
        if self._unwritable:
            raise PermanentBackendError(
                f"cannot write in {self.root} ({self._unwritable}): the user running "
                "pacsmigrate must be able to write there (a read-only copy serves verify, "
                "get and restore)")
        return self.root / TMP_DIR / f"{HOST}.{os.getpid()}.{uuid.uuid4().hex}"

    def _sweep(self) -> None:
        """Remove temporary files of killed writers: this host's whose process is gone, any
        host's untouched for a day (a live write keeps its file's mtime fresh)."""
        now = time.time()
        for entry in os.scandir(self.root / TMP_DIR):
            host, _, pid = entry.name.rpartition(".")[0].partition(".")
            try:
                mine = host == HOST and pid.isdigit() and not alive(int(pid))
                if mine or now - entry.stat().st_mtime > STALE_TMP:
                    os.unlink(entry.path)
            except OSError:
                continue  # gone already, or not ours to remove

    def part_size(self, size_hint: int) -> int:
        return adjust_part_size(LIMITS, self._part_size, size_hint)

    def classify(self, exc: BaseException) -> Cause | None:
        if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
            return Cause(TRANSIENT, f"I/O error ({errno.errorcode.get(exc.errno or 0, '?')})")
        return None

    def map_error(self, exc: BaseException, *, key: str | None) -> BackendError | None:
        if isinstance(exc, BodyMismatchError):
            return PermanentBackendError(f"body does not match its checksum: {key}", key=key,
                                         code="BadDigest")
        if not isinstance(exc, OSError):
            return None
        if isinstance(exc, FileExistsError):
            return ObjectExistsError(f"object exists: {key}", key=key)
        if isinstance(exc, FileNotFoundError):
            return ObjectNotFoundError(f"no such object: {key}", key=key)
        if isinstance(exc, PermissionError):
            return PermanentBackendError(
                f"permission denied in {self.root} ({exc.strerror}): the user running "
                "pacsmigrate must be able to write there", key=key)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return PermanentBackendError(f"no space left in {self.root}: free some or grow "
                                         "the volume, then re-run to resume", key=key)
        return BackendError(f"{self.root}: {exc.strerror or exc}", key=key)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or (
                parts[0] in RESERVED):
            raise PermanentBackendError(f"not a key a directory can hold: {key!r}", key=key)
        return self.root.joinpath(*parts)

    # -- objects ---------------------------------------------------------------------
    async def put(self, key: str, body: Body, *, checksum: Checksum,
                  metadata: Mapping[str, str]) -> str:
        return str(await wrap(self._put)(key, body, checksum, metadata))

    def _put(self, key: str, body: Body, checksum: Checksum, metadata: Mapping[str, str]) -> str:
        target = self._path(key)
        if _digest(body.view, checksum.algorithm) != checksum.digest:
            raise BodyMismatchError(key)
        # The ETag is the body's MD5 whatever it was checked with, as S3's is for one PUT:
        # verify and replicate compare bytes read back with it.
        etag = checksum.digest.hex() if checksum.algorithm == "md5" else \
            hashlib.md5(body.view).hexdigest()
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as f:
                f.writelines(body.pieces())
                self._set_attrs(f.fileno(), metadata, etag)
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk must not keep the half it took
            raise
        self._publish(tmp, target)
        return etag

    def _set_attrs(self, fd: int, metadata: Mapping[str, str], etag: str) -> None:
        try:
            os.setxattr(fd, XATTR + "etag", etag.encode())
            if metadata:
                os.setxattr(fd, XATTR + "meta", json.dumps(dict(metadata)).encode())
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise

    def _publish(self, tmp: Path, target: Path) -> None:
        """Move tmp to target unless target exists; durable once this returns."""
        try:
            _make_dirs(target.parent)
            try:
                os.link(tmp, target)  # fails with EEXIST: never overwrites
            except OSError as exc:
                if exc.errno not in NO_LINKS:
                    raise
                # No hard links here (some SMB mounts): check, then rename. Keys are unique
                # per plan and one run holds the state lock, so the window is not raced.
                if target.exists():
                    raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
                os.rename(tmp, target)
            _fsync_dir(target.parent)
        finally:
            tmp.unlink(missing_ok=True)

    async def get(self, key: str, *, offset: int, length: int | None) -> bytes:
        return bytes(await wrap(self._get)(key, offset, length))

    def _get(self, key: str, offset: int, length: int | None) -> bytes:
        with open(self._path(key), "rb") as f:
            if length is None:
                f.seek(offset)
                return f.read()
            first = os.pread(f.fileno(), length, offset)
            if len(first) == length or not first:  # the common case: no copy
                return first
            out = bytearray(first)
            while len(out) < length:  # one pread returns at most ~2 GiB
                got = os.pread(f.fileno(), length - len(out), offset + len(out))
                if not got:
                    break
                out += got
            return bytes(out)

    async def head(self, key: str) -> ObjectInfo:
        info: ObjectInfo = await wrap(self._head)(key)
        return info

    def _head(self, key: str) -> ObjectInfo:
        path = self._path(key)
        st = os.stat(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, "not a file", str(path))
        return ObjectInfo(key, st.st_size, *self._attrs(path), modified=st.st_mtime)

    def _attrs(self, path: Path) -> tuple[str, dict[str, str]]:
        try:
            etag = os.getxattr(path, XATTR + "etag").decode()
        except OSError:
            return "", {}
        try:
            meta = json.loads(os.getxattr(path, XATTR + "meta"))
        except OSError:
            meta = {}
        return etag, meta

    async def list_page(self, prefix: str, token: str | None
                        ) -> tuple[list[ObjectInfo], str | None]:
        page: list[ObjectInfo] = await wrap(self._list_page)(prefix, token)
        return page, (page[-1].key if len(page) == PAGE else None)

    def _list_page(self, prefix: str, token: str | None) -> list[ObjectInfo]:
        keys = (k for k in self._keys(prefix, token) if token is None or k > token)
        return [self._head(k) for k in islice(keys, PAGE)]

    def _keys(self, prefix: str, token: str | None = None) -> Iterator[str]:
        """Keys under prefix in byte order, as S3 lists them (a directory `a` sorts as `a/`);
        with a token, the directories wholly before it are not entered (a page costs the
        path to the token, not the keys before it)."""
        base, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*base.split("/")) if base else self.root
        yield from self._walk(start, base + "/" if base else "", prefix, token)

    def _walk(self, directory: Path, rel: str, prefix: str,
              token: str | None = None) -> Iterator[str]:
        try:
            with os.scandir(directory) as it:
                entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e)
                           for e in it]
        except (FileNotFoundError, NotADirectoryError):
            return
        for name, entry in sorted(entries, key=lambda t: t[0].encode("utf-8", "surrogateescape")):
            key = rel + name
            if not rel and name.rstrip("/") in RESERVED:
                continue
            if not (key.startswith(prefix) or prefix.startswith(key)):
                continue
            if token is not None and key < token and not token.startswith(key):
                continue  # every key in it sorts before the token
            if name.endswith("/"):
                yield from self._walk(Path(entry.path), key, prefix, token)
            elif key.startswith(prefix) and entry.is_file(follow_symlinks=False):
                yield key

    async def delete(self, key: str) -> None:
        await wrap(self._delete)(key)

    def _delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        parent = path.parent  # directories exist only for keys: drop the ones left empty
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    async def close(self) -> None:
        return None
