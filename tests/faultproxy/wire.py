"""HTTP/1.1 pieces of the fault proxy: parsing requests and answers (Content-Length and
chunked bodies, keep-alive), serializing them, S3 XML error answers, and the ways a
connection is written to, reset or closed."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time

from .model import HOP_BY_HOP, ProxyError, Request, Response


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
