"""The fault proxy's vocabulary: the fault kinds and phases, the S3 error answers, and what
a test sees of a request (Request), of an exchange afterwards (Exchange) and of a targeted
rule (Rule)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

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
