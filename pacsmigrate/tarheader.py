"""Tar member headers: a fast POSIX ustar block for plain names, PAX for everything else."""

from __future__ import annotations

import struct
import tarfile

BLOCK = 512
ZEROS = bytes(BLOCK * 2)
_MAX_OCTAL_11 = 8 ** 11 - 1
# A ustar block is name | fixed fields | size | mtime | checksum | fixed fields | prefix.
_MODE_IDS = b"0000644\0" b"0000000\0" b"0000000\0"  # mode, uid, gid
_TYPE_TO_PREFIX = (b"0" + bytes(100) + b"ustar\x0000" + bytes(32 + 32 + 8 + 8))
_SPACES = b" " * 8
_FIXED_SUM = sum(_MODE_IDS) + sum(_TYPE_TO_PREFIX) + sum(_SPACES)
# The block in one pack ("s" fields are padded with NULs): name, mode/uid/gid, size, mtime,
# checksum, type to the device numbers, prefix, 12 bytes of padding.
_USTAR = struct.Struct(f"100s24s12s12s8s{len(_TYPE_TO_PREFIX)}s155s12x")


def _split(name: bytes) -> tuple[bytes, bytes] | None:
    """ustar's (prefix, name) for a name over 100 bytes: split at a "/", or None."""
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    cut = name.find(b"/", len(name) - 101)
    while cut != -1 and cut <= 155:
        if len(name) - cut - 1 <= 100 and cut > 0:
            return name[:cut], name[cut + 1:]
        cut = name.find(b"/", cut + 1)
    return None


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """The header block(s) of a regular file `name` (mode 0644, owner 0, no user names).

    Plain ASCII names up to 256 bytes get one ustar block, as GNU tar writes them; other
    names (non-UTF-8 bytes kept exact with hdrcharset=BINARY, longer names) and sizes
    beyond 8 GiB get tarfile's PAX headers.
    """
    if name.isascii() and 0 <= size <= _MAX_OCTAL_11 and 0 <= mtime <= _MAX_OCTAL_11:
        raw = name.encode("ascii")
        split = (b"", raw) if len(raw) <= 100 else _split(raw)
        if split is not None:
            prefix, short = split
            size_field = b"%011o\0" % size
            mtime_field = b"%011o\0" % mtime
            checksum = (_FIXED_SUM + sum(short) + sum(prefix) + sum(size_field)
                        + sum(mtime_field))
            return _USTAR.pack(short, _MODE_IDS, size_field, mtime_field,
                               b"%06o\0 " % checksum, _TYPE_TO_PREFIX, prefix)
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uname = info.gname = ""
    # PAX keeps long and non-UTF-8 names exact (hdrcharset=BINARY), readable by GNU tar.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


_PADS = tuple(ZEROS[:n] for n in range(BLOCK))  # shared: a member's padding allocates nothing


def pad(size: int) -> bytes:
    """Zeros that bring a member's data to a whole number of blocks."""
    return _PADS[-size % BLOCK]
