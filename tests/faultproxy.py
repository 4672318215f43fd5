"""A fault-injecting HTTP/1.1 reverse proxy on 127.0.0.1 in front of a real local S3 store.

    with FaultProxy(seaweed.endpoint_url, seed=7, probability=0.1) as proxy:
        run the client against proxy.url ...
        proxy.injected  # Counter: {"503": 3, "reset": 2, ...}

Every request is read whole from the client, then either answered with a fault BEFORE it
is forwarded (the store never sees it: a failed PUT is really not stored), or forwarded
and its answer replaced by a fault AFTER the store acted on it (the store did it, the
client saw an error: what a retry must cope with, e.g. a 412 for its own If-None-Match PUT).

Faults: "500" InternalError, "503" SlowDown, "429" TooManyRequests, "403" AccessDenied,
"NoSuchUpload" (404) (S3 XML error bodies); "reset" (part of the answer, then a TCP RST);
"stall" (no answer for `stall_seconds`, then close); "truncate" (headers with the full
Content-Length, fewer body bytes, then close); "blackhole" (after the request headers,
neither read the body nor answer for `stall_seconds`). Chosen per request by a seeded RNG,
by targeted rules (`inject`), or by a `storm` that fails everything for a while (or, with no
duration, until `calm()`: what a unit test uses, so no request races a clock).
Keep-alive, Content-Length and chunked bodies, `Expect: 100-continue` and HEAD are handled;
bodies are buffered (bounded by `max_body`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

LOOPBACK = "127.0.0.1"
BEFORE, AFTER = "before", "after"
ERRORS: dict[str, tuple[int, str, str, str]] = {
    "500": (500, "Internal Server Error", "InternalError",
            "We encountered an internal error. Please try again."),
    "503": (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
    "429": (429, "Too Many Requests", "TooManyRequests", "Please reduce your request rate."),
    "403": (403, "Forbidden", "AccessDenied", "Access Denied"),
    # What a store says to a retried CompleteMultipartUpload that already succeeded.
    "NoSuchUpload": (404, "Not Found", "NoSuchUpload",
                     ("The specified multipart upload does not exist. The upload ID might be "
                      "invalid, or the multipart upload might have been aborted or completed.")),
}
KINDS = (*ERRORS, "reset", "stall", "truncate", "blackhole")
# The default mix for random faults: mostly error answers, some broken connections.
DEFAULT_MIX: dict[str, float] = {"500": 2, "503": 2, "429": 1, "reset": 2, "stall": 1,
                                 "truncate": 2}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "expect"}
MAX_HEAD = 64 * 1024


class ProxyError(Exception):
    """A malformed request or answer: the connection is dropped."""


class _Target:
    """path and query of a request target (shared by Request and Exchange)."""

    target: str

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


@dataclass(frozen=True)
class Request(_Target):
    """What a fault decision sees: the request line and headers (the body comes later)."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str, default: str = "") -> str:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default



@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    close: bool = False  # the upstream said Connection: close


@dataclass(frozen=True)
class Exchange(_Target):
    """One request the proxy handled, for the test to inspect afterwards."""

    started: float
    body_done: float  # when the request body had arrived (time.monotonic)
    finished: float
    method: str
    target: str
    status: int | None  # what the client was told (None: no complete answer)
    upstream_status: int | None  # what the store answered (None: not forwarded)
    bytes_in: int  # request body bytes
    bytes_out: int  # answer bytes written to the client (head and body)
    fault: str | None
    phase: str | None



@dataclass
class Rule:
    """Fault the next `times` requests that `match` accepts."""

    kind: str
    phase: str
    match: Callable[[Request], bool] | None
    times: int
    hits: int = 0


@dataclass
class _Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    used: int = 0


@dataclass
class _Config:
    probability: float = 0.0
    kinds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    after: float = 0.5


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


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


# -- HTTP/1.1 pieces ------------------------------------------------------------------
def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            continue
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise ProxyError("malformed header line")
        headers.append((name, value.strip()))
    return headers


def _parse_request(head: bytes) -> Request:
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProxyError("malformed request line")
    return Request(parts[0], parts[1], tuple(_parse_headers(lines[1:])))


def _keep_alive(connection: str, head: bytes) -> bool:
    if head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0"):
        return "keep-alive" in connection.lower()
    return "close" not in connection.lower()


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return bytes(body)
        if len(body) + size > limit:
            raise ProxyError("chunked body over the limit")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ProxyError("malformed chunk")


async def _read_response(reader: asyncio.StreamReader, method: str, limit: int) -> Response:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        version, _, rest = lines[0].decode("latin-1").partition(" ")
        code, _, reason = rest.partition(" ")
        status = int(code)
        headers = _parse_headers(lines[1:])
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer (we strip Expect, so rare)
        break

    def get(name: str) -> str:
        return next((v for k, v in headers if k.lower() == name), "")

    connection = get("connection").lower()
    close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "chunked" in get("transfer-encoding").lower():
        body = await _read_chunked(reader, limit)
    elif get("content-length"):
        n = int(get("content-length"))
        if n > limit:
            raise ProxyError("answer over the limit")
        body = await reader.readexactly(n)
    else:
        body = await reader.read(limit + 1)  # until the store closes
        while len(body) <= limit and (more := await reader.read(limit + 1 - len(body))):
            body += more
        close = True
    return Response(status, reason, headers, body, close)


def _serialize_request(req: Request, body: bytes) -> bytes:
    lines = [f"{req.method} {req.target} HTTP/1.1"]
    for k, v in req.headers:
        if k.lower() in HOP_BY_HOP or k.lower() == "content-length":
            continue  # Host stays as the client signed it (SigV4)
        lines.append(f"{k}: {v}")
    if body or req.method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _serialize_parts(req: Request, resp: Response) -> tuple[bytes, bytes]:
    lines = [f"HTTP/1.1 {resp.status} {resp.reason}"]
    for k, v in resp.headers:
        low = k.lower()
        if low in HOP_BY_HOP or (low == "content-length" and req.method != "HEAD"):
            continue
        lines.append(f"{k}: {v}")
    if req.method != "HEAD" and resp.status not in (204, 304):
        lines.append(f"Content-Length: {len(resp.body)}")
    if resp.close:
        lines.append("Connection: close")
    body = b"" if req.method == "HEAD" else resp.body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body


def _serialize(req: Request, resp: Response) -> bytes:
    head, body = _serialize_parts(req, resp)
    return head + body


def _error_response(req: Request, status: int, reason: str, code: str, message: str
                    ) -> Response:
    request_id = f"faultproxy-{random.getrandbits(32):08x}"
    xml = ('<?xml version="1.0" encoding="UTF-8"?>\n'
           f"<Error><Code>{code}</Code><Message>{message}</Message>"
           f"<Resource>{_xml_escape(req.path)}</Resource><RequestId>{request_id}</RequestId>"
           "</Error>").encode()
    headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id),
               ("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()))]
    if req.method == "HEAD":
        headers.append(("Content-Length", str(len(xml))))
    return Response(status, reason, headers, xml)


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


async def _send(writer: asyncio.StreamWriter, data: bytes) -> int:
    writer.write(data)
    await writer.drain()
    return len(data)


async def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN, after what was written left."""
    for _ in range(500):  # abort() drops what is still buffered in the transport
        if writer.transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.01)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


__all__ = ["AFTER", "BEFORE", "DEFAULT_MIX", "ERRORS", "KINDS", "Exchange", "FaultProxy",
           "Request", "Rule"]
