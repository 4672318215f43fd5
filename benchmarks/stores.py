"""Section `stores`: the CT tree migrated by pacsmigrate (defaults) into each kind of store the
project supports, in one run: S3 (this run's SeaweedFS), Azure Blob (Azurite, started here) and
a local directory on the same disk; `cp -r` of the tree beside them as the local copy's ceiling."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from dataclasses import dataclass, field

from measure import Timed, run_timed
from runs import Ctx, fail, pm_verify
from store import bucket_name
from targets import Section
from tools import BIN
from trees import Tree, Trees

from pacsmigrate.devazure import Azurite

KINDS = ("s3", "azure", "local", "cp -r")


@dataclass
class Row:
    kind: str
    store: str
    runs: list[Timed] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(t, attr) for t in self.runs)


def _dest(kind: str, ctx: Ctx, azurite: Azurite, name: str) -> tuple[list[str], dict[str, str]]:
    """The destination argument(s) and environment of one run, made fresh."""
    env = dict(ctx.store.env)
    if kind == "s3":
        bucket = ctx.store.fresh_bucket(name)
        return [f"s3://{bucket}/x", "--endpoint-url", ctx.store.endpoint], env
    if kind == "azure":
        container = bucket_name(name)
        azurite.create_container(container)
        env.update(azurite.env())
        return [f"az://{container}/x"], env
    target = ctx.work / "local-dest" / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    return [str(target)], env


def _drop(kind: str, ctx: Ctx, azurite: Azurite, name: str) -> None:
    if kind == "s3":
        ctx.store.drop(bucket_name(name))
    elif kind == "azure":
        from azure.storage.blob import BlobServiceClient

        with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
            svc.delete_container(bucket_name(name))
    else:
        shutil.rmtree(ctx.work / "local-dest" / name, ignore_errors=True)


def _one(ctx: Ctx, kind: str, tree: Tree, azurite: Azurite, repeat: int) -> Timed:
    name = f"stores-r{repeat}-{kind.replace(' ', '').replace('-', '')}"
    log = ctx.work / "logs" / f"{name}.log"
    if kind == "cp -r":
        target = ctx.work / "local-dest" / name
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        # pacsmigrate fsyncs every object, so the copy is timed until it is on disk too.
        t = run_timed(["sh", "-c", 'cp -r "$0" "$1" && sync -f "$1"', str(tree.root),
                       str(target)], env=ctx.store.env, log=log, idle_wait=ctx.idle_wait,
                      timeout=ctx.timeout)
        shutil.rmtree(target, ignore_errors=True)
        return t
    dest, env = _dest(kind, ctx, azurite, name)
    state = ctx.work / "state" / name
    shutil.rmtree(state, ignore_errors=True)
    argv = [str(BIN / "pacsmigrate"), "migrate", str(tree.root), *dest, "--state", str(state),
            "--no-progress"]
    t = run_timed(argv, env=env, log=log, own_pids=ctx.store.own_pids(),
                  idle_wait=ctx.idle_wait, timeout=ctx.timeout)
    if t.code != 0:
        fail(f"pacsmigrate into {kind} exited {t.code}", log)
    status = subprocess.run([str(BIN / "pacsmigrate"), "status", "--state", str(state), "--json"],
                            env=env, capture_output=True, text=True, check=False)
    done = json.loads(status.stdout or "{}").get("files_migrated")
    if done != tree.files:
        fail(f"pacsmigrate into {kind}: {done} files migrated, the tree has {tree.files}", log)
    pm_verify(state, env, log)
    _drop(kind, ctx, azurite, name)
    shutil.rmtree(state, ignore_errors=True)
    return t


def run_stores(ctx: Ctx, trees: Trees, megabytes: int) -> Section:
    import fasttree

    head, _offsets, nbytes = fasttree.template(fasttree.KINDS["ct"], trees.seed)
    tree = trees.fast("ct", -(-megabytes * 10**6 // (len(head) + nbytes)))
    stores = {"s3": "SeaweedFS (S3) on 127.0.0.1", "azure": "Azurite 3.35 (Azure Blob, in "
              "memory) on 127.0.0.1", "local": "a local directory (same ext4 disk)",
              "cp -r": "the same directory by `cp -r` + `sync` (the local copy's ceiling)"}
    rows = {k: Row(k, stores[k]) for k in KINDS}
    with Azurite(log=ctx.work / "logs" / "azurite.log") as azurite:
        for repeat in range(1, ctx.repeats + 1):
            order = KINDS if repeat % 2 else tuple(reversed(KINDS))
            for kind in order:
                t = _one(ctx, kind, tree, azurite, repeat)
                rows[kind].runs.append(t)
                print(f"  stores r{repeat} {kind:6s} {t.wall:8.2f} s "
                      f"{tree.bytes / 1e6 / t.wall:8.1f} MB/s  CPU {t.cpu:6.1f} s", flush=True)
    mb = tree.bytes / 1e6
    lines = [(f"Tree: **{tree.name}** ({tree.files:,} files, {mb:,.0f} MB). pacsmigrate with its "
             "defaults into each store, fresh bucket / container / directory and state per run, "
             f"{ctx.repeats} repeats in alternating order; every run checked by `pacsmigrate "
             "status --json` (files_migrated = the tree's files) and, untimed, by `pacsmigrate "
             "verify --deep` (every member read back, its blake3 compared). Client and stores share the "
             "machine's 2 CPUs; Azurite is Node.js keeping blobs in memory, so its row measures "
             "the client and Azurite together, not Azure."), "",
             "| store | tool | median wall s | MB/s | client CPU s | CPU s per GB | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for kind in KINDS:
        r = rows[kind]
        wall, cpu = r.median("wall"), r.median("cpu")
        peaks = [t.peak_rss_mib for t in r.runs if t.peak_rss_mib]
        rss = f"{max(peaks):,.0f}" if peaks else "n/a"
        tool = "cp -r" if kind == "cp -r" else "pacsmigrate"
        lines.append(f"| {r.store} | {tool} | {wall:.2f} | {mb / wall:.1f} | {cpu:.1f} | "
                     f"{cpu / (tree.bytes / 1e9):.1f} | {rss} |")
    local, cp = rows["local"].median("wall"), rows["cp -r"].median("wall")
    lines += ["", (f"pacsmigrate into a local directory takes {local / cp:.2f}x the time of "
              "`cp -r` + `sync` of the same tree (it also reads every header, hashes every byte, "
              "packs bundles, fsyncs each object and commits the index).")]
    return Section("stores", "8. Stores: the CT tree into S3, Azure Blob and a local directory",
                   lines)

