"""The DICOMweb server (PS3.18): QIDO-RS, WADO-RS and WADO-URI over a migrated archive.

Read-only; every instance is served as stored (no transcoding: each part names its transfer
syntax), from one range GET per run of neighbouring members, blake3 checked. An error before
the first byte is an HTTP status with its reason (in the body and a `Warning: 299` header);
one after it (an object gone or altered mid-answer) aborts the connection, so the client
cannot take a cut answer for a whole one. Access log lines name the route, never the UIDs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

from aiohttp import web

from ..backends.body import Buffer
from ..errors import IntegrityError, ObjectArchivedError, ObjectNotFoundError, PacsMigrateError
from ..fanout import mapped
from . import qido, wado
from .catalog import Instance
from .served import (
    SERVED,
    Handler,
    Served,
    authenticate,
    cross_origin,
    fail,
    no_preflight,
    origin_header,
)

log = logging.getLogger("pacsmigrate.serve")

DICOM_JSON = "application/dicom+json"
METADATA_READS = 8  # headers read at once for one /metadata answer
# A client that takes none of a write's bytes for this long is cut (a slow viewer over a
# WAN still takes a 16 MiB run in it at ~150 KB/s): what its answer holds goes back.
WRITE_TIMEOUT = 120.0
WRITE_SLICE = 1 << 20  # bytes handed to the transport at once


def _uid(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not qido.is_uid(value):
        raise fail(400, f"{name} in the path is not a UID: digits and dots, at most 64")
    return value


def _media(accept: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";") if f.strip()]
        if not fields:
            continue
        params = {}
        for f in fields[1:]:
            k, _, v = f.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        out.append((fields[0].lower(), params))
    return out or [("*/*", {})]


def _accepts_json(request: web.Request) -> None:
    ok = {"*/*", "application/*", DICOM_JSON, "application/json"}
    if not any(m in ok for m, _ in _media(request.headers.get("Accept", "*/*"))):
        raise fail(406, "this server answers searches and metadata as application/dicom+json "
                         "(or application/json) only")


def _syntaxes(request: web.Request, found: list[Instance]) -> None:
    """A retrieve's Accept must allow multipart/related DICOM in the stored syntaxes."""
    stored = {i.transfer_syntax for i in found}
    accepted: set[str] = set()  # PS3.18: one media range a syntax, the answer may mix them
    for media, params in _media(request.headers.get("Accept", "*/*")):
        if media in ("*/*", "multipart/*"):
            return
        if media == "multipart/related" and params.get("type", "application/dicom") in (
                "application/dicom", "application/*", "*/*"):
            wanted = params.get("transfer-syntax", "*")
            if wanted == "*":
                return
            accepted.add(wanted)
    if stored <= accepted:
        return
    raise fail(406, "instances are served as stored, as multipart/related; "
                     'type="application/dicom" in their transfer syntax '
                     f"({', '.join(sorted(stored))}); this server does not transcode")


async def _json(request: web.Request, body: list[dict[str, Any]],
                ignored: Sequence[str] = ()) -> web.StreamResponse:
    if not body:
        return web.Response(status=204)
    headers = {}
    if ignored:
        headers["Warning"] = ('299 pacsmigrate "The following attributes are not supported '
                              f'for matching: {", ".join(ignored)}"')
    return web.Response(body=json.dumps(body).encode(), content_type=DICOM_JSON,
                        headers=headers)


def _base(request: web.Request) -> str:
    prefix = request.app.get(PREFIX, "")
    return f"{request.scheme}://{request.host}{prefix}"


PREFIX = web.AppKey("prefix", str)


def search(level: str, path_uids: tuple[str, ...]) -> Handler:
    names = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}

    async def handle(request: web.Request) -> web.StreamResponse:
        _accepts_json(request)
        fixed = {names[n]: _uid(request, n) for n in path_uids}
        try:
            q = qido.parse(list(request.query.items()), level, fixed)
        except qido.BadQuery as exc:
            raise fail(400, str(exc)) from None
        served = request.app[SERVED]
        body = await asyncio.to_thread(qido.search, served.catalog, q, level, _base(request))
        if not body and path_uids and not await _known(served, fixed):
            raise fail(404, "no such study (or series) in this archive")
        return await _json(request, body, q.ignored)

    return handle


async def _known(served: Served, fixed: dict[str, str]) -> bool:
    study = fixed["StudyInstanceUID"]
    series = fixed.get("SeriesInstanceUID")
    found = await asyncio.to_thread(served.catalog.query, (
        "SELECT 1 FROM series WHERE study = ?" + (" AND series = ?" if series else "")
        + " LIMIT 1"), [study, *([series] if series else [])])
    return bool(found)


async def _found(request: web.Request) -> list[Instance]:
    study = _uid(request, "study")
    series = _uid(request, "series") if "series" in request.match_info else None
    sop = _uid(request, "sop") if "sop" in request.match_info else None
    found = await asyncio.to_thread(request.app[SERVED].catalog.instances, study, series, sop)
    if not found:
        what = "instance" if sop else "series" if series else "study"
        raise fail(404, f"no such {what} in this archive")
    return found


# verify lists the damaged files in STATE/repair.jsonl; a plain migrate stores exactly those.
_REPAIR = "(run `pacsmigrate verify`, then `pacsmigrate migrate` again)"


async def _store_failed(served: Served, exc: PacsMigrateError) -> web.HTTPException:
    """The status and reason for a read that failed before the first byte went out."""
    if isinstance(exc, ObjectArchivedError):
        said = "ask for a restore (pacsmigrate restore --request-restore), then retry"
        if served.on_archived is not None and exc.key:
            said = f"a restore was asked for ({await served.on_archived(exc.key)}); retry later"
        return fail(503, f"the instance lies in an archived object (archive tier): {said}",
                     **{"Retry-After": "3600"})
    if isinstance(exc, ObjectNotFoundError):
        return fail(502, f"the store no longer holds the object of this instance {_REPAIR}")
    if isinstance(exc, IntegrityError):
        return fail(502, f"the instance's bytes in the store do not match their blake3 {_REPAIR}")
    return fail(502, f"the store failed: {exc}")


def _part_head(boundary: str, inst: Instance) -> bytes:
    # A file stored without its meta header has no syntax to name.
    syntax = f"; transfer-syntax={inst.transfer_syntax}" if inst.transfer_syntax else ""
    return (f"--{boundary}\r\nContent-Type: application/dicom{syntax}\r\n"
            f"Content-Length: {inst.size}\r\n\r\n").encode()


async def retrieve(request: web.Request) -> web.StreamResponse:
    """WADO-RS: a study, series or instance as multipart/related application/dicom."""
    served = request.app[SERVED]
    found = await _found(request)
    _syntaxes(request, found)
    parts = wado.instances(served.backend, served.budget, found)
    try:
        try:
            first = await anext(parts)
        except PacsMigrateError as exc:
            raise await _store_failed(served, exc) from None
        boundary = secrets.token_hex(16)
        heads = {inst.sop: _part_head(boundary, inst) for inst in found}
        end = f"--{boundary}--\r\n".encode()
        resp = web.StreamResponse(headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        # Known in advance: no chunked framing (a copy of every chunk), and a cut answer is
        # shorter than it says.
        resp.content_length = sum(len(heads[i.sop]) + i.size + 2 for i in found) + len(end)
        await resp.prepare(request)
        item: tuple[Instance, Any] | None = first
        try:
            while item is not None:
                inst, chunks = item
                await _write(resp, heads[inst.sop])
                await _send(resp, chunks)
                await _write(resp, b"\r\n")
                item = await anext(parts, None)
        except (PacsMigrateError, TimeoutError, ConnectionError) as exc:
            return _cut(request, resp, exc)
        await resp.write(end)
        await resp.write_eof()
        return resp
    finally:
        await parts.aclose()


async def _send(resp: web.StreamResponse, chunks: AsyncGenerator[Buffer, None]) -> None:
    """An instance's chunks, its iterator closed whatever happens: a client gone mid-way
    (the write fails) must give back at once the budget its answer holds (wado._large's),
    and the bytes it keeps, not when the garbage collector gets to them."""
    async with aclosing(chunks):
        async for chunk in chunks:
            # In slices: the transport keeps a copy of what the socket did not take at
            # once, a slice at most, not a 16 MiB run beside the budget's own.
            view = memoryview(chunk)
            for at in range(0, len(view), WRITE_SLICE):
                await _write(resp, view[at:at + WRITE_SLICE])


async def _write(resp: web.StreamResponse, data: Buffer) -> None:
    """A write that a client taking nothing for WRITE_TIMEOUT does not hold for ever (with
    the budget its answer holds): TimeoutError, and the connection is cut."""
    await asyncio.wait_for(resp.write(data), WRITE_TIMEOUT)


def _cut(request: web.Request, resp: web.StreamResponse, exc: Exception) -> web.StreamResponse:
    """Headers are gone: cut the connection, so the answer is not taken for whole. A client
    gone is handled here too: its error, caught, holds no frames (and their runs) alive."""
    if isinstance(exc, ConnectionError):
        log.info("a client left during a retrieve")
    else:
        log.warning("a retrieve was cut: %s", type(exc).__name__)
    if request.transport is not None:
        request.transport.abort()
    return resp


async def metadata(request: web.Request) -> web.StreamResponse:
    """WADO-RS metadata: each instance's header as DICOM JSON (bulk data left out)."""
    _accepts_json(request)
    served = request.app[SERVED]
    found = await _found(request)
    base = _base(request)
    try:
        got = await mapped(found, lambda inst: wado.metadata(served.backend, inst, base,
                                                             served.budget), METADATA_READS)
    except PacsMigrateError as exc:
        raise await _store_failed(served, exc) from None
    return await _json(request, got)


async def frames(request: web.Request) -> web.StreamResponse:
    raise fail(501, "frames are not offered: retrieve the whole instance (it is served as "
                     "stored, without decoding or transcoding its pixel data)")


async def wado_uri(request: web.Request) -> web.StreamResponse:
    """WADO-URI (PS3.18 9): ?requestType=WADO&studyUID=&seriesUID=&objectUID=."""
    q = request.query
    if q.get("requestType") != "WADO":
        raise fail(400, "requestType=WADO is required")
    missing = [n for n in ("studyUID", "seriesUID", "objectUID") if not q.get(n)]
    if missing:
        raise fail(400, f"missing {', '.join(missing)}")
    for n in ("studyUID", "seriesUID", "objectUID"):
        if not qido.is_uid(q[n]):
            raise fail(400, f"{n} is not a UID: digits and dots, at most 64")
    wanted = [m.strip() for m in q.get("contentType", "").split(",") if m.strip()]
    if not any(m in ("application/dicom", "*/*") for m in wanted):
        raise fail(406, "only contentType=application/dicom is offered (images are not "
                         "rendered; the default contentType is image/jpeg)")
    served = request.app[SERVED]
    found = await asyncio.to_thread(served.catalog.instances, q["studyUID"], q["seriesUID"],
                                    q["objectUID"])
    if not found:
        raise fail(404, "no such instance in this archive")
    ts = q.get("transferSyntax")
    if ts and ts != found[0].transfer_syntax:
        raise fail(406, f"the instance is stored in {found[0].transfer_syntax}; this server "
                         "does not transcode")
    # Streamed within the shared budget, as a retrieve is (an instance may be gigabytes).
    parts = wado.instances(served.backend, served.budget, found[:1])
    try:
        try:
            inst, chunks = await anext(parts)
        except PacsMigrateError as exc:
            raise await _store_failed(served, exc) from None
        resp = web.StreamResponse(headers={"Content-Type": "application/dicom"})
        resp.content_length = inst.size
        await resp.prepare(request)
        try:
            await _send(resp, chunks)
        except (PacsMigrateError, TimeoutError, ConnectionError) as exc:
            return _cut(request, resp, exc)
        await resp.write_eof()
        return resp
    finally:
        await parts.aclose()


def make_app(served: Served, *, prefix: str = "") -> web.Application:
    app = web.Application(middlewares=[cross_origin, authenticate])
    app.on_response_prepare.append(origin_header)
    app[SERVED] = served
    app[PREFIX] = prefix
    p = prefix.rstrip("/")
    study, series, sop = "{study}", "{series}", "{sop}"
    routes = [
        ("/studies", search("study", ())),
        ("/series", search("series", ())),
        ("/instances", search("instance", ())),
        (f"/studies/{study}/series", search("series", ("study",))),
        (f"/studies/{study}/instances", search("instance", ("study",))),
        (f"/studies/{study}/series/{series}/instances", search("instance", ("study", "series"))),
        (f"/studies/{study}", retrieve),
        (f"/studies/{study}/series/{series}", retrieve),
        (f"/studies/{study}/series/{series}/instances/{sop}", retrieve),
        (f"/studies/{study}/metadata", metadata),
        (f"/studies/{study}/series/{series}/metadata", metadata),
        (f"/studies/{study}/series/{series}/instances/{sop}/metadata", metadata),
        (f"/studies/{study}/series/{series}/instances/{sop}/frames/{{frames}}", frames),
        ("/wado", wado_uri),
    ]
    for path, handler in routes:
        app.router.add_get(p + path, handler, allow_head=False)
        app.router.add_route("OPTIONS", p + path, no_preflight)
    return app


__all__ = ["make_app"]
