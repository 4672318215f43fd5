"""SSE-C: S3 objects encrypted with the hospital's own 256-bit key, sent with every write and
read of them (the store keeps only the key's MD5). The key comes from a file given to every
command (`--sse-c-key-file`, or PACSMIGRATE_SSE_C_KEY_FILE); neither the key nor the file's
path is ever printed, logged or written to the state, which keeps the key's MD5 only to say
when another key is given."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import string
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

ENV = "PACSMIGRATE_SSE_C_KEY_FILE"
ALGORITHM = "AES256"


@dataclass(frozen=True)
class CustomerKey:
    """A 256-bit key; its repr never shows it."""

    key: bytes = field(repr=False)

    @property
    def md5(self) -> str:
        """The key's MD5, base64: what S3 checks the key against (and the state keeps)."""
        return base64.b64encode(hashlib.md5(self.key).digest()).decode()

    @property
    def sha256(self) -> str:
        """The key's SHA-256, base64: what Azure checks a customer-provided key against."""
        return base64.b64encode(hashlib.sha256(self.key).digest()).decode()

    def headers(self) -> dict[str, str]:
        """The three request headers."""
        p = "x-amz-server-side-encryption-customer-"
        return {p + "algorithm": ALGORITHM, p + "key": base64.b64encode(self.key).decode(),
                p + "key-MD5": self.md5}

    def params(self) -> dict[str, str]:
        """The same as botocore parameters (it adds the MD5 itself)."""
        return {"SSECustomerAlgorithm": ALGORITHM, "SSECustomerKey": self.key}  # type: ignore[dict-item]


def load_key(path: str | Path) -> CustomerKey:
    """The key in a file: 32 raw bytes, or 64 hex digits, or 32 bytes in base64 (a newline
    may end the text forms). One line for anything else, never quoting the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the SSE-C key file: {exc.strerror or exc}") from exc
    if len(raw) == 32:
        return CustomerKey(raw)
    text = raw.strip()
    if len(text) == 64 and all(chr(c) in string.hexdigits for c in text):
        return CustomerKey(bytes.fromhex(text.decode()))
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == 32:
        return CustomerKey(decoded)
    raise ConfigError("the SSE-C key file must hold a 256-bit key: 32 bytes, 64 hex digits "
                      "or base64 of 32 bytes (e.g. openssl rand 32 > key.bin)")


def key_file(given: str | None) -> str | None:
    """The key file: the one given, else the environment's."""
    return given or os.environ.get(ENV) or None


def customer_key(given: str | None, md5: str | None) -> CustomerKey:
    """The key of a store whose objects are encrypted with one: from the file given (or the
    environment's), and the same key they were encrypted with (its MD5 is `md5`)."""
    path = key_file(given)
    if path is None:
        raise ConfigError("this migration's objects are encrypted with your own key (SSE-C): "
                          f"give --sse-c-key-file FILE or set {ENV}")
    key = load_key(path)
    if key.md5 != md5:
        raise ConfigError("the SSE-C key given is not the key this migration's objects are "
                          "encrypted with")
    return key
