"""The fault proxy itself, against a tiny local HTTP/1.1 server: forwarding and each fault."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from faultproxy import AFTER, BEFORE, FaultProxy

BODY = bytes(range(256)) * 40  # 10,240 bytes


class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stored: ClassVar[dict[str, bytes]] = {}
    seen: ClassVar[list[str]] = []

    def setup(self) -> None:
        super().setup()  # headers and body go out in two writes: no Nagle delay between
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append(f"GET {self.path}")
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(BODY), 3000):
                piece = BODY[i:i + 3000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        data = self.stored.get(self.path, BODY)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self) -> None:
        self.seen.append(f"HEAD {self.path}")
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()

    def do_PUT(self) -> None:
        self.seen.append(f"PUT {self.path}")
        n = int(self.headers["Content-Length"])
        self.stored[self.path] = self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("ETag", '"x"')
        self.end_headers()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream: str) -> Iterator[FaultProxy]:
    Upstream.seen.clear()
    with FaultProxy(upstream, seed=1, stall_seconds=1.0) as p:
        yield p


def conn(proxy: FaultProxy) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)


def raw(proxy: FaultProxy, request: bytes, *, timeout: float = 5) -> tuple[bytes, str]:
    """Send one raw request; everything read until EOF, and how the connection ended."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            return data, "reset"
        except TimeoutError:
            return data, "timeout"
        return data, "eof"


def test_forwards_with_keep_alive(proxy: FaultProxy) -> None:
    c = conn(proxy)
    c.request("PUT", "/k1", body=b"hello", headers={"Content-Length": "5"})
    r = c.getresponse()
    assert (r.status, r.read()) == (200, b"")
    c.request("GET", "/k1")
    assert c.getresponse().read() == b"hello"
    c.request("HEAD", "/k1")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Length") == str(len(BODY))
    assert r.read() == b""
    c.request("GET", "/chunked")
    assert c.getresponse().read() == BODY  # de-chunked, sent with a Content-Length
    c.close()
    assert proxy.connections == 1 and proxy.requests == 4
    assert proxy.bytes_in() == 5 and not proxy.injected


def test_expect_100_continue(proxy: FaultProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"PUT /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(b"abc")
        assert s.recv(1000).startswith(b"HTTP/1.1 200")
    assert Upstream.stored["/e"] == b"abc"


def test_refusal_before_100_continue_does_not_read_the_body(proxy: FaultProxy) -> None:
    proxy.inject("503", phase=BEFORE)
    data, end = raw(proxy, b"PUT /never HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                           b"Expect: 100-continue\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 503") and b"<Code>SlowDown</Code>" in data
    assert end == "eof" and "PUT /never" not in Upstream.seen


@pytest.mark.parametrize("kind,status,code", [("500", 500, "InternalError"),
                                              ("503", 503, "SlowDown"),
                                              ("429", 429, "TooManyRequests"),
                                              ("403", 403, "AccessDenied")])
@pytest.mark.parametrize("phase", [BEFORE, AFTER])
def test_error_answers(kind: str, status: int, code: str, phase: str,
                       proxy: FaultProxy) -> None:
    proxy.inject(kind, phase=phase)
    c = conn(proxy)
    c.request("PUT", f"/err-{kind}-{phase}", body=b"x")
    r = c.getresponse()
    assert r.status == status and f"<Code>{code}</Code>".encode() in r.read()
    # The store did it only when the fault came after forwarding.
    assert (f"PUT /err-{kind}-{phase}" in Upstream.seen) == (phase == AFTER)
    c.request("GET", "/k")  # the connection is still usable
    assert c.getresponse().read() == BODY
    assert proxy.injected == {kind: 1} and proxy.injected_by_phase == {(kind, phase): 1}


def test_error_answer_to_head_has_no_body(proxy: FaultProxy) -> None:
    proxy.inject("500", phase=BEFORE)
    c = conn(proxy)
    c.request("HEAD", "/h")
    r = c.getresponse()
    assert r.status == 500 and r.read() == b""
    c.request("GET", "/k")
    assert c.getresponse().read() == BODY


def test_reset_mid_body(proxy: FaultProxy) -> None:
    proxy.inject("reset", phase=AFTER)
    data, end = raw(proxy, b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {len(BODY)}".encode() in head
    assert 0 < len(body) < len(BODY) and BODY.startswith(body)
    assert end == "reset"


def test_truncate_keeps_the_full_content_length(proxy: FaultProxy) -> None:
    proxy.inject("truncate", phase=AFTER)
    data, end = raw(proxy, b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert f"Content-Length: {len(BODY)}".encode() in head
    assert len(body) == len(BODY) // 2 and end == "eof"


def test_stall_then_close(proxy: FaultProxy) -> None:
    proxy.inject("stall", phase=BEFORE)
    started = time.monotonic()
    data, end = raw(proxy, b"PUT /stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz")
    assert data == b"" and end == "eof"
    assert time.monotonic() - started >= 0.9
    assert "PUT /stalled" not in Upstream.seen


def test_stall_ends_when_the_client_gives_up(proxy: FaultProxy) -> None:
    proxy.stall_seconds = 30
    proxy.inject("stall", phase=AFTER)
    _, end = raw(proxy, b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n", timeout=0.5)
    assert end == "timeout"
    assert proxy.wait_for(lambda p: len(p.log()) == 1, 5)
    e = proxy.log()[0]
    assert e.fault == "stall" and e.finished - e.started < 2


def statuses(proxy: FaultProxy, n: int) -> list[int]:
    c = conn(proxy)
    out = []
    for _ in range(n):
        c.request("GET", "/k")
        r = c.getresponse()
        r.read()
        out.append(r.status)
    c.close()
    return out


def test_storm_fails_everything_until_calm(proxy: FaultProxy) -> None:
    proxy.storm(None, "503")
    assert statuses(proxy, 3) == [503, 503, 503]
    proxy.calm()
    assert statuses(proxy, 2) == [200, 200]
    assert proxy.injected == {"503": 3} and Upstream.seen == ["GET /k"] * 2  # none forwarded


def test_timed_storm_ends_by_itself(proxy: FaultProxy) -> None:
    # No request races the clock: one storm outlasts any test, the other is already over.
    proxy.storm(600, "500")
    assert statuses(proxy, 2) == [500, 500]
    proxy.storm(0, "503")
    assert statuses(proxy, 2) == [200, 200]
    assert proxy.injected == {"500": 2}


def test_random_faults_are_seeded(upstream: str) -> None:
    def faults(seed: int) -> list[str | None]:
        with FaultProxy(upstream, seed=seed, probability=0.3, kinds={"500": 1, "503": 1},
                        after=0.0) as p:
            c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=5)
            for _ in range(40):
                c.request("GET", "/k")
                c.getresponse().read()
            assert p.wait_for(lambda p: len(p.log()) == 40, 5)  # logged after answering
            return [e.fault for e in p.log()]

    first = faults(3)
    assert first == faults(3) and first != faults(4)
    assert 3 <= sum(f is not None for f in first) <= 25


def test_stops_cleanly_and_only_on_loopback(upstream: str) -> None:
    proxy = FaultProxy(upstream, stall_seconds=60).start()
    proxy.inject("stall")
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        started = time.monotonic()
        proxy.stop()  # a stalled connection does not hold it up
        assert time.monotonic() - started < 5
        assert s.recv(10) == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1)
    with pytest.raises(ValueError):
        FaultProxy("http://192.0.2.1:8333")
    with pytest.raises(ValueError):
        FaultProxy(upstream).inject("teapot")
