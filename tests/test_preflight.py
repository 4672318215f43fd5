"""The pre-flight (`pacsmigrate check`, and the first step of `migrate`): every failure in one
line that names the thing and the fix, within seconds, before the state directory exists."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TEST_FILES, S3Target, run, run_cli
from helpers import cli_default_transfer

from pacsmigrate.backends import MemoryBackend
from pacsmigrate.config import Destination
from pacsmigrate.preflight import (
    FAIL,
    OK,
    PROBE_ATTEMPTS,
    WARN,
    check_sources,
    check_state,
    check_store,
    run_checks,
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(TEST_FILES / name, root / name)
    return root


def _check(tree: Path, target: S3Target, state: Path, *extra: str,
           env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = run_cli("check", str(tree), target.url, "--endpoint-url", target.info.endpoint_url,
                   "--state", str(state), *extra, env=env or target.env())
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.seaweed
def test_check_passes_and_leaves_nothing_behind(seaweed_s3: S3Target, tree: Path,
                                                tmp_path: Path) -> None:
    code, out = _check(tree, seaweed_s3, tmp_path / "state")
    assert code == 0, out
    lines = out.splitlines()
    assert any(line.startswith("ok    source: ") for line in lines)
    assert any(line.startswith("ok    state: ") for line in lines)
    assert "ok    store: " in out and "a probe object written, read back and deleted" in out
    assert "ok    clock: within a minute" in out
    assert "all checks passed" in out
    assert seaweed_s3.object_keys() == []  # the probe is gone
    assert not (tmp_path / "state").exists()  # check makes no state


@pytest.mark.seaweed
def test_wrong_credentials_say_which_and_where(seaweed_s3: S3Target, tree: Path,
                                               tmp_path: Path) -> None:
    env = {**seaweed_s3.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    code, out = _check(tree, seaweed_s3, tmp_path / "s", env=env)
    assert code == 2
    assert ("FAIL  store: store refused (SignatureDoesNotMatch): the secret key from "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY does not belong to its access key ID") in out
    env = {**seaweed_s3.env(), "AWS_ACCESS_KEY_ID": "nobody"}
    code, out = _check(tree, seaweed_s3, tmp_path / "s", env=env)
    assert code == 2
    assert (f"store refused (InvalidAccessKeyId): {seaweed_s3.info.endpoint_url} does not know "
            "the access key ID") in out
    # migrate stops on the same line, before its state directory exists
    proc = run_cli("migrate", str(tree), seaweed_s3.url, "--endpoint-url",
                   seaweed_s3.info.endpoint_url, "--state", str(tmp_path / "m"), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: store refused (InvalidAccessKeyId)")
    assert not (tmp_path / "m").exists()


def test_missing_bucket_is_named_with_the_fix(moto_s3: S3Target, tree: Path,
                                              tmp_path: Path) -> None:
    url = f"s3://no-such-bucket-{os.getpid()}/x"
    proc = run_cli("check", str(tree), url, "--endpoint-url", moto_s3.info.endpoint_url,
                   "--state", str(tmp_path / "s"), env=moto_s3.env())
    assert proc.returncode == 2
    assert (f"FAIL  store: store refused (NoSuchBucket): bucket 'no-such-bucket-{os.getpid()}' "
            f"does not exist at {moto_s3.info.endpoint_url}: create it (aws s3 mb "
            f"s3://no-such-bucket-{os.getpid()}) or correct the name in DEST") in proc.stdout


def test_failed_preflight_binds_no_state(moto_s3: S3Target, tree: Path, tmp_path: Path) -> None:
    """A first run to a wrong destination fails before the state exists, so the corrected
    command runs with the same --state (it used to stay bound to the wrong destination)."""
    state = tmp_path / "state"
    wrong = run_cli("migrate", str(tree), f"s3://wrong-{os.getpid()}/x", "--endpoint-url",
                    moto_s3.info.endpoint_url, "--state", str(state), env=moto_s3.env())
    assert wrong.returncode == 2 and "NoSuchBucket" in wrong.stderr
    assert not state.exists()
    right = run_cli("migrate", str(tree), moto_s3.url, "--endpoint-url",
                    moto_s3.info.endpoint_url, "--state", str(state), env=moto_s3.env())
    assert right.returncode == 0, right.stderr
    assert "OK: nothing left to migrate" in right.stdout


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A port that accepts connections and never answers (a hung proxy or store)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    server.close()


def test_dead_and_silent_endpoints_fail_fast(moto_s3: S3Target, tree: Path, tmp_path: Path,
                                             silent_endpoint: str) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    proc = run_cli("migrate", str(tree), moto_s3.url, "--endpoint-url", dead, "--state",
                   str(tmp_path / "a"), env=moto_s3.env())
    assert time.monotonic() - t0 < 30  # a run's defaults (10 attempts) took 36-45 s
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: cannot connect to {dead}" in proc.stderr
    assert "check --endpoint-url, that the store is running" in proc.stderr
    assert not (tmp_path / "a").exists()
    # An endpoint that accepts and never answers: said while waiting, then one line.
    proc = run_cli("migrate", str(tree), moto_s3.url, "--endpoint-url", silent_endpoint,
                   "--state", str(tmp_path / "b"), "--timeout", "2", env=moto_s3.env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"pre-flight: waiting for the store {moto_s3.url} to answer" in proc.stderr
    assert f"error: {silent_endpoint} did not answer in time" in proc.stderr


@pytest.mark.parametrize("write", [True, False], ids=["run", "dry-run"])
@pytest.mark.parametrize("given", [True, False], ids=["run's-backend", "check"])
def test_a_silent_endpoint_fails_the_preflight_within_30_s_by_default(
        write: bool, given: bool, tree: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint that accepts and never answers, at a run's defaults (10 attempts of 120 s:
    ~20 min of silence; the pre-flight then still took 91 s, its delete of a probe never
    written waiting as long as the write). Without waiting: every attempt is taken to run
    out its whole deadline and every backoff its whole cap; their sum is the longest the
    pre-flight can take, for migrate (the run's backend, wrapped) and `check` (its own)."""
    from pacsmigrate.backends import open_backend, policy, retry

    waits: list[float] = []

    async def silent(request: Awaitable[object], *, budget: float | None,
                     body: object = None, idle: float = 0.0) -> object:
        request.close()  # type: ignore[attr-defined]  # a coroutine, never sent
        assert budget is not None, "an attempt without a deadline could wait for ever"
        waits.append(budget)
        raise TimeoutError(f"no answer within {budget:g} s")

    class Longest:  # every backoff at its cap: recorded, not slept
        def __init__(self, *_: object) -> None:
            pass

        def uniform(self, low: float, high: float) -> float:
            waits.append(high)
            return 0.0

    monkeypatch.setattr(retry, "bounded", silent)
    monkeypatch.setattr(policy, "random", SimpleNamespace(Random=Longest))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    transfer = cli_default_transfer()
    dest = Destination.parse("s3://bucket/prefix", endpoint_url="http://127.0.0.1:9")

    async def go() -> list[str]:
        backend = await open_backend(dest, transfer) if given else None
        try:
            report = await run_checks((tree,), tmp_path / "state", dest, transfer,
                                      write=write, backend=backend)
        finally:
            if backend is not None:
                await backend.close()
        return [c.line for c in report.failed]

    [line] = run(go())
    assert "did not answer in time" in line, line
    # One request: its attempts and the backoffs between them, nothing after.
    assert len(waits) == 2 * PROBE_ATTEMPTS - 1, waits
    assert sum(waits) <= 30, waits


@pytest.mark.parametrize("scheme", ["s3", "az"])
def test_every_command_gives_up_on_an_unreachable_store_in_three_attempts(
        scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only migrate's pre-flight: verify, get, restore, cleanup... open a backend whose
    first requests give up on a refused connection after 3 attempts (a verify at a dead
    endpoint took 35 s of a run's 10), on the S3 listing, read and write paths and Azure's."""
    from pacsmigrate.backends import open_backend
    from pacsmigrate.backends.base import one_chunk
    from pacsmigrate.config import TransferConfig
    from pacsmigrate.errors import BackendError

    dead = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"BlobEndpoint={dead}/devstoreaccount1;"))
    dest = Destination.parse(f"{scheme}://bucket/prefix", endpoint_url=dead
                             if scheme == "s3" else f"{dead}/devstoreaccount1")

    async def go() -> list[int]:
        backend = await open_backend(dest, TransferConfig(max_attempts=10))

        async def listing() -> None:
            async for _ in backend.list("prefix/"):
                pass

        sent = []
        try:
            for request in (listing, lambda: backend.load("prefix/a"),
                            lambda: backend.save("prefix/b", one_chunk(b"x"))):
                before = backend.stats.requests
                with pytest.raises(BackendError, match="connect"):
                    await request()
                sent.append(backend.stats.requests - before)
        finally:
            await backend.close()
        return sent

    assert run(go()) == [3, 3, 3]


def test_dry_run_checks_the_store_unless_offline(moto_s3: S3Target, tree: Path,
                                                 tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    proc = run_cli("migrate", str(tree), moto_s3.url, "--endpoint-url", dead, "--state",
                   str(tmp_path / "a"), "--dry-run", env=moto_s3.env())
    assert proc.returncode == 2 and "cannot connect to" in proc.stderr
    assert "nothing left to migrate" not in proc.stdout
    proc = run_cli("migrate", str(tree), moto_s3.url, "--endpoint-url", dead, "--state",
                   str(tmp_path / "b"), "--dry-run", "--offline", env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    # A dry run against a good store lists it and writes nothing.
    proc = run_cli("migrate", str(tree), moto_s3.url, "--endpoint-url",
                   moto_s3.info.endpoint_url, "--state", str(tmp_path / "c"), "--dry-run",
                   env=moto_s3.env())
    assert proc.returncode == 0, proc.stderr
    assert moto_s3.object_keys() == []


def test_unknown_profile_is_named(moto_s3: S3Target, tree: Path, tmp_path: Path) -> None:
    env = {**moto_s3.env(), "AWS_PROFILE": "typo", "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    env.pop("AWS_ACCESS_KEY_ID")
    env.pop("AWS_SECRET_ACCESS_KEY")
    proc = run_cli("migrate", str(tree), moto_s3.url, "--endpoint-url",
                   moto_s3.info.endpoint_url, "--state", str(tmp_path / "s"), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "AWS profile 'typo' is not in ~/.aws/config or ~/.aws/credentials" in proc.stderr


def test_no_credentials_say_how_to_give_them(moto_s3: S3Target, tree: Path,
                                             tmp_path: Path) -> None:
    env = {k: v for k, v in moto_s3.env().items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")  # never ask a non-loopback address
    proc = run_cli("check", str(tree), moto_s3.url, "--endpoint-url",
                   moto_s3.info.endpoint_url, "--state", str(tmp_path / "s"), env=env)
    assert proc.returncode == 2
    assert ("FAIL  store: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or give --profile") in proc.stdout


def test_object_lock_asked_of_a_bucket_without_it(moto_s3: S3Target, tree: Path,
                                                  tmp_path: Path) -> None:
    code, out = _check(tree, moto_s3, tmp_path / "s", "--object-lock")
    assert code == 2
    assert f"FAIL  object lock: {moto_s3.url} has no object lock" in out


def test_state_inside_a_source_or_unwritable(tree: Path, tmp_path: Path) -> None:
    [c] = check_state(tree / "state", (tree,))
    assert c.verdict == FAIL and "lies inside the source" in c.line
    blocker = tmp_path / "file"
    blocker.write_text("x")
    [c] = check_state(blocker / "state", (tree,))
    assert c.verdict == FAIL and "is not a writable directory" in c.line
    [c] = check_state(tmp_path / "new" / "state", (tree,))
    assert c.verdict in (OK, WARN) and "free under" in c.line
    archive = tmp_path / "archive"
    archive.mkdir()
    [c] = check_state(archive / "state", (tree,), Destination.parse(str(archive)))
    assert c.verdict == FAIL and c.line == (
        f"{archive / 'state'} and the destination directory {archive} overlap (the state's "
        "files would be taken for objects): give --state outside it")
    [c] = check_state(tmp_path / "state", (tree,), Destination.parse(str(archive)))
    assert c.verdict in (OK, WARN)


def test_sources_missing_or_unlistable(tree: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("x")
    checks = check_sources((tree, tmp_path / "nope", tmp_path / "afile"))
    assert [c.verdict for c in checks] == [OK, FAIL, FAIL]
    assert "does not exist" in checks[1].line and "is not a directory" in checks[2].line

    def refuse(path: str) -> None:  # CI runs as root: mode 000 would still be readable
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "scandir", refuse)
    [c] = check_sources((tree,))
    assert c.verdict == FAIL and "cannot list" in c.line and "Permission denied" in c.line


@pytest.mark.parametrize("offset, verdict", [(0.0, OK), (120.0, WARN), (-120.0, WARN),
                                             (3600.0, FAIL)])
def test_clock_skew(offset: float, verdict: str) -> None:
    dest = Destination.parse("s3://b/x", endpoint_url=None)
    checks = run(check_store(MemoryBackend(), dest, write=True,
                             clock=lambda: time.time() + offset))
    clock = [c for c in checks if c.subject == "clock"]
    assert [c.verdict for c in clock] == [verdict], checks
    if verdict != OK:  # this machine ahead: +; the second the store stamps is whole
        said = re.search(r"clock is ([+-][\d,]+) s from the store's", clock[0].line)
        assert said is not None, clock[0].line
        assert abs(int(said[1].replace(",", "")) - offset) <= 2


def test_a_store_that_alters_objects_fails() -> None:
    class Altering(MemoryBackend):
        async def load(self, key: str, *, offset: int = 0, length: int | None = None) -> bytes:
            return (await super().load(key, offset=offset, length=length))[:-1]

    store = Altering()
    dest = Destination.parse("s3://b/x", endpoint_url=None)
    [c] = run(check_store(store, dest, write=True))
    assert c.verdict == FAIL and "read back different" in c.line
    assert store.objects == {}  # the probe was deleted all the same


def test_storage_classes_are_probed(moto_s3: S3Target, tree: Path, tmp_path: Path) -> None:
    code, out = _check(tree, moto_s3, tmp_path / "s", "--storage-class", "STANDARD_IA",
                       "--storage-class", "GLACIER_IR")
    assert code == 0, out
    assert "ok    storage class: STANDARD_IA, GLACIER_IR accepted" in out
    assert moto_s3.object_keys() == []  # every probe deleted
    code, out = _check(tree, moto_s3, tmp_path / "s", "--storage-class", "NOT_A_CLASS")
    assert code == 2
    assert (f"FAIL  storage class: {moto_s3.url} does not take storage class NOT_A_CLASS"
            in out)
    assert "choose classes this store offers" in out
