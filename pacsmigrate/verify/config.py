"""VerifyConfig: how hard verify pushes the store and the NAS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import MiB
from ..errors import ConfigError


@dataclass(frozen=True)
class VerifyConfig:
    """How hard verify pushes the store and the NAS (after s3transfer's TransferConfig)."""

    concurrency: int = 8           # objects (and LISTs) in flight
    read_threads: int = 8          # source files re-hashed at once
    scan_threads: int = 16         # directories listed at once by the source walk
    chunk: int = 16 * MiB          # the largest range GET; bounds memory per object in flight
    max_gap: int = 1 * MiB         # members closer than this are read in one range
    keep_findings: int = 1000      # findings kept in the result; the report gets them all
    work_dir: Path | None = None   # where --deep sorts rows by object (default: the state dir)
    use_list: bool = True          # False: HEAD every object (credentials without ListBucket)

    def __post_init__(self) -> None:
        for name in ("concurrency", "read_threads", "scan_threads", "chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"verify {name} must be at least 1")
        if self.max_gap < 0 or self.keep_findings < 0:
            raise ConfigError("verify max_gap and keep_findings must not be negative")
