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

The package: model.py (fault kinds, Request, Exchange, Rule), proxy.py (FaultProxy),
wire.py (the HTTP/1.1 pieces). Import from the package: `from faultproxy import FaultProxy`.
"""

from __future__ import annotations

from .model import AFTER as AFTER
from .model import BEFORE as BEFORE
from .model import DEFAULT_MIX as DEFAULT_MIX
from .model import ERRORS as ERRORS
from .model import KINDS as KINDS
from .model import LOOPBACK as LOOPBACK
from .model import Exchange as Exchange
from .model import ProxyError as ProxyError
from .model import Request as Request
from .model import Response as Response
from .model import Rule as Rule
from .model import is_loopback as is_loopback
from .proxy import FaultProxy as FaultProxy

__all__ = ["AFTER", "BEFORE", "DEFAULT_MIX", "ERRORS", "KINDS", "Exchange", "FaultProxy",
           "Request", "Rule"]
