"""What every DICOMweb handler shares (the served archive, error answers), and what stands
in front of them: credentials, cross-origin rules, the access log."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from ..backends.base import Backend
from . import wado
from .catalog import Catalog

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Served:
    """What the handlers need: the catalogue, the store, the shared byte budget."""

    catalog: Catalog
    backend: Backend
    budget: wado.Budget
    token: str | None = None
    basic: str | None = None  # "user:password"
    on_archived: Callable[[str], Awaitable[str]] | None = None  # asks the store to restore
    cors: frozenset[str] = frozenset()  # origins whose web pages may read answers ("*": any)

    def allowed_origin(self, request: web.BaseRequest) -> str | None:
        origin = request.headers.get("Origin")
        if origin and ("*" in self.cors or origin in self.cors):
            return origin
        return None


SERVED = web.AppKey("served", Served)


def fail(status: int, reason: str, **headers: str) -> web.HTTPException:
    """An error answer that says why (body and Warning header)."""
    warning = reason.replace('"', "'")
    cls = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized, 403: web.HTTPForbidden,
           404: web.HTTPNotFound,
           406: web.HTTPNotAcceptable, 501: web.HTTPNotImplemented, 502: web.HTTPBadGateway,
           503: web.HTTPServiceUnavailable}[status]
    return cls(text=reason + "\n",
               headers={"Warning": f'299 pacsmigrate "{warning}"', **headers})


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    served = request.app[SERVED]
    if served.token is None and served.basic is None:
        return await handler(request)
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if served.token is not None and scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), served.token.encode()):
        return await handler(request)
    if served.basic is not None and scheme.lower() == "basic":
        try:
            pair = base64.b64decode(value.strip(), validate=True)
        except ValueError:
            pair = b""
        if hmac.compare_digest(pair, served.basic.encode()):
            return await handler(request)
    challenge = "Bearer" if served.token is not None else 'Basic realm="pacsmigrate"'
    raise fail(401, "this server asks for credentials (a bearer token or basic auth)",
                **{"WWW-Authenticate": challenge})


@web.middleware
async def cross_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A browser viewer on another origin (OHIF) asks first (a preflight, which carries no
    credentials); the answers themselves get their header in on_prepare."""
    served = request.app[SERVED]
    origin = served.allowed_origin(request)
    if (request.method == "OPTIONS" and origin is not None
            and request.headers.get("Access-Control-Request-Method")):
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "GET",
            "Access-Control-Allow-Headers": "Authorization, Accept",
            "Access-Control-Max-Age": "600"})
    return await handler(request)


async def origin_header(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.app[SERVED].allowed_origin(request)
    if origin is not None:  # before the headers leave, streamed answers included
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = "Warning, Content-Type"
        response.headers.add("Vary", "Origin")


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, route (its template: no UIDs), status, bytes, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = getattr(getattr(request, "match_info", None), "route", None)
        resource = getattr(route, "resource", None)
        name = resource.canonical if resource is not None else "(no route)"
        self.logger.info("%s %s %d %d bytes %.1f ms", request.method, name,
                         response.status, response.body_length, time * 1000)


async def no_preflight(request: web.Request) -> web.StreamResponse:
    raise fail(403, "cross-origin requests are not allowed from this origin (--cors-origin)")


__all__ = ["SERVED", "AccessLogger", "Handler", "Served", "authenticate", "cross_origin",
           "fail", "no_preflight", "origin_header"]
