"""What only a directory store does: atomic, never-overwriting writes; attributes; errors
mapped to one clear line; listings in key order across pages; dead writers' files swept."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from conftest import LocalTarget, run_cli

from pacsmigrate.backends import Backend, multipart, one_chunk, open_backend
from pacsmigrate.backends import local as local_mod
from pacsmigrate.backends.body import Body, Checksum
from pacsmigrate.backends.local import LocalStore
from pacsmigrate.backends.retry import RetryBackend
from pacsmigrate.config import Destination, MiB, TransferConfig
from pacsmigrate.errors import (
    BackendError,
    ObjectExistsError,
    PermanentBackendError,
)

TRANSFER = TransferConfig(part_size=MiB, multipart_threshold=MiB, concurrency=4,
                          retry_base_delay=0.01)


def on(root: Path, body: Callable[[RetryBackend], Awaitable[None]]) -> None:
    async def main() -> None:
        b = await open_backend(Destination("file", str(root)), TRANSFER)
        try:
            await body(b)
        finally:
            await b.close()

    asyncio.run(main())


def test_objects_are_plain_files_with_their_etag_and_metadata(local_store: LocalTarget) -> None:
    async def body(b: Backend) -> None:
        await b.save("3f/a2/x.tar", one_chunk(b"bundle bytes"), metadata={"pacsmigrate-kind": "tar"})

    on(local_store.root, body)
    path = local_store.root / "3f" / "a2" / "x.tar"
    assert path.read_bytes() == b"bundle bytes"  # readable with cp and tar, no tool needed
    assert os.getxattr(path, "user.pacsmigrate.etag").decode() == hashlib.md5(
        b"bundle bytes").hexdigest()
    assert local_store.leftovers() == []


def test_a_body_that_does_not_match_its_checksum_is_refused(local_store: LocalTarget) -> None:
    async def body(b: RetryBackend) -> None:
        for wrong in (Checksum("md5", hashlib.md5(b"other").digest()),
                      Checksum("crc32", zlib.crc32(b"other").to_bytes(4, "big"))):
            def put(bd: Body, w: Checksum = wrong) -> Awaitable[str]:
                return b.store.put("k", bd, checksum=w, metadata={})

            with pytest.raises(PermanentBackendError, match="does not match its checksum"):
                await b.send(put, b"these bytes", key="k")
        assert await b.stat("k") is None
        assert b.stats.retries == {}

    on(local_store.root, body)
    assert local_store.object_keys() == [] and local_store.leftovers() == []


def test_without_hard_links_writes_still_never_overwrite(local_store: LocalTarget,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Some SMB mounts refuse link(2): the store falls back to check-then-rename."""
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)

    async def body(b: Backend) -> None:
        await b.save("k", one_chunk(b"first"))
        with pytest.raises(ObjectExistsError):
            await b.save("k", one_chunk(b"second"))
        assert await b.load("k") == b"first"

    on(local_store.root, body)
    assert local_store.leftovers() == []


def test_transient_io_errors_are_retried_and_counted(local_store: LocalTarget,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An NFS server restart (EIO, ESTALE) is retried; the run's stats say so."""
    real = LocalStore._put
    calls = []

    def flaky(self: LocalStore, *args: object) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.ESTALE, "Stale file handle")
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalStore, "_put", flaky)

    async def body(b: RetryBackend) -> None:
        await b.save("k", one_chunk(b"data"))
        assert b.stats.retries == {"I/O error (ESTALE)": 1}
        assert await b.load("k") == b"data"

    on(local_store.root, body)


@pytest.mark.parametrize(("exc", "message"), [
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied in"),
    (OSError(errno.ENOSPC, "No space left on device"), "no space left in"),
])
def test_store_failures_become_one_clear_error(local_store: LocalTarget, exc: OSError,
                                               message: str) -> None:
    store = LocalStore(local_store.root, part_size=MiB)
    mapped = store.map_error(exc, key="k")
    assert isinstance(mapped, PermanentBackendError) and message in str(mapped)
    assert str(local_store.root) in str(mapped) and "\n" not in str(mapped)
    assert store.classify(exc) is None  # no retry can fix them


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", ".pacsmigrate-tmp/x", ""])
def test_keys_that_could_leave_the_root_are_refused(local_store: LocalTarget, key: str) -> None:
    async def body(b: Backend) -> None:
        with pytest.raises(BackendError, match="not a key a directory can hold"):
            await b.save(key, one_chunk(b"x"))

    on(local_store.root, body)
    assert local_store.object_keys() == []
    assert not (local_store.root.parent / "escape").exists()


def test_listing_is_in_key_byte_order_across_pages(local_store: LocalTarget,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_mod, "PAGE", 2)
    keys = ["a-c", "a/b", "a/b0", "a0", "b/c/d", "b/c/e", "ü"]

    async def body(b: Backend) -> None:
        for k in reversed(keys):
            await b.save(k, one_chunk(k.encode()))
        assert [i.key async for i in b.list("")] == sorted(keys, key=str.encode)
        assert [i.key async for i in b.list("a")] == ["a-c", "a/b", "a/b0", "a0"]
        assert [i.key async for i in b.list("a/b")] == ["a/b", "a/b0"]

    on(local_store.root, body)


def test_removing_the_last_key_of_a_directory_removes_the_directory(
        local_store: LocalTarget) -> None:
    async def body(b: Backend) -> None:
        await b.save("x/y/z", one_chunk(b"1"))
        await b.remove("x/y/z")

    on(local_store.root, body)
    assert not (local_store.root / "x").exists()


def test_a_dead_writers_temporary_files_are_swept(local_store: LocalTarget) -> None:
    tmp = local_store.root / ".pacsmigrate-tmp"
    tmp.mkdir()
    dead = tmp / f"{local_mod.HOST}.999999999.deadbeef"  # beyond pid_max: never alive
    live = tmp / f"{local_mod.HOST}.{os.getpid()}.cafe"
    remote = tmp / "otherhost.1.f00d"  # another machine's: kept until it is a day old
    old = tmp / "otherhost.2.beef"
    for p in (dead, live, remote, old):
        p.write_bytes(b"partial")
    os.utime(old, (0, 0))

    async def body(b: Backend) -> None:
        return None

    on(local_store.root, body)
    assert sorted(local_store.leftovers()) == sorted([live.name, remote.name])


def test_a_directory_that_cannot_be_written_is_read_and_refuses_writes_in_one_line(
        local_store: LocalTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive mounted read-only (its scratch folders absent, as in a copy of the objects
    alone) serves reads; a write says why it cannot, no traceback."""
    on(local_store.root, lambda b: b.save("a/x.tar", one_chunk(b"kept"), metadata={}))
    for name in local_mod.RESERVED:
        os.rmdir(local_store.root / name)
    made = Path.mkdir

    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        if self.parent == local_store.root:
            raise OSError(errno.EROFS, "Read-only file system")
        made(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", read_only)

    async def body(b: Backend) -> None:
        assert await b.load("a/x.tar") == b"kept"
        assert [u async for u in b.pending_uploads("")] == []  # type: ignore[attr-defined]
        for chunks in (one_chunk(b"new"), parts()):  # one request, and a multipart upload
            with pytest.raises(PermanentBackendError) as err:
                await b.save("a/y.tar", chunks, metadata={})
            assert str(err.value) == (
                f"cannot write in {local_store.root} (Read-only file system): the user "
                "running pacsmigrate must be able to write there (a read-only copy serves "
                "verify, get and restore)")

    async def parts() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * MiB

    on(local_store.root, body)


def test_rebuild_lists_a_stray_json_as_unreadable(local_store: LocalTarget, shared_samples: Path,
                                                  tmp_path: Path) -> None:
    """Someone's notes.json beside the bundles: one line naming it, no traceback."""
    run_cli("migrate", str(shared_samples), str(local_store.root), "--state",
            str(tmp_path / "s"), "--no-progress", check=True)
    (local_store.root / "notes.json").write_text('{"who": "the night shift"}')
    proc = run_cli("index", "rebuild", str(local_store.root), "--state", str(tmp_path / "r"),
                   "--no-progress")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "UNREADABLE manifest: notes.json"
    assert "rebuilt" in proc.stdout


async def _three_parts() -> AsyncIterator[bytes]:
    for _ in range(3):
        yield b"x" * MiB


async def _cancel_when(b: Backend, creating: threading.Event) -> float:
    """Start a multipart save, cancel it once `creating` is set (the create under way);
    returns how long the cancel took."""
    task = asyncio.create_task(b.save("p/k.tar", _three_parts()))
    await asyncio.to_thread(creating.wait, 10)
    began = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - began


def test_a_cancel_while_an_upload_is_created_leaves_no_upload(
        local_store: LocalTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload's folder is made in a thread a cancel does not stop: a cancel that lands
    while it runs (Ctrl-C as a bundle starts) still aborts it, as one during its parts does."""
    real = LocalStore._create_upload
    made = threading.Event()

    def slow(self: LocalStore, key: str, metadata: dict[str, str]) -> str:
        upload_id = real(self, key, metadata)
        made.set()
        time.sleep(0.3)  # the folder exists, the coroutine has not been told its id yet
        return upload_id

    monkeypatch.setattr(LocalStore, "_create_upload", slow)

    async def body(b: Backend) -> None:
        await _cancel_when(b, made)  # cancelled with the upload made, its id not returned

    on(local_store.root, body)
    assert local_store.pending_uploads() == [] and local_store.object_keys() == []


def test_a_cancel_does_not_wait_out_a_create_that_does_not_answer(
        local_store: LocalTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    """A create still under way when the cancel lands (a store being retried, a hung
    mount) gets CANCEL_GRACE, not every retry: the run stops; what it leaves, `cleanup`
    finds."""
    monkeypatch.setattr(multipart, "CANCEL_GRACE", 0.2)
    started, release = threading.Event(), threading.Event()

    def hung(self: LocalStore, key: str, metadata: dict[str, str]) -> str:
        started.set()
        release.wait(10)
        raise OSError(errno.EIO, "still not answering")

    monkeypatch.setattr(LocalStore, "_create_upload", hung)

    async def body(b: Backend) -> None:
        waited = await _cancel_when(b, started)
        release.set()
        assert 0.2 <= waited < 2.0, waited

    on(local_store.root, body)
    assert local_store.object_keys() == []
