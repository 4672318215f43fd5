"""`replicate`: a migration copied to a second store (other kind, same keys), checked, with its
own state that verify --deep, get and restore use; a re-run copies only what is missing."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from conftest import AzureTarget, LocalTarget, S3Target, run_cli
from helpers import assert_complete, index_rows, multipart_tree, source_files

from pacsmigrate.checkpoint import Checkpoint
from pacsmigrate.config import Destination, TransferConfig
from pacsmigrate.errors import ConfigError
from pacsmigrate.replicate import prepare_state


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return multipart_tree(tmp_path_factory.mktemp("replicate") / "pacs")


def _migrate(tree: Path, dest: str, state: Path, env: dict[str, str], *extra: str) -> None:
    run_cli("migrate", str(tree), dest, "--state", str(state), "--bundle-size", "8MiB",
            "--large-file", "3MiB", "--part-size", "5MiB", "--no-progress", *extra, env=env,
            check=True)


def test_local_migration_replicated_to_azure(tree: Path, local_store: LocalTarget,
                                             azure_store: AzureTarget, tmp_path: Path) -> None:
    state, replica = tmp_path / "state", tmp_path / "replica"
    _migrate(tree, str(local_store.root), state, local_store.env())
    dest2 = f"az://{azure_store.bucket}"
    env = azure_store.env()
    proc = run_cli("replicate", dest2, "--state", str(state), "--to-state", str(replica),
                   "--part-size", "5MiB", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Objects counted apart from the descriptor, run records and sidecars beside them.
    objects = len({r["key"] for r in index_rows(state)})
    beside = len(local_store.object_keys()) - objects
    assert (f"{objects:,} objects; {objects:,} copied" in proc.stdout
            and f"0 already there; {beside:,} manifests and records" in proc.stdout), proc.stdout
    # The same keys, every byte range right, the descriptor too: the replica stands alone.
    assert azure_store.object_keys() == local_store.object_keys()
    rows = assert_complete(azure_store, replica, tree)
    assert [r["key"] for r in rows] == [r["key"] for r in index_rows(state)]
    verify = run_cli("verify", "--state", str(replica), "--deep", "--source", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    files = source_files(tree)
    some = min(files)
    out = tmp_path / "one.dcm"
    run_cli("get", str(files[some]), "-o", str(out), "--state", str(replica), env=env,
            check=True)
    assert out.read_bytes() == files[some].read_bytes()
    rebuilt = tmp_path / "rebuilt"
    run_cli("index", "rebuild", dest2, "--state", str(rebuilt), "--no-progress", env=env,
            check=True)
    assert index_rows(rebuilt) == index_rows(replica)

    # An object lost in the replica store: a re-run copies it alone.
    lost = rows[0]["key"]
    azure_store.client.delete_blob(lost)
    again = run_cli("replicate", dest2, "--state", str(state), "--to-state", str(replica),
                    env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{objects:,} objects; 1 copied" in again.stdout, again.stdout
    assert f"{objects - 1:,} already there" in again.stdout, again.stdout
    assert azure_store.object_keys() == local_store.object_keys()


def test_s3_migration_replicated_to_a_directory(tree: Path, moto_s3: S3Target,
                                                local_store: LocalTarget, tmp_path: Path) -> None:
    """The source's prefix becomes the directory's first folder: the keys stay the same."""
    state, replica = tmp_path / "state", tmp_path / "replica"
    env = moto_s3.env()
    _migrate(tree, moto_s3.url, state, env, "--endpoint-url", moto_s3.info.endpoint_url)
    proc = run_cli("replicate", str(local_store.root), "--state", str(state), "--to-state",
                   str(replica), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Beside the prefix's keys, the descriptor and the runs' source roots at the root too.
    at_root = [k.split("/", 1)[1] for k in moto_s3.object_keys() if "/pacsmigrate-run/" in k]
    assert at_root and sorted(local_store.object_keys()) == sorted(
        [*moto_s3.object_keys(), "pacsmigrate.json", *at_root])
    assert_complete(local_store, replica, tree)
    status = json.loads(run_cli("status", "--state", str(replica), "--json", check=True).stdout)
    assert status["files_migrated"] == len(source_files(tree))
    verify = run_cli("verify", "--state", str(replica), "--deep", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The directory alone gives the index back, keys as they are.
    rebuilt = tmp_path / "rebuilt"
    run_cli("index", "rebuild", str(local_store.root), "--state", str(rebuilt), "--no-progress",
            check=True)
    assert index_rows(rebuilt) == index_rows(replica)
    said = run_cli("status", "--state", str(rebuilt), check=True).stdout
    assert "still to migrate: not known: this index was rebuilt from the store" in said, said
    text = run_cli("status", "--state", str(replica), check=True).stdout
    assert f"a replica of {moto_s3.url}: that migration's state as of " in text, text
    assert "every object copied here, finished " in text, text

    # An object damaged in the replica (same size): its verify lists it for the next
    # replicate, which copies it anew; the list is then done with.
    victim = local_store.root / index_rows(replica)[0]["key"]
    data = bytearray(victim.read_bytes())
    data[600] ^= 0xFF
    os.chmod(victim, 0o644)
    with open(victim, "r+b") as f:
        f.write(data)
    bad = run_cli("verify", "--state", str(replica), "--deep", env=env)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "the next `replicate` to this replica copies their objects again" in bad.stdout
    again = run_cli("replicate", str(local_store.root), "--state", str(state), "--to-state",
                    str(replica), env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "repaired: 1 objects" in again.stdout and "; 1 copied" in again.stdout, again.stdout
    assert not (replica / "repair.jsonl").exists()
    verify = run_cli("verify", "--state", str(replica), "--deep", env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_replica_whose_copy_stopped_says_so(tree: Path, local_store: LocalTarget,
                                              tmp_path: Path) -> None:
    """The replica's state is written before its objects are copied: until the copy ends,
    its status must not read as a finished replica."""
    state, replica = tmp_path / "state", tmp_path / "replica"
    _migrate(tree, str(local_store.root), state, local_store.env())
    source = Checkpoint(state, readonly=True)
    try:  # what a replicate killed after its state was prepared leaves
        prepare_state(source, replica, Destination.parse(str(tmp_path / "second")),
                      TransferConfig()).close()
    finally:
        source.close()
    text = run_cli("status", "--state", str(replica), check=True).stdout
    assert "the copy did NOT finish (stopped, or under way)" in text, text
    assert "still to migrate (of the source migration): none" in text, text
    doc = json.loads(run_cli("status", "--state", str(replica), "--json", check=True).stdout)
    assert doc["replica_of"] == f"file://{local_store.root}" and doc["replica_complete"] is None


def test_replica_must_keep_the_keys(tree: Path, local_store: LocalTarget, moto_s3: S3Target,
                                    tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = moto_s3.env()
    _migrate(tree, moto_s3.url, state, env, "--endpoint-url", moto_s3.info.endpoint_url)
    other_prefix = f"s3://{moto_s3.bucket}/elsewhere"
    proc = run_cli("replicate", other_prefix, "--endpoint-url", moto_s3.info.endpoint_url,
                   "--state", str(state), "--to-state", str(tmp_path / "r"), env=env)
    assert proc.returncode == 2 and "a replica keeps the same keys" in proc.stderr
    same = run_cli("replicate", moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
                   "--state", str(state), "--to-state", str(tmp_path / "r2"), env=env)
    assert same.returncode == 2 and "the migration's own destination" in same.stderr
    own = run_cli("replicate", str(local_store.root), "--state", str(state), "--to-state",
                  str(state), env=env)
    assert own.returncode == 2 and own.stderr.strip().splitlines() == [
        (f"error: --to-state {state} is the migration's own state: give the replica a "
         "state directory of its own")], own.stderr


def test_a_source_object_that_does_not_match_its_etag_is_not_copied(
        tree: Path, local_store: LocalTarget, azure_store: AzureTarget, tmp_path: Path) -> None:
    """Bytes changed in the primary store (same size): the replica refuses them before
    anything is committed under that key, in one line."""
    state = tmp_path / "state"
    _migrate(tree, str(local_store.root), state, local_store.env())
    rows = index_rows(state)
    victim = min({r["key"] for r in rows}, key=lambda k: (local_store.root / k).stat().st_size)
    path = local_store.root / victim
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:  # in place: the xattr ETag stays the original's MD5
        f.write(data)
    proc = run_cli("replicate", f"az://{azure_store.bucket}", "--state", str(state),
                   "--to-state", str(tmp_path / "r"), env=azure_store.env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        (f"error: {victim}: bytes read from the source do not match its ETag "
        f"{os.getxattr(path, 'user.pacsmigrate.etag').decode()}")]
    assert victim not in azure_store.object_keys()


def test_the_replica_keeps_each_object_s_class_and_metadata(tree: Path, moto_s3: S3Target,
                                                           tmp_path: Path) -> None:
    """The copy is stored with the source object's metadata, from which its storage class
    (and lock and tags) are made, as they were for the source."""
    state, replica = tmp_path / "state", tmp_path / "replica"
    env = moto_s3.env()
    _migrate(tree, moto_s3.url, state, env, "--endpoint-url", moto_s3.info.endpoint_url,
             "--storage-class", "STANDARD_IA")
    second = f"{moto_s3.bucket}-copy"
    moto_s3.client.create_bucket(Bucket=second)
    proc = run_cli("replicate", f"s3://{second}/archive", "--state", str(state), "--to-state",
                   str(replica), "--endpoint-url", moto_s3.info.endpoint_url, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keys = [k for k in moto_s3.object_keys() if k.endswith(".tar")]
    assert keys
    for key in keys:
        mine = moto_s3.client.head_object(Bucket=moto_s3.bucket, Key=key)
        theirs = moto_s3.client.head_object(Bucket=second, Key=key)
        assert mine["StorageClass"] == theirs["StorageClass"] == "STANDARD_IA"
        assert theirs["Metadata"] == mine["Metadata"] and mine["Metadata"]


def test_a_class_the_replica_store_lacks_is_refused_or_replaced(
        tree: Path, moto_s3: S3Target, azure_store: AzureTarget, tmp_path: Path) -> None:
    """An S3 class means nothing to Azure: refused in one line before anything is copied,
    unless --storage-class names the class of every copy."""
    state = tmp_path / "state"
    env = {**moto_s3.env(), **azure_store.env()}
    _migrate(tree, moto_s3.url, state, env, "--endpoint-url", moto_s3.info.endpoint_url,
             "--storage-class", "STANDARD_IA")
    dest = f"az://{azure_store.bucket}/{moto_s3.url.split('/', 3)[3]}"
    refused = run_cli("replicate", dest, "--state", str(state), "--to-state",
                      str(tmp_path / "r1"), env=env)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        ("error: the migration's objects are in storage classes the replica's store does not "
         "offer ('STANDARD_IA' is not a storage class of az:// stores (one of: Hot, Cool, "
         "Cold, Archive)): give replicate --storage-class CLASS for every copy, or "
         "--storage-class default (the store's own)")]
    assert azure_store.object_keys() == [] and not (tmp_path / "r1").exists()
    done = run_cli("replicate", dest, "--state", str(state), "--to-state", str(tmp_path / "r2"),
                   "--storage-class", "Cool", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    data = {r["key"] for r in index_rows(state)}
    assert data and {b.name: b.blob_tier for b in azure_store.client.list_blobs()
                     if b.name in data} == dict.fromkeys(data, "Cool")
    # The store's own class (Azurite's default tier is Hot), for a store without classes.
    azure_store.client.delete_blob(min(data))
    own = run_cli("replicate", dest, "--state", str(state), "--to-state", str(tmp_path / "r2"),
                  "--storage-class", "default", env=env)
    assert own.returncode == 0 and "; 1 copied" in own.stdout, own.stdout + own.stderr
    assert azure_store.client.get_blob_client(min(data)).get_blob_properties().blob_tier == "Hot"


@pytest.mark.seaweed
def test_a_class_the_replica_store_itself_refuses_stops_before_any_copy(
        tree: Path, moto_s3: S3Target, seaweed_s3: S3Target, tmp_path: Path) -> None:
    """A class every S3 store may name but this one does not take (MinIO has no GLACIER):
    a probe in each class, before any copy (it failed mid-way, object after object)."""
    from faultproxy import BEFORE, FaultProxy

    state = tmp_path / "state"
    env = {**moto_s3.env(), **seaweed_s3.env()}  # moto takes any credentials
    _migrate(tree, moto_s3.url, state, env, "--endpoint-url", moto_s3.info.endpoint_url,
             "--storage-class", "GLACIER_IR")
    with FaultProxy(seaweed_s3.info.endpoint_url) as proxy:
        proxy.inject("403", phase=BEFORE, times=10**6, match=lambda req: req.header(
            "x-amz-storage-class") == "GLACIER_IR")
        dest = f"s3://{seaweed_s3.bucket}/archive"
        proc = run_cli("replicate", dest, "--endpoint-url", proxy.url, "--state", str(state),
                       "--to-state", str(tmp_path / "r"), env=env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: {dest} does not take storage class GLACIER_IR ("), line
        assert line.endswith("choose classes this store offers (replicate --storage-class "
                             "CLASS, or default: the store's own)"), line
        assert seaweed_s3.object_keys() == [] and proxy.injected["403"] == 1
        done = run_cli("replicate", dest, "--endpoint-url", proxy.url, "--state", str(state),
                       "--to-state", str(tmp_path / "r"), "--storage-class", "STANDARD_IA",
                       env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    assert {r["key"] for r in index_rows(state)} <= set(seaweed_s3.object_keys())


@pytest.mark.seaweed
def test_a_locked_migration_is_not_copied_into_a_bucket_without_object_lock(
        tree: Path, moto_s3: S3Target, seaweed_s3: S3Target, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    """It failed mid-way, records copied, in the store's words (SeaweedFS: Invalid Request)."""
    bucket = seaweed_s3.bucket + "-lock"
    seaweed_s3.client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    request.addfinalizer(lambda: seaweed_s3.drop(bucket))
    state = tmp_path / "state"
    env = {**moto_s3.env(), **seaweed_s3.env()}
    _migrate(tree, f"s3://{bucket}/archive", state, env, "--endpoint-url",
             seaweed_s3.info.endpoint_url, "--retain-years", "30")
    proc = run_cli("replicate", moto_s3.url, "--endpoint-url", moto_s3.info.endpoint_url,
                   "--state", str(state), "--to-state", str(tmp_path / "r"), env=env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        (f"error: the migration's objects are locked (retention) and {moto_s3.url} has no "
         "object lock (create the bucket with object lock enabled): a replica keeps their "
         "locks")], proc.stderr
    assert moto_s3.object_keys() == []


def test_the_primary_reached_another_way_or_the_source_tree_is_refused(
        tree: Path, moto_s3: S3Target, local_store: LocalTarget, tmp_path: Path) -> None:
    """A replica must be another store (an object written to it must not show in the
    primary), and nothing of it may land in the migration's source tree."""
    state = tmp_path / "state"
    env = moto_s3.env()
    _migrate(tree, moto_s3.url, state, env, "--endpoint-url", moto_s3.info.endpoint_url)
    before = moto_s3.object_keys()
    other_spelling = moto_s3.info.endpoint_url.replace("127.0.0.1", "localhost") + "/"
    proc = run_cli("replicate", moto_s3.url, "--endpoint-url", other_spelling, "--state",
                   str(state), "--to-state", str(tmp_path / "r"), env=env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        (f"error: {moto_s3.url} is the migration's own store, reached another way: give "
         "another store for the replica")], proc.stderr
    assert moto_s3.object_keys() == before  # the probe went again
    inside = tree / "replica-state"
    proc = run_cli("replicate", str(local_store.root), "--state", str(state), "--to-state",
                   str(inside), env=env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        (f"error: the replica's --to-state {inside} and the migration's source {tree} "
         "overlap: the source is never written to, give a directory outside it")]
    assert not inside.exists()


def test_a_replica_store_that_refuses_deletes_keeps_the_probe_and_goes_on() -> None:
    """A WORM replica (deletes denied): the probe that tells it from the primary stays,
    said in the log; the replicate is not stopped by it."""
    from pacsmigrate.backends.memory import MemoryBackend
    from pacsmigrate.errors import PermanentBackendError
    from pacsmigrate.replicacheck import another_store as _another_store

    class Worm(MemoryBackend):
        async def remove(self, key: str) -> None:
            raise PermanentBackendError(f"AccessDenied: {key}", key=key)

    src, dst = MemoryBackend(), Worm()
    origin = Destination.parse("s3://primary/pacs")
    asyncio.run(_another_store(src, dst, origin, Destination.parse("s3://dr/pacs")))  # type: ignore[arg-type]
    assert len(dst.objects) == 1 and not src.objects
    with pytest.raises(ConfigError, match="the migration's own store, reached another way"):
        asyncio.run(_another_store(src, src, origin, origin))  # type: ignore[arg-type]
