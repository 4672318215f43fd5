"""A NAS-like mount for the walk bench: a read-only FUSE passthrough adding latency per call."""

# python benchmarks/nasfs.py SOURCE MOUNTPOINT [--delay-ms 1] [--stats FILE]; runs in the
# foreground, multithreaded (fusepy over libfuse 2), until `umount MOUNTPOINT`. Metadata
# and read calls sleep first, like a round trip to a NAS; closes do not, as NFS clients do
# not wait for them either. readdir returns entry types (like NFS READDIR), so
# `find -type f` needs no stat per file. The kernel caches entries and attributes for
# libfuse's default 1 s.

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
import threading
import time
from collections import Counter
from typing import Any

from fuse import FUSE, FuseOSError, Operations

_TYPE_BITS = {True: stat.S_IFDIR, False: stat.S_IFREG}


class DelayedPassthrough(Operations):  # type: ignore[misc]
    """Serve SOURCE read-only; sleep before each metadata or read call."""

    def __init__(self, source: str, delay: float) -> None:
        self.source = os.path.realpath(source)
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def _real(self, path: str) -> str:
        return self.source + path

    def _wait(self, op: str) -> None:
        with self.lock:
            self.calls[op] += 1
        time.sleep(self.delay)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        self._wait("getattr")
        try:
            st = os.lstat(self._real(path))
        except OSError as exc:
            raise FuseOSError(exc.errno) from None
        return {key: getattr(st, key) for key in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime",
            "st_ctime", "st_ino")}

    def access(self, path: str, amode: int) -> None:
        self._wait("access")
        if not os.access(self._real(path), amode):
            raise FuseOSError(errno.EACCES)

    def readlink(self, path: str) -> str:
        self._wait("readlink")
        return os.readlink(self._real(path))

    def opendir(self, path: str) -> int:
        self._wait("opendir")
        return 0

    def readdir(self, path: str, fh: int) -> Any:
        self._wait("readdir")
        out: list[Any] = [".", ".."]
        with os.scandir(self._real(path)) as it:
            for entry in it:
                if entry.is_symlink():
                    mode = stat.S_IFLNK
                else:
                    mode = _TYPE_BITS[entry.is_dir(follow_symlinks=False)]
                out.append((entry.name, {"st_mode": mode}, 0))
        return out

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def open(self, path: str, flags: int) -> int:
        self._wait("open")
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise FuseOSError(errno.EROFS)
        return os.open(self._real(path), os.O_RDONLY)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._wait("read")
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def statfs(self, path: str) -> dict[str, Any]:
        self._wait("statfs")
        sv = os.statvfs(self._real(path))
        return {key: getattr(sv, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}


def _write_stats(fs: DelayedPassthrough, path: str) -> None:
    while True:
        with fs.lock:
            doc = dict(fs.calls)
        tmp = path + ".tmp"
        with open(tmp, "w") as out:
            json.dump(doc, out)
        os.replace(tmp, path)
        time.sleep(0.25)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("--delay-ms", type=float, default=1.0)
    parser.add_argument("--stats", help="write call counts here (JSON) every 0.25 s")
    args = parser.parse_args(argv)
    fs = DelayedPassthrough(args.source, args.delay_ms / 1000)
    if args.stats:
        threading.Thread(target=_write_stats, args=(fs, args.stats), daemon=True).start()
    FUSE(fs, args.mountpoint, foreground=True, nothreads=False, ro=True,
         fsname="pacsmigrate-nasfs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
