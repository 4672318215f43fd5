"""tqdm progress bars (files/s, MB/s, ETA) that a library caller can switch off."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm


class Bar:
    """One phase's bar: counts files and bytes, shows both rates."""

    def __init__(self, desc: str, *, total_bytes: int | None, total_files: int | None,
                 enabled: bool, position: int | None = None) -> None:
        self.files = 0
        self.total_files = total_files
        self.start = time.monotonic()
        self._bar: Any = None
        if enabled:
            self._bar = tqdm(desc=desc, total=total_bytes, unit="B", unit_scale=True,
                             unit_divisor=1024, dynamic_ncols=True, file=sys.stderr,
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
            self._bar.set_postfix_str(f"{self.files}{of} files, {rate:,.0f} files/s{eta}",
                                      refresh=False)
            self._bar.update(nbytes)

    def close(self) -> None:
        if self._bar is not None:
            self.update()  # the last counts and total, whenever the last update was
            self._bar.close()
