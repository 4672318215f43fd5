"""A local directory store's uploads in parts (ChunkedWriter): part files under
`.pacsmigrate-uploads/ID/`, named by number and MD5, so a killed run's parts are found and kept
like a store's; completion joins them in the kernel and publishes the object atomically."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiofiles.os import wrap

from .base import Part, PendingUpload
from .body import Body, multipart_etag

UPLOADS_DIR = ".pacsmigrate-uploads"


class BodyMismatchError(Exception):
    """The body does not match the checksum it came with (a store answers BadDigest)."""


class LocalParts:
    """ChunkedWriter for LocalStore, which supplies the root, keys, temp files and publishing."""

    root: Path

    def _path(self, key: str) -> Path:
        raise NotImplementedError

    def _tmp(self) -> Path:
        raise NotImplementedError

    def _set_attrs(self, fd: int, metadata: Mapping[str, str], etag: str) -> None:
        raise NotImplementedError

    def _publish(self, tmp: Path, target: Path) -> None:
        raise NotImplementedError

    def _upload(self, upload_id: str) -> Path:
        if not upload_id.isalnum():
            raise FileNotFoundError(errno.ENOENT, "no such upload", upload_id)
        return self.root / UPLOADS_DIR / upload_id

    async def create_upload(self, key: str, *, metadata: Mapping[str, str]) -> str:
        return str(await wrap(self._create_upload)(key, metadata))

    def _create_upload(self, key: str, metadata: Mapping[str, str]) -> str:
        self._path(key)  # a bad key fails now, not at completion
        upload_id = uuid.uuid4().hex
        folder = self._upload(upload_id)
        self._tmp()  # a directory that cannot be written says so (local.LocalStore)
        folder.mkdir()
        doc = {"key": key, "metadata": dict(metadata), "initiated": time.time()}
        (folder / "upload.json").write_text(json.dumps(doc))
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, body: Body, *,
                          md5: bytes) -> str:
        return str(await wrap(self._upload_part)(upload_id, number, body, md5))

    def _upload_part(self, upload_id: str, number: int, body: Body, md5: bytes) -> str:
        folder = self._upload(upload_id)
        if not (folder / "upload.json").exists():
            raise FileNotFoundError(errno.ENOENT, "no such upload", upload_id)
        if hashlib.md5(body.view).digest() != md5:
            raise BodyMismatchError(upload_id)
        tmp = folder / f"tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as f:
                f.writelines(body.pieces())
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for old in folder.glob(f"{number:05d}-*"):  # a part sent again replaces its twin
            old.unlink(missing_ok=True)
        os.rename(tmp, folder / f"{number:05d}-{md5.hex()}")
        return md5.hex()

    async def complete_upload(self, key: str, upload_id: str,
                              parts: Sequence[tuple[int, str]], *,
                              metadata: Mapping[str, str] | None = None,
                              content_md5: bytes | None = None) -> str:
        return str(await wrap(self._complete)(key, upload_id, parts))

    def _complete(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> str:
        folder = self._upload(upload_id)
        doc = json.loads((folder / "upload.json").read_text())  # absent: NoSuchUpload
        target = self._path(key)
        digests = [bytes.fromhex(etag) for _, etag in parts]
        etag = self.expected_etag(digests)
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as out:
                for number, part_etag in parts:
                    with open(folder / f"{number:05d}-{part_etag}", "rb") as src:
                        _copy(src.fileno(), out.fileno())
                self._set_attrs(out.fileno(), doc["metadata"], etag)
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._publish(tmp, target)
        shutil.rmtree(folder, ignore_errors=True)
        return etag

    async def abort(self, key: str, upload_id: str) -> None:
        await wrap(self._abort)(upload_id)

    def _abort(self, upload_id: str) -> None:
        shutil.rmtree(self._upload(upload_id), ignore_errors=True)

    async def list_uploads_page(self, prefix: str, marker: tuple[str, str] | None
                                ) -> tuple[list[PendingUpload], tuple[str, str] | None]:
        page: list[PendingUpload] = await wrap(self._uploads)(prefix)
        return page, None  # one page: unfinished uploads are few (one per part writer)

    def _uploads(self, prefix: str) -> list[PendingUpload]:
        found: list[PendingUpload] = []
        uploads = self.root / UPLOADS_DIR
        if not uploads.is_dir():  # a directory we may not write: none was ever made here
            return found
        for folder in uploads.iterdir():
            try:
                doc = json.loads((folder / "upload.json").read_text())
            except (OSError, ValueError):
                continue  # being created or removed right now
            if doc["key"].startswith(prefix):
                found.append(PendingUpload(doc["key"], folder.name, float(doc["initiated"])))
        return sorted(found, key=lambda u: (u.key, u.upload_id))

    async def list_parts_page(self, key: str, upload_id: str, marker: int | None
                              ) -> tuple[list[Part], int | None]:
        page: list[Part] = await wrap(self._parts)(upload_id)
        return page, None

    def _parts(self, upload_id: str) -> list[Part]:
        folder = self._upload(upload_id)
        if not (folder / "upload.json").exists():
            raise FileNotFoundError(errno.ENOENT, "no such upload", upload_id)
        parts = []
        for path in folder.iterdir():
            number, _, md5 = path.name.partition("-")
            if number.isdigit() and len(md5) == 32:
                parts.append(Part(int(number), md5, path.stat().st_size))
        return sorted(parts, key=lambda p: p.number)

    def expected_etag(self, part_md5s: Sequence[bytes]) -> str:
        # S3's rule, so an ETag means the same thing whichever store holds the object.
        return multipart_etag(part_md5s)


def _copy(src: int, dst: int) -> None:
    """Append all of src to dst in the kernel (a reflink where the filesystem can)."""
    while True:
        try:
            n = os.copy_file_range(src, dst, 1 << 30)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = _copy_plain(src, dst)
        if n == 0:
            return


def _copy_plain(src: int, dst: int) -> int:
    data = memoryview(os.read(src, 1 << 20))
    done = 0
    while done < len(data):
        done += os.write(dst, data[done:])
    return done

