"""Azurite (Microsoft's Azure Storage emulator, from npm) on 127.0.0.1 for tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from .errors import ConfigError

LOOPBACK = "127.0.0.1"
VERSION = "3.35.0"  # the last release that runs on Node 20
# `make install` puts it here (npm install --prefix .tools/azurite azurite@VERSION).
TOOLS = Path(__file__).resolve().parent.parent / ".tools" / "azurite"
# Azurite's well-known development account (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")


def azurite_binary() -> str:
    """PACSMIGRATE_AZURITE, else the copy `make install` made, else azurite-blob on PATH."""
    for candidate in (os.environ.get("PACSMIGRATE_AZURITE"),
                      str(TOOLS / "node_modules" / ".bin" / "azurite-blob"),
                      shutil.which("azurite-blob")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(f"Azurite not found: run `make install` (it runs `npm install --prefix "
                      f".tools/azurite azurite@{VERSION}`) or set PACSMIGRATE_AZURITE")


class Azurite:
    """One Azurite blob service on a free loopback port, data in memory; a context manager."""

    def __init__(self, *, log: Path | None = None, tls: tuple[Path, Path, Path] | None = None,
                 loose: bool = False) -> None:
        """`tls`: (CA, certificate, key) PEM files (devstore.make_tls_files) to serve HTTPS
        with; `loose`: Azurite's mode that ignores the headers it does not implement (e.g.
        customer-provided keys) instead of refusing them."""
        self.log = log
        self.tls = tls
        self.loose = loose
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        scheme = "https" if self.tls else "http"
        return (f"DefaultEndpointsProtocol={scheme};AccountName={ACCOUNT};AccountKey={KEY};"
                f"BlobEndpoint={self.endpoint};")

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def start(self) -> Azurite:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            self.port = s.getsockname()[1]
        if self.log:
            self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        # --skipApiVersionCheck: the SDK speaks a newer API version than this Azurite knows.
        self._proc = subprocess.Popen(
            [azurite_binary(), "--blobHost", LOOPBACK, "--blobPort", str(self.port),
             "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck",
             "--silent", *(["--cert", str(self.tls[1]), "--key", str(self.tls[2])]
                           if self.tls else []), *(["--loose"] if self.loose else [])],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"Azurite exited with {self._proc.returncode}")
            try:
                context = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls \
                    else None
                urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=2, context=context)
            except urllib.error.HTTPError:
                return  # it answers (403 without a signature): ready
            except OSError:
                time.sleep(0.1)
                continue
            return
        self.stop()
        raise RuntimeError(f"Azurite did not answer on port {self.port} within {timeout:.0f} s")

    def create_container(self, name: str) -> None:
        from azure.storage.blob import BlobServiceClient

        verify = str(self.tls[0]) if self.tls else True
        with BlobServiceClient.from_connection_string(self.connection_string,
                                                      connection_verify=verify) as svc:
            svc.create_container(name)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> Azurite:  # noqa: PYI034
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
