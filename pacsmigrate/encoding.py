"""How a member's bytes are stored in its bundle: as they are, or as one zstd frame.

`--compress zstd` stores members whose transfer syntax leaves the pixels uncompressed as one
zstd frame each (tar member `NAME.zst`), only when that is smaller; JPEG, JPEG 2000, RLE,
deflated and other compressed syntaxes, and non-DICOM files, are stored as they are. A
member stays one range GET: the frame is decompressed by the reader. The blake3 in the
index and manifest is always that of the original bytes, so every read is checked against
the file as it was on the NAS.
"""

from __future__ import annotations

from typing import Any, Protocol

import blake3

from .errors import ConfigError, IntegrityError

ZSTD = "zstd"
ENCODINGS = ("", ZSTD)
LEVEL = 3  # zstd's default: ~300 MB/s a core, most of the saving of the higher levels
MIN_SIZE = 1024  # below a tar block or two, a frame saves nothing worth a decode

# Transfer syntaxes whose pixel data is stored uncompressed (PS3.5 A.1 - A.3).
UNCOMPRESSED = frozenset({
    "1.2.840.10008.1.2",       # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",     # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",     # Explicit VR Big Endian (retired)
})


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:  # an optional extra
        raise ConfigError("--compress zstd needs the zstandard package: "
                          "pip install 'pacsmigrate[zstd]'") from exc
    return zstandard


def check(encoding: str | None) -> None:
    """Refuse an unknown encoding, or zstd without its library, before anything is read."""
    if encoding in (None, ""):
        return
    if encoding != ZSTD:
        raise ConfigError(f"--compress must be zstd, not {encoding!r}")
    _zstd()


class Compressor:
    """Compresses members worth it; one per packing thread (zstd contexts are not shared)."""

    def __init__(self, level: int = LEVEL) -> None:
        self._c = _zstd().ZstdCompressor(level=level, write_content_size=True)

    def encode(self, data: bytes, transfer_syntax: str) -> bytes | None:
        """The frame to store, or None: store the bytes as they are."""
        if len(data) < MIN_SIZE or transfer_syntax not in UNCOMPRESSED:
            return None
        frame: bytes = self._c.compress(data)
        return frame if len(frame) < len(data) else None


def decode(data: bytes, encoding: str, *, size: int) -> bytes:
    """The original bytes of a stored member (`size` long)."""
    if not encoding:
        return data
    if encoding != ZSTD:
        raise IntegrityError(f"unknown member encoding {encoding!r}")
    try:
        out: bytes = _zstd().ZstdDecompressor().decompress(data, max_output_size=size)
    except _zstd().ZstdError as exc:
        raise IntegrityError(f"stored zstd frame does not decode: {exc}") from exc
    return out


class Hasher(Protocol):
    def update(self, data: bytes | memoryview) -> object: ...
    def hexdigest(self) -> str: ...


class _DecodingHasher:
    """blake3 of the original bytes, fed the stored frame piece by piece."""

    def __init__(self) -> None:
        self._d = _zstd().ZstdDecompressor().decompressobj()
        self._h = blake3.blake3()

    def update(self, data: bytes | memoryview) -> None:
        try:
            self._h.update(self._d.decompress(bytes(data)))
        except _zstd().ZstdError:
            self._h.update(b"\0undecodable")  # the digest then differs: reported altered

    def hexdigest(self) -> str:
        return str(self._h.hexdigest())


def hasher(encoding: str) -> Hasher:
    """A hasher of the original bytes of a member stored with `encoding`."""
    if not encoding:
        return blake3.blake3()
    return _DecodingHasher()


def stored_name(name: str, encoding: str) -> str:
    """The tar member's name: `.zst` added to a compressed one (so `zstd -d` finds it)."""
    return f"{name}.zst" if encoding == ZSTD else name
