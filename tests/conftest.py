"""Shared fixtures: real S3 servers on 127.0.0.1, DICOM samples, CLI and library runners."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pydicom
import pytest
from botocore.config import Config

from pacsmigrate.devazure import Azurite
from pacsmigrate.devstore import MotoServer, SeaweedFS, StoreInfo, create_bucket

logging.getLogger("werkzeug").setLevel(logging.WARNING)
PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
TEST_FILES = PYDICOM_DATA / "test_files"
_bucket_ids = itertools.count()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[StoreInfo]:
    server = MotoServer()
    info = server.start()
    yield info
    server.stop()


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreInfo]:
    store = SeaweedFS(tmp_path_factory.mktemp("weed"))
    info = store.start()
    yield info
    store.stop()


class S3Target:
    """A fresh bucket on a running server, with the env and a boto3 client to inspect it."""

    def __init__(self, info: StoreInfo, bucket: str, kind: str) -> None:
        self.info = info
        self.bucket = bucket
        self.kind = kind
        self.url = f"s3://{bucket}/archive"
        self.client = boto3.client(
            "s3", endpoint_url=info.endpoint_url, aws_access_key_id=info.access_key,
            aws_secret_access_key=info.secret_key, region_name=info.region,
            config=Config(s3={"addressing_style": "path"}))

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.info.env()}

    def object_keys(self) -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def get(self, key: str, offset: int | None = None, length: int | None = None) -> bytes:
        kwargs: dict[str, Any] = {}
        if offset is not None and length is not None:
            kwargs["Range"] = f"bytes={offset}-{offset + length - 1}"
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=key, **kwargs)["Body"].read()
        return body

    def pending_uploads(self) -> list[dict[str, Any]]:
        uploads: list[dict[str, Any]] = self.client.list_multipart_uploads(
            Bucket=self.bucket).get("Uploads", [])
        return uploads

    def drop(self, bucket: str | None = None) -> None:
        """Delete the bucket with what it holds (SeaweedFS drops its volumes at once; moto
        refuses a bucket that is not empty, which only costs memory)."""
        # A bucket left behind is not the test's failure.
        with contextlib.suppress(Exception):
            self.client.delete_bucket(Bucket=bucket or self.bucket)


def _target(info: StoreInfo, kind: str, monkeypatch: pytest.MonkeyPatch,
            request: pytest.FixtureRequest) -> S3Target:
    bucket = f"t{os.getpid()}-{next(_bucket_ids)}"
    create_bucket(info, bucket)
    for k, v in info.env().items():
        monkeypatch.setenv(k, v)
    target = S3Target(info, bucket, kind)
    # SeaweedFS gives every bucket volumes of its own and has a fixed number: a suite that
    # keeps hundreds of buckets runs out ("No writable volumes"). Deleting one frees them.
    request.addfinalizer(target.drop)
    return target


@pytest.fixture
def moto_s3(moto_server: StoreInfo, monkeypatch: pytest.MonkeyPatch,
            request: pytest.FixtureRequest) -> S3Target:
    return _target(moto_server, "moto", monkeypatch, request)


@pytest.fixture
def seaweed_s3(seaweed_server: StoreInfo, monkeypatch: pytest.MonkeyPatch,
               request: pytest.FixtureRequest) -> S3Target:
    return _target(seaweed_server, "seaweed", monkeypatch, request)


@pytest.fixture(params=["moto", pytest.param("seaweed", marks=pytest.mark.seaweed)])
def s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> S3Target:
    """Both tiers: moto (fast) and SeaweedFS (validates checksums and credentials)."""
    info = request.getfixturevalue(f"{request.param}_server")
    return _target(info, request.param, monkeypatch, request)


class LocalTarget:
    """A destination directory, inspected from outside like S3Target inspects a bucket."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)
        self.kind = "local"

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def object_keys(self) -> list[str]:
        out = []
        for dirpath, dirs, names in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirs[:] = [d for d in dirs if not d.startswith(".pacsmigrate-")]
            out += [str((Path(dirpath) / n).relative_to(self.root)) for n in names]
        return sorted(out)

    def get(self, key: str, offset: int | None = None, length: int | None = None) -> bytes:
        data = (self.root / key).read_bytes()
        if offset is not None and length is not None:
            return data[offset:offset + length]
        return data

    def pending_uploads(self) -> list[dict[str, Any]]:
        uploads = self.root / ".pacsmigrate-uploads"
        if not uploads.is_dir():
            return []
        found = []
        for p in sorted(uploads.iterdir()):
            try:
                found.append({"Key": (p / "upload.json").read_text(), "UploadId": p.name})
            except FileNotFoundError:
                continue  # being created or removed right now (as the backend's own listing)
        return found

    def leftovers(self) -> list[str]:
        """Temporary files a write left behind (a finished or failed write leaves none)."""
        tmp = self.root / ".pacsmigrate-tmp"
        return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[Azurite]:
    with Azurite() as server:
        yield server


class AzureTarget:
    """A fresh container on Azurite, inspected with the SDK's sync client."""

    def __init__(self, server: Azurite, container: str) -> None:
        from azure.storage.blob import BlobServiceClient

        self.server = server
        self.bucket = container
        self.url = f"az://{container}/archive"
        self.kind = "azurite"
        self.client = BlobServiceClient.from_connection_string(
            server.connection_string).get_container_client(container)

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.server.env()}

    def object_keys(self) -> list[str]:
        return sorted(b.name for b in self.client.list_blobs())

    def get(self, key: str, offset: int | None = None, length: int | None = None) -> bytes:
        data: bytes = self.client.download_blob(key, offset=offset, length=length).readall()
        return data

    def pending_uploads(self) -> list[dict[str, Any]]:
        """Azure has no unfinished uploads to list or abort: blocks staged and never
        committed stay invisible and expire (7 days); a commit keeps only the blocks it names."""
        return []

    def staged(self) -> list[str]:
        """Keys with blocks staged but not committed (an upload under way or abandoned)."""
        return sorted(b.name for b in self.client.list_blobs(include=["uncommittedblobs"])
                      if b.name not in set(self.object_keys()))


@pytest.fixture
def azure_store(azurite_server: Azurite, monkeypatch: pytest.MonkeyPatch) -> AzureTarget:
    container = f"t{os.getpid()}-{next(_bucket_ids)}"
    azurite_server.create_container(container)
    for k, v in azurite_server.env().items():
        monkeypatch.setenv(k, v)
    return AzureTarget(azurite_server, container)


@pytest.fixture
def local_store(tmp_path: Path) -> LocalTarget:
    """A fresh destination directory (created: the backend refuses a missing one)."""
    root = tmp_path / "archive"
    root.mkdir()
    return LocalTarget(root)


def _copy_samples(parent: Path) -> Path:
    dest = parent / "pydicom-samples"
    shutil.copytree(TEST_FILES, dest, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return dest


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """A copy of pydicom's real sample files (CD layout, no preamble, big endian, ...)."""
    return _copy_samples(tmp_path)


@pytest.fixture(scope="session")
def shared_samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy for tests that only read it (copy a file to tmp_path before changing it)."""
    return _copy_samples(tmp_path_factory.mktemp("samples"))


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a subprocess (as an admin would)."""
    proc = subprocess.run([sys.executable, "-m", "pacsmigrate", *args], env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def run(coro: Any) -> Any:
    return asyncio.run(coro)
