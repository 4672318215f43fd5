"""Frozen settings objects: where to write, how to transfer, how to migrate."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlparse

from . import encoding
from .errors import ConfigError
from .filters import EVERYTHING, Filters
from .retention import Retention
from .shard import Shard
from .ssec import load_key
from .tiers import TierPolicy

if TYPE_CHECKING:
    from .costs import PriceTable

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Each backend keeps part sizes within its own store's limits (backends.base.Limits).
MIN_PART = 1 * MiB

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


_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
AZURE_HOST = ".blob.core.windows.net"
FORMS = ("s3://BUCKET[/PREFIX], az://CONTAINER[/PREFIX], "
         "https://ACCOUNT.blob.core.windows.net/CONTAINER[/PREFIX], file:///DIR or /DIR")


PROVIDERS = ("aws", "wasabi", "ceph", "minio", "other")


@dataclass(frozen=True)
class S3Options:
    """How to reach an S3 store: region, credentials profile, addressing, provider preset.

    Presets: `aws` (AWS's regional endpoints, virtual-hosted addressing); `wasabi` (its
    regional endpoint s3.REGION.wasabisys.com unless --endpoint-url; no storage classes);
    `ceph`, `minio`, `other` (--endpoint-url required, path-style addressing; Ceph RGW
    before Quincy ignores x-amz-checksum-*, so it is refused with --checksum crc32).
    """

    region: str | None = None
    profile: str | None = None
    addressing_style: str | None = None  # "path" or "virtual"; None: the provider's
    provider: str | None = None
    sse: str | None = None  # server-side encryption: "AES256" (SSE-S3) or "aws:kms"
    sse_kms_key_id: str | None = None
    # SSE-C: the customer key's file (never stored, never shown) and the key's MD5 (kept in
    # the state, so a later command given another key is refused before any request).
    sse_c_key_file: str | None = field(default=None, repr=False, compare=False)
    sse_c_md5: str | None = None

    def resolve(self, endpoint_url: str | None) -> tuple[str | None, S3Options]:
        """The endpoint and the options with the provider's defaults filled in."""
        provider, style = self.provider, self.addressing_style
        if provider is not None and provider not in PROVIDERS:
            raise ConfigError(f"--provider must be one of {', '.join(PROVIDERS)}, "
                              f"not {provider!r}")
        if self.sse not in (None, "AES256", "aws:kms"):
            raise ConfigError(f"--sse must be AES256 or aws:kms, not {self.sse!r}")
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise ConfigError("--sse-kms-key-id goes with --sse aws:kms")
        md5 = self.sse_c_md5
        if self.sse_c_key_file:
            if self.sse:
                raise ConfigError("--sse-c-key-file encrypts with your own key (SSE-C): "
                                  "drop --sse")
            md5 = load_key(self.sse_c_key_file).md5
        if style not in (None, "path", "virtual"):
            raise ConfigError(f"--addressing-style must be path or virtual, not {style!r}")
        region = self.region
        if provider == "wasabi":
            region = region or "us-east-1"  # requests are signed for the endpoint's region
            endpoint_url = endpoint_url or f"https://s3.{region}.wasabisys.com"
        if provider in ("ceph", "minio", "other") and not endpoint_url:
            raise ConfigError(f"--provider {provider} needs --endpoint-url (the store's "
                              "address, e.g. https://rgw.hospital.local:7480)")
        if style is None:
            style = "virtual" if provider == "aws" or not endpoint_url else "path"
        return endpoint_url, replace(self, addressing_style=style, region=region,
                                     sse_c_md5=md5)

    def as_meta(self) -> dict[str, str | None]:
        return {"region": self.region, "profile": self.profile,
                "addressing_style": self.addressing_style, "provider": self.provider,
                "sse": self.sse, "sse_kms_key_id": self.sse_kms_key_id,
                "sse_c_md5": self.sse_c_md5}

    @classmethod
    def from_meta(cls, meta: dict[str, object]) -> S3Options:
        def get(name: str) -> str | None:
            value = meta.get(name)
            return str(value) if value else None

        return cls(get("region"), get("profile"), get("addressing_style"), get("provider"),
                   get("sse"), get("sse_kms_key_id"), sse_c_md5=get("sse_c_md5"))


@dataclass(frozen=True)
class AzureOptions:
    """Azure's encryption choices: an encryption scope (a key the account keeps under a
    name) and/or a customer-provided key (the same key file as S3's SSE-C: sent with every
    request, never stored; the state keeps its MD5)."""

    encryption_scope: str | None = None
    cpk_key_file: str | None = field(default=None, repr=False, compare=False)
    cpk_md5: str | None = None

    def resolve(self) -> AzureOptions:
        if self.cpk_key_file:
            return replace(self, cpk_md5=load_key(self.cpk_key_file).md5)
        return self

    def as_meta(self) -> dict[str, str | None]:
        return {"encryption_scope": self.encryption_scope, "sse_c_md5": self.cpk_md5}

    @classmethod
    def from_meta(cls, meta: dict[str, object]) -> AzureOptions:
        scope, md5 = meta.get("encryption_scope"), meta.get("sse_c_md5")
        return cls(str(scope) if scope else None, cpk_md5=str(md5) if md5 else None)


@dataclass(frozen=True)
class Destination:
    """Where objects go: a store kind (scheme), a bucket/container (for a local directory,
    its absolute path) and a key prefix; for S3 and Azure the endpoint (None: the default)."""

    scheme: str
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    s3: S3Options | None = None  # S3 only: region, profile, addressing, provider
    azure: AzureOptions | None = None  # Azure only: encryption scope, customer key

    @property
    def customer_key_md5(self) -> str | None:
        """The MD5 of the customer key its objects are encrypted with (SSE-C, Azure CPK)."""
        return (self.s3.sse_c_md5 if self.s3 else None) or (
            self.azure.cpk_md5 if self.azure else None)

    def options_meta(self) -> dict[str, str | None]:
        """Its store options as a state's config records them (access.destination_of reads
        them back): region, provider, encryption... and the customer key's MD5."""
        if self.s3 is not None:
            return self.s3.as_meta()
        return self.azure.as_meta() if self.azure is not None else {}

    def with_azure(self, options: AzureOptions) -> Destination:
        """This destination with Azure's encryption options (Azure only)."""
        if self.scheme != "az":
            if options.encryption_scope:
                raise ConfigError(f"--encryption-scope is for az:// destinations, not {self}")
            return self
        return replace(self, azure=options.resolve())

    def with_s3(self, options: S3Options) -> Destination:
        """This destination with a provider's preset applied (S3 only)."""
        if self.scheme != "s3":
            if options != S3Options() or options.sse_c_key_file:
                raise ConfigError(f"--region, --profile, --addressing-style, --provider and "
                                  f"--sse are for s3:// destinations, not {self}")
            return self
        endpoint, opts = options.resolve(self.endpoint_url)
        return replace(self, endpoint_url=endpoint, s3=opts)

    @classmethod
    def parse(cls, url: str, *, endpoint_url: str | None = None) -> Destination:
        """One of FORMS. A plain path is a local directory (made absolute here)."""
        if not _SCHEME_RE.match(url):
            return cls._local(url)
        if "?" in url or "#" in url:  # urlparse would drop them (a query, a fragment)
            sas = " (a SAS goes in AZURE_STORAGE_SAS_TOKEN)" if "?" in url else ""
            given = url.split("?", 1)[0] + ("?..." if sas else "")  # a SAS is never shown
            raise ConfigError(f"destination {given!r}: '?' and '#' are not taken in a "
                              f"destination URL{sas}; name a prefix without them (a local "
                              "directory may be given as a plain path)")
        parsed = urlparse(url)
        scheme, netloc, path = parsed.scheme.lower(), parsed.netloc, parsed.path
        if scheme == "file":
            if netloc not in ("", "localhost"):
                raise ConfigError(f"destination {url!r}: a file URL names a local directory "
                                  "(file:///DIR); mount a remote one first")
            return cls._local(unquote(path))
        if scheme == "https" and netloc.lower().endswith(AZURE_HOST):
            # The form azcopy users paste: the account is in the host, the container first.
            container, _, prefix = path.strip("/").partition("/")
            return cls._named(url, "az", container, prefix, endpoint_url or f"https://{netloc}")
        if scheme in ("s3", "az"):
            return cls._named(url, scheme, netloc, path.strip("/"), endpoint_url)
        raise ConfigError(f"unsupported destination {url!r}: expected {FORMS}")

    @classmethod
    def _named(cls, url: str, scheme: str, bucket: str, prefix: str,
               endpoint_url: str | None) -> Destination:
        if not bucket:
            what = "bucket" if scheme == "s3" else "container"
            raise ConfigError(f"destination {url!r} names no {what}")
        return cls(scheme, bucket, prefix, endpoint_url)

    @classmethod
    def _local(cls, path: str) -> Destination:
        if not path.strip():
            raise ConfigError(f"no destination directory given: expected {FORMS}")
        return cls("file", os.path.abspath(os.path.expanduser(path)).rstrip("/") or "/")

    def key(self, *parts: str) -> str:
        """An object key under this destination's prefix."""
        return "/".join(p for p in (self.prefix, *parts) if p)

    def __str__(self) -> str:
        if self.scheme == "file":
            return f"file://{quote(self.bucket)}"
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
    # What a single PUT's body is checked with by the store: md5, crc32, or auto (crc32 if
    # the pre-flight saw the store check it, else md5).
    checksum: str = "auto"

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.checksum not in ("auto", "md5", "crc32"):
            raise ConfigError(f"--checksum must be auto, md5 or crc32, not {self.checksum!r}")
        if self.part_size < MIN_PART:
            raise ConfigError(f"--part-size must be at least 1MiB (S3 raises it to its 5MiB "
                              f"minimum), not {self.part_size} bytes")


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
    read_process: str = "auto"  # walk and read in a child process: auto, on, off (readproc.py)
    header_bytes: int = 32 * KiB
    memory: int = 512 * MiB  # held by open bundles and uploads in flight (sink, group)
    hold_max: int = 2 * MiB  # files up to this size are read whole once and carried
    report_path: Path | None = None
    progress: bool = True
    tiers: TierPolicy = field(default_factory=TierPolicy)  # storage class by study age
    retention: Retention | None = None  # Object Lock by study age
    dedup: bool = True  # content stored once per migration (by blake3)
    compress: str = ""  # "zstd": uncompressed-pixel members as zstd frames (encoding.py)
    prices: PriceTable | None = None  # the dry run's cost estimate (None: the store's default)
    shard: Shard | None = None  # --shard K/N: this run's slice of the sources (shard.py)
    progress_file: Path | None = None  # counts written every second (a slice on a worker)
    preflight: bool = False  # check sources, state and store before the state is made
    offline: bool = False  # a dry run that does not contact the store at all
    filters: Filters = EVERYTHING  # which files this run takes (filters.py)
    stats_interval: float = 0.0  # seconds between two stats lines (pacsmigrate.stats); 0: none
    sample: int = 0  # a dry run's --sample: read 1 slice of this many (sample.py); 0: all
    pack: int = 0  # --pack: studies smaller than this share objects of up to it (pack.py)

    def __post_init__(self) -> None:
        if self.read_process not in ("auto", "on", "off"):
            raise ConfigError(f"--read-process must be auto, on or off, not "
                              f"{self.read_process!r}")
        if not self.sources:
            raise ConfigError("give at least one SOURCE directory")
        for src in self.sources:
            if not src.is_dir():
                raise ConfigError(f"source is not a directory: {src}")
        if (why := dest_in_source(self.dest, self.sources)) is not None:
            raise ConfigError(why)
        if self.bundle_size < 1 * MiB:
            raise ConfigError("--bundle-size must be at least 1MiB")
        if self.large_file < 1:
            raise ConfigError("--large-file must be positive")
        if self.large_file > self.bundle_size:
            raise ConfigError(f"--large-file ({_size(self.large_file)}; 64MiB by default) must "
                              f"not exceed --bundle-size ({_size(self.bundle_size)}): give "
                              f"--large-file {_size(self.bundle_size)} or less, or a larger "
                              "--bundle-size")
        if self.sample and not self.dry_run:
            raise ConfigError("--sample estimates a run without making it: add --dry-run")
        if self.sample and self.shard is not None:
            raise ConfigError("--sample reads a slice of its own: drop --shard")
        if self.offline and not self.dry_run:
            raise ConfigError("--offline is for a dry run (--dry-run --offline): a real run "
                              "needs its store")
        s3 = self.dest.s3
        self.tiers.check(self.dest.scheme, provider=s3.provider if s3 else None)
        if self.retention is not None:
            self.retention.check(self.dest.scheme)
        if s3 is not None and s3.provider == "ceph" and self.transfer.checksum == "crc32":
            raise ConfigError("--checksum crc32 with --provider ceph: Ceph RGW before Quincy "
                              "ignores x-amz-checksum-crc32, so nothing would check the "
                              "bytes; use --checksum auto (the default: CRC32 only if "
                              "the store is seen to check it) or md5")
        encoding.check(self.compress)
        if self.pack and not self.packs(self.pack):
            raise ConfigError(f"--pack ({_size(self.pack)}) must be between 1MiB and "
                              f"--bundle-size ({_size(self.bundle_size)}) and at most a 16th "
                              f"of --memory ({_size(self.memory)}): 8MiB suits most archives")
        if self.memory < 2 * self.bundle_size // 8:
            raise ConfigError(f"--memory ({_size(self.memory)}) must be at least a quarter of "
                              f"--bundle-size ({_size(self.bundle_size)}): give --memory "
                              f"{_size(self.bundle_size // 4)} or more")

    def asked(self) -> dict[str, Any]:
        """What the run asks of the store for its objects (storage classes, lock), as its
        record keeps it: a later run adopting its objects compares it with its own."""
        tiers, r = self.tiers, self.retention
        return {"tiers": [tiers.text, tiers.default] if tiers else None,
                "retention": None if r is None else [
                    r.years, r.mode, r.legal_hold,
                    [str(r.map.path), [[k, v] for k, v in sorted(r.map.classes.items())]]
                    if r.map else None]}

    def packs(self, size: int) -> bool:
        """Whether `--pack size` goes with this run's --bundle-size and --memory."""
        return MiB <= size <= min(self.bundle_size, self.memory // 16)


def _size(n: int) -> str:
    """A size as the options take it: 64MiB, 1GiB, 1500B."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", KiB)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


def dest_in_source(dest: Destination, sources: tuple[Path, ...]) -> str | None:
    """Why a local destination may not be used with these sources (it overlaps one, which
    is never written to), or None."""
    for src in sources if dest.scheme == "file" else ():
        if overlap(src, Path(dest.bucket)):
            return (f"destination {dest.bucket} and source {src} overlap: the source is never "
                    "written to, give a directory outside it")
    return None


def inside(path: Path, root: Path) -> bool:
    """A file's path lies in directory `root` (after symlinks)."""
    where, top = path.resolve().parent, root.resolve()
    return where == top or top in where.parents


def overlap(a: Path, b: Path) -> bool:
    """One directory is the other or inside it (after symlinks)."""
    ra, rb = a.resolve(), b.resolve()
    return ra == rb or ra in rb.parents or rb in ra.parents
