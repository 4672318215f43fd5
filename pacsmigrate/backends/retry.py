"""A Backend made of any store's single-attempt requests, each paced and retried by one policy."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from ..config import TransferConfig
from ..errors import ConfigError, ObjectNotFoundError
from .base import BackendStats, LockCapable, ObjectInfo, Primitives, Rehydrating
from .body import Body, Buffer, checksum, view
from .policy import RequestPolicy, RetryConfig
from .watchdog import bounded

T = TypeVar("T")
Item = TypeVar("Item")
Marker = TypeVar("Marker")
MIN_SEND_RATE = 256 * 1024  # bytes/s below which a send counts as stalled


def policy_for(transfer: TransferConfig) -> RequestPolicy:
    return RequestPolicy(
        concurrency=transfer.concurrency,
        retry=RetryConfig(max_attempts=transfer.max_attempts, base_delay=transfer.retry_base_delay),
        requests_per_second=transfer.max_requests_per_second,
        bytes_per_second=transfer.bwlimit)


class RetryBackend:
    """save / load / stat / list / remove over a store's Primitives (restic's RetryBackend).

    Every primitive request goes through one RequestPolicy: rate caps, the AIMD limit on
    requests in flight, retries with backoff by cause. It is the only retry layer (the
    stores' own clients do not retry), so every attempt is counted in `stats`. Each attempt
    has a deadline, and a body is watched while it is sent. Store errors leave as errors.py's
    tree. A store that can also write in parts gets ChunkedBackend (multipart.py) instead.
    """

    def __init__(self, store: Primitives, transfer: TransferConfig, *,
                 policy: RequestPolicy | None = None) -> None:
        self.store = store
        self.scheme = store.scheme
        self.transfer = transfer
        self.policy = policy or policy_for(transfer)
        self.uploads_resumed = 0
        self.parts_reused = 0
        self.uploads_restarted = 0

    @property
    def stats(self) -> BackendStats:
        """This run's request statistics (a snapshot); the one place the pipeline reads."""
        p = self.policy
        return BackendStats(requests=p.stats.requests, retries=Counter(p.stats.retries),
                            gave_up=p.stats.gave_up, throttle_slowdowns=p.limit.decreases,
                            lowest_concurrency=p.limit.lowest,
                            uploads_resumed=self.uploads_resumed, parts_reused=self.parts_reused,
                            uploads_restarted=self.uploads_restarted)

    def part_size(self, size_hint: int) -> int:
        return self.store.part_size(size_hint)

    def deadline(self, nbytes: int) -> float:
        """Longest one attempt may take: the timeouts, plus the body at a very slow rate (a
        store that stops reading the body is caught sooner, by the watchdog)."""
        t = self.transfer
        return t.connect_timeout + t.read_timeout + nbytes / MIN_SEND_RATE

    async def _run(self, attempt: Callable[[], Awaitable[T]], *, key: str | None,
                   nbytes: int) -> T:
        try:
            return await self.policy.run(attempt, classify=self.store.classify, nbytes=nbytes)
        except Exception as exc:
            mapped = self.store.map_error(exc, key=key)
            if mapped is None:
                raise
            raise mapped from exc

    async def call(self, request: Callable[[], Awaitable[T]], *, key: str | None,
                   answer: int | None = 0) -> T:
        """One request without a body, retried. Its deadline allows for an answer of `answer`
        bytes (None: of unknown size, so no deadline; the socket read timeout still holds)."""
        limit = None if answer is None else self.deadline(answer)
        return await self._run(lambda: bounded(request(), budget=limit), key=key, nbytes=0)

    async def object_lock_enabled(self) -> bool:
        """Whether the bucket takes retention locks (False: the store has none), asked like
        every other request: retried, paced, counted."""
        store = self.store
        if not isinstance(store, LockCapable):
            return False
        return await self.call(store.object_lock_enabled, key=None)

    async def request_restore(self, key: str, *, days: int, priority: str) -> str:
        """Rehydrating's request, retried like the others; a store without archive tiers
        cannot be asked."""
        store = self.store
        if not isinstance(store, Rehydrating):
            raise ConfigError("this store cannot restore archived objects")
        return await self.call(
            lambda: store.request_restore(key, days=days, priority=priority), key=key)

    async def send(self, request: Callable[[Body], Awaitable[T]], data: Buffer, *,
                   key: str) -> T:
        """One request with a body, retried; each attempt gets a fresh Body of the same buffer."""
        nbytes = view(data).nbytes
        limit, idle = self.deadline(nbytes), self.transfer.read_timeout

        def attempt() -> Awaitable[T]:
            body = Body(data)
            return bounded(request(body), budget=limit, body=body, idle=idle)

        return await self._run(attempt, key=key, nbytes=nbytes)

    async def put(self, key: str, data: Buffer, meta: Mapping[str, str]) -> ObjectInfo:
        digest = await checksum(data, self.transfer.checksum)
        etag = await self.send(
            lambda body: self.store.put(key, body, checksum=digest, metadata=meta), data,
            key=key)
        return ObjectInfo(key, view(data).nbytes, etag, meta)

    async def save(self, key: str, chunks: AsyncIterator[Buffer], *,
                   metadata: Mapping[str, str] | None = None) -> ObjectInfo:
        meta = dict(metadata or {})
        it = aiter(chunks)
        first = await anext(it, b"")
        second = await anext(it, None)
        if second is None:
            return await self.put(key, first, meta)
        return await self._save_chunks(key, first, second, it, meta)

    async def _save_chunks(self, key: str, first: Buffer, second: Buffer,
                           rest: AsyncIterator[Buffer], meta: dict[str, str]) -> ObjectInfo:
        # A store without parts takes the object in one request (a copy, joined here).
        data = b"".join([first, second, *[c async for c in rest]])
        return await self.put(key, data, meta)

    async def load(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
        if length == 0:
            return b""
        # Request and body in one attempt: a body cut short is retried as a whole.
        return await self.call(lambda: self.store.get(key, offset=offset, length=length),
                               key=key, answer=length)

    async def stat(self, key: str) -> ObjectInfo | None:
        try:
            return await self.call(lambda: self.store.head(key), key=key)
        except ObjectNotFoundError:
            return None

    async def paged(self, fetch: Callable[[Marker | None],
                                          Awaitable[tuple[Sequence[Item], Marker | None]]],
                    *, key: str) -> AsyncIterator[Item]:
        """Every item of a listing; each page is one request (retried), fetch(None) the first."""
        marker: Marker | None = None
        while True:
            at = marker  # the lambda runs (and reruns) before the loop moves on
            page, marker = await self.call(lambda: fetch(at), key=key)  # noqa: B023
            for item in page:
                yield item
            if marker is None:
                return

    def list(self, prefix: str) -> AsyncIterator[ObjectInfo]:
        return self.paged(lambda token: self.store.list_page(prefix, token), key=prefix)

    async def remove(self, key: str) -> None:
        await self.call(lambda: self.store.delete(key), key=key)

    async def close(self) -> None:
        await self.store.close()
