"""TLS to the store is verified by default: a private CA is trusted only when given --ca-bundle."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from conftest import TEST_FILES, S3Target, run_cli
from helpers import assert_complete, index_rows

from pacsmigrate.backends import one_chunk, open_backend
from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.config import Destination, TransferConfig
from pacsmigrate.devstore import SeaweedFS, StoreInfo, create_bucket, make_tls_files
from pacsmigrate.errors import PermanentBackendError

pytestmark = pytest.mark.seaweed

# Credentials that cannot be confused with any other word in the output.
ACCESS_KEY = "tlsAccessKey7Q3Z"
SECRET_KEY = "tlsSecretKey-9fXwq2Lr"
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreInfo]:
    store = SeaweedFS(tmp_path_factory.mktemp("weed-tls"), access_key=ACCESS_KEY,
                      secret_key=SECRET_KEY, tls=True)
    info = store.start()
    yield info
    store.stop()


class TlsTarget(S3Target):
    """A fresh bucket on the https store, inspected by a client that trusts its CA."""

    def __init__(self, info: StoreInfo, bucket: str) -> None:
        super().__init__(info, bucket, "seaweed-tls")
        self.client = boto3.client(
            "s3", endpoint_url=info.endpoint_url, aws_access_key_id=info.access_key,
            aws_secret_access_key=info.secret_key, region_name=info.region,
            verify=info.ca_file, config=Config(s3={"addressing_style": "path"}))

    def env(self, aws_ca_bundle: str | None = None) -> dict[str, str]:
        """The CLI's environment, independent of this machine's AWS_CA_BUNDLE."""
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        env.update(self.info.env())
        if aws_ca_bundle is not None:
            env["AWS_CA_BUNDLE"] = aws_ca_bundle
        return env


@pytest.fixture
def tls_s3(tls_server: StoreInfo, request: pytest.FixtureRequest) -> TlsTarget:
    bucket = f"tls{os.getpid()}-{abs(hash(request.node.name)) % 10**8}"
    create_bucket(tls_server, bucket)
    return TlsTarget(tls_server, bucket)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "README.txt"):
        shutil.copy(TEST_FILES / name, root / name)
    return root


def _migrate(tree: Path, target: TlsTarget, state: Path, *extra: str,
             endpoint: str | None = None) -> list[str]:
    return ["migrate", str(tree), target.url, "--endpoint-url",
            endpoint or target.info.endpoint_url, "--state", str(state), "--no-progress", *extra]


def _assert_refused_cleanly(proc_out: str, proc_err: str, elapsed: float) -> None:
    assert "Traceback" not in proc_err, proc_err
    assert "certificate" in proc_err and "--ca-bundle" in proc_err, proc_err
    # One clear line for the operator (logging may add lines before it, not after).
    assert proc_err.strip().splitlines()[-1].startswith("error: "), proc_err
    assert SECRET_KEY not in proc_out + proc_err and ACCESS_KEY not in proc_out + proc_err
    # A certificate problem is permanent: no retries with backoff before giving up.
    assert elapsed < 20, f"took {elapsed:.1f}s to refuse an untrusted certificate"


@pytest.mark.parametrize("aws_ca_bundle", [None, SYSTEM_CAS],
                         ids=["no-AWS_CA_BUNDLE", "AWS_CA_BUNDLE=system"])
def test_untrusted_certificate_fails_fast_with_a_clear_message(
        tls_s3: TlsTarget, tree: Path, tmp_path: Path, aws_ca_bundle: str | None) -> None:
    if aws_ca_bundle is not None and not Path(aws_ca_bundle).exists():
        pytest.skip(f"{aws_ca_bundle} not on this machine")
    started = time.monotonic()
    proc = run_cli("-vv", *_migrate(tree, tls_s3, tmp_path / "state"),
                   env=tls_s3.env(aws_ca_bundle), timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    _assert_refused_cleanly(proc.stdout, proc.stderr, elapsed)
    assert tls_s3.object_keys() == []  # nothing reached the store


def test_a_ca_bundle_of_another_ca_is_refused(tls_s3: TlsTarget, tree: Path,
                                               tmp_path: Path) -> None:
    other_ca, _, _ = make_tls_files(tmp_path / "other-ca")
    started = time.monotonic()
    proc = run_cli(*_migrate(tree, tls_s3, tmp_path / "state", "--ca-bundle", str(other_ca)),
                   env=tls_s3.env(), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    _assert_refused_cleanly(proc.stdout, proc.stderr, time.monotonic() - started)


def test_the_right_ca_but_the_wrong_host_name_is_refused(tls_s3: TlsTarget, tree: Path,
                                                          tmp_path: Path) -> None:
    """The certificate names 127.0.0.1; `localhost` reaches the same server but not that name."""
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo("localhost", None, socket.AF_INET)}
    except OSError:
        addrs = set()
    if "127.0.0.1" not in addrs:
        pytest.skip("localhost does not resolve to 127.0.0.1 here")
    port = tls_s3.info.endpoint_url.rsplit(":", 1)[1]
    started = time.monotonic()
    proc = run_cli(*_migrate(tree, tls_s3, tmp_path / "state", "--ca-bundle",
                             str(tls_s3.info.ca_file), endpoint=f"https://localhost:{port}"),
                   env=tls_s3.env(), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    _assert_refused_cleanly(proc.stdout, proc.stderr, time.monotonic() - started)


@pytest.mark.parametrize("aws_ca_bundle", [None, SYSTEM_CAS],
                         ids=["no-AWS_CA_BUNDLE", "AWS_CA_BUNDLE=system"])
def test_with_ca_bundle_the_migration_completes(tls_s3: TlsTarget, tree: Path, tmp_path: Path,
                                                aws_ca_bundle: str | None) -> None:
    if aws_ca_bundle is not None and not Path(aws_ca_bundle).exists():
        pytest.skip(f"{aws_ca_bundle} not on this machine")
    state = tmp_path / "state"
    proc = run_cli("-v", *_migrate(tree, tls_s3, state, "--ca-bundle", str(tls_s3.info.ca_file)),
                   env=tls_s3.env(aws_ca_bundle), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: nothing left to migrate" in proc.stdout
    assert SECRET_KEY not in proc.stdout + proc.stderr
    rows = assert_complete(tls_s3, state, tree)
    assert len(rows) == 3
    # A second run over https finds everything done and uploads nothing.
    again = run_cli(*_migrate(tree, tls_s3, state, "--ca-bundle", str(tls_s3.info.ca_file)),
                    env=tls_s3.env(aws_ca_bundle), timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "migrated now: 0 files" in again.stdout and "already migrated: 3" in again.stdout
    # Read-side commands trust the CA the migration was given, without being told again.
    check = run_cli("verify", "--state", str(state), "--deep", env=tls_s3.env(aws_ca_bundle),
                    timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_data_path_verifies_tls_as_the_client_does(tls_s3: TlsTarget, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """PUT, UploadPart and GET go over aiohttp, not botocore: the same CA file, host names
    checked, and an untrusted certificate is permanent (no retries)."""
    for k, v in tls_s3.info.env().items():
        monkeypatch.setenv(k, v)
    assert tls_s3.info.ca_file is not None
    ca = Path(tls_s3.info.ca_file)
    other_ca, _, _ = make_tls_files(tmp_path / "other-ca")
    url = tls_s3.info.endpoint_url
    localhost = f"https://localhost:{url.rsplit(':', 1)[1]}"
    small, parts = b"x" * 1000, [b"a" * (5 << 20), b"tail"]

    async def chunks() -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    async def go() -> None:
        b = await open_backend(Destination("s3", tls_s3.bucket, "", url),
                               TransferConfig(ca_bundle=ca))
        try:
            await b.save("k/small", one_chunk(small))
            await b.save("k/big", chunks())
            assert await b.load("k/small", offset=10, length=5) == small[10:15]
        finally:
            await b.close()
        refused = [(url, None), (url, other_ca)]
        if "127.0.0.1" in {a[4][0] for a in socket.getaddrinfo("localhost", None,
                                                               socket.AF_INET)}:
            refused.append((localhost, ca))  # the right CA, a name the certificate lacks
        for endpoint, bundle in refused:
            b = await open_backend(Destination("s3", tls_s3.bucket, "", endpoint),
                                   TransferConfig(ca_bundle=bundle, max_attempts=5))
            try:
                started = time.monotonic()
                for request in (b.save("k/new", one_chunk(small)), b.load("k/small")):
                    with pytest.raises(PermanentBackendError, match="certificate"):
                        await request
                assert b.stats.retries == {} and time.monotonic() - started < 10
            finally:
                await b.close()

    asyncio.run(go())
    assert tls_s3.object_keys() == ["k/big", "k/small"]
    assert tls_s3.get("k/big") == b"".join(parts)


def _migrated(tree: Path, target: TlsTarget, tmp_path: Path) -> tuple[Path, Path]:
    """A migration given a copy of the CA (a file the test may take away); state and CA."""
    assert target.info.ca_file is not None
    ca = tmp_path / "hospital-ca.pem"
    shutil.copy(target.info.ca_file, ca)
    state = tmp_path / "state"
    run_cli(*_migrate(tree, target, state, "--ca-bundle", str(ca)), env=target.env(),
            timeout=120, check=True)
    return state, ca


def _read_back(tree: Path, state: Path, env: dict[str, str], to: Path
               ) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """`get` of one file and `restore --all` of the tree, neither given --ca-bundle."""
    got = run_cli("get", str(tree / "CT_small.dcm"), "--state", str(state), "-o",
                  str(to / "got.dcm"), env=env, timeout=120)
    restored = run_cli("restore", "--state", str(state), "--all", "--to", str(to / "restored"),
                       "--strip-prefix", str(tree), "--no-progress", env=env, timeout=120)
    return got, restored


def test_get_and_restore_trust_the_ca_the_migration_remembered(
        tls_s3: TlsTarget, tree: Path, tmp_path: Path) -> None:
    state, ca = _migrated(tree, tls_s3, tmp_path)
    other_ca, _, _ = make_tls_files(tmp_path / "other-ca")
    # No AWS_CA_BUNDLE, or one naming another CA: the state's CA is the one trusted.
    for n, env in enumerate((tls_s3.env(), tls_s3.env(str(other_ca)))):
        to = tmp_path / f"back{n}"
        got, restored = _read_back(tree, state, env, to)
        assert got.returncode == 0, got.stdout + got.stderr
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert (to / "got.dcm").read_bytes() == (tree / "CT_small.dcm").read_bytes()
        for name in ("CT_small.dcm", "MR_small.dcm", "README.txt"):
            assert (to / "restored" / name).read_bytes() == (tree / name).read_bytes(), name

    # The same state without its remembered CA: refused, in one line, until the CA is given
    # another way (AWS_CA_BUNDLE: get and restore have no --ca-bundle).
    cp = Checkpoint(state)
    try:
        cp.put_meta("ca_bundle", None)
    finally:
        cp.close()
    started = time.monotonic()
    for proc in _read_back(tree, state, tls_s3.env(), tmp_path / "forgotten"):
        assert proc.returncode == 2, proc.stdout + proc.stderr
        _assert_refused_cleanly(proc.stdout, proc.stderr, time.monotonic() - started)
        assert "AWS_CA_BUNDLE" in proc.stderr, proc.stderr
    assert not (tmp_path / "forgotten" / "got.dcm").exists()
    got, restored = _read_back(tree, state, tls_s3.env(str(ca)), tmp_path / "by-env")
    assert got.returncode == 0 and restored.returncode == 0, got.stderr + restored.stderr

    # Remembered, but the file is gone since: one line naming it and the way out.
    cp = Checkpoint(state)
    try:
        cp.put_meta("ca_bundle", str(ca))
    finally:
        cp.close()
    moved = tmp_path / "moved-ca.pem"
    ca.rename(moved)
    for proc in _read_back(tree, state, tls_s3.env(), tmp_path / "moved"):
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr, proc.stderr
        said = (f"error: the private CA this migration was given, {ca}, is gone: put it back, "
                "or name the CA file in AWS_CA_BUNDLE")
        assert proc.stderr.strip().splitlines() == [said], proc.stderr
    got, restored = _read_back(tree, state, tls_s3.env(str(moved)), tmp_path / "moved")
    assert got.returncode == 0 and restored.returncode == 0, got.stderr + restored.stderr
    assert (tmp_path / "moved" / "got.dcm").read_bytes() == (tree / "CT_small.dcm").read_bytes()


def test_cleanup_over_https_needs_the_ca(tls_s3: TlsTarget, tmp_path: Path) -> None:
    left = tls_s3.client.create_multipart_upload(Bucket=tls_s3.bucket,
                                                 Key="archive/ab/cd/left.tar")
    args = ["cleanup", tls_s3.url, "--endpoint-url", tls_s3.info.endpoint_url,
            "--older-than", "0"]
    started = time.monotonic()
    refused = run_cli(*args, env=tls_s3.env(), timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    _assert_refused_cleanly(refused.stdout, refused.stderr, time.monotonic() - started)
    assert [u["UploadId"] for u in tls_s3.pending_uploads()] == [left["UploadId"]]

    done = run_cli(*args, "--ca-bundle", str(tls_s3.info.ca_file), env=tls_s3.env(),
                   timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "aborted: archive/ab/cd/left.tar" in done.stdout
    assert "1 unfinished uploads aborted" in done.stdout
    assert tls_s3.pending_uploads() == []


def test_index_rebuild_over_https_needs_the_ca_and_remembers_it(
        tls_s3: TlsTarget, tree: Path, tmp_path: Path) -> None:
    state, ca = _migrated(tree, tls_s3, tmp_path)
    rebuilt = tmp_path / "rebuilt"
    args = ["index", "rebuild", tls_s3.url, "--endpoint-url", tls_s3.info.endpoint_url,
            "--state", str(rebuilt), "--no-progress"]
    started = time.monotonic()
    refused = run_cli(*args, env=tls_s3.env(), timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    _assert_refused_cleanly(refused.stdout, refused.stderr, time.monotonic() - started)

    # Given the CA (into the same --state, as an operator re-runs it): the same index.
    done = run_cli(*args, "--ca-bundle", str(ca), env=tls_s3.env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rebuilt 3 index rows" in done.stdout, done.stdout
    assert index_rows(rebuilt) == index_rows(state)
    # The rebuilt state remembers the CA too: get needs no AWS_CA_BUNDLE.
    got, restored = _read_back(tree, rebuilt, tls_s3.env(), tmp_path / "back")
    assert got.returncode == 0 and restored.returncode == 0, got.stderr + restored.stderr
    assert (tmp_path / "back" / "got.dcm").read_bytes() == (tree / "CT_small.dcm").read_bytes()
