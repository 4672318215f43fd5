"""Section `serve`: `pacsmigrate serve` (DICOMweb) over a migrated archive, issue 12's targets.

One 300-instance CT study (512x512, 16 bit: ~0.5 MiB each) and 60 small MR studies of 20
instances, migrated once into a local directory and once into the bench's SeaweedFS; a
server on each. Measured from this process with aiohttp (a client on the same machine):
- time to the first byte of one instance (WADO-RS), 200 instances in random order;
- the 300-instance study streamed (multipart/related), against the store's throughput for
  one large object of the same size (`s5cmd cat` of it, SeaweedFS), alternating, 3 each;
- 50 clients at once, each retrieving other studies: errors, and the server's peak RSS.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

from runs import Ctx, fail
from targets import Section, Target
from tools import BIN

BIG = 300
SMALL_STUDIES, SMALL_FILES = 60, 20
CLIENTS = 50
TTFB_SAMPLES = 200
REPEATS = 3
# Each timed stream (and each ceiling) moves the study this many times back to back, so a
# measurement lasts seconds, not the fraction of one that a single pass takes here.
PASSES = 5
RETRIEVES_PER_STUDY = 10  # the 50 clients' work: each small study this many times
BIG_CLIENTS = 10  # the worst case for memory: this many clients on the big study at once
RSS_GOAL_MIB = 400


def _write_tree(root: Path, seed: int = 12) -> tuple[str, list[tuple[str, str, str]]]:
    """The tree; returns the big study's UID and every (study, series, sop)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []

    def study(name: str, files: int, rows: int, modality: str) -> str:
        uid, series = generate_uid(), generate_uid()
        pixels = rng.randbytes(rows * rows * 2)
        folder = root / name
        folder.mkdir(parents=True)
        for n in range(files):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, series
            ds.Modality, ds.StudyDate, ds.InstanceNumber = modality, "20200101", n + 1
            ds.PatientID, ds.PatientName = f"BENCH{name}", "Bench^Patient"
            ds.Rows = ds.Columns = rows
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.PixelData = pixels
            ds.save_as(folder / f"IM{n:04d}.dcm", enforce_file_format=True)
            out.append((uid, series, str(ds.SOPInstanceUID)))
        return uid

    big = study("big", BIG, 512, "CT")
    for k in range(SMALL_STUDIES):
        study(f"s{k:03d}", SMALL_FILES, 64, "MR")
    return big, out


def _migrate(src: Path, dest: str, state: Path, env: dict[str, str], log: Path,
             *extra: str) -> None:
    with open(log, "w") as out:
        code = subprocess.run([str(BIN / "pacsmigrate"), "migrate", str(src), dest, "--state",
                               str(state), "--no-progress", *extra], env=env, stdout=out,
                              check=False,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        fail(f"serve: migrate exited {code}", log)


class Server:
    """`pacsmigrate serve` on a free port; its stderr drained to a log."""

    def __init__(self, state: Path, env: dict[str, str], log: Path) -> None:
        self.proc = subprocess.Popen([str(BIN / "pacsmigrate"), "serve", "--state", str(state),
                                      "--port", "0"], env=env, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stderr is not None
        head = []
        for line in self.proc.stderr:
            head.append(line)
            m = re.search(r" at (http://127\.0\.0\.1:\d+) ", line)
            if m:
                self.url = m.group(1)
                break
        else:
            log.write_text("".join(head))
            fail("serve: the server did not start", log)
        out = open(log, "w")  # noqa: SIM115 - closed by the drain thread
        out.writelines(head)

        def drain() -> None:
            with out:
                for line in self.proc.stderr or []:
                    out.write(line)

        threading.Thread(target=drain, daemon=True).start()

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


class Peak:
    """The server's highest RSS, sampled every 20 ms while a block runs."""

    def __init__(self, server: Server) -> None:
        self.server, self.mib, self._stop = server, 0.0, threading.Event()

    def __enter__(self) -> Self:
        def sample() -> None:
            while not self._stop.wait(0.02):
                self.mib = max(self.mib, self.server.rss_mib())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


ACCEPT = {"Accept": 'multipart/related; type="application/dicom"'}


async def _ttfb(url: str, insts: list[tuple[str, str, str]]) -> list[float]:
    import aiohttp

    out = []
    async with aiohttp.ClientSession() as http:
        for study, series, sop in insts:
            t0 = time.perf_counter()
            async with http.get(f"{url}/studies/{study}/series/{series}/instances/{sop}",
                                headers=ACCEPT) as resp:
                if resp.status != 200:
                    raise SystemExit(f"bench: serve answered {resp.status}")
                await resp.content.readany()
                out.append(time.perf_counter() - t0)
                await resp.read()
    return out


async def _retrieve(http: object, url: str, study: str) -> int:
    n = 0
    async with http.get(f"{url}/studies/{study}", headers=ACCEPT) as resp:  # type: ignore[attr-defined]
        if resp.status != 200:
            raise RuntimeError(f"status {resp.status}")
        async for chunk in resp.content.iter_chunked(1 << 20):
            n += len(chunk)
    return n


async def _stream(url: str, study: str) -> tuple[int, float]:
    """The study retrieved PASSES times in a row: (bytes of each pass, seconds per pass)."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        t0 = time.perf_counter()
        sizes = [await _retrieve(http, url, study) for _ in range(PASSES)]
        return min(sizes), (time.perf_counter() - t0) / PASSES


async def _clients(url: str, studies: list[str]) -> tuple[int, int, float]:
    """CLIENTS clients at once, each retrieving its studies in turn; (errors, bytes, s)."""
    import aiohttp

    errors = total = 0

    async def client(mine: list[str]) -> None:
        nonlocal errors, total
        async with aiohttp.ClientSession() as http:
            for study in mine:
                try:
                    total += await _retrieve(http, url, study)
                except Exception:  # noqa: BLE001 - counted: the target is none
                    errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(studies[k::CLIENTS]) for k in range(CLIENTS)))
    return errors, total, time.perf_counter() - t0


def _ceiling(ctx: Ctx, size: int, log: Path) -> float:
    """`s5cmd cat` of one object of `size` bytes, PASSES times: seconds per pass."""
    bucket = ctx.store.fresh_bucket("serve-ceiling")
    blob = ctx.work / "serve-one-object.bin"
    with open(blob, "wb") as f:
        f.write(os.urandom(size))
    s5 = [str(BIN / "s5cmd"), "--endpoint-url", ctx.store.endpoint]
    subprocess.run([*s5, "cp", str(blob), f"s3://{bucket}/one"], env=ctx.store.env,
                   check=True, capture_output=True)
    blob.unlink()
    t0 = time.perf_counter()
    for _ in range(PASSES):
        with open(log, "ab") as err:
            subprocess.run([*s5, "cat", f"s3://{bucket}/one"], env=ctx.store.env, check=True,
                           stdout=subprocess.DEVNULL, stderr=err)
    return (time.perf_counter() - t0) / PASSES


def run_serve(ctx: Ctx) -> Section:
    src, logs = ctx.work / "serve-tree", ctx.work / "logs"
    logs.mkdir(exist_ok=True)
    big, insts = _write_tree(src)
    big_bytes = sum(p.stat().st_size for p in (src / "big").iterdir())
    local = ctx.work / "serve-local"
    local.mkdir()
    _migrate(src, str(local), ctx.work / "serve-state-local", ctx.store.env,
             logs / "serve-migrate-local.log")
    bucket = ctx.store.fresh_bucket("serve")
    _migrate(src, f"s3://{bucket}/x", ctx.work / "serve-state-s3", ctx.store.env,
             logs / "serve-migrate-s3.log", "--endpoint-url", ctx.store.endpoint)
    rng = random.Random(7)
    sample = rng.sample(insts, min(TTFB_SAMPLES, len(insts)))
    results: dict[str, dict[str, object]] = {}
    ceiling: list[float] = []
    for name, state in (("local directory", "serve-state-local"), ("SeaweedFS", "serve-state-s3")):
        server = Server(ctx.work / state, ctx.store.env, logs / f"serve-{state}.log")
        try:
            ttfb = asyncio.run(_ttfb(server.url, sample))
            streams, peak_big = [], 0.0
            for _ in range(REPEATS):
                with Peak(server) as peak:
                    n, secs = asyncio.run(_stream(server.url, big))
                peak_big = max(peak_big, peak.mib)
                if n < big_bytes:
                    raise SystemExit(f"bench: the study stream gave {n} of {big_bytes} bytes")
                streams.append(secs)
                if name == "SeaweedFS":  # the ceiling alternates with the stream
                    ceiling.append(_ceiling(ctx, big_bytes, logs / "serve-ceiling.log"))
            studies = sorted({s for s, _, _ in insts if s != big}) * RETRIEVES_PER_STUDY
            with Peak(server) as peak:
                errors, moved, secs = asyncio.run(_clients(server.url, studies))
            with Peak(server) as worst:
                big_errors, _, big_secs = asyncio.run(_clients(server.url, [big] * BIG_CLIENTS))
            results[name] = {"peak_many_big": worst.mib, "many_big_s": big_secs,
                             "many_big_errors": big_errors,"ttfb": ttfb, "stream": statistics.median(streams),
                             "streams": streams, "peak_big": peak_big, "errors": errors,
                             "clients_s": secs, "clients_bytes": moved, "peak_clients": peak.mib,
                             "requests": len(studies)}
        finally:
            server.stop()
    return _section(results, ceiling, big_bytes)


def _section(results: dict[str, dict[str, object]], ceiling: list[float],
             big_bytes: int) -> Section:
    lines = [(f"Tree: one CT study of {BIG} instances ({big_bytes / 1e6:,.1f} MB, 512x512 16-bit, "
              f"explicit VR LE) and {SMALL_STUDIES} MR studies of {SMALL_FILES} instances "
              "(64x64), migrated with the defaults into a local directory and into SeaweedFS; "
              "`pacsmigrate serve` on each (defaults), this process the client (aiohttp). The "
              "page cache is warm (the store's files were just written). A study stream run "
              f"is {PASSES} retrieves of the study in a row (seconds per retrieve shown), "
              f"alternating with {PASSES} `s5cmd cat` of the one object on SeaweedFS; the 50 "
              f"clients retrieve each small study {RETRIEVES_PER_STUDY} times between them."),
             "",
             ("| store | first byte, median ms | p95 ms | study stream s (runs) | MB/s | "
              "server peak RSS, study MiB | 50 clients: requests, errors, s | peak RSS MiB | "
              f"{BIG_CLIENTS} clients on the big study: errors, s | peak RSS MiB |"),
             "|---|---:|---:|---|---:|---:|---|---:|---|---:|"]
    for name, r in results.items():
        ttfb = sorted(r["ttfb"])  # type: ignore[arg-type]
        runs = ", ".join(f"{s:.2f}" for s in r["streams"])  # type: ignore[attr-defined]
        lines.append(
            f"| {name} | {statistics.median(ttfb) * 1e3:.1f} | "
            f"{ttfb[int(len(ttfb) * 0.95) - 1] * 1e3:.1f} | {r['stream']:.2f} ({runs}) | "
            f"{big_bytes / r['stream'] / 1e6:,.0f} | {r['peak_big']:.0f} | "  # type: ignore[operator]
            f"{r['requests']}, {r['errors']}, {r['clients_s']:.1f} | {r['peak_clients']:.0f} | "
            f"{r['many_big_errors']}, {r['many_big_s']:.1f} | {r['peak_many_big']:.0f} |")
    ceil = statistics.median(ceiling) if ceiling else None
    s3 = results["SeaweedFS"]
    local = results["local directory"]
    if ceil:
        lines += ["", (f"The store's throughput for one object of {big_bytes / 1e6:,.1f} MB "
                       f"(`s5cmd cat`, s per pass: {', '.join(f'{c:.2f}' for c in ceiling)}): "
                       f"{big_bytes / ceil / 1e6:,.0f} MB/s.")]
    targets = [
        Target("12a", "time to first byte of an instance on the local store: median < 100 ms",
               f"median of {TTFB_SAMPLES} instances",
               statistics.median(local["ttfb"]) * 1e3, 100.0, at_most=True,  # type: ignore[arg-type]
               unit="ms"),
        Target("12b", f"a {BIG}-instance study streamed at ≥ 0.8x the store's throughput for "
               "one large object (SeaweedFS)",
               f"study {s3['stream']:.2f} s vs one object {ceil or 0:.2f} s (medians)",
               (ceil / s3["stream"]) if ceil else None, 0.8),  # type: ignore[operator]
        Target("12c", f"{CLIENTS} concurrent clients retrieving different studies: no error",
               f"{local['requests']} + {s3['requests']} retrieves of small studies, errors "
               f"{local['errors']} + {s3['errors']}; {BIG_CLIENTS} + {BIG_CLIENTS} of the big "
               f"one, errors {local['many_big_errors']} + {s3['many_big_errors']}",
               sum(float(r[k]) for r in results.values()  # type: ignore[arg-type]
                   for k in ("errors", "many_big_errors")), 0.0, at_most=True,
               unit="errors"),
        Target("12d", f"server memory bounded: peak RSS ≤ {RSS_GOAL_MIB} MiB (one study "
               f"stream, 50 clients, {BIG_CLIENTS} clients on the big study; both stores)",
               "highest of the six peaks",
               max(float(r[k]) for r in results.values()  # type: ignore[arg-type]
                   for k in ("peak_big", "peak_clients", "peak_many_big")), float(RSS_GOAL_MIB),
               at_most=True, unit="MiB"),
    ]
    return Section("serve", "11. Serving the archive over DICOMweb", lines, targets)


if __name__ == "__main__":
    sys.exit("run through benchmarks/bench.py --only serve")
