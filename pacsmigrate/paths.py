"""Source paths as raw bytes, and the documented text escape for ones that are not UTF-8."""

from __future__ import annotations

import base64
import sys

# os.fsdecode's encoding and error handler, looked up once (it looks them up per call).
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def display(path: bytes) -> str:
    """Readable text for a path: exact when it is UTF-8, else invalid bytes shown as \\xNN.

    The display form is for people; `path_b64` is the exact form whenever it is needed.
    """
    return path.decode("utf-8", errors="backslashreplace")


# Control characters as \xNN: a name with a newline must not break a message in two (the
# \xNN form is one `get` and `locate` take back, as for bytes that are not UTF-8).
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def shown(path: bytes) -> str:
    """A path for a terminal line: display() with control characters escaped as \\xNN
    (not for rows or manifests, whose `source_path` is display(): exact when UTF-8)."""
    return display(path).translate(_CONTROLS)


def b64_if_needed(path: bytes) -> str:
    """Base64 of the raw path bytes when they are not valid UTF-8, else ''."""
    try:
        path.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(path).decode("ascii")
    return ""


def from_fields(text: str, b64: str = "") -> bytes:
    """Invert display()/b64_if_needed(): the exact path bytes from an index row."""
    return base64.b64decode(b64) if b64 else text.encode("utf-8")


def member_name(path: bytes) -> str:
    """The tar member name of a source path: absolute path without its leading slash.

    Kept as str with surrogate escapes so tarfile writes non-UTF-8 bytes back exactly.
    """
    return path.lstrip(b"/").decode(_FS_ENCODING, _FS_ERRORS)


def path_fields(path: bytes) -> dict[str, str]:
    """The two fields every index row and manifest member carries for its path."""
    try:
        return {"source_path": path.decode("utf-8"), "source_path_b64": ""}
    except UnicodeDecodeError:
        return {"source_path": display(path), "source_path_b64": b64_if_needed(path)}
