"""What only Azure Blob does, on Azurite: Content-MD5 checked by the store, blocks a killed run
staged kept on resume, stale blocks dropped by the commit, credentials and errors in one line."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import AzureTarget, run_cli

from pacsmigrate.backends import open_backend
from pacsmigrate.backends.body import Body, Checksum, checksum
from pacsmigrate.backends.multipart import ChunkedBackend
from pacsmigrate.backends.retry import RetryBackend
from pacsmigrate.config import Destination, MiB, TransferConfig
from pacsmigrate.devazure import ACCOUNT, KEY
from pacsmigrate.errors import ConfigError, PermanentBackendError

PART = MiB
TRANSFER = TransferConfig(part_size=PART, multipart_threshold=PART, concurrency=4)
DATA = bytes(range(256)) * (3 * PART // 256) + b"tail"
PARTS = [DATA[i:i + PART] for i in range(0, len(DATA), PART)]


def on(target: AzureTarget, body: Callable[[RetryBackend], Awaitable[None]], *,
       dest: Destination | None = None) -> None:
    async def main() -> None:
        b = await open_backend(dest or Destination("az", target.bucket, "pfx"), TRANSFER)
        try:
            await body(b)
        finally:
            await b.close()

    asyncio.run(main())


async def chunks(parts: list[bytes]):  # type: ignore[no-untyped-def]
    for p in parts:
        yield p


def test_azure_checks_our_content_md5(azure_store: AzureTarget) -> None:
    async def body(b: RetryBackend) -> None:
        wrong = Checksum("md5", hashlib.md5(b"other bytes").digest())

        def put(bd: Body) -> Awaitable[str]:
            return b.store.put("pfx/md5", bd, checksum=wrong, metadata={})

        # Azure answers Md5Mismatch, Azurite InvalidOperation "contentMD5 doesn't match".
        with pytest.raises(PermanentBackendError, match="(?i)md5"):
            await b.send(put, b"these bytes", key="pfx/md5")
        assert await b.stat("pfx/md5") is None and b.stats.retries == {}
        # --checksum crc32: Azure checks MD5 only, so the store sends one of its own.
        right = await checksum(b"these bytes", "crc32")
        etag = await b.send(lambda bd: b.store.put("pfx/crc", bd, checksum=right, metadata={}),
                            b"these bytes", key="pfx/crc")
        assert etag == hashlib.md5(b"these bytes").hexdigest()

    on(azure_store, body)


def test_blocks_a_killed_run_staged_are_kept(azure_store: AzureTarget) -> None:
    """The part's MD5 rides in its block ID: a resumed save sends only what is missing."""
    async def body(b: RetryBackend) -> None:
        assert isinstance(b, ChunkedBackend)
        w, key = b.writer, "pfx/big"
        up = await w.create_upload(key, metadata={})
        for n in (1, 2):  # what the killed run got through
            md5 = hashlib.md5(PARTS[n - 1]).digest()
            await b.send(lambda bd, n=n, md5=md5: w.upload_part(key, up, n, bd, md5=md5),
                         PARTS[n - 1], key=key)
        stale = await w.create_upload(key, metadata={})  # an older attempt's other bytes
        await b.send(lambda bd: w.upload_part(key, stale, 3, bd,
                                              md5=hashlib.md5(b"junk").digest()),
                     b"junk", key=key)
        info = await b.save(key, chunks(PARTS), metadata={"pacsmigrate-kind": "file"})
        assert (b.stats.uploads_resumed, b.stats.parts_reused) == (1, 2)
        assert await b.load(key) == DATA
        st = await b.stat(key)
        # The blob carries the whole object's MD5, as if it had been one Put Blob.
        assert st is not None and st.etag == info.etag == hashlib.md5(DATA).hexdigest()
        assert dict(st.metadata) == {"pacsmigrate-kind": "file"}

    on(azure_store, body)
    assert azure_store.object_keys() == ["pfx/big"]
    assert azure_store.staged() == []  # the commit kept only its own blocks


def test_account_key_credentials(azure_store: AzureTarget,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY (the az CLI's names), endpoint given."""
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_KEY", KEY)
    dest = Destination("az", azure_store.bucket, "pfx", azure_store.server.endpoint)

    async def body(b: RetryBackend) -> None:
        await b.save("pfx/k", chunks([b"keyed"]))
        assert await b.load("pfx/k") == b"keyed"

    on(azure_store, body, dest=dest)


def test_wrong_key_is_permanent_and_says_so(azure_store: AzureTarget,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_KEY", "d3Jvbmcga2V5")
    dest = Destination("az", azure_store.bucket, "pfx", azure_store.server.endpoint)

    async def body(b: RetryBackend) -> None:
        with pytest.raises(PermanentBackendError, match="check the account key") as caught:
            await b.save("pfx/k", chunks([b"x"]))
        assert "\n" not in str(caught.value) and b.stats.requests == 1

    on(azure_store, body, dest=dest)


def test_a_key_that_cannot_sign_is_permanent_and_says_so() -> None:
    """A key that is not base64 fails in the SDK before anything is sent: its error has no
    status, and was retried as a "truncated response"."""
    from azure.storage.blob._shared.authentication import AzureSigningError

    from pacsmigrate.backends.azure_errors import classify, map_error

    exc = AzureSigningError("Incorrect padding")
    assert classify(exc) is None
    said = map_error(exc, key="pfx/k", container="c")
    assert isinstance(said, PermanentBackendError)
    assert "cannot sign a request (Incorrect padding): check the account key" in str(said)


def test_missing_container_is_permanent(azure_store: AzureTarget) -> None:
    async def body(b: RetryBackend) -> None:
        with pytest.raises(PermanentBackendError, match="does not exist: create it first"):
            await b.save("pfx/k", chunks([b"x"]))
        with pytest.raises(PermanentBackendError, match="does not exist"):
            await b.load("pfx/k")

    on(azure_store, body, dest=Destination("az", "no-such-container", "pfx"))


def _no_storage_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
                 "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def test_no_credentials_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_storage_credentials(monkeypatch)
    with pytest.raises(ConfigError, match="which storage account"):
        asyncio.run(open_backend(Destination("az", "c"), TRANSFER))


def test_a_malformed_connection_string_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    proc = run_cli("migrate", str(tmp_path / "src"), "az://c/p", "--state", str(tmp_path / "s"),
                   env={**os.environ, "AZURE_STORAGE_CONNECTION_STRING": "garbage"})
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        ("error: AZURE_STORAGE_CONNECTION_STRING: Connection string is either blank or "
         "malformed. (expected DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...)")]


def test_without_storage_credentials_a_managed_identity_is_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No key, SAS or connection string: azure-identity's DefaultAzureCredential (managed
    identity, `az login`, environment) signs the requests. Only its choice is tested here:
    getting a token needs Azure's identity endpoints, which this machine cannot reach."""
    from azure.identity.aio import DefaultAzureCredential

    from pacsmigrate.backends.azure import AzureStore

    _no_storage_credentials(monkeypatch)

    async def main() -> None:
        store = await AzureStore(Destination("az", "c", "", "https://acct.blob.core.windows.net"),
                                 TRANSFER).open()
        try:
            assert isinstance(store._credential, DefaultAzureCredential)
            assert store._service.url.startswith("https://acct.blob.core.windows.net")
        finally:
            await store.close()

    asyncio.run(main())


def test_verbose_shows_our_lines_not_the_sdks_http_log(azure_store: AzureTarget,
                                                       tmp_path: Path) -> None:
    """-v showed azure-core's request/response log (~30 lines a request) besides ours."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"not DICOM, still migrated")
    proc = run_cli("-v", "migrate", str(src), azure_store.url, "--state", str(tmp_path / "s"),
                   "--no-progress", env=azure_store.env())
    assert proc.returncode == 0, proc.stderr
    assert " pacsmigrate." in proc.stderr  # our -v lines
    assert "azure.core" not in proc.stderr and "Request URL" not in proc.stderr, proc.stderr


def test_cleanup_has_nothing_to_do_on_azure(azure_store: AzureTarget) -> None:
    proc = run_cli("cleanup", azure_store.url, "--older-than", "0", env=azure_store.env())
    assert proc.returncode == 0, proc.stderr
    assert "uncommitted blocks after 7 days" in proc.stdout
    missing = run_cli("cleanup", f"az://{azure_store.bucket}-none", env=azure_store.env())
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: container '{azure_store.bucket}-none' does not exist: create it first"]


def test_sas_token_credentials(azure_store: AzureTarget, monkeypatch: pytest.MonkeyPatch
                               ) -> None:
    """AZURE_STORAGE_SAS_TOKEN: a container SAS as a hospital's storage team hands out."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        ACCOUNT, azure_store.bucket, account_key=KEY,
        permission=ContainerSasPermissions(read=True, write=True, create=True, add=True,
                                           list=True, delete=True),
        expiry=datetime.now(UTC) + timedelta(hours=1))
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?" + sas)
    dest = Destination("az", azure_store.bucket, "pfx", azure_store.server.endpoint)

    async def body(b: RetryBackend) -> None:
        await b.save("pfx/small", chunks([b"by sas"]))
        await b.save("pfx/big", chunks(PARTS))  # blocks and a commit
        assert await b.load("pfx/small") == b"by sas"
        assert await b.load("pfx/big") == DATA
        assert [i.key async for i in b.list("pfx/")] == ["pfx/big", "pfx/small"]

    on(azure_store, body, dest=dest)


def test_connection_string_with_the_account_url_form(azure_store: AzureTarget) -> None:
    """DEST names the endpoint (https://ACCOUNT.blob.core.windows.net/... or --endpoint-url);
    the connection string lends its credentials."""
    dest = Destination("az", azure_store.bucket, "pfx", azure_store.server.endpoint)

    async def body(b: RetryBackend) -> None:
        await b.save("pfx/k", chunks([b"both"]))
        assert await b.load("pfx/k") == b"both"

    on(azure_store, body, dest=dest)
