"""The lean S3 data path's pieces without a server: URLs, error answers, credentials, signing."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiobotocore.credentials import AioCredentials, AioRefreshableCredentials
from botocore.exceptions import ClientError
from conftest import run

from pacsmigrate.backends.s3_errors import classify, map_error
from pacsmigrate.backends.s3_http import _Signer, bucket_url, client_error, tls_context
from pacsmigrate.errors import (
    ConfigError,
    ObjectExistsError,
    ObjectNotFoundError,
    PermanentBackendError,
)


def test_bucket_urls() -> None:
    assert bucket_url("b", "http://127.0.0.1:8333/", "us-east-1") == "http://127.0.0.1:8333/b"
    assert bucket_url("b", "https://s3.example.org", "x") == "https://s3.example.org/b"
    # AWS itself: virtual-hosted on the regional endpoint, path style for dotted names.
    assert bucket_url("pacs", None, "eu-west-1") == "https://pacs.s3.eu-west-1.amazonaws.com"
    assert (bucket_url("pacs.archive", None, "eu-west-1")
            == "https://s3.eu-west-1.amazonaws.com/pacs.archive")
    # --addressing-style: either style on either kind of endpoint.
    assert (bucket_url("b", "https://minio.local:9000", "x", style="virtual")
            == "https://b.minio.local:9000")
    assert bucket_url("pacs", None, "eu-west-1", style="path") == (
        "https://s3.eu-west-1.amazonaws.com/pacs")
    assert bucket_url("pacs.x", "https://m:9000", "x", style="virtual") == "https://m:9000/pacs.x"


S3_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b'<Message>Please reduce your request rate.</Message><RequestId>1</RequestId>'
            b'</Error>')


def test_error_answers_become_botocores_client_error() -> None:
    exc = client_error(503, S3_ERROR, "PutObject")
    assert exc.response["Error"] == {"Code": "SlowDown",
                                     "Message": "Please reduce your request rate."}
    assert str(exc) == ("An error occurred (SlowDown) when calling the PutObject operation: "
                        "Please reduce your request rate.")
    cause = classify(exc)
    assert cause is not None and cause.label == "503 SlowDown"
    # No body (or not XML): the status speaks, as botocore makes it.
    for body in (b"", b"<html>busy</html>", b"\x00garbage"):
        bare = client_error(500, body, "UploadPart")
        assert bare.response["Error"] == {"Code": "500", "Message": "Internal Server Error"}
        assert classify(bare) is not None


@pytest.mark.parametrize("status,code,error", [
    (412, "PreconditionFailed", ObjectExistsError),
    (404, "NoSuchKey", ObjectNotFoundError),
    (404, "NoSuchBucket", PermanentBackendError),
    (403, "SignatureDoesNotMatch", PermanentBackendError),
    (400, "BadDigest", PermanentBackendError),
])
def test_refusals_map_into_the_error_tree(status: int, code: str, error: type) -> None:
    body = f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode()
    exc = client_error(status, body, "PutObject")
    assert classify(exc) is None
    mapped = map_error(exc, key="k")
    assert type(mapped) is error and mapped is not None and mapped.key == "k"


def test_a_bare_400_to_a_read_says_what_it_may_mean() -> None:
    """A HEAD of an SSE-C object without the key: "store error (400): ... Bad Request" and
    nothing else (a HEAD's answer has no body); an index rebuild said only that."""
    for operation in ("HeadObject", "GetObject"):
        mapped = map_error(client_error(400, b"", operation), key="k")
        assert isinstance(mapped, PermanentBackendError) and mapped.key == "k"
        assert "give --sse-c-key-file FILE" in str(mapped) and "--region" in str(mapped)
    other = map_error(client_error(400, b"", "PutObject"), key="k")
    assert other is not None and "sse-c" not in str(other)


def test_only_store_errors_are_mapped() -> None:
    assert map_error(ValueError("a bug"), key="k") is None
    assert map_error(KeyError("k"), key="k") is None
    assert isinstance(map_error(TimeoutError("slow"), key="k"), Exception)


def test_static_credentials_are_frozen_once() -> None:
    creds = AioCredentials("AKID", "SECRET")
    signer = _Signer(creds, "us-east-1")

    async def go() -> tuple[Any, Any]:
        return await signer.auth(), await signer.auth()

    first, second = run(go())
    assert first is second and first.credentials.access_key == "AKID"


def test_refreshable_credentials_are_refreshed() -> None:
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    clock = [start]
    hour = datetime.timedelta(hours=1)

    async def refresh() -> dict[str, str]:
        return {"access_key": "NEW", "secret_key": "new-secret", "token": "new-token",
                "expiry_time": (clock[0] + hour).isoformat()}

    async def go() -> list[str]:
        creds = AioRefreshableCredentials("OLD", "old-secret", "old-token", start + hour,
                                          refresh, "test", time_fetcher=lambda: clock[0])
        signer = _Signer(creds, "us-east-1")
        seen = [(await signer.auth()).credentials.access_key]
        clock[0] = start + hour  # the first set expired: the next request refreshes
        seen += [(await signer.auth()).credentials.access_key for _ in range(2)]
        return seen

    assert run(go()) == ["OLD", "NEW", "NEW"]


def test_no_credentials_is_a_clear_permanent_error() -> None:
    signer = _Signer(None, "us-east-1")
    with pytest.raises(Exception) as caught:
        run(signer.auth())
    assert classify(caught.value) is None
    mapped = map_error(caught.value, key="k")
    assert mapped is not None and "credentials" in str(mapped)


def test_client_error_is_botocores() -> None:
    assert isinstance(client_error(403, b"", "GetObject"), ClientError)


def test_aiohttps_hidden_retry_can_still_be_turned_off() -> None:
    """DataPath turns off aiohttp's silent resend of a PUT on a dropped keep-alive connection
    through a private attribute: an aiohttp without it must be noticed, not ignored."""
    assert "_retry_connection" in aiohttp.ClientSession.ATTRS


def test_an_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CA certificates"):
        tls_context(str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="junk.pem"):
        tls_context(str(tmp_path / "junk.pem"))
    assert tls_context(True).check_hostname  # certifi's bundle, host names checked


def _body(*blocks: bytes) -> aiohttp.StreamReader:
    from unittest.mock import Mock

    reader = aiohttp.StreamReader(Mock(), 2**16)
    for block in blocks:
        reader.feed_data(block)
    reader.feed_eof()
    return reader


def test_a_body_is_read_into_one_buffer_of_its_declared_length() -> None:
    """aiohttp's read() held the blocks and their join at once (twice a range read)."""
    from pacsmigrate.backends.s3_errors import TruncatedBodyError
    from pacsmigrate.backends.s3_http import _read_into

    async def main() -> None:
        blocks = [bytes([i]) * (1000 + i) for i in range(5)]
        got = await _read_into(_body(*blocks), sum(map(len, blocks)))
        assert got == b"".join(blocks)
        with pytest.raises(TruncatedBodyError, match="got 1000 of 1001 bytes"):
            await _read_into(_body(blocks[0]), 1001)
        with pytest.raises(TruncatedBodyError, match="more than the 999 bytes declared"):
            await _read_into(_body(blocks[0]), 999)
        assert await _read_into(_body(), 0) == b""

    run(main())
