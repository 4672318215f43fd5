"""FaultProxy: the proxy itself, run in a thread with its own asyncio loop; control from
any thread (random faults, targeted rules, storms), the lifecycle, the fault decisions and
the serving of each client connection."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from .model import (
    AFTER,
    BEFORE,
    ERRORS,
    KINDS,
    LOOPBACK,
    MAX_HEAD,
    Exchange,
    ProxyError,
    Request,
    Response,
    Rule,
    _Config,
    _Upstream,
    is_loopback,
)
from .wire import (
    _close,
    _error_response,
    _keep_alive,
    _parse_request,
    _read_chunked,
    _read_response,
    _reset,
    _send,
    _serialize,
    _serialize_parts,
    _serialize_request,
)


class FaultProxy:
    """The proxy. `start()` (or `with`) runs it in a thread with its own asyncio loop."""

    def __init__(self, upstream: str, *, seed: int = 0, probability: float = 0.0,
                 kinds: Mapping[str, float] | None = None, after: float = 0.5,
                 stall_seconds: float = 5.0, max_connections: int = 64,
                 max_body: int = 64 * 1024 * 1024, log_size: int = 100_000) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not is_loopback(parts.hostname):
            raise ValueError(f"upstream must be http:// on loopback, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.stall_seconds = stall_seconds
        self.max_connections = max_connections
        self.max_body = max_body
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._cfg = _Config()
        self.configure(probability=probability, kinds=kinds, after=after)
        self._rules: list[Rule] = []
        # (until, kind, phase); until None: a storm that lasts until calm()
        self._storm: tuple[float | None, str, str] | None = None
        self.injected: Counter[str] = Counter()
        self.injected_by_phase: Counter[tuple[str, str]] = Counter()
        self.exchanges: deque[Exchange] = deque(maxlen=log_size)
        self.requests = 0
        self.connections = 0
        self.port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control (any thread) ----------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def configure(self, *, probability: float | None = None,
                  kinds: Mapping[str, float] | None = None, after: float | None = None) -> None:
        """Random faults: each request fails with `probability`; kind by weight; `after`
        is the share of faults injected after forwarding."""
        with self._lock:
            if probability is not None:
                if not 0 <= probability <= 1:
                    raise ValueError("probability must be within 0..1")
                self._cfg.probability = probability
            if kinds is not None:
                unknown = set(kinds) - set(KINDS)
                if unknown or not kinds or not any(w > 0 for w in kinds.values()):
                    raise ValueError(f"fault kinds must be weighted among {KINDS}")
                self._cfg.kinds = dict(kinds)
            if after is not None:
                if not 0 <= after <= 1:
                    raise ValueError("after must be within 0..1")
                self._cfg.after = after

    def inject(self, kind: str, *, phase: str = AFTER,
               match: Callable[[Request], bool] | None = None, times: int = 1) -> Rule:
        """Fault the next `times` requests `match` accepts (rules go before random faults)."""
        self._check(kind, phase)
        rule = Rule(kind, phase, match, times)
        with self._lock:
            self._rules.append(rule)
        return rule

    def storm(self, seconds: float | None, kind: str = "503", *, phase: str = BEFORE) -> None:
        """Fail every request for the next `seconds` (from now); None: until `calm()`."""
        self._check(kind, phase)
        until = None if seconds is None else time.monotonic() + seconds
        with self._lock:
            self._storm = (until, kind, phase)

    def calm(self) -> None:
        """No more faults: random probability 0, rules and storm cleared."""
        with self._lock:
            self._cfg.probability = 0.0
            self._rules.clear()
            self._storm = None

    def log(self) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges)

    def bytes_in(self) -> int:
        return sum(e.bytes_in for e in self.log())

    def wait_for(self, predicate: Callable[[FaultProxy], bool], timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return predicate(self)

    @staticmethod
    def _check(kind: str, phase: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {KINDS}")
        if phase not in (BEFORE, AFTER):
            raise ValueError(f"phase must be {BEFORE!r} or {AFTER!r}")

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._failed is not None:
            raise RuntimeError(f"fault proxy did not start: {self._failed}")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may have ended already
                loop.call_soon_threadsafe(stopping.set)
        self._thread.join(timeout=15)
        if self._thread.is_alive():
            raise RuntimeError("fault proxy thread did not stop")
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._failed = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        slots = asyncio.Semaphore(self.max_connections)

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                async with slots:
                    await self._serve(reader, writer)
            except asyncio.CancelledError:
                _close(writer)  # shutting down: asyncio would log a cancelled callback
            finally:
                self._tasks.discard(task)

        server = await asyncio.start_server(accept, LOOPBACK, 0, limit=MAX_HEAD)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    # -- decisions -------------------------------------------------------------------
    def _decide(self, req: Request) -> tuple[str, str] | None:
        with self._lock:
            self.requests += 1
            for rule in self._rules:
                if rule.times > 0 and (rule.match is None or rule.match(req)):
                    rule.times -= 1
                    rule.hits += 1
                    return rule.kind, rule.phase
            if self._storm is not None:
                until, kind, phase = self._storm
                if until is None or time.monotonic() < until:
                    return kind, phase
                self._storm = None
            cfg = self._cfg
            if cfg.probability and self._rng.random() < cfg.probability:
                names = list(cfg.kinds)
                kind = self._rng.choices(names, weights=[cfg.kinds[n] for n in names])[0]
                phase = AFTER if self._rng.random() < cfg.after else BEFORE
                return kind, phase
            return None

    def _count(self, kind: str, phase: str) -> None:
        with self._lock:
            self.injected[kind] += 1
            self.injected_by_phase[kind, phase] += 1

    # -- one client connection ---------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        upstream: list[_Upstream] = []
        try:
            while await self._exchange(reader, writer, upstream):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ProxyError, ValueError, OSError):
            pass  # the client went away or spoke nonsense: drop the connection
        finally:
            _close(writer)
            for up in upstream:
                _close(up.writer)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        upstream: list[_Upstream]) -> bool:
        """Handle one request; True to keep the connection for another."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return False  # a clean close between requests
        started = time.monotonic()
        req = _parse_request(head)
        decision = self._decide(req)
        expect = req.header("expect").lower() == "100-continue"
        out = 0
        if decision is not None and decision[0] == "blackhole":
            # Headers taken, then silence: neither the body is read nor an answer sent (a
            # store that died mid-upload; a big body fills the socket buffers and blocks).
            self._count("blackhole", BEFORE)
            try:
                await asyncio.sleep(self.stall_seconds)
            finally:  # logged even when the proxy stops first
                self._record(started, started, req, 0, 0, ("blackhole", BEFORE), None, None)
            return False
        if decision is not None and decision[1] == BEFORE and expect:
            # Refuse before the body is sent, as S3 does; the unread body ends the connection.
            self._count(*decision)
            out = await self._fault(reader, writer, req, decision[0], None, body_read=False)
            status = ERRORS[decision[0]][0] if decision[0] in ERRORS else None
            self._record(started, started, req, 0, out, decision, status, None)
            return False
        if expect:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        body = await self._read_body(reader, req)
        body_done = time.monotonic()
        client_keep = _keep_alive(req.header("connection"), head)
        if decision is not None and decision[1] == BEFORE:
            self._count(*decision)
            out = await self._fault(reader, writer, req, decision[0], None, body_read=True)
            keep = decision[0] in ERRORS and client_keep
            self._record(started, body_done, req, len(body), out, decision,
                         ERRORS[decision[0]][0] if keep else None, None)
            return keep
        resp = await self._forward(req, body, upstream)
        if resp is None:
            resp = _error_response(req, 502, "Bad Gateway", "BadGateway",
                                   "The fault proxy could not reach the store.")
            resp.close = True
            decision = None
        if decision is not None:
            self._count(*decision)
            out = await self._fault(reader, writer, req, decision[0], resp, body_read=True)
            keep = decision[0] in ERRORS and client_keep
            self._record(started, body_done, req, len(body), out, decision,
                         ERRORS[decision[0]][0] if keep else None, resp.status)
            return keep
        out = await _send(writer, _serialize(req, resp))
        self._record(started, body_done, req, len(body), out, None, resp.status, resp.status)
        return client_keep and not resp.close

    def _record(self, started: float, body_done: float, req: Request, nin: int, nout: int,
                decision: tuple[str, str] | None, status: int | None,
                upstream_status: int | None) -> None:
        ex = Exchange(started, body_done, time.monotonic(), req.method, req.target, status,
                      upstream_status, nin, nout, decision[0] if decision else None,
                      decision[1] if decision else None)
        with self._lock:
            self.exchanges.append(ex)

    async def _read_body(self, reader: asyncio.StreamReader, req: Request) -> bytes:
        if "chunked" in req.header("transfer-encoding").lower():
            return await _read_chunked(reader, self.max_body)
        length = req.header("content-length")
        if not length:
            return b""
        n = int(length)
        if n < 0 or n > self.max_body:
            raise ProxyError(f"request body of {n} bytes is over the limit")
        return await reader.readexactly(n)

    async def _forward(self, req: Request, body: bytes,
                       upstream: list[_Upstream]) -> Response | None:
        """Send the request to the store and read its whole answer; None if unreachable."""
        raw = _serialize_request(req, body)
        for _ in range(2):
            if not upstream:
                try:
                    r, w = await asyncio.open_connection(self.upstream_host, self.upstream_port,
                                                         limit=MAX_HEAD)
                except OSError:
                    return None
                upstream.append(_Upstream(r, w))
            up = upstream[0]
            reused = up.used > 0
            up.used += 1
            try:
                up.writer.write(raw)
                await up.writer.drain()
                resp = await _read_response(up.reader, req.method, self.max_body)
            except (ConnectionError, asyncio.IncompleteReadError, OSError, ProxyError,
                    ValueError):
                _close(up.writer)
                upstream.clear()
                if reused:
                    continue  # a stale keep-alive connection: once more on a fresh one
                return None
            if resp.close:
                _close(up.writer)
                upstream.clear()
            return resp
        return None

    async def _fault(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     req: Request, kind: str, resp: Response | None, *, body_read: bool) -> int:
        """Inject one fault; returns the bytes written to the client."""
        if kind in ERRORS:
            status, reason, code, message = ERRORS[kind]
            err = _error_response(req, status, reason, code, message)
            if not body_read:
                err.headers.append(("Connection", "close"))
            n = await _send(writer, _serialize(req, err))
            if not body_read:
                _close(writer)
            return n
        if kind == "stall":
            # Silent until stall_seconds pass or the client gives up (its Exchange's
            # `finished` then tells when: a client timeout shows as finished - started).
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                async with asyncio.timeout(self.stall_seconds):
                    while await reader.read(65536):
                        pass
            _close(writer)
            return 0
        raw_head, raw_body = _serialize_parts(req, resp) if resp is not None else (b"", b"")
        if kind == "reset":
            if raw_body:
                cut = raw_head + raw_body[: len(raw_body) // 2]
            else:
                cut = raw_head[: len(raw_head) // 2]
            n = await _send(writer, cut)
            await _reset(writer)
            return n
        assert kind == "truncate"
        if resp is None:
            # Nothing was forwarded: cut short the error the store would have given.
            err = _error_response(req, 500, "Internal Server Error", "InternalError",
                                  "We encountered an internal error. Please try again.")
            raw_head, raw_body = _serialize_parts(req, err)
        cut = (raw_head + raw_body[: len(raw_body) // 2] if raw_body
               else raw_head[: len(raw_head) // 2])
        n = await _send(writer, cut)
        _close(writer)
        return n
