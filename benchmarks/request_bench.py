"""Request benchmark: client CPU per PUT / UploadPart, old request path vs new, one SeaweedFS.

    .venv/bin/python benchmarks/request_bench.py [--n 2000] [--size 128KiB] [--concurrency 16]
                                                 [--parts 20] [--part-size 16MiB] [--repeat 3]

Not a test. One local SeaweedFS (`pacsmigrate.devstore.SeaweedFS`) on 127.0.0.1 for the
whole run; every variant writes into a fresh bucket. Reported per variant: client process CPU
(user + sys from `resource.getrusage`, all threads: MD5 runs in worker threads) per request,
requests/s and MB/s, medians over `--repeat` alternating runs. The server's CPU is not
counted (another process), but it shares the machine's cores.

Variants:
- `old`: the request path as it was before the lean data path: aiobotocore `put_object` /
  `upload_part` (path style, botocore retries off, Content-MD5, `If-None-Match: *`) under
  the same RequestPolicy, attempt deadline and body watchdog; kept here as a frozen copy so
  it can still be measured.
- `new`: `open_backend(...)` as the pipeline gets it: `save()` / `load()` through the retry
  wrapper, the lean signed aiohttp PUT / UploadPart / ranged GET underneath.
Cases: `put` (N single PUTs of --size at --concurrency), `get` (N ranged GETs of --size
from 20 objects of --get-object bytes, as verify --deep and restore read) and `multipart`
(one object of --parts parts of --part-size, parts in flight bounded by --concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacsmigrate.backends import open_backend
from pacsmigrate.backends.policy import RequestPolicy, RetryConfig
from pacsmigrate.config import Destination, TransferConfig, parse_size
from pacsmigrate.devstore import SeaweedFS, StoreInfo, create_bucket

OLD, NEW = "old", "new"


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# --- the old request path, frozen (as pacsmigrate/backends/s3.py sent requests before) -----

class _TimedBody(io.BytesIO):
    """The old watchdog's body: a BytesIO that remembers its last read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.size = len(data)
        self.touched = time.monotonic()

    def read(self, size: int | None = -1, /) -> bytes:
        self.touched = time.monotonic()
        return super().read(size)

    def seek(self, pos: int, whence: int = 0, /) -> int:
        self.touched = time.monotonic()
        return super().seek(pos, whence)


async def _guarded(request: Callable[[_TimedBody], Awaitable[Any]], data: bytes,
                   idle: float) -> Any:
    body = _TimedBody(data)
    task = asyncio.ensure_future(request(body))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=min(0.5, idle))
            if done:
                return task.result()
            if body.tell() < body.size and time.monotonic() - body.touched > idle:
                raise TimeoutError("request body unread")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class OldPath:
    """aiobotocore for every request, the old RequestPolicy around each."""

    def __init__(self, info: StoreInfo, bucket: str, transfer: TransferConfig) -> None:
        self.info, self.bucket, self.t = info, bucket, transfer
        self.policy = RequestPolicy(concurrency=transfer.concurrency,
                                    retry=RetryConfig(max_attempts=transfer.max_attempts))
        self._cm: Any = None
        self.client: Any = None

    async def open(self) -> OldPath:
        import aioboto3
        from aiobotocore.config import AioConfig

        from pacsmigrate.backends.s3_errors import classify

        self.classify = classify
        config = AioConfig(s3={"addressing_style": "path"},
                           retries={"mode": "standard", "total_max_attempts": 1},
                           max_pool_connections=max(10, self.t.concurrency * 2),
                           connect_timeout=self.t.connect_timeout,
                           read_timeout=self.t.read_timeout,
                           request_checksum_calculation="when_required",
                           response_checksum_validation="when_required")
        self._cm = aioboto3.Session().client("s3", endpoint_url=self.info.endpoint_url,
                                             config=config, region_name="us-east-1")
        self.client = await self._cm.__aenter__()
        return self

    async def close(self) -> None:
        await self._cm.__aexit__(None, None, None)

    async def _send(self, method: Any, data: bytes, **kwargs: Any) -> Any:
        budget = self.t.connect_timeout + self.t.read_timeout + len(data) / (256 * 1024)

        def attempt() -> Awaitable[Any]:
            return asyncio.wait_for(_guarded(
                lambda body: method(Bucket=self.bucket, Body=body, **kwargs), data,
                self.t.read_timeout), budget)

        return await self.policy.run(attempt, classify=self.classify, nbytes=len(data))

    @staticmethod
    async def _md5(data: bytes) -> str:
        import base64

        h = (hashlib.md5(data) if len(data) <= 256 * 1024
             else await asyncio.to_thread(hashlib.md5, data))
        return base64.b64encode(h.digest()).decode()

    async def put(self, key: str, data: bytes) -> None:
        await self._send(self.client.put_object, data, Key=key, ContentMD5=await self._md5(data),
                         IfNoneMatch="*", Metadata={"pacsmigrate-format": "1"})

    async def get(self, key: str, offset: int, length: int) -> bytes:
        async def attempt() -> bytes:
            resp = await self.client.get_object(Bucket=self.bucket, Key=key,
                                                Range=f"bytes={offset}-{offset + length - 1}")
            async with resp["Body"] as body:
                data: bytes = await body.read()
            return data

        return await self.policy.run(lambda: asyncio.wait_for(attempt(), 130.0),
                                     classify=self.classify)

    async def multipart(self, key: str, parts: list[bytes]) -> None:
        up = (await self.policy.run(lambda: self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key), classify=self.classify))["UploadId"]
        slots = asyncio.Semaphore(self.t.concurrency)
        etags: dict[int, str] = {}

        async def send(n: int, body: bytes) -> None:
            async with slots:
                resp = await self._send(self.client.upload_part, body, Key=key, UploadId=up,
                                        PartNumber=n, ContentMD5=await self._md5(body))
                etags[n] = resp["ETag"]

        await asyncio.gather(*(send(n, p) for n, p in enumerate(parts, 1)))
        await self.policy.run(lambda: self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=up, IfNoneMatch="*",
            MultipartUpload={"Parts": [{"ETag": etags[n], "PartNumber": n}
                                       for n in sorted(etags)]}), classify=self.classify)


class NewPath:
    """What open_backend returns now."""

    def __init__(self, info: StoreInfo, bucket: str, transfer: TransferConfig) -> None:
        self.dest = Destination("s3", bucket, "", info.endpoint_url)
        self.t = transfer
        self.backend: Any = None

    async def open(self) -> NewPath:
        self.backend = await open_backend(self.dest, self.t)
        return self

    async def close(self) -> None:
        await self.backend.close()

    async def put(self, key: str, data: bytes) -> None:
        await self.backend.save(key, _chunks([data]), metadata={"pacsmigrate-format": "1"})

    async def get(self, key: str, offset: int, length: int) -> bytes:
        data: bytes = await self.backend.load(key, offset=offset, length=length)
        return data

    async def multipart(self, key: str, parts: list[bytes]) -> None:
        await self.backend.save(key, _chunks(parts))


async def _chunks(parts: list[bytes]) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


# --- running -------------------------------------------------------------------------------

@dataclass
class Result:
    variant: str
    case: str
    requests: int
    nbytes: int
    seconds: float
    cpu: float

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.requests * 1e6

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def run_puts(path: OldPath | NewPath, n: int, data: bytes, concurrency: int, *,
                   prefix: str = "bench") -> None:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await path.put(f"{prefix}/{i:07d}.tar", data)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run_gets(path: OldPath | NewPath, n: int, size: int, length: int,
                   concurrency: int) -> None:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            offset = (i * 7919 * length) % (size - length)
            assert len(await path.get(f"get/{i % 20:02d}.tar", offset, length)) == length

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(variant: str, case: str, info: StoreInfo, bucket: str,
                  args: argparse.Namespace) -> Result:
    transfer = TransferConfig(concurrency=args.concurrency, part_size=args.part_size,
                              multipart_threshold=args.part_size)
    cls = OldPath if variant == OLD else NewPath
    path = await cls(info, bucket, transfer).open()
    try:
        if case == "put":
            data = os.urandom(args.size)
            await run_puts(path, min(50, args.n), data, args.concurrency, prefix="warm")
            requests, nbytes = args.n, args.n * args.size
            work: Awaitable[None] = run_puts(path, args.n, data, args.concurrency)
        elif case == "get":
            data = os.urandom(args.get_object)
            for i in range(20):
                await path.put(f"get/{i:02d}.tar", data)
            await run_gets(path, 50, len(data), args.size, args.concurrency)  # warm the pool
            requests, nbytes = args.n, args.n * args.size
            work = run_gets(path, args.n, len(data), args.size, args.concurrency)
        else:
            parts = [os.urandom(args.part_size) for _ in range(args.parts)]
            await path.put("warm", b"x")
            requests, nbytes = args.parts + 2, args.parts * args.part_size
            work = path.multipart("bench/multipart.bin", parts)
        cpu0, t0 = cpu_seconds(), time.perf_counter()
        await work
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    finally:
        await path.close()
    return Result(variant, case, requests, nbytes, seconds, cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=parse_size, default=128 * 1024)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--parts", type=int, default=20)
    ap.add_argument("--part-size", type=parse_size, default=16 << 20)
    ap.add_argument("--get-object", type=parse_size, default=4 << 20,
                    help="size of the 20 objects the get case reads --size ranges of")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--variants", default=f"{OLD},{NEW}")
    ap.add_argument("--cases", default="put,get,multipart")
    args = ap.parse_args()
    variants = args.variants.split(",")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="request-bench-") as tmp, \
            SeaweedFS(Path(tmp) / "weed") as info:
        for key, value in info.env().items():
            os.environ[key] = value
        for r in range(args.repeat):
            order = variants if r % 2 == 0 else variants[::-1]
            for case in args.cases.split(","):
                for variant in order:
                    bucket = f"rb-{r}-{case}-{variant}"
                    create_bucket(info, bucket)
                    res = asyncio.run(measure(variant, case, info, bucket, args))
                    results.append(res)
                    print(f"  run {r + 1} {case:9} {variant:4} {res.cpu_us:9,.0f} µs CPU/request"
                          f" {res.rate:8,.0f} req/s {res.nbytes / res.seconds / 1e6:7,.1f} MB/s",
                          file=sys.stderr)
    print(f"\n{args.n} PUTs (and ranged GETs) of {args.size:,} B at concurrency "
          f"{args.concurrency}; multipart: "
          f"{args.parts} x {args.part_size:,} B parts (+ create, complete); "
          f"medians of {args.repeat}")
    print("| case | path | CPU µs/request | requests/s | MB/s |")
    print("|---|---|---:|---:|---:|")
    for case in args.cases.split(","):
        for variant in variants:
            rs = [x for x in results if x.case == case and x.variant == variant]
            cpu = statistics.median(x.cpu_us for x in rs)
            rate = statistics.median(x.rate for x in rs)
            mbs = statistics.median(x.nbytes / x.seconds / 1e6 for x in rs)
            print(f"| {case} | {variant} | {cpu:,.0f} | {rate:,.0f} | {mbs:,.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
