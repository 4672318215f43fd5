"""tqdm progress bars (files/s, MB/s, ETA) that a library caller can switch off."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm


class Bar:
    """One phase's bar: counts files and bytes, shows both rates."""

    def __init__(self, desc: str, *, total_bytes: int | None, total_files: int | None,
                 enabled: bool, position: int | None = None,
                 note: Callable[[], str] | None = None) -> None:
        self.files = 0
        self.note = note  # more for the line, e.g. the store's retries so far
        self.total_files = total_files
        self.start = time.monotonic()
        self._bar: Any = None
        if enabled:
            self._bar = tqdm(desc=desc, total=total_bytes, unit="B", unit_scale=True,
                             unit_divisor=1000, dynamic_ncols=True, file=sys.stderr,
                             mininterval=0.5, smoothing=0.1, position=position)

    def update(self, *, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        if self._bar is not None:
            rate = self.files / max(time.monotonic() - self.start, 1e-6)
            of = eta = ""
            if self.total_files is not None:
                of = f"/{self.total_files}"
                left = max(0, self.total_files - self.files) / rate if rate else 0
                eta = f", ETA {int(left) // 3600}:{int(left) // 60 % 60:02d}:{int(left) % 60:02d}"
            more = self.note() if self.note is not None else ""
            self._bar.set_postfix_str(f"{self.files}{of} files, {rate:,.0f} files/s{eta}{more}",
                                      refresh=False)
            self._bar.update(nbytes)

    def close(self) -> None:
        if self._bar is not None:
            self.update()  # the last counts and total, whenever the last update was
            self._bar.close()


# What a run on a Dask worker tells the coordinator's bar, as a small JSON file.
SHOWN = ("files_seen", "bytes_seen", "files_migrated", "already_migrated", "bytes_uploaded")


def write_progress(path: Path, counts: dict[str, Any]) -> None:
    """Replace the progress file (a rename: a reader never sees half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({k: counts.get(k, 0) for k in SHOWN}))
    os.replace(tmp, path)


def read_progress(path: Path) -> dict[str, int]:
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: int(got.get(k, 0)) for k in SHOWN}


async def keep_writing(path: Path, counts: Any, every: float = 1.0) -> None:
    """Write `counts()` to path every `every` seconds until cancelled, then once more."""
    try:
        while True:
            write_progress(path, counts())
            await asyncio.sleep(every)
    finally:
        write_progress(path, counts())


def stats_line(s: Any, seconds: float, retries: int) -> str:
    """One line for a log or a redirected stderr: how far the run is, how fast it goes."""
    done = s.files_migrated + s.duplicate_files
    return (f"stats: {s.files_seen:,} files seen, {s.files_migrated:,} migrated now "
            f"({s.bytes_uploaded / 1e6:,.1f} MB sent in {s.objects_uploaded:,} objects), "
            f"{s.already_migrated:,} already migrated, {sum(s.failed.values()):,} failed; "
            f"{done / max(seconds, 1e-9):,.0f} files/s, "
            f"{s.bytes_uploaded / 1e6 / max(seconds, 1e-9):,.1f} MB/s over {seconds:,.0f} s; "
            f"{retries:,} requests retried")


async def keep_reporting(line: Callable[[], str], every: float, log: logging.Logger) -> None:
    """Log `line()` every `every` seconds until cancelled (unattended runs: the log file,
    or stderr when it is not a terminal)."""
    while True:
        await asyncio.sleep(every)
        log.info("%s", line())
