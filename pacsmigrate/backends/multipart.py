"""Objects saved in parts, written once for every store that can (ChunkedWriter)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from .. import faults
from ..config import TransferConfig
from ..errors import BackendError, ObjectExistsError, ObjectNotFoundError
from ..fanout import cancelled
from .base import ChunkedWriter, ObjectInfo, PendingUpload, Primitives
from .body import Buffer, md5, view
from .policy import RequestPolicy
from .retry import RetryBackend

log = logging.getLogger(__name__)

# Part number -> (ETag, size) of the parts an unfinished upload already holds.
Held = dict[int, tuple[str, int]]


# After a cancel, how long a create already under way (then its abort) may still take.
CANCEL_GRACE = 5.0
# A killed run's upload older than this is started anew, not resumed: `cleanup` (24 h by
# default) aborts uploads by their age, so a run must not work on one that old.
RESUME_MAX_AGE = 12 * 3600.0


async def _settled(task: asyncio.Future[Any]) -> bool:
    """Whether `task` ends within CANCEL_GRACE; else it is cancelled."""
    done, _ = await asyncio.wait({task}, timeout=CANCEL_GRACE)
    if not done:
        task.cancel()
    return bool(done)


class ChunkedBackend(RetryBackend):
    """A RetryBackend whose store writes objects in parts (s3transfer's upload graph).

    Two or more chunks make a multipart upload: parts in flight are bounded, the abort is the
    cleanup registered the moment the upload exists (a failure or cancel leaves no parts), a
    killed run's upload of the same key is resumed, and a lost answer to create or complete
    is recognised. Also implements PendingUploads: the uploads killed runs left behind.
    """

    def __init__(self, store: Primitives, writer: ChunkedWriter, transfer: TransferConfig, *,
                 policy: RequestPolicy | None = None) -> None:
        super().__init__(store, transfer, policy=policy)
        self.writer = writer

    async def _save_chunks(self, key: str, first: Buffer, second: Buffer,
                           rest: AsyncIterator[Buffer], meta: dict[str, str]) -> ObjectInfo:
        upload_id, held = await self._resumable(key)
        created = upload_id is None
        local = getattr(self.writer, "creates_nothing", False)  # no request, so no twin
        if upload_id is None and local:
            upload_id = await self.writer.create_upload(key, metadata=meta)
        elif upload_id is None:
            upload_id = await self._create_shielded(key, meta)
        try:
            if created and not local:
                await self._abort_twins(key, upload_id)
            etag, total = await self._send_parts(key, upload_id, held, first, second, rest,
                                                 meta)
        except BaseException:
            # Shielded so a cancel still runs it; only a kill skips it, and then the next
            # run resumes the upload's parts (or `abandon` / `cleanup` aborts it).
            await asyncio.shield(self._abort(key, upload_id))
            raise
        return ObjectInfo(key, total, etag, meta)

    async def _create_shielded(self, key: str, meta: dict[str, str]) -> str:
        """A new upload. A cancel while it is made (a request the store may act on, a local
        store's thread) gives it CANCEL_GRACE to answer, then aborts what it made, as one
        during the parts does; an upload that does not answer in time (a store retrying)
        is left to `cleanup` or a later run's _abort_twins, not waited for."""
        create = asyncio.ensure_future(self.call(
            lambda: self.writer.create_upload(key, metadata=meta), key=key))
        try:
            return str(await asyncio.shield(create))
        except asyncio.CancelledError:
            if await _settled(create) and create.exception() is None:
                await _settled(asyncio.ensure_future(self._abort(key, create.result())))
            raise

    async def _resumable(self, key: str) -> tuple[str | None, Held]:
        """An unfinished upload of this key left by a killed run (with its parts), if any.

        Keys are deterministic per plan, so the bytes of a re-run are the same up to the
        manifest in the tail (it says when the bundle was made): parts whose MD5 and size
        match are kept instead of being sent again, the last part is usually sent anew.
        Older uploads are aborted.
        """
        uploads = sorted([u async for u in self.pending_uploads(key) if u.key == key],
                         key=lambda u: u.initiated)
        if not self.uploads_expire:  # initiated is a time (Azure's: how far it got)
            # One older than a `cleanup` would leave alone is not taken up: one may abort
            # it under this run (it would count its age from the killed run's start).
            cutoff = time.time() - RESUME_MAX_AGE
            fresh = [u for u in uploads if not u.initiated or u.initiated >= cutoff]
            for old in uploads[:len(uploads) - len(fresh)]:
                await self._abort(key, old.upload_id)
                self.uploads_restarted += 1
            uploads = fresh
        for stale in uploads[:-1]:
            await self._abort(key, stale.upload_id)
        if not uploads:
            return None, {}
        upload_id = uploads[-1].upload_id
        self.uploads_resumed += 1
        held: Held = {p.number: (p.etag, p.size) async for p in self.paged(
            lambda at: self.writer.list_parts_page(key, upload_id, at), key=key)}
        return upload_id, held

    async def _abort_twins(self, key: str, upload_id: str) -> None:
        # There was no upload of this key before the create: any other one now is the twin
        # of a create whose first answer was lost and that was retried.
        async for twin in self.pending_uploads(key):
            if twin.key == key and twin.upload_id != upload_id:
                await self._abort(key, twin.upload_id)

    async def _send_parts(self, key: str, upload_id: str, held: Held, first: Buffer,
                          second: Buffer, rest: AsyncIterator[Buffer],
                          meta: dict[str, str]) -> tuple[str, int]:
        parts: dict[int, tuple[str, bytes]] = {}  # number -> (ETag, MD5 digest)
        # Bounded parts in flight: the producer waits before reading more source bytes.
        slots = asyncio.Semaphore(self.transfer.concurrency)
        tasks: list[asyncio.Task[None]] = []
        failed: list[BaseException] = []

        def note(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                failed.append(task.exception())  # type: ignore[arg-type]

        async def send(number: int, data: Buffer) -> None:
            try:
                h = await md5(data)
                digest, size = h.digest(), view(data).nbytes
                if held.get(number) == (h.hexdigest(), size):
                    parts[number] = (held[number][0], digest)
                    self.parts_reused += 1
                    return
                etag = await self.send(lambda body: self.writer.upload_part(
                    key, upload_id, number, body, md5=digest), data, key=key)
                parts[number] = (etag, digest)
                faults.point("part-uploaded")
            finally:
                slots.release()

        async def chunks() -> AsyncIterator[Buffer]:
            yield first
            yield second
            async for c in rest:
                yield c

        total = 0
        # A store that keeps the whole object's MD5 (Azure's Content-MD5) is given it at
        # completion: the chunks come in order, so it is summed as they pass.
        whole = hashlib.md5() if getattr(self.writer, "wants_content_md5", False) else None
        try:
            async for data in chunks():
                await slots.acquire()
                if failed:
                    raise failed[0]
                if whole is not None:
                    await asyncio.to_thread(whole.update, view(data))
                total += view(data).nbytes
                tasks.append(asyncio.create_task(send(len(tasks) + 1, data)))
                tasks[-1].add_done_callback(note)
            await asyncio.gather(*tasks)
        except BaseException:
            await cancelled(*tasks)
            raise
        content_md5 = whole.digest() if whole is not None else None
        return await self._complete(key, upload_id, parts, total, meta, content_md5), total

    async def _complete(self, key: str, upload_id: str, parts: dict[int, tuple[str, bytes]],
                        total: int, meta: dict[str, str], content_md5: bytes | None) -> str:
        """Complete the upload; a retry after a lost success is recognised, not failed.

        If the store completed the upload but its answer was lost, the retry hears
        NoSuchUpload (or 412 from the conditional write) and the object is there: ours if
        its size is ours and its ETag is the one our parts make. On NoSuchUpload our size
        is enough (a store whose ETags are not MD5-based, e.g. SSE-KMS, cannot show more;
        the key is this plan's alone). A 412 without that proof stays ObjectExistsError:
        the object may predate this save, and the caller decides (upload.recover).
        """
        numbers = sorted(parts)
        try:
            etag = await self.call(lambda: self.writer.complete_upload(
                key, upload_id, [(n, parts[n][0]) for n in numbers], metadata=meta,
                content_md5=content_md5), key=key)
        except (ObjectNotFoundError, ObjectExistsError) as exc:
            info = await self.stat(key)
            if info is None or info.size != total:
                raise
            if isinstance(exc, ObjectNotFoundError):
                return info.etag
            expected = {self.writer.expected_etag([parts[n][1] for n in numbers])}
            if content_md5 is not None:  # a store that keeps the whole object's MD5
                expected.add(content_md5.hex())
            if info.etag not in expected - {""}:
                raise
            await self._abort(key, upload_id)  # if the store still lists it
            return info.etag
        if not etag:  # Ceph answers CompleteMultipartUpload with an empty ETag; HEAD has it
            info = await self.stat(key)
            etag = info.etag if info is not None else ""
        return etag

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self.call(lambda: self.writer.abort(key, upload_id), key=key)
        except BackendError as exc:  # `pacsmigrate cleanup` finds what is left
            log.info("could not abort the upload of %s (%s: %s); `pacsmigrate cleanup` "
                     "lists what is left", key, type(exc).__name__, exc)

    @property
    def uploads_expire(self) -> bool:
        """The store drops unfinished uploads by itself (Azure's uncommitted blocks)."""
        return bool(getattr(self.writer, "uploads_expire", False))

    # -- PendingUploads ------------------------------------------------------------------
    async def abort_upload(self, upload: PendingUpload) -> None:
        await self.call(lambda: self.writer.abort(upload.key, upload.upload_id), key=upload.key)

    async def abort_pending(self, key: str) -> int:
        count = 0
        async for upload in self.pending_uploads(key):
            if upload.key == key:
                await self._abort(key, upload.upload_id)
                count += 1
        return count

    def pending_uploads(self, prefix: str) -> AsyncIterator[PendingUpload]:
        """Unfinished uploads under prefix (for resume and `cleanup`)."""
        return self.paged(lambda at: self.writer.list_uploads_page(prefix, at), key=prefix)
