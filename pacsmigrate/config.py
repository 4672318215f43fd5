"""Frozen settings objects: where to write, how to transfer, how to migrate."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .errors import ConfigError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# S3 limits (Azure's differ; each backend adjusts part sizes to its own).
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * GiB
S3_MAX_PARTS = 10_000

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse '256MiB', '64M', '1.5G', '4096' into bytes (binary units, as storage admins expect)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(text)
    if not m:
        raise ConfigError(f"not a size: {text!r} (examples: 4096, 64MiB, 1G)")
    number, unit = float(m.group(1)), m.group(2).lower()
    scale = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}[unit]
    return int(number * scale)


@dataclass(frozen=True)
class Destination:
    """Where objects go: a store kind, a bucket/container and a key prefix."""

    scheme: str
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None

    @classmethod
    def parse(cls, url: str, *, endpoint_url: str | None = None) -> Destination:
        parsed = urlparse(url)
        if parsed.scheme != "s3":
            raise ConfigError(f"unsupported destination {url!r}: expected s3://bucket[/prefix]")
        if not parsed.netloc:
            raise ConfigError(f"destination {url!r} names no bucket")
        return cls("s3", parsed.netloc, parsed.path.strip("/"), endpoint_url)

    def key(self, *parts: str) -> str:
        """An object key under this destination's prefix."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")


@dataclass(frozen=True)
class TransferConfig:
    """How objects are uploaded (after s3transfer's TransferConfig)."""

    multipart_threshold: int = 16 * MiB
    part_size: int = 16 * MiB
    concurrency: int = 8
    max_attempts: int = 10
    retry_base_delay: float = 0.2
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_requests_per_second: float | None = None
    bwlimit: float | None = None  # bytes per second sent
    ca_bundle: Path | None = None  # extra trusted CA (PEM); verification is always on
    checksum: str = "md5"  # what a single PUT's body is checked with by the store

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.checksum not in ("md5", "crc32"):
            raise ConfigError(f"--checksum must be md5 or crc32, not {self.checksum!r}")
        if self.part_size < S3_MIN_PART:
            raise ConfigError(f"part size must be at least {S3_MIN_PART} bytes")


@dataclass(frozen=True)
class MigrateConfig:
    """Everything one `migrate` run needs; built by the CLI or by library callers."""

    sources: tuple[Path, ...]
    dest: Destination
    state_dir: Path
    dry_run: bool = False
    bundle_size: int = 256 * MiB
    large_file: int = 64 * MiB
    transfer: TransferConfig = field(default_factory=TransferConfig)
    scan_threads: int = 16
    read_threads: int = 8
    header_bytes: int = 32 * KiB
    memory: int = 512 * MiB  # file data held by open bundles and uploads in flight
    hold_max: int = 2 * MiB  # files up to this size are read whole once and carried
    report_path: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("give at least one SOURCE directory")
        for src in self.sources:
            if not src.is_dir():
                raise ConfigError(f"source is not a directory: {src}")
        if self.bundle_size < 1 * MiB:
            raise ConfigError("--bundle-size must be at least 1MiB")
        if self.large_file < 1:
            raise ConfigError("--large-file must be positive")
        if self.large_file > self.bundle_size:
            raise ConfigError("--large-file must not exceed --bundle-size")
        if self.memory < 2 * self.bundle_size // 8:
            raise ConfigError("--memory must be at least a quarter of --bundle-size")
