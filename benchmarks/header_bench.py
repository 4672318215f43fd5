"""Micro-benchmark: header.scan / header.parse against pydicom's read_header, files in memory.

    .venv/bin/python benchmarks/header_bench.py [--studies N] [--scale F] [--prefix BYTES]
                                                [--repeat N] [--workdir DIR]

Two corpora: pydicom's own sample files (test_files + charset_files, many odd ones the scan
hands to pydicom) and a synthetic tree (pacsmigrate.synth.make_tree, all layouts mixed).
Every file is read into memory first, so only parsing is timed, on one core:
read_header (pydicom on the whole file in a BytesIO), scan (the whole file as data) and
parse (the first --prefix bytes, with the file as a BytesIO for when the scan needs more or
declines). A last line times the synthetic tree from disk (page cache warm): open + read the
prefix + parse against open + read_header, as classify would.

Rates are files per CPU second (time.process_time, best of --repeat passes), so other jobs
on a shared machine disturb them less than wall time would.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from pacsmigrate.header import Header, parse, read_header, scan
from pacsmigrate.synth import make_tree


def pydicom_samples() -> list[Path]:
    base = Path(pydicom.__file__).parent / "data"
    return sorted(p for folder in ("test_files", "charset_files")
                  for p in (base / folder).rglob("*") if p.is_file())


def best_rate(run: Callable[[], None], count: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return count / best


def report(label: str, rate: float, reference: float) -> None:
    print(f"  {label:<28} {rate:10,.0f} files/s" + (
        f"   x{rate / reference:5.1f}" if rate != reference else ""))


def in_memory(name: str, files: list[bytes], *, prefix: int, repeat: int) -> None:
    prefixes = [(data[:prefix], len(data), data) for data in files]
    decided = sum(isinstance(scan(data, len(data)), Header) for data in files)
    asked = sum(isinstance(scan(head, size), int) for head, size, _ in prefixes)

    def run_pydicom() -> None:
        for data in files:
            read_header(io.BytesIO(data), len(data))

    def run_scan() -> None:
        for data in files:
            scan(data, len(data))

    def run_parse() -> None:
        for head, size, data in prefixes:
            parse(head, size, io.BytesIO(data))

    reference = best_rate(run_pydicom, len(files), repeat)
    mean_kib = sum(map(len, files)) / len(files) / 1024
    print(f"{name}: {len(files)} files, mean {mean_kib:,.1f} KiB; the scan decides "
          f"{decided} ({100 * decided / len(files):.0f}%), {asked} need more than "
          f"{prefix} B")
    report("read_header (pydicom)", reference, reference)
    report("scan", best_rate(run_scan, len(files), repeat), reference)
    report(f"parse ({prefix} B prefix)", best_rate(run_parse, len(files), repeat), reference)


def from_disk(paths: list[Path], *, prefix: int, repeat: int) -> None:
    def run_pydicom() -> None:
        for path in paths:
            with open(path, "rb") as f:
                read_header(f, path.stat().st_size)

    def run_parse() -> None:
        for path in paths:
            with open(path, "rb") as f:
                parse(f.read(prefix), path.stat().st_size, f)

    reference = best_rate(run_pydicom, len(paths), repeat)
    print(f"synthetic tree from disk (warm), {len(paths)} files:")
    report("open + read_header", reference, reference)
    report(f"open + {prefix} B + parse", best_rate(run_parse, len(paths), repeat), reference)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--prefix", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    samples = [p.read_bytes() for p in pydicom_samples()]
    workdir = Path(tempfile.mkdtemp(prefix="header-bench-", dir=args.workdir))
    try:
        make_tree(workdir / "tree", studies=args.studies, layout="mixed", scale=args.scale)
        paths = sorted(p for p in (workdir / "tree").rglob("*") if p.is_file())
        in_memory("pydicom samples", samples, prefix=args.prefix, repeat=args.repeat)
        in_memory("synthetic tree", [p.read_bytes() for p in paths], prefix=args.prefix,
                  repeat=args.repeat)
        from_disk(paths, prefix=args.prefix, repeat=args.repeat)
    finally:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
