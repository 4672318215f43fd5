"""Tar member headers: a fast POSIX ustar block for plain names, PAX for everything else."""

from __future__ import annotations

import tarfile

BLOCK = 512
ZEROS = bytes(BLOCK * 2)
_MAX_OCTAL_11 = 8 ** 11 - 1
_TEMPLATE = bytearray(BLOCK)
_TEMPLATE[100:108] = b"0000644\0"  # mode
_TEMPLATE[108:116] = b"0000000\0"  # uid
_TEMPLATE[116:124] = b"0000000\0"  # gid
_TEMPLATE[156:157] = b"0"  # regular file
_TEMPLATE[257:265] = b"ustar\x0000"
_TEMPLATE[148:156] = b"        "


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
        split = _split(raw)
        if split is not None:
            prefix, short = split
            block = bytearray(_TEMPLATE)
            block[0:len(short)] = short
            block[124:136] = b"%011o\0" % size
            block[136:148] = b"%011o\0" % mtime
            block[345:345 + len(prefix)] = prefix
            block[148:156] = b"%06o\0 " % sum(block)  # the field itself counts as spaces
            return bytes(block)
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uname = info.gname = ""
    # PAX keeps long and non-UTF-8 names exact (hdrcharset=BINARY), readable by GNU tar.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def pad(size: int) -> bytes:
    """Zeros that bring a member's data to a whole number of blocks."""
    return ZEROS[:-size % BLOCK]
