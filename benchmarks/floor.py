"""The per-file floor: what one lean Python process spends on a tree doing the product's
per-file work with none of its machinery (a probe for RESULTS.md, not part of `make bench`).

Each file: scandir walk, open + fstat + read + fstat + close, blake3, pacsmigrate's header
scan and `describe` (the keyed study group), its tar header and manifest line, the bytes
into an 8 MiB bundle. Each bundle: its manifest gzip-compressed (ISA-L, as the product),
PUT to a SeaweedFS on 127.0.0.1 (the product's own data path, CRC32 by ISA-L; or boto3's
put_object), then one LMDB transaction with its index,
SOP and content rows (the product's encodings, putmulti). Not done: grouping by study
across folders, intents, deduplication look-ups, a second process, progress, statistics.
Stages run one after the other (no overlap): the thread CPU of each is what it costs.

    .venv/bin/python benchmarks/floor.py TREE [--upload product|boto3|none] [--workdir DIR]

The tree should be in the page cache (read it once before); see RESULTS.md 2026-12-07 10:20.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import blake3
import lmdb
from isal import isal_zlib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from store import Store

from pacsmigrate import rows
from pacsmigrate.classify import describe
from pacsmigrate.header import parse
from pacsmigrate.manifest import GZIP, LEVEL, member_line
from pacsmigrate.paths import member_name
from pacsmigrate.records import Entry
from pacsmigrate.tables import content_key_of, path_key
from pacsmigrate.tarheader import pad, tar_header

BUNDLE = 8 << 20


class ProductPut:
    """PUT with pacsmigrate's data path (aiohttp, SigV4 UNSIGNED-PAYLOAD, CRC32 checked by
    the store), one request at a time on an event loop of its own."""

    def __init__(self, store: Store, bucket: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.path = self.loop.run_until_complete(self._open(store, bucket))

    async def _open(self, store: Store, bucket: str) -> Any:
        from aiobotocore.credentials import AioCredentials

        from pacsmigrate.backends.s3_http import DataPath, bucket_url
        info = store.info
        assert info is not None
        return DataPath(base=bucket_url(bucket, info.endpoint_url, info.region),
                        region=info.region,
                        credentials=AioCredentials(info.access_key, info.secret_key),
                        verify=False, pool=4, connect_timeout=10, read_timeout=120)

    async def _put(self, key: str, body: bytearray) -> None:
        from pacsmigrate.backends.body import Body, checksum
        await self.path.put(key, Body(body), checksum=await checksum(body, "crc32"))

    def __call__(self, key: str, body: bytearray) -> None:
        self.loop.run_until_complete(self._put(key, body))

    def close(self) -> None:
        self.loop.run_until_complete(self.path.close())
        self.loop.close()


class Floor:
    def __init__(self, state: Path, put: Any) -> None:
        shutil.rmtree(state, ignore_errors=True)
        self.env = lmdb.open(str(state), map_size=16 << 30, max_dbs=4)
        self.dbs = [self.env.open_db(n) for n in (b"index", b"sop", b"content")]
        self.put = put  # (key, body) -> None, or None: no upload
        self.t: Counter[str] = Counter()
        self.files = self.bundles = 0
        self.buf = bytearray()
        self.entries: list[Entry] = []
        self.lines: list[str] = []

    def tree(self, root: bytes, secret: bytes) -> None:
        clock, t = time.thread_time, self.t
        stack = [root]
        while stack:
            start = clock()
            with os.scandir(stack.pop()) as it:
                found = list(it)
            t["walk"] += clock() - start
            for de in found:
                start = clock()
                if de.is_dir(follow_symlinks=False):
                    stack.append(de.path)
                    t["walk"] += clock() - start
                    continue
                path = de.path
                t["walk"] += (now := clock()) - start
                fd = os.open(path, os.O_RDONLY)
                try:
                    size = os.fstat(fd).st_size
                    data = os.read(fd, size + 1)
                    mtime_ns = os.fstat(fd).st_mtime_ns
                finally:
                    os.close(fd)
                t["read"] += (start := clock()) - now
                digest = blake3.blake3(data).hexdigest()
                t["blake3"] += (now := clock()) - start
                about = describe(path, parse(data, len(data)), secret=secret)
                t["header"] += (start := clock()) - now
                name = member_name(path)
                head = tar_header(name, len(data), mtime_ns // 1_000_000_000)
                e = Entry(path, len(self.buf) + len(head), len(data), digest, len(data),
                          mtime_ns, about)
                self.lines.append(member_line(e, name))
                self.buf += head
                self.buf += data
                self.buf += pad(len(data))
                self.entries.append(e)
                self.files += 1
                t["pack"] += clock() - start
                if len(self.buf) >= BUNDLE:
                    self.bundle()
        if self.entries:
            self.bundle()

    def bundle(self) -> None:
        clock, t = time.thread_time, self.t
        start = clock()
        self.bundles += 1
        number = self.bundles
        z = isal_zlib.compressobj(LEVEL, isal_zlib.DEFLATED, GZIP)
        doc = z.compress("\n".join(self.lines).encode()) + z.flush()
        self.buf += tar_header("manifest.json.gz", len(doc), 0)
        self.buf += doc
        self.buf += pad(len(doc))
        t["pack"] += (now := clock()) - start
        if self.put is not None:
            self.put(f"x/{number}.tar", self.buf)
        t["upload"] += (start := clock()) - now
        index, sops, contents = [], [], []
        for e in self.entries:
            key, digest = path_key(e.path), bytes.fromhex(e.blake3)
            sop = rows.pack_once(e.about.sop_uid)
            index.append((key, rows.encode(e, number, sop=sop, digest=digest)))
            sops.append((sop[2:502], e.path))
            contents.append((content_key_of(e.about, digest),
                             number.to_bytes(4, "little") + e.offset.to_bytes(8, "little")))
        with self.env.begin(write=True) as txn:
            for db, items in zip(self.dbs, (index, sops, contents), strict=True):
                txn.cursor(db=db).putmulti(items)
        t["commit"] += clock() - start
        self.buf, self.entries, self.lines = bytearray(), [], []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tree", type=Path)
    ap.add_argument("--upload", choices=("product", "boto3", "none"), default="product",
                    help="how bundles are PUT (none: packed and committed only)")
    ap.add_argument("--workdir", type=Path, default=Path("floor-work"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    with Store(args.workdir / "store") as store:
        put: Any = None
        if args.upload == "product":
            put = ProductPut(store, store.fresh_bucket("floor"))
        elif args.upload == "boto3":
            bucket = store.fresh_bucket("floor")

            def put(key: str, body: bytearray) -> None:
                store.client.put_object(Bucket=bucket, Key=key, Body=bytes(body),
                                        ChecksumAlgorithm="CRC32")
        floor = Floor(args.workdir / "state", put)
        before, wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        floor.tree(os.fsencode(args.tree), bytes(range(32)))
        wall = time.monotonic() - wall
        after = resource.getrusage(resource.RUSAGE_SELF)
        if isinstance(put, ProductPut):
            put.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    n = floor.files
    print(f"{n:,} files, {floor.bundles} bundles, wall {wall:.2f} s, CPU {cpu:.2f} s "
          f"({1e6 * cpu / n:.1f} us a file)")
    for stage, secs in floor.t.most_common():
        print(f"  {stage:8s} {secs:6.2f} s  {1e6 * secs / n:5.1f} us a file")


if __name__ == "__main__":
    main()
