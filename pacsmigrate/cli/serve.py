"""`serve`: a read-only DICOMweb server (QIDO-RS, WADO-RS, WADO-URI) over a migration."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sqlite3
import ssl
import sys
from pathlib import Path

import click

from ..access import open_migration
from ..dicomweb.app import make_app
from ..dicomweb.catalog import CATALOG_NAME, Catalog, ensure
from ..dicomweb.served import AccessLogger, Served
from ..dicomweb.wado import Budget
from ..errors import ConfigError
from ..restore import RestoreRequest, request_restores
from .common import SSE_C_OPTION, handle_errors, run_main, state_option
from .logs import info_to_stderr

log = logging.getLogger("pacsmigrate.serve")
ACCESS = "pacsmigrate.serve.access"  # one line per request, on stderr and in --log-file
REFRESH = 300.0  # seconds between looks at the state (a migrate still running)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret(path: Path | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"the {what} file {path} is empty")
    return value


def _tls(certfile: Path | None, keyfile: Path | None) -> ssl.SSLContext | None:
    if (certfile is None) != (keyfile is None):
        raise ConfigError("TLS needs both --certfile and --keyfile")
    if certfile is None or keyfile is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the certificate {certfile} with key {keyfile}: "
                          f"{exc}") from None
    return ctx


async def _serve(state_dir: Path, host: str, port: int, catalog_path: Path, prefix: str,
                 token: str | None, basic: str | None, tls: ssl.SSLContext | None,
                 endpoint_url: str | None, sse_c_key_file: str | None,
                 restore: RestoreRequest | None, refresh: float, cors: frozenset[str]
                 ) -> None:
    from aiohttp import web

    async with open_migration(state_dir, endpoint_url=endpoint_url,
                              sse_c_key_file=sse_c_key_file) as opened:
        # Each look at the state opens it anew (catalog.ensure): a file put in its place (a
        # compaction, a --workers merge) is then seen; one process may open it once.
        opened.cp.close()
        try:
            made = await asyncio.to_thread(ensure, state_dir, catalog_path)
        except (OSError, sqlite3.Error) as exc:
            why = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ConfigError(f"cannot write the catalogue {catalog_path}: {why}; "
                              "give --catalog a writable path") from None
        served = Served(Catalog(catalog_path), opened.backend, Budget(), token, basic,
                        cors=cors)
        if restore is not None:
            async def on_archived(key: str) -> str:
                said = await request_restores(opened.backend, [key], restore)
                return ", ".join(sorted(said))
            served.on_archived = on_archived
        app = make_app(served, prefix=prefix)
        runner = web.AppRunner(app, access_log_class=AccessLogger,
                               access_log=logging.getLogger(ACCESS))
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=tls)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
            scheme = "https" if tls else "http"
            port = runner.addresses[0][1]  # the one given, or the one taken for --port 0
            n = served.catalog.query("SELECT COUNT(*) FROM instances")[0][0]
            click.echo(f"serving {n:,} instances ({'catalogue made' if made else 'catalogue'}"
                       f" {catalog_path}) at {scheme}://{host}:{port}{prefix} "
                       "(QIDO-RS, WADO-RS, WADO-URI at /wado); Ctrl-C stops", err=True)
            while True:
                await asyncio.sleep(refresh)
                if await asyncio.to_thread(ensure, state_dir, catalog_path):
                    old, served.catalog = served.catalog, Catalog(catalog_path)
                    log.info("the state changed: catalogue made again")
                    old.close()
        finally:
            await runner.cleanup()
            served.catalog.close()


@click.command()
@state_option()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Any but a loopback one needs --token-file or "
                   "--basic-auth-file, and --certfile/--keyfile.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on.")
@click.option("--prefix", default="", help="URL path the service lives under, e.g. "
              "/dicom-web (default: the root).")
@click.option("--catalog", "catalog_path", type=click.Path(path_type=Path, dir_okay=False),
              help="The search catalogue (SQLite), made from the state when missing or "
                   f"older than it [default: STATE/{CATALOG_NAME}].")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="A file holding the bearer token clients must send.")
@click.option("--basic-auth-file", type=click.Path(path_type=Path, dir_okay=False),
              help="A file holding USER:PASSWORD for HTTP basic auth.")
@click.option("--certfile", type=click.Path(path_type=Path, dir_okay=False),
              help="TLS certificate chain (PEM).")
@click.option("--keyfile", type=click.Path(path_type=Path, dir_okay=False),
              help="TLS private key (PEM).")
@click.option("--cors-origin", multiple=True,
              help="An origin (https://viewer.example.org) whose web pages may read the "
                   "answers, e.g. an OHIF viewer served from elsewhere; repeatable; * for any.")
@click.option("--endpoint-url", help="Override the endpoint recorded in the state.")
@click.option("--request-restore", is_flag=True,
              help="When an instance lies in an archive tier (S3 Glacier, Azure Archive), "
                   "ask the store to restore its object (the client gets 503 and retries).")
@click.option("--refresh", type=click.FloatRange(1), default=REFRESH, show_default=True,
              help="Seconds between looks at the state: the catalogue is made again when a "
                   "migrate has changed it.")
@SSE_C_OPTION
@handle_errors
def serve(state_dir: Path, host: str, port: int, prefix: str, catalog_path: Path | None,
          token_file: Path | None, basic_auth_file: Path | None, certfile: Path | None,
          keyfile: Path | None, cors_origin: tuple[str, ...], endpoint_url: str | None,
          request_restore: bool, refresh: float, sse_c_key_file: str | None) -> None:
    """Serve the migrated archive over DICOMweb (read-only): QIDO-RS searches, WADO-RS and
    WADO-URI retrieves, straight from the bundles (one range GET per instance, blake3
    checked). A store alone serves too: `index rebuild` makes the state first."""
    if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
        raise click.BadParameter("starts with / and does not end with one, e.g. /dicom-web",
                                 param_hint="--prefix")
    token = _secret(token_file, "token")
    basic = _secret(basic_auth_file, "basic auth")
    if basic is not None and ":" not in basic:
        raise ConfigError(f"the basic auth file {basic_auth_file} must hold USER:PASSWORD")
    tls = _tls(certfile, keyfile)
    if not _loopback(host) and (tls is None or (token is None and basic is None)):
        raise ConfigError(f"--host {host} is reachable from other machines: give "
                          "--token-file or --basic-auth-file, and --certfile with --keyfile "
                          "(patient images never go out unauthenticated or in clear text)")
    info_to_stderr(ACCESS)
    try:
        run_main(_serve(state_dir, host, port, catalog_path or state_dir / CATALOG_NAME,
                        prefix, token, basic, tls, endpoint_url, sse_c_key_file,
                        RestoreRequest() if request_restore else None, refresh,
                        frozenset(cors_origin)))
    except KeyboardInterrupt:
        click.echo("stopped serving", err=True)
        sys.exit(0)
